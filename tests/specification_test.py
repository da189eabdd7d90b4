"""Tests for hydra_tf.objectives.bounds.specification.

Margins, folding, the last layer, verified.
"""

import keras
import numpy as np
import tensorflow as tf

from hydra_tf.models import architectures
from hydra_tf.objectives import bounds


class SpecificationTest(tf.test.TestCase):
    def test_margin_rows_by_hand(self):
        spec = bounds.margin_specification([1, 0], 3)
        self.assertAllEqual(
            spec,
            [
                [[-1.0, 1.0, 0.0], [0.0, 1.0, -1.0]],  # y = 1: z1 - z0, z1 - z2
                [[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]],  # y = 0: z0 - z1, z0 - z2
            ],
        )
        self.assertEqual(spec.dtype, tf.float32)

    def test_margins_of_logits(self):
        logits = np.random.default_rng(0).normal(size=(5, 10)).astype(np.float32)
        labels = np.array([0, 9, 4, 4, 2])
        margins = tf.einsum("bsj,bj->bs", bounds.margin_specification(labels, 10), logits)
        for i, y in enumerate(labels):
            expected = logits[i, y] - np.delete(logits[i], y)
            self.assertAllClose(margins[i], expected)
        # Verified exactly when the label's logit is the largest.
        self.assertAllEqual(bounds.verified(margins), np.argmax(logits, axis=1) == labels)

    def test_margin_specification_inside_a_function(self):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
        def spec(labels):
            return bounds.margin_specification(labels, 4)

        self.assertEqual(spec(tf.constant([3, 1, 0])).shape, (3, 3, 4))

    def test_fold_by_hand(self):
        kernel = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]], np.float32)
        bias = np.array([0.5, 0.0, -1.0], np.float32)
        spec = bounds.margin_specification([2], 3)  # z2 - z0, z2 - z1
        weights, offsets = bounds.fold(spec, kernel, bias)
        self.assertAllClose(weights, [[[-1.0, 3.0], [-2.0, 4.0]]])
        self.assertAllClose(offsets, [[-1.5, -1.0]])
        x = np.array([[0.3, -0.7]], np.float32)
        z = x @ kernel + bias
        self.assertAllClose(
            tf.einsum("bsi,bi->bs", weights, x) + offsets, tf.einsum("bsj,bj->bs", spec, z)
        )
        _, no_bias = bounds.fold(spec, kernel, None)
        self.assertAllClose(no_bias, [[0.0, 0.0]])

    def test_verified_needs_every_margin_positive(self):
        self.assertAllEqual(
            bounds.verified(tf.constant([[0.1, 2.0], [0.1, 0.0], [-1.0, 3.0]])),
            [True, False, False],
        )

    def test_final_dense(self):
        network = architectures.build("cnn_verifiable", (28, 28, 1), 10)
        self.assertEqual(bounds.final_dense(network).name, "fc2")
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            mixed = architectures.build("cnn_small", (28, 28, 1), 10)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        self.assertEqual(mixed.layers[-1].name, "logits")
        self.assertEqual(bounds.final_dense(mixed).name, "fc2")

    def test_final_layer_that_is_not_dense_is_refused_by_name(self):
        inputs = keras.Input((4,))
        network = keras.Model(inputs, keras.layers.ReLU(name="last_relu")(inputs))
        with self.assertRaisesRegex(bounds.UnsupportedLayerError, "'last_relu'"):
            bounds.final_dense(network)
        fused = keras.Model(
            inputs, keras.layers.Dense(3, activation="softmax", name="probs")(inputs)
        )
        with self.assertRaisesRegex(bounds.UnsupportedLayerError, "'probs'"):
            bounds.final_dense(fused)


if __name__ == "__main__":
    tf.test.main()
