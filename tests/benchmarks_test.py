"""Tests for the benchmark scripts' output contract (never their timings)."""

import json

import tensorflow as tf

from tests import helpers


def _run(module, *args):
    return helpers.run_module(f"benchmarks.{module}", *args)


class TrainStepBenchmarkTest(tf.test.TestCase):
    def test_json_line_has_the_documented_keys(self):
        # Tiny settings: this checks what the script prints, not how fast.
        result = _run(
            "train_step",
            "--json",
            "--arch=cnn_small",
            "--phase=prune",
            "--keep_ratio=0.01",
            "--batch=8",
            "--warmup=1",
            "--repeats=1",
            "--eval_batch=4",
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        (line,) = result.stdout.splitlines()
        figures = json.loads(line)
        self.assertEqual(
            set(figures)
            >= {
                "arch",
                "phase",
                "keep_ratio",
                "batch",
                "images_per_sec",
                "mask_share",
                "peak_rss_mb",
            },
            True,
        )
        self.assertEqual((figures["arch"], figures["phase"]), ("cnn_small", "prune"))
        self.assertEqual((figures["keep_ratio"], figures["batch"]), (0.01, 8))
        self.assertGreater(figures["images_per_sec"], 0)
        self.assertBetween(figures["mask_share"], 0.0, 1.0)
        self.assertGreater(figures["peak_rss_mb"], 0)
        self.assertGreater(figures["eval_images_per_sec"], 0)

    def test_unknown_arch_is_refused(self):
        result = _run("train_step", "--arch=vgg99")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("arch", result.stderr)


class CertifyBenchmarkTest(tf.test.TestCase):
    def test_prints_seconds_per_image(self):
        result = _run("certify", "--n=50", "--n0=10", "--images=1", "--sample_batch=25")
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertRegex(result.stdout, r"sample batch +25: \d+\.\d+ s per image")


class VerifiableBenchmarkTest(tf.test.TestCase):
    def test_json_lines_name_every_step_and_bound(self):
        result = _run(
            "verifiable",
            "--json",
            "--batch=8",
            "--repeats=1",
            "--verify_images=8",
            "--objectives=ibp,crown_ibp,crown_ibp_fused",
            "--verify_methods=ibp,crown",
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        figures = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertEqual(
            [f["what"] for f in figures],
            [
                "train_step/ibp",
                "train_step/crown_ibp",
                "train_step/crown_ibp_fused",
                "verify/ibp",
                "verify/crown",
            ],
        )
        for row in figures:
            self.assertEqual((row["arch"], row["batch"]), ("cnn_verifiable", 8))
            self.assertGreater(row["images_per_sec"], 0)
            self.assertGreater(row["peak_rss_mb"], 0)

    def test_unknown_objective_is_refused(self):
        result = _run("verifiable", "--objectives=trades")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(
            "--objectives must be some of natural, ibp, crown_ibp, crown_ibp_fused, mixtrain",
            result.stderr,
        )


class StructuredBenchmarkTest(tf.test.TestCase):
    def test_json_lines_and_the_smaller_network(self):
        result = _run("structured", "--json", "--arch=cnn_small", "--keep_ratios=0.5", "--probes=1")
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        rows = {row["network"]: row for row in map(json.loads, result.stdout.splitlines())}
        self.assertEqual(set(rows), {"dense", "unstructured 0.01", "channels 0.5"})
        dense, sparse, half = rows["dense"], rows["unstructured 0.01"], rows["channels 0.5"]
        self.assertEqual(dense["speedup_1"], 1.0)
        # Unstructured: the same shapes, mostly zeros; structured: fewer of everything.
        self.assertEqual((sparse["params"], sparse["macs"]), (dense["params"], dense["macs"]))
        self.assertLess(sparse["nonzero_params"], 0.05 * dense["params"])
        self.assertLess(half["macs"], 0.3 * dense["macs"])
        self.assertLess(half["bytes"], 0.3 * dense["bytes"])
        for row in rows.values():
            self.assertGreater(row["latency_ms_1"], 0)
            self.assertGreater(row["latency_ms_32"], row["latency_ms_1"])
            self.assertEqual(row["xnnpack"], "runs on XNNPACK")

    def test_bad_ratio_is_refused(self):
        result = _run("structured", "--keep_ratios=1.5")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--keep_ratios must be numbers in (0, 1]", result.stderr)


if __name__ == "__main__":
    tf.test.main()
