"""Tests for hydra_tf.models.scores: the scaled magnitude initialisation."""

import math

import keras
import numpy as np
import tensorflow as tf

from hydra_tf.models import architectures
from hydra_tf.models import layers
from hydra_tf.models import scores


class ScaledInitTest(tf.test.TestCase):
    def test_hand_case(self):
        kernel = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
        expected = math.sqrt(6.0 / 2) * kernel / 4.0
        self.assertAllClose(scores.scaled_values(kernel, fan_in=2), expected)

    def test_sets_every_score_layer_from_its_kernel(self):
        model = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.1)
        self.assertEqual(scores.scaled_init(model), 4)
        for layer in layers.scored_layers(model):
            kernel = layer.kernel.numpy()
            fan_in = int(np.prod(kernel.shape[:-1]))
            self.assertAllClose(
                layer.score, math.sqrt(6.0 / fan_in) * kernel / np.abs(kernel).max(), rtol=1e-6
            )
            # So the initial mask is the least-weight-magnitude (LWM) mask.
            mask = layer.mask().numpy()
            self.assertGreaterEqual(
                np.abs(kernel[mask == 1]).min(), np.abs(kernel[mask == 0]).max()
            )

    def test_zero_kernel_raises(self):
        with self.assertRaisesRegex(ValueError, "all zero"):
            scores.scaled_values(np.zeros((2, 2)), fan_in=2)

    def test_model_without_score_layers_raises(self):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        with self.assertRaisesRegex(ValueError, "no score layers"):
            scores.scaled_init(model)


if __name__ == "__main__":
    tf.test.main()
