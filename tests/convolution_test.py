"""Tests for hydra_tf.models.convolution: same values and gradients as tf.nn.conv2d."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf.models import convolution


class Conv2DTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (3, 1, "same"),
        (3, 1, "valid"),
        (4, 1, "same"),  # even kernel: SAME pads asymmetrically
        (4, 1, "valid"),
        (1, 1, "same"),
        (4, 2, "same"),  # strided: TensorFlow's own input gradient
        (3, 2, "valid"),
        (5, (1, 1), "SAME"),
    )
    def test_matches_tf_conv2d(self, size, stride, padding):
        rng = np.random.RandomState(size)
        x = tf.constant(rng.randn(2, 9, 8, 3).astype(np.float32))
        k = tf.constant(rng.randn(size, size, 3, 5).astype(np.float32))
        strides = stride if isinstance(stride, tuple) else (stride, stride)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, k])
            ours = convolution.conv2d(x, k, strides, padding)
            reference = tf.nn.conv2d(x, k, (1, *strides, 1), padding.upper())
            weights = tf.constant(rng.randn(*reference.shape).astype(np.float32))
            ours_loss = tf.reduce_sum(ours * weights)
            reference_loss = tf.reduce_sum(reference * weights)
        self.assertAllClose(ours, reference)
        for ours_grad, reference_grad in zip(
            tape.gradient(ours_loss, [x, k]), tape.gradient(reference_loss, [x, k])
        ):
            self.assertAllClose(ours_grad, reference_grad, atol=1e-4, rtol=1e-4)

    def test_inside_tf_function(self):
        x = tf.random.stateless_normal((2, 6, 6, 4), seed=[1, 1])
        k = tf.random.stateless_normal((3, 3, 4, 4), seed=[1, 2])

        @tf.function
        def input_gradient(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(convolution.conv2d(x, k, (1, 1), "same") ** 2)
            return tape.gradient(loss, x)

        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME") ** 2)
        self.assertAllClose(input_gradient(x), tape.gradient(loss, x), atol=1e-4)

    def test_bad_padding(self):
        with self.assertRaisesRegex(ValueError, "padding"):
            convolution.conv2d(tf.zeros((1, 4, 4, 1)), tf.zeros((3, 3, 1, 1)), (1, 1), "full")


if __name__ == "__main__":
    tf.test.main()
