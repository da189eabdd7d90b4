"""Tests for hydra_tf.export.tflite_verify: LiteRT verification, the auto choice and deploy."""

import os
import re
import tempfile
from unittest import mock

import tensorflow as tf

from hydra_tf.export import tflite
from hydra_tf.export import tflite_verify
from hydra_tf.objectives import attacks
from tests import helpers


def _report(size, clean=0.8, robust=0.5, xnnpack=True, crashed=None):
    return {
        "bytes": size,
        "gzip_bytes": size // 2,
        "xnnpack": xnnpack,
        "xnnpack_note": "runs on XNNPACK" if xnnpack else "XNNPACK failed to prepare it",
        "clean_acc": None if crashed else clean,
        "robust_acc": None if crashed else robust,
        "latency_ms": None if crashed else {"1": 0.1, "32": 1.0},
        "crashed": crashed,
    }


class ChooseTest(tf.test.TestCase):
    def test_smallest_eligible_file_wins(self):
        reports = {
            "float32": _report(1000),
            "int8": _report(300),
            "int8_sparse": _report(100, xnnpack=False),  # falls off XNNPACK
            "dynamic_int8": _report(200, clean=0.785),  # loses 1.5 points clean
            "float32_sparse": _report(150, robust=0.47),  # loses 3 points robust
            "float16": _report(120, crashed="LiteRT ended the process with signal 11"),
        }
        chosen, reasons = tflite_verify.choose(reports, keras_clean=0.8, keras_robust=0.5)
        self.assertEqual(chosen, "int8")
        self.assertLen(reasons, len(reports) + 1)
        text = "\n".join(reasons)
        self.assertIn("int8_sparse: 100 bytes", text)
        self.assertIn("excluded: XNNPACK failed to prepare it", text)
        self.assertIn("excluded: clean accuracy 0.7850", text)
        self.assertIn("excluded: robust accuracy 0.4700", text)
        self.assertIn("excluded: LiteRT crashed on it", text)

    def test_nothing_eligible_is_an_error(self):
        with self.assertRaisesRegex(tflite.TFLiteConversionError, "No TF Lite mode"):
            tflite_verify.choose({"int8": _report(10, xnnpack=False)}, 0.8, 0.5)


class ProbeTest(tf.test.TestCase):
    def test_a_file_litert_cannot_run_is_reported_not_raised(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bad.tflite")
            with open(path, "wb") as f:
                f.write(b"not a flatbuffer" * 10)
            report = tflite_verify.probe(path)
        self.assertIn("LiteRT ended the process with exit code", report["crashed"])


class DeployTest(tf.test.TestCase):
    def test_auto_picks_a_verified_file_on_xnnpack(self):
        plain = helpers.pruned_plain_cnn_small(0.01)
        images, labels = helpers.fashion_arrays("test", 200)
        train, _ = helpers.fashion_arrays("train", 100)
        attack = attacks.PGDConfig(eps=0.1, steps=5)
        with tempfile.TemporaryDirectory() as tmp:
            # The TF Lite converter resets the absl logger (to WARNING under pytest):
            # the lines are taken from the calls.
            with mock.patch.object(
                tflite_verify.logging, "info", wraps=tflite_verify.logging.info
            ) as info:
                result = tflite_verify.deploy(plain, tmp, "auto", images, labels, attack, train)
            self.assertTrue(os.path.exists(os.path.join(tmp, "tflite.json")))
            chosen = result["modes"][result["mode"]]
            again = tflite_verify.probe(result["path"])
        self.assertEqual(set(result["modes"]), set(tflite.MODE_NAMES))
        # A mode that fails to prepare on XNNPACK exists for this model, and
        # auto did not pick it; the file it picked runs every conv and matmul
        # on XNNPACK when loaded again.
        self.assertIn("failed to prepare", result["modes"]["dynamic_int8_sparse"]["xnnpack_note"])
        self.assertTrue(chosen["xnnpack"])
        self.assertTrue(again["xnnpack"]["runs"], again)
        self.assertGreaterEqual(chosen["clean_acc"], result["keras_clean_acc"] - 0.01)
        self.assertGreaterEqual(chosen["robust_acc"], result["keras_robust_acc"] - 0.02)
        eligible = [line.split(":")[0] for line in result["reasons"] if line.endswith("eligible")]
        self.assertIn(result["mode"], eligible)
        self.assertLessEqual(chosen["bytes"], min(result["modes"][n]["bytes"] for n in eligible))
        # The transfer examples are real attacks: they hurt the Keras model.
        self.assertLess(result["keras_robust_acc"], result["keras_clean_acc"])
        # Progress: a line as each mode starts, and one as it finishes with its time.
        lines = [call.args[0] % call.args[1:] for call in info.call_args_list]
        for number, name in enumerate(tflite.MODE_NAMES, 1):
            progress = f"TF Lite {name} ({number}/8)"
            started = [line for line in lines if f"{progress}: converting" in line]
            finished = [
                line for line in lines if re.search(re.escape(progress) + r": done in \d", line)
            ]
            self.assertLen(started, 1, name)
            self.assertLen(finished, 1, name)
        runs = f"TF Lite {result['mode']}: ran {tflite_verify.STABILITY_RUNS} more times"
        self.assertIn(runs, "\n".join(lines))


if __name__ == "__main__":
    tf.test.main()
