"""Tests for hydra_tf.experiments.reproduce: aggregation over seeds and the study end to end."""

import dataclasses
import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from hydra_tf import files
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import presets
from hydra_tf.experiments import records
from hydra_tf.experiments import reproduce


def _row(method, keep, clean, robust, certified_accuracy=None):
    return records.Row(
        method=method,
        keep_ratio=keep,
        clean_acc=clean,
        robust_acc=robust,
        sparsity=1 - keep,
        layer_sparsity={"fc": 1 - keep},
        num_examples=100,
        attack={"name": "pgd_linf", "eps": 0.1, "steps": 50, "restarts": 2},
        keras_path="model.keras",
        saved_model_path="model_savedmodel",
        eval_seconds=1.0,
        certified_accuracy=certified_accuracy,
    )


_CERTIFY = {"name": "certify_l2", "sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001}
_AUTOATTACK = {"name": "autoattack", "attacks": [{"name": "apgd-ce", "eps": 0.1}]}


def _results(*rows):
    """The results of one pipeline run with `rows`."""
    return records.PipelineResults(config={}, rows=rows)


class AggregateTest(tf.test.TestCase):
    def test_mean_and_sample_std_over_seeds(self):
        runs = [
            ("cnn_small", 0, _results(_row("dense", 1.0, 0.8, 0.6), _row("hydra", 0.1, 0.7, 0.5))),
            ("cnn_small", 1, _results(_row("dense", 1.0, 0.6, 0.4), _row("hydra", 0.1, 0.7, 0.3))),
        ]
        rows = reproduce.aggregate(runs)
        self.assertLen(rows, 2)
        hydra = next(r for r in rows if r.method == "hydra")
        self.assertAlmostEqual(hydra.robust_acc, 0.4)
        self.assertAlmostEqual(hydra.robust_std, 0.1414213, places=5)  # sample std
        self.assertAlmostEqual(hydra.clean_std, 0.0)
        self.assertEqual(hydra.seeds, [0, 1])
        self.assertIsNone(reproduce.gap(rows, "cnn_small", 0.1))  # no LWM row

    def test_gap(self):
        rows = reproduce.aggregate(
            [("a", 0, _results(_row("hydra", 0.01, 0.5, 0.45), _row("lwm", 0.01, 0.4, 0.25)))]
        )
        self.assertAlmostEqual(reproduce.gap(rows, "a", 0.01), 0.2)


def _study(base, arch, attack, num_test_examples, runs):
    """A one-architecture `records.Study` of `runs` (aggregated) for rendering."""
    return records.Study(
        config={"pipeline": base.to_json(), "archs": [arch], "seeds": [0, 1]},
        attack=attack,
        num_test_examples=num_test_examples,
        rows=tuple(reproduce.aggregate(runs)),
        kept_overlap={},
        figures={},
        runs=[],
        seconds=60.0,
    )


class PgdBesideStudyTest(tf.test.TestCase):
    def test_pgd_beside_the_cascade_is_averaged_and_tabled(self):
        def row(method, keep, robust, pgd):
            return records.Row.of(
                dataclasses.replace(
                    _row(method, keep, 0.8, robust), attack=_AUTOATTACK, pgd_acc=pgd
                ),
                method,
                keep,
            )

        runs = [
            ("cnn_small", 0, _results(row("dense", 1.0, 0.5, 0.6), row("hydra", 0.01, 0.3, 0.4))),
            ("cnn_small", 1, _results(row("dense", 1.0, 0.3, 0.4), row("hydra", 0.01, 0.1, 0.2))),
        ]
        rows = reproduce.aggregate(runs)
        dense = next(r for r in rows if r.method == "dense")
        self.assertAlmostEqual(dense.pgd_acc, 0.5)
        self.assertAlmostEqual(dense.pgd_std, 0.1414213, places=5)
        base = pipeline.PipelineConfig(
            workdir="/tmp/x", also_pgd=True, finetune_attack_start="gaussian"
        )
        text = reproduce.markdown(_study(base, "cnn_small", _AUTOATTACK, 100, runs))
        self.assertIn("| model | clean | AutoAttack | PGD-50 (2 restarts) |", text)
        self.assertIn("| hydra 99% | 80.0 | 20.0 ± 14.1 | 30.0 ± 14.1 |", text)
        self.assertIn("10-step PGD inside training from x + 0.001 N(0, I)). Epochs", text)
        # The default: the finetunes start at a corner.
        default = pipeline.PipelineConfig(workdir="/tmp/x", also_pgd=True)
        self.assertIn(
            "from x + 0.001 N(0, I) (a random corner of the eps-ball in the finetunes))",
            reproduce.markdown(_study(default, "cnn_small", _AUTOATTACK, 100, runs)),
        )
        uniform = dataclasses.replace(base, finetune_attack_start="uniform")
        self.assertIn(
            "from x + 0.001 N(0, I) (a uniform point of the eps-ball in the finetunes))",
            reproduce.markdown(_study(uniform, "cnn_small", _AUTOATTACK, 100, runs)),
        )
        vertex = dataclasses.replace(base, finetune_attack_start="vertex")
        self.assertIn(
            "(a random corner of the eps-ball in the finetunes))",
            reproduce.markdown(_study(vertex, "cnn_small", _AUTOATTACK, 100, runs)),
        )
        pgd_at = dataclasses.replace(
            vertex, objective=objectives.config("pgd_at", eps=0.1, step_size=0.025)
        )
        self.assertIn(
            "inside training from a uniform point of the eps-ball (a random corner of the "
            "eps-ball in the finetunes))",
            reproduce.markdown(_study(pgd_at, "cnn_small", _AUTOATTACK, 100, runs)),
        )
        equal = pipeline.PipelineConfig(workdir="/tmp/x", lwm_equal_budget=True)
        self.assertIn(
            "finetune 5 (LWM: 10, HYDRA's prune + finetune budget)",
            reproduce.markdown(_study(equal, "cnn_small", _AUTOATTACK, 100, runs)),
        )
        # Runs without PGD beside the attack have no such table.
        plain = [(a, s, _results(_row("dense", 1.0, 0.8, 0.5))) for a, s in (("cnn_small", 0),)]
        self.assertNotIn(
            "PGD-50 (2", reproduce.markdown(_study(base, "cnn_small", _AUTOATTACK, 100, plain))
        )


class MaskingStudyTest(tf.test.TestCase):
    def test_networks_square_breaks_are_listed_per_seed(self):
        def row(method, keep, after_gradient, after_square):
            stages = [
                {"attack": "apgd-ce", "robust_acc": after_gradient},
                {"attack": "square", "robust_acc": after_square},
            ]
            measured = dataclasses.replace(
                _row(method, keep, 0.8, after_square), attack=_AUTOATTACK, stages=stages
            )
            return records.Row.of(measured, method, keep)

        runs = [
            ("cnn_small", 0, _results(row("dense", 1.0, 0.7, 0.699), row("hydra", 0.01, 0.6, 0.2))),
            ("cnn_small", 1, _results(row("dense", 1.0, 0.7, 0.7), row("hydra", 0.01, 0.5, 0.5))),
        ]
        rows = reproduce.aggregate(runs)
        hydra = next(r for r in rows if r.method == "hydra")
        self.assertAllClose([s.gradient_free_gain for s in hydra.per_seed], [0.4, 0.0])
        # It survives results.json.
        reread = records.StudyRow.from_json(json.loads(json.dumps(hydra.to_json())))
        self.assertEqual(reread.per_seed, hydra.per_seed)
        base = pipeline.PipelineConfig(workdir="/tmp/x")
        text = reproduce.markdown(_study(base, "cnn_small", _AUTOATTACK, 100, runs))
        self.assertIn("gradient masking", text)
        self.assertIn("- hydra keep 0.01: 40.0 (seed 0)\n", text)
        self.assertNotIn("- dense", text)  # 0.1 points: under AutoAttack's 0.2
        # Without stages (PGD) nothing is flagged, and nothing is recorded.
        plain = reproduce.aggregate([("cnn_small", 0, _results(_row("hydra", 0.01, 0.8, 0.1)))])
        self.assertIsNone(plain[0].per_seed[0].gradient_free_gain)


class CertifiedStudyTest(tf.test.TestCase):
    def _runs(self):
        def row(method, keep, robust, at_one):
            certified = {"0": 0.8, "0.5": robust, "1": at_one}
            return _row(method, keep, 0.8, robust, certified_accuracy=certified)

        return [
            ("cnn_small", 0, _results(row("dense", 1.0, 0.6, 0.2), row("hydra", 0.01, 0.5, 0.1))),
            ("cnn_small", 1, _results(row("dense", 1.0, 0.4, 0.4), row("hydra", 0.01, 0.3, 0.3))),
        ]

    def test_seeds_certify_with_their_own_noise(self):
        # Certification's noise seed is the run's seed: the seeds still share a table,
        # but not with another sigma.
        def certified(runs, **changes):
            return [
                (
                    arch,
                    seed,
                    _results(
                        *[
                            dataclasses.replace(r, attack={**_CERTIFY, "seed": seed, **changes})
                            for r in results.rows
                        ]
                    ),
                )
                for arch, seed, results in runs
            ]

        runs = certified(self._runs())
        self.assertLen(reproduce.aggregate(runs), 2)
        other = certified(self._runs()[1:], sigma=0.5)
        with self.assertRaisesRegex(ValueError, "cannot share a table"):
            reproduce.aggregate(runs[:1] + other)

    def test_certified_accuracy_is_averaged_per_radius(self):
        rows = reproduce.aggregate(self._runs())
        hydra = next(r for r in rows if r.method == "hydra")
        mean, std = hydra.certified_accuracy["1"]
        self.assertAlmostEqual(mean, 0.2)
        self.assertAlmostEqual(std, 0.1414213, places=5)
        self.assertAlmostEqual(hydra.certified_accuracy["0.5"][0], hydra.robust_acc)

    def test_markdown_names_certification_and_lists_radii(self):
        base = pipeline.PipelineConfig(
            workdir="unused",
            keep_ratios=(0.01,),
            objective=objectives.config("smoothing", sigma=0.25),
        )
        attack = {"name": "certify_l2", "radius": 0.5, "n0": 100, "n": 10000, "alpha": 0.001}
        study = _study(base, "cnn_small", attack, 50, self._runs())
        table = reproduce.markdown(study)
        self.assertIn("Certified accuracy of the smoothed classifier at L2 radius 0.5", table)
        self.assertNotIn("PGD", table)
        self.assertIn("| model | r=0 | r=0.5 | r=1 |", table)
        self.assertIn("| hydra 99% | 80.0 | 40.0 | 20.0 |", table)


class VerifiedStudyTest(tf.test.TestCase):
    def _runs(self):
        def row(method, keep, ibp, crown, attack):
            base = _row(method, keep, 0.8, ibp)
            return records.Row(
                **{
                    **{f: getattr(base, f) for f in ("method", "keep_ratio", "clean_acc")},
                    **{
                        f: getattr(base, f)
                        for f in (
                            "robust_acc",
                            "sparsity",
                            "layer_sparsity",
                            "num_examples",
                            "attack",
                            "keras_path",
                            "saved_model_path",
                            "eval_seconds",
                        )
                    },
                    # Sorted by name, as a JSON file has them.
                    "verified_accuracy": {"crown": crown, "ibp": ibp},
                    "verified_examples": {"ibp": 100, "crown": 10},
                    "attack_acc": attack,
                }
            )

        return [
            (
                "cnn_verifiable",
                0,
                _results(row("dense", 1.0, 0.5, 0.6, 0.7), row("lwm", 0.01, 0.2, 0.3, 0.4)),
            ),
            (
                "cnn_verifiable",
                1,
                _results(row("dense", 1.0, 0.3, 0.4, 0.5), row("lwm", 0.01, 0.2, 0.3, 0.6)),
            ),
        ]

    def test_verified_and_attack_accuracy_are_averaged(self):
        rows = reproduce.aggregate(self._runs())
        dense = next(r for r in rows if r.method == "dense")
        self.assertAlmostEqual(dense.verified_accuracy["crown"][0], 0.5)
        self.assertAlmostEqual(dense.verified_accuracy["ibp"][1], 0.1414213, places=5)
        self.assertAlmostEqual(dense.robust_acc, dense.verified_accuracy["ibp"][0])
        lwm = next(r for r in rows if r.method == "lwm")
        self.assertAlmostEqual(lwm.attack_acc, 0.5)
        self.assertAlmostEqual(lwm.attack_std, 0.1414213, places=5)
        # The study's results.json reads back.
        self.assertEqual(records.StudyRow.from_json(lwm.to_json()), lwm)

    def test_markdown_has_the_verified_caption_and_table(self):
        base = pipeline.PipelineConfig(
            workdir="unused",
            keep_ratios=(0.01,),
            arch="cnn_verifiable",
            objective=objectives.config("crown_ibp", eps=0.1, warmup_epochs=1, ramp_epochs=8),
            verify_methods=("ibp", "crown"),
        )
        attack = self._runs()[0][2].rows[0].attack
        study = _study(base, "cnn_verifiable", attack, 100, self._runs())
        table = reproduce.markdown(study)
        self.assertIn(
            "eps ramped linearly from 0 over 8 pretraining epochs after 1 at eps 0", table
        )
        self.assertIn("IBP-verified accuracy at L-inf eps 0.1", table)
        self.assertIn("| network | clean | IBP | CROWN (10 ex.) | PGD-50 |", table)
        self.assertIn("| lwm 99% | 80.0 | 20.0 ± 0.0 | 30.0 ± 0.0 | 50.0 ± 14.1 |", table)

    def test_mixtrain_caption(self):
        base = pipeline.PipelineConfig(
            workdir="unused",
            keep_ratios=(0.01,),
            arch="cnn_verifiable",
            objective=objectives.config("mixtrain", eps=0.1, ramp_epochs=4, every=2),
            verify_methods=("ibp", "crown"),
            granularity="channel",
        )
        runs = self._runs()
        table = reproduce.markdown(
            _study(base, "cnn_verifiable", runs[0][2].rows[0].attack, 100, runs)
        )
        self.assertIn(
            "Objective mixtrain (L-inf eps 0.1, ramped linearly per epoch over 4 pretraining "
            "epochs",
            table,
        )
        self.assertIn("weighted 0.1 x2.5 every 2 epochs after the ramp, at most 50", table)
        self.assertIn("loss of 5 sampled examples, weighted", table)
        self.assertIn("IBP-verified accuracy at L-inf eps 0.1", table)
        # The verified sentence starts with a capital, whatever the bound's name.
        self.assertNotRegex(table, r"\. [a-z][a-z-]*-verified accuracy")
        smoothed = dataclasses.replace(base.objective, ramp="smoothed")
        table = reproduce.markdown(
            _study(
                dataclasses.replace(base, objective=smoothed),
                "cnn_verifiable",
                runs[0][2].rows[0].attack,
                100,
                runs,
            )
        )
        self.assertIn("ramped per step (smoothed) over 4 pretraining epochs", table)
        one = dataclasses.replace(base.objective, samples=1)
        table = reproduce.markdown(
            _study(
                dataclasses.replace(base, objective=one, verify_methods=("symbolic",)),
                "cnn_verifiable",
                runs[0][2].rows[0].attack,
                100,
                runs,
            )
        )
        self.assertIn("loss of 1 sampled example, weighted", table)
        self.assertIn("training examples: all. Symbolic-interval-verified accuracy at", table)
        # Evaluated at a smaller eps than the training's (--eval_eps): the caption says which.
        attack = dict(runs[0][2].rows[0].attack, eps=0.02)
        table = reproduce.markdown(_study(base, "cnn_verifiable", attack, 100, runs))
        self.assertIn("Objective mixtrain (L-inf eps 0.1,", table)
        self.assertIn("IBP-verified accuracy at L-inf eps 0.02", table)
        # A structured study says so, in its caption and its column names.
        self.assertIn("LWM is L1-norm filter pruning", table)
        self.assertIn("99% of channels", table)


class ScheduleTest(tf.test.TestCase):
    def test_parses_per_arch_epochs(self):
        self.assertEqual(
            reproduce.parse_schedules(["cnn_large=3/2/1", "cnn_small=5/4/2"]),
            {
                "cnn_large": {"pretrain_epochs": 3, "prune_epochs": 2, "finetune_epochs": 1},
                "cnn_small": {"pretrain_epochs": 5, "prune_epochs": 4, "finetune_epochs": 2},
            },
        )
        self.assertEqual(reproduce.parse_schedules([]), {})

    def test_rejects_bad_specs(self):
        for spec in ("cnn_large", "cnn_large=3/2", "=3/2/1", "cnn_large=3/x/1", "cnn_large=3/0/1"):
            with self.subTest(spec=spec), self.assertRaisesRegex(ValueError, "schedule"):
                reproduce.parse_schedules([spec])
        with self.assertRaisesRegex(ValueError, "two schedules"):
            reproduce.parse_schedules(["a=1/1/1", "a=2/2/2"])

    def test_study_refuses_a_schedule_for_an_absent_arch(self):
        base = pipeline.PipelineConfig(workdir=tempfile.mkdtemp())
        with self.assertRaisesRegex(ValueError, "not in the study"):
            reproduce.run(
                base,
                ("cnn_small",),
                (0,),
                tempfile.mkdtemp(),
                schedules=reproduce.parse_schedules(["cnn_large=1/1/1"]),
            )


class MergeTest(tf.test.TestCase):
    def _study(self, arch, epochs=(5, 2, 1), **overrides):
        """A study of one architecture written to its own directory, with a figure."""
        source = tempfile.mkdtemp()
        config = pipeline.PipelineConfig(
            workdir="unused",
            keep_ratios=(0.01,),
            pretrain_epochs=epochs[0],
            prune_epochs=epochs[1],
            finetune_epochs=epochs[2],
            **overrides,
        )
        os.makedirs(os.path.join(source, arch, "plots"))
        with open(os.path.join(source, arch, "plots", "robust.png"), "wb") as f:
            f.write(arch.encode())
        study = records.Study(
            config={"pipeline": config.to_json(), "archs": [arch], "seeds": [0, 1]},
            attack={"name": "pgd_linf", "eps": 0.1, "steps": 50, "restarts": 2},
            num_test_examples=2000,
            rows=tuple(
                reproduce.aggregate(
                    [
                        (
                            arch,
                            0,
                            _results(_row("hydra", 0.01, 0.7, 0.5), _row("lwm", 0.01, 0.6, 0.2)),
                        )
                    ]
                )
            ),
            kept_overlap={arch: [0.8]},
            figures={arch: {"robust": f"{arch}/plots/robust.png"}},
            runs=[{"arch": arch, "seed": 0, "workdir": f"runs/{arch}"}],
            seconds=3600.0,
        )
        return study, source

    def test_merges_architectures_with_their_own_epochs(self):
        small, small_dir = self._study("cnn_small")
        large, large_dir = self._study("cnn_large", epochs=(3, 2, 1))
        out = tempfile.mkdtemp()
        merged = reproduce.merge([small, large], [small_dir, large_dir], out)
        self.assertEqual(merged.config["archs"], ["cnn_small", "cnn_large"])
        self.assertEqual(
            merged.config["schedules"],
            {"cnn_large": {"pretrain_epochs": 3, "prune_epochs": 2, "finetune_epochs": 1}},
        )
        self.assertLen(merged.rows, 4)
        self.assertAlmostEqual(reproduce.gap(merged.rows, "cnn_large", 0.01), 0.3)
        with open(os.path.join(out, "cnn_large", "plots", "robust.png"), "rb") as f:
            self.assertEqual(f.read(), b"cnn_large")  # figures travel with the study
        with open(os.path.join(out, "results.md")) as f:
            table = f.read()
        self.assertIn("## cnn_small", table)
        self.assertIn("Epochs for cnn_large: pretrain 3, prune 2, finetune 1.", table)
        self.assertNotIn("Epochs for cnn_small", table)
        self.assertIn("took 1.00 + 1.00 h", table)
        with open(os.path.join(out, "results.json")) as f:
            self.assertEqual(json.load(f)["merged_from"], [small_dir, large_dir])

    def test_refuses_studies_that_do_not_compare(self):
        small, small_dir = self._study("cnn_small")
        other_lr, other_dir = self._study("cnn_large", prune_lr=0.03)
        with self.assertRaisesRegex(ValueError, "prune_lr"):
            reproduce.merge([small, other_lr], [small_dir, other_dir], tempfile.mkdtemp())
        again, again_dir = self._study("cnn_small")
        with self.assertRaisesRegex(ValueError, "in two studies"):
            reproduce.merge([small, again], [small_dir, again_dir], tempfile.mkdtemp())
        with self.assertRaisesRegex(ValueError, "at least two"):
            reproduce.merge([small], [small_dir], tempfile.mkdtemp())


class StudyTest(tf.test.TestCase):
    def test_two_seeds_end_to_end(self):
        out = tempfile.mkdtemp()
        settings = dict(presets.PRESETS["tiny"])
        settings.update(train_limit=128, test_limit=32, eval_steps=3)
        base = pipeline.PipelineConfig(
            workdir=os.path.join(out, "runs"),
            keep_ratios=(0.05,),
            tflite_mode="none",
            objective=objectives.config("pgd_at", eps=0.1, steps=2, step_size=0.05),
            **settings,
        )
        # cnn_small gets its own schedule: two prune epochs instead of the base's one.
        self.assertEqual(base.prune_epochs, 1)
        schedules = reproduce.parse_schedules(["cnn_small=1/2/1"])
        study = reproduce.run(
            base,
            ("cnn_small",),
            (0, 1),
            os.path.join(out, "study"),
            schedules=schedules,
        )
        with open(os.path.join(out, "study", "results.json")) as f:
            saved = json.load(f)
        self.assertEqual(saved["config"]["seeds"], [0, 1])
        self.assertEqual(
            sorted((r["method"], r["keep_ratio"]) for r in saved["rows"]),
            [("dense", 1.0), ("hydra", 0.05), ("lwm", 0.05)],
        )
        for row in saved["rows"]:
            self.assertLen(row["per_seed"], 2)
            self.assertGreaterEqual(row["robust_std"], 0.0)
        # The seeds really are different runs.
        dense = next(r for r in saved["rows"] if r["method"] == "dense")
        self.assertNotEqual(dense["per_seed"][0], dense["per_seed"][1])
        for path in saved["figures"]["cnn_small"].values():
            self.assertTrue(os.path.exists(os.path.join(out, "study", path)), path)
        with open(os.path.join(out, "study", "results.md")) as f:
            table = f.read()
        self.assertIn("## cnn_small", table)
        self.assertIn("Epochs for cnn_small: pretrain 1, prune 2, finetune 1.", table)
        for run in saved["runs"]:
            with open(os.path.join(run["workdir"], "hydra_0.05", "prune", "history.csv")) as f:
                self.assertLen(f.read().strip().splitlines(), 3)  # header + 2 epochs
        self.assertIn("| HYDRA - LWM |", table)
        self.assertEqual(study.num_test_examples, 32)
        # The progress report of the finished study reads the same figures from the workdir.
        networks = reproduce.progress(base, ("cnn_small",), (0, 1), schedules)
        self.assertEqual({n["state"] for n in networks}, {"evaluated"})
        self.assertEqual(
            [(n["seed"], n["network"]) for n in networks],
            [(s, name) for s in (0, 1) for name in ("dense", "hydra_0.05", "lwm_0.05")],
        )
        self.assertEqual(
            [n["evaluation"].robust_acc for n in networks if n["network"] == "dense"],
            [seed["robust_acc"] for seed in dense["per_seed"]],
        )


class ProgressTest(tf.test.TestCase):
    def test_states_and_figures_of_an_unfinished_study(self):
        workdir = tempfile.mkdtemp()
        base = pipeline.PipelineConfig(workdir=workdir, keep_ratios=(0.1, 0.05), also_pgd=True)
        run = os.path.join(workdir, "cnn_small", "seed0")
        config = dataclasses.replace(base, arch="cnn_small", seed=0, workdir=run)
        evaluation = dataclasses.replace(
            _row("dense", 1.0, 0.8, 0.5), attack=_AUTOATTACK, pgd_acc=0.55
        )
        evaluation = records.Evaluation.from_json(
            {**evaluation.to_json(), "eval_key": pipeline.evaluation_key(config)}
        )
        os.makedirs(os.path.join(run, "dense", "pretrain"))
        open(os.path.join(run, "dense", "pretrain", "model.keras"), "w").close()
        files.write_json(os.path.join(run, "dense", "eval.json"), evaluation.to_json())
        for stage, phase in (("hydra_0.1", "finetune"), ("lwm_0.1", "finetune")):
            os.makedirs(os.path.join(run, stage, phase))
        open(os.path.join(run, "hydra_0.1", "finetune", "model.keras"), "w").close()
        np.savez(os.path.join(run, "hydra_0.1", pipeline.ATTACK_STATE_FILE), stage=np.array(2))
        # HYDRA 0.05 pruned, its finetune not started; LWM 0.05 one of two epochs in.
        os.makedirs(os.path.join(run, "hydra_0.05", "prune"))
        open(os.path.join(run, "hydra_0.05", "prune", "model.keras"), "w").close()
        lwm_finetune = os.path.join(run, "lwm_0.05", "finetune")
        os.makedirs(lwm_finetune)
        files.write_json(
            os.path.join(lwm_finetune, training.CONFIG_FILE),
            training.TrainConfig(
                workdir=lwm_finetune,
                phase="finetune",
                epochs=2,
                keep_ratio=0.05,
                source_checkpoint=os.path.join(run, "dense", "pretrain", "model.keras"),
            ).to_json(),
        )
        with open(os.path.join(lwm_finetune, training.HISTORY_FILE), "w") as f:
            f.write("epoch,accuracy,loss\n0,0.5,1.2\n")

        networks = reproduce.progress(base, ("cnn_small",), (0, 1))
        self.assertEqual(
            [(n["seed"], n["network"], n["state"]) for n in networks],
            [
                (0, "dense", "evaluated"),
                (0, "hydra_0.1", "evaluating (2 attacks done)"),
                (0, "lwm_0.1", "training finetune (0 epochs done)"),
                (0, "hydra_0.05", "prune done"),
                (0, "lwm_0.05", "training finetune (1 of 2 epochs done)"),
                (1, "dense", "not trained"),
                (1, "hydra_0.1", "not trained"),
                (1, "lwm_0.1", "not trained"),
                (1, "hydra_0.05", "not trained"),
                (1, "lwm_0.05", "not trained"),
            ],
        )
        self.assertEqual(networks[0]["evaluation"].robust_acc, 0.5)
        table = reproduce.progress_markdown(networks, base)
        self.assertIn("1 of 10 networks evaluated", table)
        self.assertNotIn("Nothing has started", table)
        # A workdir with nothing in it (a mistyped --workdir, say) is said to be one.
        empty = dataclasses.replace(base, workdir=os.path.join(workdir, "typo"))
        self.assertIn(
            "Nothing has started in",
            reproduce.progress_markdown(reproduce.progress(empty, ("cnn_small",), (0,)), empty),
        )
        self.assertIn("| network | state | clean | AutoAttack | PGD |", table)
        self.assertIn("| cnn_small | 0 | dense | evaluated | 80.0 | 50.0 | 55.0 |", table)
        self.assertIn("| cnn_small | 0 | hydra_0.1 | evaluating (2 attacks done) |  |  |  |", table)

        # An unreadable attack state still says the evaluation is under way.
        with open(os.path.join(run, "hydra_0.1", pipeline.ATTACK_STATE_FILE), "w") as f:
            f.write("not an npz")
        self.assertEqual(reproduce.progress(base, ("cnn_small",), (0,))[1]["state"], "evaluating")
        # Evaluated with other settings (another eps): trained, not evaluated.
        other = dataclasses.replace(base, eval_eps=0.2)
        self.assertEqual(reproduce.progress(other, ("cnn_small",), (0,))[0]["state"], "trained")


if __name__ == "__main__":
    tf.test.main()
