"""Tests for the absl binaries: bad flags fail clearly; train/evaluate/export work."""

import json
import logging
import os
import subprocess
import sys
import tempfile

import tensorflow as tf
from absl.testing import parameterized

from tests import helpers


def run_binary(module, *args):
    """Runs `python -m binaries.<module> args...` from the repository root."""
    return helpers.run_module(f"binaries.{module}", *args)


class BadInputTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (["--workdir=/tmp/x", "--dataset=imagenet21k"], "dataset"),
        (["--workdir=/tmp/x", "--arch=vgg99"], "arch"),
        (["--workdir=/tmp/x", "--objective=fgsm"], "objective"),
        (["--workdir=/tmp/x", "--phase=prune", "--keep_ratio=1.5"], "keep_ratio"),
        (["--workdir=/tmp/x", "--phase=finetune", "--keep_ratio=0.1"], "source_checkpoint"),
        (["--workdir=/tmp/x", "--strategy=multi_worker"], "needs TF_CONFIG"),
        (["--workdir=/tmp/x", "--strategy=mirrored", "--num_gpus=8"], "--num_gpus=8"),
        (["--workdir=/tmp/x", "--strategy=ring"], "strategy"),
    )
    def test_train_rejects(self, args, word):
        result = run_binary("train", *args)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(word, result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    @parameterized.parameters("train", "pipeline")
    def test_workdir_that_is_a_file(self, binary):
        path = os.path.join(tempfile.mkdtemp(), "file")
        with open(path, "w") as f:
            f.write("x")
        result = run_binary(binary, f"--workdir={path}", "--train_limit=64", "--test_limit=64")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("is a file, not a directory", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_console_shows_no_tensorflow_start_up_lines(self):
        work = tempfile.mkdtemp()
        result = run_binary(
            "train", f"--workdir={work}", "--train_limit=64", "--test_limit=64", "--epochs=1"
        )
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        for noise in (
            "oneDNN",
            "cudart_stub",
            "cuInit",
            "cpu_feature_guard",
            "absl::InitializeLog",
        ):
            self.assertNotIn(noise, result.stderr)
        self.assertIn("pretrain[cnn_small, keep=1]: finished", result.stderr)

    def test_console_filter_drops_expected_tensorflow_records_only(self):
        import binaries

        def record(level, message, path="/venv/lib/site-packages/tensorflow/python/x.py"):
            return logging.LogRecord("absl", level, path, 1, message, None, None)

        retrace = "6 out of the last 6 calls to <function f> triggered tf.function retracing."
        keep = binaries._project_or_important
        self.assertFalse(keep(record(logging.WARNING, retrace)))
        self.assertFalse(keep(record(logging.INFO, "Assets written to: /tmp/x")))
        self.assertTrue(keep(record(logging.WARNING, "Something else went wrong.")))
        self.assertTrue(keep(record(logging.INFO, retrace, path="/repo/hydra_tf/evaluation/x.py")))

    def test_tensorflow_retracing_warning_is_dropped_from_the_console(self):
        # Eight functions traced in a row make TensorFlow warn about retracing;
        # with the binaries' filters installed the console shows none of it.
        snippet = (
            "{imports}import tensorflow as tf\n"
            "for i in range(8):\n"
            "    tf.function(lambda x: x + 1)(tf.constant([1.0] * (i + 1)))\n"
        )
        for imports, expected in (("import binaries\n", 0), ("", 1)):
            result = subprocess.run(
                [sys.executable, "-c", snippet.format(imports=imports)],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                check=True,
            )
            self.assertEqual(
                min(result.stderr.count("triggered tf.function retracing"), 1), expected
            )

    def test_one_device_binaries_reject_a_strategy(self):
        result = run_binary(
            "export", "--checkpoint=/tmp/x.keras", "--output_dir=/tmp/x", "--strategy=mirrored"
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("binaries.export runs on one device", result.stderr)

    def test_pipeline_rejects_bad_ratios(self):
        result = run_binary("pipeline", "--keep_ratios=0.1,2")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("keep_ratios", result.stderr)

    @parameterized.parameters(
        (["--arch_epochs=cnn_large=3/2"], "<arch>=<pretrain>/<prune>/<finetune>"),
        (["--archs=cnn_small", "--arch_epochs=cnn_large=3/2/1"], "not in --archs"),
        (["--merge=/nonexistent/a,/nonexistent/b"], "/nonexistent/a/results.json not found"),
    )
    def test_reproduce_rejects_bad_input(self, args, words):
        work = tempfile.mkdtemp()
        result = run_binary("reproduce", f"--workdir={work}", *args)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(words, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(os.listdir(work), [])  # refused before any run started


class EndToEndTest(tf.test.TestCase):
    def test_train_prune_evaluate_export(self):
        work = tempfile.mkdtemp()
        common = ["--train_limit=128", "--test_limit=32", "--batch_size=32", "--attack_steps=2"]
        dense = os.path.join(work, "dense")
        result = run_binary("train", f"--workdir={dense}", "--epochs=1", *common)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        with open(os.path.join(dense, "config.json")) as f:
            self.assertEqual(json.load(f)["objective"]["name"], "trades")
        pruned = os.path.join(work, "prune")
        result = run_binary(
            "train",
            f"--workdir={pruned}",
            "--phase=prune",
            "--keep_ratio=0.05",
            f"--source_checkpoint={dense}/model.keras",
            "--epochs=1",
            *common,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        report = os.path.join(work, "eval.json")
        result = run_binary(
            "evaluate",
            f"--checkpoint={pruned}/model.keras",
            "--test_limit=32",
            "--attack=pgd",
            "--steps=3",
            "--restarts=1",
            f"--output={report}",
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        with open(report) as f:
            values = json.load(f)
        self.assertEqual(values["num_examples"], 32)
        self.assertAlmostEqual(values["sparsity"], 0.95, delta=1e-3)
        self.assertLessEqual(values["robust_acc"], values["clean_acc"])
        result = run_binary(
            "export", f"--checkpoint={pruned}/model.keras", f"--output_dir={work}/export"
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertTrue(os.path.exists(os.path.join(work, "export", "model.keras")))
        self.assertTrue(os.path.isdir(os.path.join(work, "export", "model_savedmodel")))
        result = run_binary(
            "export",
            f"--checkpoint={pruned}/model.keras",
            f"--output_dir={work}/export",
            "--format=tflite",
            "--tflite_mode=float16",
            "--test_limit=32",
            "--train_limit=64",
            "--eval_eps=0.02",
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        with open(os.path.join(work, "export", "tflite", "tflite.json")) as f:
            report = json.load(f)
        self.assertEqual(report["mode"], "float16")
        self.assertEqual(report["attack"]["eps"], 0.02)
        self.assertEqual(report["num_examples"], 32)
        self.assertTrue(os.path.exists(os.path.join(work, "export", "tflite", "float16.tflite")))
        result = run_binary(
            "export",
            f"--checkpoint={pruned}/model.keras",
            f"--output_dir={work}/export",
            "--format=tflite",
            "--tflite_mode=none",
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--format=tflite needs a --tflite_mode", result.stderr)
        certify_dir = os.path.join(work, "certify")

        def certify(output_dir, *flags):
            result = run_binary(
                "certify",
                f"--checkpoint={pruned}/model.keras",
                "--test_limit=4",
                "--n0=20",
                "--n=200",
                "--sigma=0.25",
                "--sample_batch=64",
                f"--output_dir={output_dir}",
                *flags,
            )
            self.assertEqual(result.returncode, 0, result.stderr[-3000:])
            with open(os.path.join(output_dir, "certify.json")) as f:
                return json.load(f)

        certified = certify(certify_dir)
        # Two CPU replicas split the noisy copies (4 chunks of 64 for n=200)
        # and must certify exactly as one device.
        mirrored = certify(
            os.path.join(work, "certify_mirrored"), "--strategy=mirrored", "--cpu_replicas=2"
        )
        outcome = lambda report: [
            (r["prediction"], r["radius"], r["p_lower"]) for r in report["records"]
        ]
        self.assertEqual(outcome(mirrored), outcome(certified))
        self.assertLen(certified["records"], 4)
        self.assertEqual(
            sorted(certified["certified_accuracy"], key=float), ["0", "0.25", "0.5", "0.75", "1"]
        )
        for record in certified["records"]:
            self.assertEqual(
                set(record) >= {"label", "prediction", "radius", "correct", "seconds"}, True
            )
        with open(os.path.join(certify_dir, "certify.md")) as f:
            self.assertIn("| certified accuracy (%) |", f.read())
        result = run_binary(
            "certify", f"--checkpoint={work}/missing.keras", f"--output_dir={certify_dir}"
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("not found", result.stderr)
        self.assertNotIn("Traceback", result.stderr)


if __name__ == "__main__":
    tf.test.main()
