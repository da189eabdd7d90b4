"""Tests for hydra_tf.models.architectures: plain and scored builds of every network."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf.models import architectures
from hydra_tf.models import layers


def _weight_shapes(model):
    return {v.path.split("/", 1)[1]: tuple(v.shape) for v in model.weights}


class SyncBatchNormTest(tf.test.TestCase):
    def test_sync_batch_norm_reaches_every_batch_norm_layer(self):
        def synchronized(model):
            return [
                layer.synchronized
                for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization)
            ]

        plain = synchronized(architectures.build("resnet18", (32, 32, 3), 10))
        synced = synchronized(
            architectures.build("resnet18", (32, 32, 3), 10, keep_ratio=0.1, sync_batch_norm=True)
        )
        self.assertNotEmpty(plain)
        self.assertFalse(any(plain))
        self.assertTrue(all(synced))
        self.assertLen(synced, len(plain))


class BuildTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ("cnn_small", (28, 28, 1)),
        ("cnn_large", (28, 28, 1)),
        ("cnn_verifiable", (32, 32, 3)),
        ("vgg16_bn", (32, 32, 3)),
        ("wrn_28_4", (32, 32, 3)),
        ("resnet18", (32, 32, 3)),
    )
    def test_plain_and_scored_share_layer_names_and_shapes(self, arch, shape):
        plain = architectures.build(arch, shape, 10)
        scored = architectures.build(arch, shape, 10, keep_ratio=0.1)
        self.assertEqual(plain.name, arch)
        scored_shapes = _weight_shapes(scored)
        for path, var_shape in _weight_shapes(plain).items():
            self.assertEqual(scored_shapes[path], var_shape)
        self.assertNotEmpty(layers.scored_layers(scored))
        self.assertEmpty(layers.scored_layers(plain))
        self.assertEqual(plain.output_shape, (None, 10))

    def test_known_parameter_counts(self):
        # WRN-28-4 has about 5.85M parameters (Zagoruyko & Komodakis).
        wrn = architectures.build("wrn_28_4", (32, 32, 3), 10)
        self.assertBetween(wrn.count_params(), 5.8e6, 5.9e6)
        resnet = architectures.build("resnet18", (32, 32, 3), 10)
        self.assertBetween(resnet.count_params(), 11.1e6, 11.3e6)

    def test_cnn_verifiable_is_the_references_cifar_model(self):
        # conv16 4x4/2 pad 1 - conv32 4x4/2 pad 1 - fc100 - fc10 on 32x32x3.
        model = architectures.build("cnn_verifiable", (32, 32, 3), 10)
        shapes = {layer.name: layer.output.shape[1:] for layer in model.layers}
        self.assertEqual(shapes["conv1"], (16, 16, 16))
        self.assertEqual(shapes["conv2"], (8, 8, 32))
        self.assertEqual(shapes["fc1"], (100,))
        self.assertEqual(
            model.count_params(), (48 * 16 + 16) + (256 * 32 + 32) + (2048 * 100 + 100) + 1010
        )
        self.assertEmpty(
            [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        )
        # "same" is the reference's padding of 1 on every side for these even sizes.
        conv = model.get_layer("conv1")
        x = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
        padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
        expected = tf.nn.conv2d(padded, conv.kernel, 2, "VALID") + conv.bias
        self.assertAllClose(conv(x), expected, atol=1e-5)
        fashion = architectures.build("cnn_verifiable", (28, 28, 1), 10)
        self.assertEqual(fashion.get_layer("conv2").output.shape[1:], (7, 7, 32))

    def test_small_models_run(self):
        x = np.random.RandomState(0).rand(2, 28, 28, 1).astype(np.float32)
        for arch in ("cnn_small", "cnn_large"):
            model = architectures.build(arch, (28, 28, 1), 10, keep_ratio=0.05)
            self.assertEqual(model(x).shape, (2, 10))

    def test_unknown_arch(self):
        with self.assertRaisesRegex(ValueError, "Unknown architecture 'vgg99'.*cnn_small"):
            architectures.build("vgg99", (28, 28, 1), 10)

    def test_bad_keep_ratio(self):
        with self.assertRaisesRegex(ValueError, "keep_ratio"):
            architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=1.5)

    def test_bad_wrn_depth(self):
        with self.assertRaisesRegex(ValueError, "6n\\+4"):
            architectures.wide_resnet(
                keras.Input((32, 32, 3)), 10, architectures.LayerFactory(), depth=27
            )


if __name__ == "__main__":
    tf.test.main()
