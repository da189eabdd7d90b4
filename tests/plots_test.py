"""Tests for hydra_tf.experiments.plots: every figure is written as a real PNG."""

import os
import tempfile

import numpy as np
import tensorflow as tf

from hydra_tf.experiments import plots

_ROWS = [
    {"method": "dense", "keep_ratio": 1.0, "robust_acc": 0.6, "clean_acc": 0.8,
     "layer_sparsity": {"conv1": 0.0, "fc1": 0.0}},
    {"method": "hydra", "keep_ratio": 0.1, "robust_acc": 0.55, "clean_acc": 0.78,
     "robust_std": 0.01, "layer_sparsity": {"conv1": 0.9, "fc1": 0.9}},
    {"method": "lwm", "keep_ratio": 0.1, "robust_acc": 0.5, "clean_acc": 0.77,
     "layer_sparsity": {"conv1": 0.9, "fc1": 0.9}},
    {"method": "hydra", "keep_ratio": 0.01, "robust_acc": 0.4, "clean_acc": 0.6,
     "layer_sparsity": {"conv1": 0.99, "fc1": 0.99}},
]  # fmt: skip


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


class PlotsTest(tf.test.TestCase):
    def test_figures_are_pngs(self):
        out = tempfile.mkdtemp()
        rng = np.random.RandomState(0)
        magnitudes = rng.rand(1000)
        kept = {"lwm": magnitudes > 0.9, "hydra": rng.rand(1000) > 0.9}
        paths = [
            plots.robust_vs_pruning(_ROWS, os.path.join(out, "a.png")),
            plots.kept_magnitude_histogram(magnitudes, kept, os.path.join(out, "b.png")),
            plots.layer_sparsity(_ROWS, os.path.join(out, "c.png")),
        ]
        for path in paths:
            self.assertTrue(_is_png(path), path)


if __name__ == "__main__":
    tf.test.main()
