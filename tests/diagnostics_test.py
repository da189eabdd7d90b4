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

    def test_hidden_pixels_are_those_a_threshold_below_eps_hides(self):
        # One ReLU per pixel, on above `threshold`, summed into the logits: on a
        # zero image no pixel has a gradient; within eps 0.1 a threshold of 0.09
        # is crossed from a corner, one of 0.11 never is (the cnn_large 99%
        # first layer, results/adversarial/README.md).
        def thresholds(threshold):
            model = keras.Sequential(
                [
                    keras.Input((4, 4, 1)),
                    keras.layers.Conv2D(1, 1, activation="relu"),
                    keras.layers.Flatten(),
                    keras.layers.Dense(2),
                ]
            )
            model.layers[0].set_weights(
                [np.ones((1, 1, 1, 1), np.float32), np.array([-threshold], np.float32)]
            )
            model.layers[2].set_weights(
                [np.tile([[-1.0, 1.0]], (16, 1)).astype(np.float32), np.array([1.0, 0.0])]
            )
            return model

        x, y = np.zeros((8, 4, 4, 1), np.float32), np.zeros(8, np.int64)
        within, beyond = thresholds(0.09), thresholds(0.11)
        # Four corners leave a pixel at 0 with probability 1 / 16.
        self.assertBetween(float(np.mean(diagnostics.hidden_pixels(within, x, y, 0.1))), 0.85, 1)
        self.assertAllEqual(diagnostics.hidden_pixels(beyond, x, y, 0.1), np.zeros(8))
        report = diagnostics.gradient_health(within, x, y, 0.1)
        self.assertGreater(report["hidden_pixels_median"], 0.8)
        self.assertEqual(diagnostics.gradient_health(beyond, x, y, 0.1)["hidden_pixels_median"], 0)
        # A network whose gradient reaches every pixel at x hides none.
        alive = _network(0.5, 1.0)
        report = diagnostics.gradient_health(alive, self.x, self._labels(alive), 0.1)
        self.assertEqual(report["hidden_pixels_median"], 0)


if __name__ == "__main__":
    tf.test.main()
