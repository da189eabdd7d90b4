"""Tests for hydra_tf.export: folded kernels, sparsity, loading without hydra_tf."""

import json
import os
import subprocess
import sys
import tempfile
import zipfile

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import export
from hydra_tf.models import architectures
from hydra_tf.models import layers
from hydra_tf.models import masks


def _pruned_cnn(keep_ratio):
    model = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=keep_ratio)
    for layer in layers.scored_layers(model):
        layer.score.assign(tf.random.stateless_normal(layer.score.shape, seed=[4, 2]))
    return model


class StripScoresTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(0.1, 0.05, 0.01)
    def test_exported_kernels_have_requested_per_layer_sparsity(self, keep_ratio):
        plain = export.strip_scores(_pruned_cnn(keep_ratio))
        per_layer = export.layer_sparsity(plain)
        self.assertEqual(sorted(per_layer), ["conv1", "conv2", "fc1", "fc2"])
        for layer in plain.layers:
            if layer.name in per_layer:
                size = int(np.prod(layer.kernel.shape))
                expected = 1 - masks.kept_count(size, keep_ratio) / size
                self.assertAlmostEqual(per_layer[layer.name], expected)

    def test_plain_model_computes_the_same_function(self):
        model = _pruned_cnn(0.1)
        plain = export.strip_scores(model)
        self.assertEmpty(layers.scored_layers(plain))
        x = np.random.RandomState(0).rand(4, 28, 28, 1).astype(np.float32)
        self.assertAllClose(plain(x), model(x), atol=1e-5)

    def test_batchnorm_state_is_copied(self):
        model = architectures.build("vgg16_bn", (32, 32, 3), 10, keep_ratio=0.5)
        bn = model.get_layer("bn3")
        bn.moving_mean.assign(tf.fill(bn.moving_mean.shape, 0.25))
        plain = export.strip_scores(model)
        self.assertAllClose(plain.get_layer("bn3").moving_mean, bn.moving_mean)


class ExportFilesTest(tf.test.TestCase):
    def test_keras_file_loads_safely_without_hydra_tf_and_savedmodel_matches(self):
        model = _pruned_cnn(0.05)
        out = tempfile.mkdtemp()
        keras_path, saved_model_path, _ = export.export(model, out, "net")
        x = np.random.RandomState(1).rand(3, 28, 28, 1).astype(np.float32)
        expected = model(x).numpy()
        np.save(os.path.join(out, "x.npy"), x)

        with zipfile.ZipFile(keras_path) as archive:
            config = json.loads(archive.read("config.json"))
        self.assertNotIn("hydra_tf", json.dumps(config))

        # A fresh interpreter that never imports hydra_tf loads it in safe mode.
        script = (
            "import sys, numpy as np, keras\n"
            "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
            "assert 'hydra_tf' not in sys.modules\n"
            "np.save(sys.argv[2], m(np.load(sys.argv[3])).numpy())\n"
        )
        result_path = os.path.join(out, "y.npy")
        subprocess.run(
            [sys.executable, "-c", script, keras_path, result_path, os.path.join(out, "x.npy")],
            check=True,
            capture_output=True,
        )
        self.assertAllClose(np.load(result_path), expected, atol=1e-5)

        loaded = tf.saved_model.load(saved_model_path)  # keep a reference: it owns the variables
        served = loaded.serve(tf.constant(x))
        self.assertAllClose(served, expected, atol=1e-5)

    def test_export_keeps_a_keras_file_that_holds_the_same_network(self):
        # A resumed evaluation exports again: an unchanged network keeps its
        # file (a rewrite would give other zip bytes), a changed one is written.
        model = _pruned_cnn(0.05)
        out = tempfile.mkdtemp()
        keras_path, _, _ = export.export(model, out, "net")
        os.utime(keras_path, (0, 0))
        export.export(model, out, "net")
        self.assertEqual(os.stat(keras_path).st_mtime, 0)
        layer = layers.scored_layers(model)[0]
        layer.kernel.assign(layer.kernel * 2.0)
        export.export(model, out, "net")
        self.assertNotEqual(os.stat(keras_path).st_mtime, 0)
        x = np.random.RandomState(2).rand(2, 28, 28, 1).astype(np.float32)
        self.assertAllClose(keras.saving.load_model(keras_path)(x), model(x), atol=1e-5)


if __name__ == "__main__":
    tf.test.main()
