"""Tests for results/adversarial/background_shift.py: the fixed background perturbation."""

import importlib.util
import os

import keras
import numpy as np
import tensorflow as tf

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location(
    "background_shift", os.path.join(_ROOT, "results", "adversarial", "background_shift.py")
)
background_shift = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(background_shift)


def _images():
    """Eight 8x8 images: zero background, four bright pixels each (mean 0.03125)."""
    images = np.zeros((8, 8, 8, 1), np.float32)
    images[:, 2:4, 2:4, 0] = 0.5
    return images


class BackgroundShiftTest(tf.test.TestCase):
    def test_shift_moves_only_the_background_and_stays_in_the_box(self):
        images = _images()
        shifted = background_shift.shift_background(images, 0.1)
        background = images == 0
        self.assertAllClose(shifted[background], np.full(background.sum(), 0.1))
        self.assertAllEqual(shifted[~background], images[~background])
        self.assertLessEqual(np.max(np.abs(shifted - images)), 0.1 + 1e-7)
        self.assertBetween(shifted.min(), 0.0, 1.0)
        self.assertBetween(shifted.max(), 0.0, 1.0)

    def test_a_network_that_reads_the_background_is_caught(self):
        # Class 1 when the mean pixel exceeds 0.05: the clean images (mean ~0.031, label 0) are
        # right, and raising their background by 0.1 (an L-inf perturbation of 0.1) flips them.
        inputs = keras.Input((8, 8, 1))
        mean = keras.layers.GlobalAveragePooling2D()(inputs)
        logits = keras.layers.Dense(2, name="decide")(mean)
        network = keras.Model(inputs, logits)
        network.get_layer("decide").set_weights(
            [np.array([[-100.0, 100.0]], np.float32), np.array([5.0, -5.0], np.float32)]
        )
        labels = np.zeros(8, np.int64)
        row = background_shift.measure(network, _images(), labels, [0.01, 0.1])
        self.assertEqual(row, {"clean": 1.0, "background+0.01": 1.0, "background+0.1": 0.0})


if __name__ == "__main__":
    tf.test.main()
