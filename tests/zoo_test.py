"""Tests for hydra_tf.zoo: publishing a run's network, reading it back, and the published zoo."""

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile

import keras
import numpy as np
import tensorflow as tf

from hydra_tf import files
from hydra_tf import objectives
from hydra_tf import zoo
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import records
from hydra_tf.export import tflite
from hydra_tf.objectives import attacks
from tests import helpers

VARIANT = "hydra_0.1"


def _pruned_plain_model(seed=0):
    """A small plain network with 90% of its kernel entries zero, as a run exports."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, name="fc")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in (model.get_layer("conv1"), model.get_layer("fc")):
        kernel = layer.kernel.numpy()
        kernel[rng.random(kernel.shape) < 0.9] = 0.0
        layer.kernel.assign(kernel)
    return model


def _write_run(run_dir, model, clean_acc, num_examples=500, certified=False, ran_from=None):
    """The files of one pipeline run that `zoo.publish` reads, around `model`.

    With `ran_from`, the phases record their workdirs and sources relative to that
    directory, as a run started there with a relative workdir does.
    """
    variant_dir = os.path.join(run_dir, VARIANT)
    os.makedirs(os.path.join(variant_dir, "tflite"))
    model.save(os.path.join(variant_dir, f"{VARIANT}.keras"))
    with open(os.path.join(variant_dir, "tflite", "float32.tflite"), "wb") as f:
        f.write(tflite.convert(model, tflite.Mode("float32")))
    objective = {"name": "trades", "eps": 0.1, "beta": 6.0}
    if certified:
        objective = {"name": "smoothing", "sigma": 0.25}
    run_config = pipeline.PipelineConfig(
        workdir=run_dir, objective=objectives.from_json(objective), eval_eps=0.1
    )
    files.write_json(os.path.join(run_dir, "pipeline_config.json"), run_config.to_json())
    source = None
    for phase, lr in (("pretrain", 0.1), ("prune", 0.1), ("finetune", 0.01)):
        phase_dir = os.path.join(run_dir, "dense" if phase == "pretrain" else VARIANT, phase)
        phase_objective = objective
        if objective["name"] == "trades":  # finetuned from the vertex start
            phase_objective = {
                **objective,
                "start": "vertex" if phase == "finetune" else "gaussian",
            }
        os.makedirs(phase_dir, exist_ok=True)
        recorded = os.path.relpath(phase_dir, ran_from) if ran_from else phase_dir
        files.write_json(
            os.path.join(phase_dir, "config.json"),
            {
                "arch": "tiny",
                "dataset": "fashion_mnist",
                "epochs": 2,
                "granularity": "weight",
                "keep_ratio": 1.0 if phase == "pretrain" else 0.1,
                "learning_rate": lr,
                "objective": phase_objective,
                "optimizer": "sgd",
                "phase": phase,
                "seed": 3,
                "source_checkpoint": source,
                "train_limit": 1000,
                "workdir": recorded,
            },
        )
        source = os.path.join(recorded, "model.keras")
    attack = {"name": "autoattack", "attacks": [{"name": "apgd-ce", "eps": 0.1}]}
    if certified:
        attack = {"name": "certify_l2", "radius": 0.5, "sigma": 0.25, "n0": 100, "n": 10_000}
        attack["alpha"] = 0.001
    evaluation = records.Evaluation(
        clean_acc=clean_acc,
        robust_acc=0.05,
        num_examples=num_examples,
        attack=attack,
        certified_accuracy={"0": clean_acc, "0.5": 0.05} if certified else None,
        stages=None
        if certified
        else [
            {"attack": "apgd-ce", "robust_acc": 0.3, "attacked": 9, "broken": 6, "seconds": 1.0},
            {"attack": "square", "robust_acc": 0.05, "attacked": 3, "broken": 2, "seconds": 1.0},
        ],
        sparsity=0.9,
        layer_sparsity={},
        keras_path=f"{VARIANT}/{VARIANT}.keras",
        saved_model_path="unused",
        eval_seconds=1.0,
    )
    files.write_json(os.path.join(variant_dir, "eval.json"), evaluation.to_json())
    deployed = records.TFLiteRow(
        requested="float32",
        path=f"{VARIANT}/tflite/float32.tflite",
        mode="float32",
        bytes=1,
        gzip_bytes=1,
        clean_acc=clean_acc,
        robust_acc=0.06,
        keras_clean_acc=clean_acc,
        keras_robust_acc=0.05,
        latency_ms=None,
        load_mb=None,
        xnnpack=True,
        num_examples=num_examples,
    )
    files.write_json(os.path.join(variant_dir, "tflite", "row.json"), deployed.to_json())


class PublishTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        cls.model = _pruned_plain_model()
        cls.images, cls.labels = zoo.test_arrays("fashion_mnist", 500)
        cls.clean = zoo.clean_accuracy(cls.model, cls.images, cls.labels)
        cls.run_dir = os.path.join(cls.tmp, "run")
        _write_run(cls.run_dir, cls.model, cls.clean)
        cls.root = os.path.join(cls.tmp, "zoo")
        cls.card = zoo.publish(
            cls.run_dir, VARIANT, "tiny-90", "adversarial", "results/x", "python -m x", cls.root
        )

    def test_card_holds_the_run_and_the_file(self):
        card = self.card
        self.assertEqual(card.arch, "tiny")
        self.assertEqual(card.method, "hydra")
        self.assertEqual(card.keep_ratio, 0.1)
        self.assertEqual(card.seed, 3)
        self.assertEqual(card.train_examples, 1000)
        self.assertEqual(
            [step["phase"] for step in card.training], ["pretrain", "prune", "finetune"]
        )
        # Each phase's attack start: the card says what the finetune trained with.
        self.assertEqual(
            [step["start"] for step in card.training], ["gaussian", "gaussian", "vertex"]
        )
        text = zoo.card_markdown(card)
        self.assertIn("prune 2 epochs (lr 0.1, sgd, trades, gaussian start)", text)
        self.assertIn("finetune 2 epochs (lr 0.01, sgd, trades, vertex start)", text)
        self.assertEqual(card.evaluation["robust_kind"], "autoattack")
        self.assertEqual(card.evaluation["eps"], 0.1)
        self.assertEqual(card.check, {"num_examples": 500, "clean_acc": self.clean})
        self.assertEqual(card.input_shape, (28, 28, 1))
        kernel_entries = 3 * 3 * 4 + 13 * 13 * 4 * 10
        self.assertLess(card.nonzero_params, 0.2 * kernel_entries)
        self.assertEqual(zoo.card("tiny-90", self.root), card)

    def test_card_follows_sources_recorded_where_the_run_ran(self):
        # The pipeline's default workdir is relative (runs/pipeline): its phases record
        # `runs/pipeline/...` sources, which publishing from elsewhere must still follow.
        ran_from = os.path.join(self.tmp, "elsewhere")
        run_dir = os.path.join(ran_from, "runs", "relative")
        _write_run(run_dir, self.model, self.clean, ran_from=ran_from)
        with open(os.path.join(run_dir, VARIANT, "finetune", "config.json")) as f:
            self.assertEqual(
                json.load(f)["source_checkpoint"],
                os.path.join("runs", "relative", VARIANT, "prune", "model.keras"),
            )
        card = zoo.publish(run_dir, VARIANT, "relative", "adversarial", "r", "c", self.root)
        self.assertEqual(
            [step["phase"] for step in card.training], ["pretrain", "prune", "finetune"]
        )
        # A run recorded with absolute paths, then moved: its sources are found where it is.
        ran_in = os.path.join(self.tmp, "was", "run")
        _write_run(ran_in, self.model, self.clean)
        moved = os.path.join(self.tmp, "now", "run")
        os.makedirs(os.path.dirname(moved))
        shutil.move(ran_in, moved)
        card = zoo.publish(moved, VARIANT, "moved", "adversarial", "r", "c", self.root)
        self.assertEqual(
            [step["phase"] for step in card.training], ["pretrain", "prune", "finetune"]
        )

    def test_card_gives_each_attack_and_the_square_check(self):
        text = zoo.card_markdown(self.card)
        self.assertIn(
            "| after each attack | APGD-CE 30.0% -> Square 5.0%; **check failed**: square broke "
            "25.00% of the examples after the gradient attacks",
            text,
        )
        passing = dataclasses.replace(
            self.card,
            evaluation={
                **self.card.evaluation,
                "stages": [
                    {"attack": "apgd-ce", "robust_acc": 0.05},
                    {"attack": "square", "robust_acc": 0.05},
                ],
            },
        )
        self.assertIn("Square 5.0%; AutoAttack's Square check passed |", zoo.card_markdown(passing))
        older = dataclasses.replace(
            self.card, evaluation={k: v for k, v in self.card.evaluation.items() if k != "stages"}
        )
        self.assertNotIn("after each attack", zoo.card_markdown(older))

    def test_published_network_is_the_run_network_and_smaller(self):
        loaded = zoo.load("tiny-90", self.root)
        self.assertAllClose(loaded(self.images[:50]), self.model(self.images[:50]), atol=1e-6)
        source = os.path.join(self.run_dir, VARIANT, f"{VARIANT}.keras")
        self.assertLess(self.card.files[zoo.KERAS_FILE], os.path.getsize(source) / 2)
        with (
            open(zoo.tflite_path("tiny-90", self.root), "rb") as f,
            open(os.path.join(self.run_dir, VARIANT, "tflite", "float32.tflite"), "rb") as g,
        ):
            self.assertEqual(f.read(), g.read())

    def test_published_file_has_fixed_dates_and_deflated_members(self):
        # Fixed dates: publishing the same network again writes the same bytes.
        with zipfile.ZipFile(os.path.join(self.root, "tiny-90", zoo.KERAS_FILE)) as archive:
            for info in archive.infolist():
                self.assertEqual(info.date_time, (1980, 1, 1, 0, 0, 0), info.filename)
                self.assertEqual(info.compress_type, zipfile.ZIP_DEFLATED, info.filename)

    def test_list_index_and_readme(self):
        self.assertIn("tiny-90", zoo.names(self.root))
        with open(os.path.join(self.root, "README.md")) as f:
            index = f.read()
        self.assertIn("[tiny-90](tiny-90/README.md)", index)
        with open(os.path.join(self.root, "tiny-90", "README.md")) as f:
            card = f.read()
        self.assertIn("python -m x", card)
        # The TF Lite line names the attack whose examples were transferred, and Keras' figure.
        self.assertIn(
            "6.0% (Keras network 5.0%) on adversarial examples found on the Keras network by "
            "standard AutoAttack (APGD-CE,",
            card,
        )

    def test_evaluate_measures_keras_and_tflite(self):
        report = zoo.evaluate("tiny-90", self.root, limit=500)
        self.assertEqual(report["clean_acc"], self.clean)
        self.assertEqual(report["card_clean_acc"], self.clean)
        self.assertAlmostEqual(report["tflite_clean_acc"], self.clean, delta=0.004)

    def test_record_adds_the_attack_again_beside_the_study(self):
        root = os.path.join(self.tmp, "recorded")
        shutil.copytree(self.root, root)
        attack = attacks.make("apgd-ce", 0.3)
        measured = zoo.evaluate("tiny-90", root, limit=500, attack=attack)
        self.assertEqual([s["attack"] for s in measured["stages"]], ["apgd-ce"])
        self.assertEqual(measured["stages"][0]["robust_acc"], measured["robust_acc"])
        # (The tiny network's fused ReLU has no bounds: its verified figure is given.)
        measured["verified_accuracy"] = {"ibp": 0.25}
        recorded = zoo.record("tiny-90", measured, "python -m y", root, date="2026-12-01")
        self.assertEqual(zoo.card("tiny-90", root), recorded)
        # The study's figures stay; the new ones sit beside them.
        self.assertEqual(recorded.evaluation, self.card.evaluation)
        self.assertEqual(recorded.remeasured["robust_acc"], measured["robust_acc"])
        self.assertEqual(recorded.remeasured["attack"], measured["attack"])
        with open(os.path.join(root, "tiny-90", "README.md")) as f:
            text = f.read()
        self.assertIn(
            f"| measured again | 2026-12-01, the published file on the first 500 test images: "
            f"clean {100 * self.clean:.1f}%, {100 * measured['robust_acc']:.1f}% under L-inf "
            f"APGD-CE at eps 0.3; verified ibp 25.0%; after each attack: APGD-CE "
            f"{100 * measured['robust_acc']:.1f}%",
            text,
        )
        self.assertIn("Measured again by:\n\n```bash\npython -m y\n```", text)
        # Cards without the field still read (the published zoo's older cards).
        self.assertNotIn("remeasured", self.card.to_json())
        for report, message in (
            ({**measured, "name": "other"}, "'other''s, not 'tiny-90''s"),
            ({k: v for k, v in measured.items() if k != "attack"}, "no attack to record"),
            ({**measured, "clean_acc": self.clean - 0.01}, "its card says"),
        ):
            with self.assertRaisesRegex(zoo.ZooError, message):
                zoo.record("tiny-90", report, "c", root)
        self.assertEqual(zoo.card("tiny-90", root), recorded)

    def test_certified_card_and_certification(self):
        run_dir = os.path.join(self.tmp, "smoothed")
        _write_run(run_dir, self.model, self.clean, certified=True)
        card = zoo.publish(run_dir, VARIANT, "smoothed", "certified", "r", "c", self.root)
        self.assertEqual(card.evaluation["robust_kind"], "certified")
        self.assertEqual((card.evaluation["sigma"], card.evaluation["radius"]), (0.25, 0.5))
        with open(os.path.join(self.root, "smoothed", "README.md")) as f:
            text = f.read()
        self.assertIn("certified 5.0% at L2 radius 0.5", text)
        # A certified study checks its TF Lite file with PGD, and its card says so.
        self.assertEqual(card.tflite["attack"]["name"], "pgd_linf")
        self.assertIn("on the Keras network by L-inf PGD-50 with 2 restart(s) at eps 0.1;", text)
        report = zoo.evaluate("smoothed", self.root, limit=20, certify_n=200)
        self.assertBetween(report["certified_accuracy"]["0.5"], 0.0, 1.0)
        with self.assertRaisesRegex(zoo.ZooError, "not a smoothed"):
            zoo.evaluate("tiny-90", self.root, limit=20, certify_n=200)

    def test_a_study_on_fewer_images_still_gets_the_full_check(self):
        # Certified studies certify 300 images; the card's check still covers 500.
        run_dir = os.path.join(self.tmp, "fewer")
        clean = zoo.clean_accuracy(self.model, self.images[:300], self.labels[:300])
        _write_run(run_dir, self.model, clean, num_examples=300, certified=True)
        card = zoo.publish(run_dir, VARIANT, "fewer", "certified", "r", "c", self.root)
        self.assertEqual(card.check, {"num_examples": 500, "clean_acc": self.clean})
        self.assertEqual(card.evaluation["num_examples"], 300)
        wrong = os.path.join(self.tmp, "fewer_wrong")
        _write_run(wrong, self.model, clean + 0.05, num_examples=300)
        with self.assertRaisesRegex(zoo.ZooError, "first 300 test images"):
            zoo.publish(wrong, VARIANT, "fewer_wrong", "certified", "r", "c", self.root)

    def test_refuses_a_run_whose_config_it_cannot_read(self):
        run_dir = os.path.join(self.tmp, "bad_config")
        _write_run(run_dir, self.model, self.clean)
        files.write_json(os.path.join(run_dir, "pipeline_config.json"), {"objective": {}})
        with self.assertRaisesRegex(zoo.ZooError, "Cannot read the run's config"):
            zoo.publish(run_dir, VARIANT, "bad_config", "adversarial", "r", "c", self.root)
        self.assertNotIn("bad_config", zoo.names(self.root))

    def test_refuses_a_network_the_study_did_not_measure(self):
        run_dir = os.path.join(self.tmp, "wrong")
        _write_run(run_dir, self.model, self.clean + 0.05)
        with self.assertRaisesRegex(zoo.ZooError, "not the one the study evaluated"):
            zoo.publish(run_dir, VARIANT, "wrong", "adversarial", "r", "c", self.root)
        self.assertNotIn("wrong", zoo.names(self.root))
        self.assertEqual([e for e in os.listdir(self.root) if e.startswith(".")], [])

    def test_clear_errors(self):
        with self.assertRaisesRegex(zoo.ZooError, "No network named 'nope'.*tiny-90"):
            zoo.load("nope", self.root)
        with self.assertRaisesRegex(zoo.ZooError, "Invalid zoo name"):
            zoo.card("../etc", self.root)
        with self.assertRaisesRegex(zoo.ZooError, "Unknown family"):
            zoo.publish(self.run_dir, VARIANT, "x", "nope", "r", "c", self.root)
        with self.assertRaisesRegex(zoo.ZooError, "eval.json.*missing"):
            zoo.publish(self.tmp, VARIANT, "x", "verified", "r", "c", self.root)

    def test_corrupt_card_and_model(self):
        root = os.path.join(self.tmp, "broken")
        os.makedirs(os.path.join(root, "bad"))
        with open(os.path.join(root, "bad", zoo.CARD_FILE), "w") as f:
            f.write("{not json")
        with self.assertRaisesRegex(zoo.ZooError, "not valid JSON"):
            zoo.card("bad", root)
        with open(os.path.join(root, "bad", zoo.CARD_FILE), "w") as f:
            json.dump({**self.card.to_json(), "name": "bad"}, f)
        with open(os.path.join(root, "bad", zoo.KERAS_FILE), "wb") as f:
            f.write(b"PK\x03\x04 truncated")
        with self.assertRaisesRegex(zoo.ZooError, "Cannot load"):
            zoo.load("bad", root)


class BinaryTest(tf.test.TestCase):
    def test_list_evaluate_and_bad_input(self):
        root = tempfile.mkdtemp()
        run_dir = os.path.join(root, "run")
        model = _pruned_plain_model(seed=1)
        images, labels = zoo.test_arrays("fashion_mnist", 500)
        _write_run(run_dir, model, zoo.clean_accuracy(model, images, labels))
        zoo_dir = os.path.join(root, "zoo")
        published = helpers.run_module(
            "binaries.zoo",
            "publish",
            "tiny",
            f"--zoo={zoo_dir}",
            f"--run_dir={run_dir}",
            f"--variant={VARIANT}",
            "--family=adversarial",
            "--study=r",
            "--command=c",
        )
        self.assertEqual(published.returncode, 0, published.stderr[-2000:])
        listed = helpers.run_module("binaries.zoo", "list", f"--zoo={zoo_dir}")
        self.assertIn(
            "tiny: tiny on fashion_mnist, adversarial, keep 0.1 of weights", listed.stderr
        )
        output = os.path.join(root, "eval.json")
        evaluated = helpers.run_module(
            "binaries.zoo",
            "evaluate",
            "tiny",
            f"--zoo={zoo_dir}",
            "--limit=500",
            "--attack=apgd-ce",
            "--eval_eps=0.05",
            f"--output={output}",
            "--record",
        )
        self.assertEqual(evaluated.returncode, 0, evaluated.stderr[-2000:])
        report = files.read_json(output)
        self.assertEqual(report["clean_acc"], report["card_clean_acc"])
        self.assertBetween(report["robust_acc"], 0.0, report["clean_acc"])
        remeasured = zoo.card("tiny", zoo_dir).remeasured
        self.assertEqual(remeasured["robust_acc"], report["robust_acc"])
        self.assertIn("evaluate tiny", remeasured["command"])
        self.assertIn("--record", remeasured["command"])
        for args, message in (
            (["evaluate", "nope"], "No network named 'nope'"),
            (["frob"], "Give an action"),
            (["publish", "x"], "publish needs --run_dir"),
            (["evaluate", "tiny", "--record"], "--record needs --attack"),
        ):
            result = helpers.run_module("binaries.zoo", *args, f"--zoo={zoo_dir}")
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(message, result.stderr)
            self.assertNotIn("Traceback", result.stderr)


class PublishedZooTest(tf.test.TestCase):
    """Every network of the repository's zoo loads and scores its card's clean accuracy."""

    def test_each_published_network_matches_its_card(self):
        cards = zoo.list_models()
        self.assertNotEmpty(cards, f"The zoo at {zoo.DEFAULT_ROOT} is empty.")
        arrays = {}
        for card in cards:
            with self.subTest(card.name):
                key = (card.dataset, card.check["num_examples"])
                if key not in arrays:
                    arrays[key] = zoo.test_arrays(*key)
                images, labels = arrays[key]
                measured = zoo.clean_accuracy(zoo.load(card.name), images, labels)
                self.assertEqual(len(labels), 500)
                self.assertAlmostEqual(
                    measured, card.check["clean_acc"], delta=zoo.CHECK_TOLERANCE / len(labels)
                )
                if card.evaluation["num_examples"] == len(labels):
                    self.assertAlmostEqual(
                        measured,
                        card.evaluation["clean_acc"],
                        delta=zoo.CHECK_TOLERANCE / len(labels),
                    )
                tflite_acc = zoo.tflite_clean_accuracy(zoo.tflite_path(card.name), images, labels)
                # The TF Lite file was checked on the same first test images when it was made.
                if card.tflite["num_examples"] == len(labels):
                    self.assertAlmostEqual(
                        tflite_acc,
                        card.tflite["clean_acc"],
                        delta=zoo.CHECK_TOLERANCE / len(labels),
                    )
