"""Tests for hydra_tf.experiments.pipeline: the main job end to end on a tiny setting."""

import dataclasses
import json
import os
import shutil
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from hydra_tf import evaluation
from hydra_tf import files
from hydra_tf import objectives
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import presets
from hydra_tf.experiments import records
from hydra_tf.experiments import report


def _tiny(workdir):
    settings = dict(presets.PRESETS["tiny"])
    settings.update(train_limit=256, test_limit=64, eval_steps=5)
    return pipeline.PipelineConfig(
        workdir=workdir,
        keep_ratios=(0.1, 0.01),
        tflite_mode="int8",
        objective=objectives.config("trades", eps=0.1, steps=2, step_size=0.05),
        **settings,
    )


def _row(method, keep_ratio, attack, num_examples):
    """A pipeline row of `method` at `keep_ratio` evaluated with `attack` on `num_examples`."""
    return records.Row(
        method=method,
        keep_ratio=keep_ratio,
        clean_acc=0.8,
        robust_acc=0.5,
        num_examples=num_examples,
        attack=attack,
        sparsity=1 - keep_ratio,
        layer_sparsity={},
        keras_path="model.keras",
        saved_model_path="model_savedmodel",
        eval_seconds=1.0,
    )


class PipelineTest(tf.test.TestCase):
    def test_end_to_end_results_contract_and_resume(self):
        workdir = tempfile.mkdtemp()
        results = pipeline.run(_tiny(workdir))
        with open(os.path.join(workdir, "results.json")) as f:
            saved = json.load(f)
        self.assertEqual(saved["rows"], json.loads(json.dumps(results.to_json()["rows"])))
        # The file reads back to the results the run returned.
        self.assertEqual(records.PipelineResults.from_json(saved).rows, results.rows)
        self.assertEqual(saved["config"]["keep_ratios"], [0.1, 0.01])
        methods = [(r["method"], r["keep_ratio"]) for r in saved["rows"]]
        self.assertEqual(
            methods, [("dense", 1.0), ("hydra", 0.1), ("lwm", 0.1), ("hydra", 0.01), ("lwm", 0.01)]
        )
        for row in saved["rows"]:
            for key in ("clean_acc", "robust_acc", "sparsity", "keras_path", "saved_model_path"):
                self.assertIn(key, row)
            self.assertEqual(set(row["attack"]) >= {"name", "eps", "steps", "restarts"}, True)
            self.assertBetween(row["robust_acc"], 0.0, row["clean_acc"])
            self.assertFalse(os.path.isabs(row["keras_path"]))
            self.assertTrue(os.path.exists(os.path.join(workdir, row["saved_model_path"])))
            model = keras.saving.load_model(
                os.path.join(workdir, row["keras_path"]), safe_mode=True
            )
            self.assertEqual(model.name, "cnn_small")
            # Sparsity is measured on the exported kernels: 1 - k up to rounding.
            self.assertAlmostEqual(row["sparsity"], 1 - row["keep_ratio"], delta=1e-3)
            # Every network has a verified TF Lite file of the asked mode.
            self.assertEqual(row["tflite_mode"], "int8")
            with open(os.path.join(workdir, row["tflite_path"]), "rb") as f:
                self.assertLen(f.read(), row["tflite_bytes"])
            self.assertLess(row["tflite_gzip_bytes"], row["tflite_bytes"])
            self.assertEqual(row["tflite_num_examples"], 64)
            self.assertLessEqual(
                abs(row["tflite_clean_acc"] - row["tflite_keras_clean_acc"]), 3 / 64
            )
            self.assertBetween(row["tflite_robust_acc"], 0.0, 1.0)
            self.assertEqual(list(row["tflite_modes"]), ["int8"])
        dense = saved["rows"][0]
        self.assertGreater(dense["tflite_fp32_bytes"], 3 * dense["tflite_bytes"])  # int8
        self.assertBetween(saved["kept_overlap"], 0.0, 1.0)
        for path in saved["figures"].values():
            self.assertTrue(os.path.exists(os.path.join(workdir, path)), path)
        with open(os.path.join(workdir, "results.md")) as f:
            table = f.read()
        self.assertIn("| HYDRA |", table)
        self.assertIn("| LWM |", table)
        self.assertIn("99% pruned", table)
        self.assertIn("(plots/kept_magnitudes.png)", table)
        self.assertIn("## Deployment (TF Lite)", table)
        self.assertIn("| hydra 0.01 | int8 |", table)

        # A second run finds every stage done and only rewrites the results.
        again = pipeline.run(_tiny(workdir))
        self.assertEqual(
            json.loads(json.dumps(again.to_json()["rows"])),
            json.loads(json.dumps(results.to_json()["rows"])),
        )
        self.assertLess(again.seconds, results.seconds)

        # Other evaluation settings: the cached evaluations are not reused.
        stronger = dataclasses.replace(_tiny(workdir), eval_steps=7)
        third = pipeline.run(stronger)
        self.assertEqual(third.config["eval_steps"], 7)
        for row in third.rows:
            self.assertEqual(row.attack["steps"], 7)
            self.assertEqual(row.eval_key, pipeline.evaluation_key(stronger))
        with open(os.path.join(workdir, "dense", "tflite", "row.json")) as f:
            self.assertEqual(json.load(f)["eval_key"]["attack"]["steps"], 7)

    def test_cascade_attack_rows_and_tflite_transfer(self):
        # A cascade attack (here APGD-CE alone, to stay quick; AutoAttack takes the
        # same path): each row has its stages, the examples it found are kept and
        # the TF Lite check transfers exactly them, so Keras' accuracy on them is
        # the row's robust accuracy. The same run also checks PGD beside the
        # cascade (also_pgd) and the equal-budget LWM.
        workdir = tempfile.mkdtemp()
        config = dataclasses.replace(
            _tiny(workdir),
            keep_ratios=(0.1,),
            eval_attack="apgd-ce",
            also_pgd=True,
            lwm_equal_budget=True,
        )
        results = pipeline.run(config)
        self.assertEqual([row.method for row in results.rows], ["dense", "hydra", "lwm"])
        for row in results.rows:
            self.assertEqual(row.attack["name"], "apgd-ce")
            self.assertBetween(row.pgd_acc, 0.0, row.clean_acc)
            self.assertEqual([s["attack"] for s in row.stages], ["apgd-ce"])
            self.assertEqual(row.stages[-1]["robust_acc"], row.robust_acc)
            self.assertAlmostEqual(row.tflite.keras_robust_acc, row.robust_acc)
            self.assertLessEqual(row.robust_acc, row.clean_acc)
            name = {"dense": "dense", "hydra": "hydra_0.1", "lwm": "lwm_equal_0.1"}[row.method]
            out = os.path.join(workdir, name)
            self.assertEqual(np.load(os.path.join(out, "adversarial.npy")).shape, (64, 28, 28, 1))
            self.assertFalse(os.path.exists(os.path.join(out, "attack_state.npz")))
        with open(os.path.join(workdir, "results.md")) as f:
            table = f.read()
        self.assertIn("robust accuracy under L-inf APGD-CE at eps 0.1", table)
        self.assertIn("Robust % after each attack", table)
        self.assertIn("PGD (separately)", table)
        # LWM finetunes for HYDRA's prune + finetune epochs; HYDRA for its finetune epochs.
        epochs = {
            name: len(
                files.read_history(os.path.join(workdir, name, "finetune", "history.csv"))["epoch"]
            )
            for name in ("hydra_0.1", "lwm_equal_0.1")
        }
        self.assertEqual(
            epochs,
            {
                "hydra_0.1": config.finetune_epochs,
                "lwm_equal_0.1": config.prune_epochs + config.finetune_epochs,
            },
        )
        # The examples serve the TF Lite check: with its row cached they are not
        # needed; without both the network is evaluated again.
        os.remove(os.path.join(workdir, "dense", "adversarial.npy"))
        with mock.patch.object(pipeline, "_evaluate", side_effect=AssertionError("evaluated")):
            cached = pipeline.run(config)
        self.assertEqual(cached.rows[0], results.rows[0])
        os.remove(os.path.join(workdir, "dense", "tflite", "row.json"))
        again = pipeline.run(config)
        self.assertTrue(os.path.exists(os.path.join(workdir, "dense", "adversarial.npy")))
        self.assertAlmostEqual(again.rows[0].robust_acc, results.rows[0].robust_acc, delta=0.05)

    def test_a_resumed_evaluation_counts_the_time_of_the_runs_it_resumes(self):
        workdir = tempfile.mkdtemp()
        config = dataclasses.replace(_tiny(workdir), eval_attack="apgd-ce", tflite_mode="none")
        inputs = keras.Input((28, 28, 1))
        network = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
        path = os.path.join(workdir, "plain.keras")
        network.save(path)
        # The cascade reports 1000 s: what a killed run spent before this one resumed it.
        resumed = evaluation.EvalResult(
            clean_acc=0.5,
            robust_acc=0.25,
            num_examples=64,
            attack={"name": "apgd-ce"},
            seconds=1000.0,
        )
        with mock.patch.object(pipeline.evaluation, "evaluate", return_value=resumed):
            measured = pipeline._evaluate(config, path, os.path.join(workdir, "dense"), "dense")
        self.assertBetween(measured.eval_seconds, 1000.0, 1300.0)

    def test_unknown_eval_attack(self):
        with self.assertRaisesRegex(ValueError, "Unknown eval_attack 'cw'"):
            pipeline.PipelineConfig(workdir="/tmp/x", eval_attack="cw")

    def test_rows_evaluated_differently_share_no_table(self):
        rows = [
            _row("dense", 1.0, attack={"steps": 50}, num_examples=500),
            _row("hydra", 0.1, attack={"steps": 10}, num_examples=500),
        ]
        with self.assertRaisesRegex(ValueError, "hydra keep 0.1 has attack"):
            report.results_markdown(records.PipelineResults(config={}, rows=tuple(rows)))
        rows[1] = dataclasses.replace(rows[1], attack={"steps": 50}, num_examples=100)
        with self.assertRaisesRegex(ValueError, "num_examples"):
            report.check_comparable(rows)

    def test_smoothing_objective_is_certified(self):
        workdir = tempfile.mkdtemp()
        settings = dict(presets.PRESETS["tiny"])
        settings.update(train_limit=256, test_limit=64, certify_n=100, certify_limit=8)
        config = pipeline.PipelineConfig(
            workdir=workdir,
            tflite_mode="none",
            keep_ratios=(0.1,),
            objective=objectives.config("smoothing", sigma=0.25, beta=1.0),
            certify_radius=0.25,
            **settings,
        )
        results = pipeline.run(config)
        for row in results.rows:
            self.assertEqual(row.attack["name"], "certify_l2")
            self.assertEqual(row.num_examples, 8)
            certified = row.certified_accuracy
            self.assertEqual(row.robust_acc, certified["0.25"])
            # Certified accuracy can only fall as the radius grows.
            values = [certified[k] for k in sorted(certified, key=float)]
            self.assertEqual(values, sorted(values, reverse=True))
        with open(os.path.join(workdir, "results.md")) as f:
            self.assertIn(
                "certified accuracy of the smoothed classifier at L2 radius 0.25", f.read()
            )

    def _verified_config(self, workdir):
        settings = dict(presets.PRESETS["tiny"])
        settings.update(train_limit=256, test_limit=32, batch_size=64)
        return pipeline.PipelineConfig(
            workdir=workdir,
            arch="cnn_verifiable",
            tflite_mode="none",
            keep_ratios=(0.1,),
            objective=objectives.config("crown_ibp", eps=0.02, warmup_epochs=0.0, ramp_epochs=1.0),
            optimizer="adam",
            pretrain_lr=1e-3,
            prune_lr=1e-3,
            finetune_lr=1e-3,
            crown_limit=4,
            **{**settings, "eval_attack": "apgd-ce"},
        )

    def test_verifiable_objective_reports_verified_accuracy(self):
        workdir = tempfile.mkdtemp()
        config = self._verified_config(workdir)
        self.assertEqual(config.metric, "verified")
        results = pipeline.run(config)
        for row in results.rows:
            self.assertEqual(set(row.verified_accuracy), {"ibp", "crown_ibp", "crown"})
            self.assertEqual(row.verified_examples, {"ibp": 32, "crown_ibp": 32, "crown": 4})
            self.assertEqual(row.robust_acc, row.verified_accuracy["ibp"])
            # Verified points are robust to the attack too, and correct.
            self.assertLessEqual(row.verified_accuracy["ibp"], row.attack_acc)
            self.assertLessEqual(row.verified_accuracy["crown_ibp"], row.attack_acc)
            self.assertLessEqual(row.attack_acc, row.clean_acc)
            self.assertEqual(row.attack_acc, row.stages[-1]["robust_acc"])
        with open(os.path.join(workdir, "results.json")) as f:
            self.assertEqual(records.PipelineResults.from_json(json.load(f)).rows, results.rows)
        # The ramp is pretraining's; prune and finetune train at full eps.
        with open(os.path.join(workdir, "dense", "pretrain", "config.json")) as f:
            self.assertEqual(json.load(f)["objective"]["ramp_epochs"], 1.0)
        for stage in ("hydra_0.1/prune", "lwm_0.1/finetune"):
            with open(os.path.join(workdir, stage, "config.json")) as f:
                self.assertEqual(json.load(f)["objective"]["ramp_epochs"], 0.0)
        with open(os.path.join(workdir, "results.md")) as f:
            table = f.read()
        self.assertIn("IBP-verified accuracy at L-inf eps 0.02", table)
        self.assertIn("| network | clean | IBP | CROWN-IBP | CROWN (4 ex.) | APGD-CE |", table)

    def test_a_verified_point_the_attack_breaks_stops_the_pipeline(self):
        workdir = tempfile.mkdtemp()
        config = self._verified_config(workdir)
        config = dataclasses.replace(config, verify_methods=("ibp",), eval_eps=0.3)

        def everything_verified(network, images, labels, eps, methods, batch_size=256):
            flags = np.ones(len(labels), bool)
            return pipeline.verified_lib.VerifiedResult(
                clean=flags, verified={m: flags for m in methods}
            )

        with (
            mock.patch.object(pipeline.verified_lib, "verify", everything_verified),
            self.assertRaisesRegex(pipeline.UnsoundVerificationError, "ibp proved .* unsound"),
        ):
            pipeline.run(config)

    def test_bad_verify_methods(self):
        with self.assertRaisesRegex(ValueError, "verify_methods"):
            pipeline.PipelineConfig(workdir="/tmp/x", verify_methods=("deeppoly",))

    def test_bad_tflite_mode(self):
        with self.assertRaisesRegex(ValueError, "Unknown tflite_mode 'int4'"):
            pipeline.PipelineConfig(workdir="/tmp/x", tflite_mode="int4")

    def test_bad_keep_ratios(self):
        with self.assertRaisesRegex(ValueError, "keep_ratio"):
            pipeline.PipelineConfig(workdir="/tmp/x", keep_ratios=(0.1, 1.5))
        with self.assertRaisesRegex(ValueError, "at least one"):
            pipeline.PipelineConfig(workdir="/tmp/x", keep_ratios=())

    def test_finetunes_with_their_own_attack_start_reuse_the_dense_and_prune_networks(self):
        # The reference's finetune: from the objective's own (Gaussian) start.
        gaussian = dataclasses.replace(
            _tiny(tempfile.mkdtemp()), keep_ratios=(0.01,), finetune_attack_start="gaussian"
        )
        self.assertIsNone(gaussian.finetune_attack_start)  # the objective's start
        pipeline.run(gaussian, train_only=True)
        # A second workdir holding copies of the Gaussian-start dense and prune phases.
        workdir = tempfile.mkdtemp()
        for phase in (("dense", "pretrain"), ("hydra_0.01", "prune")):
            shutil.copytree(os.path.join(gaussian.workdir, *phase), os.path.join(workdir, *phase))
        uniform = dataclasses.replace(gaussian, workdir=workdir, finetune_attack_start="uniform")
        kept = {
            phase: os.stat(os.path.join(workdir, *phase, "model.keras")).st_mtime_ns
            for phase in (("dense", "pretrain"), ("hydra_0.01", "prune"))
        }
        pipeline.run(uniform, train_only=True)
        for phase, written in kept.items():  # reused, not retrained
            path = os.path.join(workdir, *phase, "model.keras")
            self.assertEqual(os.stat(path).st_mtime_ns, written)

        def start(config, *phase):
            with open(os.path.join(config.workdir, *phase, "config.json")) as f:
                return json.load(f)["objective"]["start"]

        for name in ("hydra_0.01", "lwm_0.01"):
            self.assertEqual(start(gaussian, name, "finetune"), "gaussian")
            self.assertEqual(start(uniform, name, "finetune"), "uniform")
        self.assertEqual(start(uniform, "hydra_0.01", "prune"), "gaussian")
        self.assertEqual(pipeline.PipelineConfig.from_json(uniform.to_json()), uniform)
        # Written before PGD-AT took the setting, under its old name.
        written = uniform.to_json()
        written["finetune_trades_start"] = written.pop("finetune_attack_start")
        self.assertEqual(pipeline.PipelineConfig.from_json(written), uniform)

    def test_finetunes_start_at_the_vertex_unless_told(self):
        trades = pipeline.PipelineConfig(workdir="/tmp/x")
        self.assertEqual(trades.finetune_attack_start, "vertex")
        self.assertEqual(trades.to_json()["finetune_attack_start"], "vertex")
        finetune = pipeline.phase_objective(trades.objective, "finetune", "vertex")
        self.assertEqual((trades.objective.start, finetune.start), ("gaussian", "vertex"))
        pgd_at = objectives.config("pgd_at", eps=0.1)
        config = pipeline.PipelineConfig(workdir="/tmp/x", objective=pgd_at)
        self.assertEqual(config.finetune_attack_start, "vertex")
        # Every phase at the vertex, or the finetune pinned to the objective's
        # start: the config says "the objective's start" (None).
        at_vertex = dataclasses.replace(pgd_at, start="vertex")
        config = pipeline.PipelineConfig(workdir="/tmp/x", objective=at_vertex)
        self.assertIsNone(config.finetune_attack_start)
        config = pipeline.PipelineConfig(workdir="/tmp/x", finetune_attack_start="gaussian")
        self.assertIsNone(config.finetune_attack_start)
        # Nothing to start for the other objectives.
        others = ("natural", "smoothing", "ibp")
        for objective in [objectives.config(name, eps=0.1) for name in others]:
            config = pipeline.PipelineConfig(workdir="/tmp/x", objective=objective)
            self.assertIsNone(config.finetune_attack_start)
        # A run written before the default changed (null), or before the
        # setting existed (absent), finetuned from the objective's start.
        for written in ({"finetune_attack_start": None}, {}):
            values = {**trades.to_json(), **written}
            if not written:
                del values["finetune_attack_start"]
            self.assertIsNone(pipeline.PipelineConfig.from_json(values).finetune_attack_start)

    def test_finetune_attack_start_needs_an_adversarial_objective_and_a_known_start(self):
        with self.assertRaisesRegex(ValueError, "needs the trades or pgd_at objective, not 'ibp'"):
            pipeline.PipelineConfig(
                workdir="/tmp/x",
                objective=objectives.config("ibp", eps=0.1),
                finetune_attack_start="uniform",
            )
        with self.assertRaisesRegex(ValueError, "Unknown finetune_attack_start 'zero'"):
            pipeline.PipelineConfig(workdir="/tmp/x", finetune_attack_start="zero")
        pgd_at = pipeline.PipelineConfig(
            workdir="/tmp/x",
            objective=objectives.config("pgd_at", eps=0.1),
            finetune_attack_start="vertex",
        )
        for phase, start in (("pretrain", "uniform"), ("prune", "uniform"), ("finetune", "vertex")):
            objective = pipeline.phase_objective(pgd_at.objective, phase, "vertex")
            self.assertEqual(objective.start, start)

    def test_config_reads_back_from_its_json(self):
        config = dataclasses.replace(_tiny("/tmp/x"), eval_eps=0.05)
        written = json.loads(json.dumps(config.to_json()))
        self.assertEqual(pipeline.PipelineConfig.from_json(written), config)
        # A config written before a setting existed, or after one was removed, still loads.
        del written["also_pgd"]
        written["removed_setting"] = 1
        read = pipeline.PipelineConfig.from_json(written)
        self.assertFalse(read.also_pgd)
        self.assertEqual(read.attack, config.attack)


if __name__ == "__main__":
    tf.test.main()
