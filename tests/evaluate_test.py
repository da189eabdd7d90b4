"""Tests for binaries/evaluate.py: JSON report, and a clean error for a bad checkpoint."""

import json
import os
import tempfile

import tensorflow as tf

from hydra_tf.models import architectures
from tests import binaries_test


class EvaluateBinaryTest(tf.test.TestCase):
    def _evaluate(self, *flags):
        """Runs the binary on a fresh pruned network: (checkpoint, report path, its JSON)."""
        work = tempfile.mkdtemp()
        checkpoint = os.path.join(work, "model.keras")
        architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.05).save(checkpoint)
        report = os.path.join(work, "eval.json")
        result = binaries_test.run_binary(
            "evaluate", f"--checkpoint={checkpoint}", f"--output={report}", *flags
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        with open(report) as f:
            return checkpoint, report, json.load(f)

    def test_writes_json_report(self):
        flags = ("--test_limit=40", "--batch_size=20", "--eps=0.05", "--attack=pgd")
        checkpoint, _, values = self._evaluate(*flags, "--steps=2", "--restarts=1")
        self.assertEqual(values["num_examples"], 40)
        self.assertEqual(values["attack"]["steps"], 2)
        self.assertEqual(values["attack"]["eps"], 0.05)
        self.assertBetween(values["robust_acc"], 0.0, values["clean_acc"])
        self.assertAlmostEqual(values["sparsity"], 0.95, delta=1e-3)
        self.assertEqual(values["checkpoint"], checkpoint)

    def test_eval_eps_overrides_eps(self):
        flags = ("--test_limit=8", "--eps=0.3", "--eval_eps=0.02", "--attack=pgd", "--steps=1")
        _, _, values = self._evaluate(*flags)
        self.assertEqual(values["attack"]["eps"], 0.02)

    def test_cascade_attack_reports_each_stage_and_keeps_state(self):
        _, report, values = self._evaluate("--test_limit=24", "--eps=0.05")
        self.assertEqual(values["attack"]["name"], "autoattack")
        self.assertEqual(
            [s["attack"] for s in values["stages"]], ["apgd-ce", "apgd-t", "fab-t", "square"]
        )
        self.assertEqual(values["stages"][-1]["robust_acc"], values["robust_acc"])
        self.assertTrue(os.path.exists(report + ".state.npz"))

    def test_verified_accuracy_by_each_bound(self):
        _, _, values = self._evaluate(
            "--test_limit=16",
            "--eps=0.002",
            "--attack=apgd-ce",
            "--verify=ibp",
            "--verify=crown",
            "--crown_limit=4",
        )
        self.assertEqual(values["verified_examples"], {"ibp": 16, "crown": 4})
        for accuracy in values["verified_accuracy"].values():
            self.assertBetween(accuracy, 0.0, 1.0)
        self.assertLessEqual(values["verified_accuracy"]["ibp"], values["robust_acc"])

    def test_unknown_attack(self):
        result = binaries_test.run_binary("evaluate", "--checkpoint=x.keras", "--attack=cw")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--attack", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_missing_checkpoint(self):
        result = binaries_test.run_binary("evaluate", "--checkpoint=/nonexistent/model.keras")
        self.assertEqual(result.returncode, 1)
        self.assertIn("Checkpoint not found", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_checkpoint_that_is_not_a_model(self):
        path = os.path.join(tempfile.mkdtemp(), "broken.keras")
        with open(path, "w") as f:
            f.write("not a zip file")
        result = binaries_test.run_binary("evaluate", f"--checkpoint={path}")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Cannot load", result.stderr)
        self.assertIn("broken.keras", result.stderr)
        self.assertNotIn("Traceback", result.stderr)


if __name__ == "__main__":
    tf.test.main()
