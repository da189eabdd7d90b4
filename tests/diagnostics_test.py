"""Tests for hydra_tf.evaluation.diagnostics: each indicator on a network built to show it."""

import keras
import numpy as np
import tensorflow as tf

from hydra_tf.evaluation import diagnostics


def _network(bias, scale):
    """Dense(8, ReLU) with bias `bias` on its first 4 units, then logits times `scale`."""
    inputs = keras.Input((2, 2, 1))
    x = keras.layers.Flatten()(inputs)
    hidden = keras.layers.Dense(8, name="hidden")
    x = keras.layers.ReLU(name="relu")(hidden(x))
    out = keras.layers.Dense(3, name="out")
    logits = keras.layers.Rescaling(scale)(out(x))
    model = keras.Model(inputs, logits)
    kernel = np.ones((4, 8), np.float32)
    kernel[:, 4:] = np.array([1.0, -1.0, 0.5, -0.5], np.float32)[:, None]
    hidden.set_weights([kernel, np.array([bias] * 4 + [0.0] * 4, np.float32)])
    out_kernel = np.random.RandomState(0).randn(8, 3).astype(np.float32)
    out.set_weights([out_kernel, np.zeros(3, np.float32)])
    return model


class GradientHealthTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.RandomState(1)
        self.x = rng.rand(64, 2, 2, 1).astype(np.float32)

    def _labels(self, model):
        return np.argmax(model.predict(self.x, verbose=0), axis=-1)

    def test_dead_units(self):
        # Inputs in [0, 1] and weights 1: bias -10 keeps 4 of 8 units at zero.
        dead = _network(-10.0, 1.0)
        alive = _network(0.5, 1.0)
        report = diagnostics.gradient_health(dead, self.x, self._labels(dead), 0.1)
        self.assertAlmostEqual(report["dead_units"]["hidden"], 0.5)
        report = diagnostics.gradient_health(alive, self.x, self._labels(alive), 0.1)
        self.assertLess(report["dead_units"]["hidden"], 0.5)

    def test_saturated_softmax_zeroes_the_gradient(self):
        normal, huge = _network(0.5, 1.0), _network(0.5, 1e4)
        labels = self._labels(normal)
        self.assertAllEqual(labels, self._labels(huge))
        plain = diagnostics.gradient_health(normal, self.x, labels, 0.1)
        saturated = diagnostics.gradient_health(huge, self.x, labels, 0.1)
        self.assertEqual(plain["zero_ce_gradient"], 0.0)
        self.assertGreater(saturated["zero_ce_gradient"], 0.5)
        # The margin's gradient scales with the logits; its ratio to the margin does not.
        ratio = saturated["margin_gradient_l1_median"] / plain["margin_gradient_l1_median"]
        self.assertAllClose(ratio, 1e4, rtol=1e-3)
        self.assertEqual(saturated["linear_flip"], plain["linear_flip"])


if __name__ == "__main__":
    tf.test.main()
