"""Tests for hydra_tf.experiments.plots: every figure is written as a real PNG."""

import os
import tempfile

import numpy as np
import tensorflow as tf

from hydra_tf.experiments import plots
from hydra_tf.experiments import records


def _study_row(method, keep_ratio, robust, clean, layers, robust_std=0.0):
    return records.StudyRow(
        arch="cnn_small",
        method=method,
        keep_ratio=keep_ratio,
        clean_acc=clean,
        clean_std=0.0,
        robust_acc=robust,
        robust_std=robust_std,
        sparsity=layers,
        layer_sparsity={"conv1": layers, "fc1": layers},
        seeds=[0],
        per_seed=(records.SeedResult(seed=0, clean_acc=clean, robust_acc=robust),),
    )


_ROWS = [
    _study_row("dense", 1.0, 0.6, 0.8, 0.0),
    _study_row("hydra", 0.1, 0.55, 0.78, 0.9, robust_std=0.01),
    _study_row("lwm", 0.1, 0.5, 0.77, 0.9),
    _study_row("hydra", 0.01, 0.4, 0.6, 0.99),
]


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


class PlotsTest(tf.test.TestCase):
    def test_figures_are_pngs(self):
        out = tempfile.mkdtemp()
        rng = np.random.RandomState(0)
        magnitudes = rng.rand(1000)
        kept = {"lwm": magnitudes > 0.9, "hydra": rng.rand(1000) > 0.9}
        # A pipeline run's rows: one network each, no spread over seeds.
        pipeline_rows = [
            records.Row(
                method=r.method,
                keep_ratio=r.keep_ratio,
                clean_acc=r.clean_acc,
                robust_acc=r.robust_acc,
                num_examples=100,
                attack={"name": "pgd_linf"},
                sparsity=r.sparsity,
                layer_sparsity=r.layer_sparsity,
                keras_path="model.keras",
                saved_model_path="model_savedmodel",
                eval_seconds=1.0,
            )
            for r in _ROWS
        ]
        paths = [
            plots.robust_vs_pruning(_ROWS, os.path.join(out, "a.png")),
            plots.robust_vs_pruning(pipeline_rows, os.path.join(out, "a_pipeline.png")),
            plots.layer_sparsity(pipeline_rows, os.path.join(out, "c_pipeline.png")),
            plots.kept_magnitude_histogram(magnitudes, kept, os.path.join(out, "b.png")),
            plots.layer_sparsity(_ROWS, os.path.join(out, "c.png")),
        ]
        for path in paths:
            self.assertTrue(_is_png(path), path)


if __name__ == "__main__":
    tf.test.main()
