"""Tests for hydra_tf.models.kinds: every layer of our networks has a known kind."""

import keras
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf.models import architectures
from hydra_tf.models import kinds
from hydra_tf.models import layers as score_layers


class KindsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ("cnn_small", (28, 28, 1)),
        ("vgg16_bn", (32, 32, 3)),
        ("resnet18", (32, 32, 3)),
        ("wrn_28_4", (32, 32, 3)),
    )
    def test_every_layer_of_every_network_has_a_kind(self, arch, shape):
        for keep_ratio in (None, 0.1):
            network = architectures.build(arch, shape, 10, keep_ratio=keep_ratio)
            for layer in network.layers:
                self.assertIsNotNone(kinds.kind(layer), f"{arch}: {layer.name}")

    def test_plain_classes_and_kernels(self):
        scored = score_layers.ScoredDense(4, keep_ratio=0.5, name="d")
        scored.build((None, 6))
        self.assertIs(kinds.plain_class(scored), keras.layers.Dense)
        self.assertTrue(kinds.is_prunable(scored))
        self.assertAllEqual(kinds.kernel(scored), scored.masked_kernel())
        plain = keras.layers.Dense(4)
        plain.build((None, 6))
        self.assertIs(kinds.plain_class(plain), keras.layers.Dense)
        self.assertIs(kinds.kernel(plain), plain.kernel)
        conv = score_layers.FastConv2D(2, 3)
        self.assertIs(kinds.plain_class(conv), keras.layers.Conv2D)
        self.assertEqual(kinds.kind(conv), "conv2d")

    def test_activations_by_function(self):
        self.assertEqual(kinds.kind(keras.layers.Activation("relu")), "relu")
        self.assertEqual(kinds.kind(keras.layers.Activation("linear")), "identity")
        self.assertIsNone(kinds.kind(keras.layers.Activation("tanh")))
        self.assertIsNone(kinds.kind(keras.layers.Dropout(0.1)))


if __name__ == "__main__":
    tf.test.main()
