"""Tests for hydra_tf.experiments.records: typed rows read and write today's JSON exactly."""

import glob
import json
import os

import tensorflow as tf

from hydra_tf.experiments import records

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_MODE = {
    "bytes": 34608,
    "gzip_bytes": 17370,
    "xnnpack": True,
    "xnnpack_note": "runs on XNNPACK",
    "clean_acc": 0.75,
    "robust_acc": 0.5,
    "latency_ms": {"1": 0.05, "32": 1.5},
    "load_mb": 14.6,
    "crashed": None,
}
# A row of a pipeline run with TF Lite export, as results.json holds it.
_DENSE_ROW = {
    "method": "dense",
    "keep_ratio": 1.0,
    "clean_acc": 0.8,
    "robust_acc": 0.6,
    "num_examples": 128,
    "attack": {"name": "pgd_linf", "eps": 0.1, "steps": 10, "restarts": 1},
    "sparsity": 0.0,
    "layer_sparsity": {"conv1": 0.0, "fc1": 0.0},
    "keras_path": "dense/dense.keras",
    "saved_model_path": "dense/dense_savedmodel",
    "eval_seconds": 3.5,
    "eval_key": {"dataset": "fashion_mnist", "test_limit": 128, "attack": {"steps": 10}},
    "tflite_requested": "auto",
    "tflite_path": "dense/tflite/float16_sparse.tflite",
    "tflite_mode": "float16_sparse",
    "tflite_bytes": 34608,
    "tflite_gzip_bytes": 17370,
    "tflite_clean_acc": 0.75,
    "tflite_robust_acc": 0.5,
    "tflite_keras_clean_acc": 0.75,
    "tflite_keras_robust_acc": 0.5,
    "tflite_latency_ms": {"1": 0.05, "32": 1.5},
    "tflite_load_mb": 14.6,
    "tflite_xnnpack": True,
    "tflite_num_examples": 128,
    "tflite_modes": {
        "float16_sparse": _MODE,
        "int8": {**_MODE, "xnnpack": False, "crashed": "signal 11", "clean_acc": None},
    },
    "tflite_fp32_bytes": 1748004,
}
# A certified row (smoothing) without TF Lite, written before eval_key existed.
_CERTIFIED_ROW = {
    "method": "hydra",
    "keep_ratio": 0.1,
    "clean_acc": 0.7,
    "robust_acc": 0.5,
    "certified_accuracy": {"0": 0.7, "0.5": 0.5},
    "seconds_per_example": 0.5,
    "num_examples": 32,
    "attack": {"name": "certify_l2", "radius": 0.5, "n0": 100, "n": 200, "alpha": 0.001},
    "sparsity": 0.9,
    "layer_sparsity": {"conv1": 0.9},
    "keras_path": "hydra_0.1/hydra_0.1.keras",
    "saved_model_path": "hydra_0.1/hydra_0.1_savedmodel",
    "eval_seconds": 16.0,
}


def _committed_results():
    return sorted(glob.glob(os.path.join(_ROOT, "results", "**", "results.json"), recursive=True))


class RowTest(tf.test.TestCase):
    def test_round_trip_with_tflite(self):
        row = records.Row.from_json(_DENSE_ROW)
        self.assertEqual(row.to_json(), _DENSE_ROW)
        self.assertEqual(row.tflite.mode, "float16_sparse")
        self.assertEqual(row.tflite.fp32_bytes, 1748004)
        self.assertEqual(row.tflite.modes["int8"].crashed, "signal 11")
        self.assertIsNone(row.tflite.modes["int8"].clean_acc)
        self.assertEqual(list(row.tflite.modes), ["float16_sparse", "int8"])  # order kept

    def test_round_trip_without_optional_fields(self):
        row = records.Row.from_json(_CERTIFIED_ROW)
        self.assertIsNone(row.tflite)
        self.assertIsNone(row.eval_key)
        self.assertEqual(row.certified_accuracy["0.5"], row.robust_acc)
        self.assertEqual(row.to_json(), _CERTIFIED_ROW)

    def test_cached_parts_make_the_row(self):
        # eval.json and tflite/row.json hold the two parts of a row.
        evaluation = records.Evaluation.from_json(_DENSE_ROW)
        tflite = records.TFLiteRow.from_json(_DENSE_ROW)
        self.assertNotIn("method", evaluation.to_json())
        self.assertTrue(all(key.startswith("tflite_") for key in tflite.to_json()))
        row = records.Row.of(evaluation, "dense", 1.0, tflite)
        self.assertEqual(row, records.Row.from_json(_DENSE_ROW))
        self.assertEqual(
            {**evaluation.to_json(), **tflite.to_json()},
            {k: v for k, v in _DENSE_ROW.items() if k not in ("method", "keep_ratio")},
        )

    def test_mode_row_keeps_what_the_report_has(self):
        report = {**_MODE, "sparse_tensors": 4, "peak_rss_mb": 80.0}
        del report["crashed"]
        mode = records.TFLiteModeRow.from_json(report)
        self.assertEqual(mode.to_json(), {**_MODE, "crashed": None})

    def test_frozen(self):
        row = records.Row.from_json(_CERTIFIED_ROW)
        with self.assertRaises(AttributeError):
            row.robust_acc = 1.0


class ResultsFileTest(tf.test.TestCase):
    def test_pipeline_results_round_trip(self):
        results = {
            "config": {"arch": "cnn_small"},
            "rows": [_DENSE_ROW],
            "kept_overlap": 0.9,
            "figures": {},
            "seconds": 60.0,
        }
        self.assertEqual(records.PipelineResults.from_json(results).to_json(), results)
        bare = {"config": {}, "rows": [_CERTIFIED_ROW]}
        self.assertEqual(records.PipelineResults.from_json(bare).to_json(), bare)

    def test_every_committed_results_file_reads_back_exactly(self):
        paths = _committed_results()
        self.assertNotEmpty(paths)
        for path in paths:
            with self.subTest(path=os.path.relpath(path, _ROOT)), open(path) as f:
                written = json.load(f)
                if "pipeline" in written["config"]:
                    study = records.Study.from_json(written)
                    self.assertIsInstance(study.rows[0], records.StudyRow)
                    self.assertEqual(study.to_json(), written)
                else:
                    results = records.PipelineResults.from_json(written)
                    self.assertIsInstance(results.rows[0], records.Row)
                    self.assertEqual(results.to_json(), written)


if __name__ == "__main__":
    tf.test.main()
