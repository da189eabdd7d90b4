"""Tests for results/adversarial/square_points.py: what the points Square breaks have in common."""

import importlib.util
import os

import keras
import numpy as np
import tensorflow as tf

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location(
    "square_points", os.path.join(_ROOT, "results", "adversarial", "square_points.py")
)
square_points = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(square_points)

EPS = 0.1


def _images(count=16):
    """16x16 images: zero background (252 pixels), four object pixels at 0.5."""
    images = np.zeros((count, 16, 16, 1), np.float32)
    images[:, 2:4, 2:4, 0] = 0.5
    return images


def _threshold_network():
    """Class 1 when more than 44 pixels reach 0.1 (each counts min(relu(p - 0.09), 0.01)).

    A background pixel passes a gradient only above 0.09: from a random corner of the
    eps-ball half the background (126 +- 8 pixels) sits at 0.1, where it does; from a
    uniform start 5% of it (13 +- 3.5) is above 0.09, and the attack raises only those.
    The four object pixels count 0.04 and are flat.
    """
    inputs = keras.Input((16, 16, 1))
    low = keras.layers.Conv2D(1, 1, activation="relu", name="low")(inputs)
    high = keras.layers.Conv2D(1, 1, activation="relu", name="high")(inputs)
    count = keras.layers.GlobalAveragePooling2D()(keras.layers.Subtract()([low, high]))
    logits = keras.layers.Dense(2, name="decide")(count)
    network = keras.Model(inputs, logits)
    one = np.ones((1, 1, 1, 1), np.float32)
    network.get_layer("low").set_weights([one, np.array([-0.09], np.float32)])
    network.get_layer("high").set_weights([one, np.array([-0.1], np.float32)])
    # z_1 - z_0 = 100 * (256 * mean - 0.44): positive when the summed counts exceed 0.44.
    network.get_layer("decide").set_weights(
        [np.array([[0.0, 25600.0]], np.float32), np.array([0.0, -44.0], np.float32)]
    )
    return network


class SquarePointsTest(tf.test.TestCase):
    def test_margins_are_the_true_class_logit_minus_the_best_other(self):
        network = _threshold_network()
        images = _images(4)
        labels = np.array([0, 0, 1, 1])
        # The counts sum to 0.04 on the clean images: z_0 - z_1 = 40.
        self.assertAllClose(square_points.margins(network, images, labels), [40, 40, -40, -40])

    def test_vertex_starts_find_what_uniform_starts_cannot_see(self):
        network = _threshold_network()
        images, labels = _images(), np.zeros(16, np.int64)
        vertex = square_points.restarted_pgd(network, images, labels, EPS, "vertex", 1, 5, 0)
        uniform = square_points.restarted_pgd(network, images, labels, EPS, "uniform", 3, 5, 0)
        self.assertTrue(np.all(vertex))
        self.assertFalse(np.any(uniform))

    def test_describe_places_a_background_attack_on_the_background(self):
        network = _threshold_network()
        images, labels = _images(), np.zeros(16, np.int64)
        # Square's point: every background pixel raised by eps (to 0.1).
        adversarial = np.where(images == 0, EPS, images).astype(np.float32)
        row = square_points.describe(network, images, labels, EPS, images, adversarial, 1, 5, 0)
        self.assertEqual(row["points"], 16)
        self.assertAllClose(row["clean_margin_median"], 40.0)
        self.assertAllClose(row["gradient_attacks_margin_median"], 40.0)
        # 252 background pixels count 0.01 each: z_0 - z_1 = 100 * (0.44 - 2.56).
        self.assertAllClose(row["square_margin_median"], -212.0, atol=1e-3)
        self.assertEqual(row["wrong_with_square_on_background_only"], [16, 16])
        self.assertEqual(row["wrong_with_square_on_object_only"], [0, 16])
        self.assertAllClose(row["square_at_ball_or_box_edge_median"], 252 / 256, atol=1e-4)
        # The background passes 0.09 only on the last tenth of the segment.
        self.assertAllClose(row["segment_margin_median"][:-1], [40.0] * 10, atol=1e-3)
        self.assertAllClose(row["segment_last_tenth_of_drop_median"], 1.0)
        self.assertEqual(row["pgd_vertex_starts_break"], [16, 16])
        self.assertEqual(row["pgd_uniform_starts_break"], [0, 16])
        self.assertEqual(
            square_points.describe(network, images[:0], labels[:0], EPS, *[None] * 5), {"points": 0}
        )


if __name__ == "__main__":
    tf.test.main()
