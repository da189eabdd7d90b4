"""Tests for hydra_tf.export.costs: parameters and multiply-adds, hand-computed."""

import keras
import numpy as np
import tensorflow as tf

from hydra_tf.export import costs


def _network(nested):
    """conv 3x3 (1 -> 2 channels, same padding) on 4x4, then flatten and dense 32 -> 3."""
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    head = keras.layers.Dense(3, name="fc")
    if nested:
        head = keras.Sequential([keras.Input((32,)), head], name="head")
    return keras.Model(inputs, head(x))


class CostsTest(tf.test.TestCase):
    def test_hand_computed_counts(self):
        network = _network(nested=False)
        conv = network.get_layer("conv")
        kernel = np.ones((3, 3, 1, 2), np.float32)
        kernel[..., 1] = 0.0  # the second filter: 9 zeros
        conv.set_weights([kernel, np.zeros(2, np.float32)])  # and 2 zero biases
        measured = costs.costs(network)
        # conv: 18 + 2 parameters, 16 positions x 18 = 288 multiply-adds;
        # dense: 96 + 3 parameters, 96 multiply-adds.
        self.assertEqual(measured.params, 20 + 99)
        self.assertEqual(measured.macs, 288 + 96)
        dense_zeros = int(np.sum(network.get_layer("fc").kernel.numpy() == 0))
        self.assertEqual(measured.nonzero_params, 119 - 9 - 2 - 3 - dense_zeros)

    def test_nested_model_counts_as_its_layers(self):
        plain, nested = _network(nested=False), _network(nested=True)
        self.assertEqual(costs.costs(nested).params, costs.costs(plain).params)
        self.assertEqual(costs.costs(nested).macs, costs.costs(plain).macs)
