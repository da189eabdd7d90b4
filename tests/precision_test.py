"""Tests for hydra_tf.models.precision and float32 attacks on mixed-precision networks."""

import keras
import numpy as np
import tensorflow as tf

from hydra_tf import evaluation
from hydra_tf.evaluation import smoothing
from hydra_tf.models import architectures
from hydra_tf.models import precision
from hydra_tf.objectives import attacks
from tests import helpers

_MARGIN_SCALE = 6.0


def _mixed_confident_network():
    """The natural cnn_small's weights in a mixed_float16 network, margins x6."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        network = architectures.build("cnn_small", (28, 28, 1), 10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    weights = helpers.natural_cnn_small().get_weights()
    # Scaling the last layer scales every margin: confident examples get
    # cross-entropy gradients below float16's smallest number.
    weights[-2] = weights[-2] * _MARGIN_SCALE
    weights[-1] = weights[-1] * _MARGIN_SCALE
    network.set_weights(weights)
    return network


def _naive_float16_gradient(network, x, y):
    """The attack gradient as computed before: cross-entropy backpropagated in float16."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=network(x))
        )
    return tape.gradient(loss, x)


class PrecisionTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        x, y = helpers.fashion_arrays("test", 200)
        self.x = tf.constant(x)
        self.y = tf.constant(y.astype(np.int32))

    def test_float32_copy_has_same_weights_and_function(self):
        network = _mixed_confident_network()
        self.assertFalse(precision.is_float32(network))
        copy = precision.as_float32(network)
        self.assertTrue(precision.is_float32(copy))
        for a, b in zip(network.get_weights(), copy.get_weights()):
            self.assertAllEqual(a, b)
        self.assertAllClose(network(self.x), copy(self.x), atol=0.05 * _MARGIN_SCALE)
        float32 = helpers.natural_cnn_small()
        self.assertIs(precision.as_float32(float32), float32)

    def test_float32_copy_of_a_score_network(self):
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            network = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.1)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        copy = precision.as_float32(network)
        self.assertTrue(precision.is_float32(copy))
        self.assertAllClose(network(self.x), copy(self.x), atol=1e-2)

    def test_certification_runs_in_float32(self):
        network = _mixed_confident_network()
        smoother = smoothing.Smoother(network, 10, smoothing.SmoothingConfig(sigma=0.25, n=100))
        self.assertTrue(precision.is_float32(smoother.network))

    def test_mixed_network_has_no_zero_input_gradients(self):
        network = _mixed_confident_network()
        naive = _naive_float16_gradient(network, self.x, self.y).numpy()
        zero_rows = np.all(naive.reshape(len(naive), -1) == 0, axis=1)
        # The setting is the one that breaks a float16 attack ...
        self.assertGreater(zero_rows.mean(), 0.2)
        # ... and the attack's gradient has no zero rows in it.
        grad = attacks.input_gradient(network, self.x, self.y).numpy()
        self.assertEqual(grad.dtype, np.float32)
        self.assertFalse(np.any(np.all(grad.reshape(len(grad), -1) == 0, axis=1)))

    def test_pgd_accuracy_equals_float32_copy(self):
        network = _mixed_confident_network()
        copy = precision.as_float32(network)
        # float16 is slow on CPUs: 100 images, 5 steps.
        x, y = self.x[:100], self.y[:100]
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
        attack = attacks.PGDConfig(eps=0.1, steps=5, step_size=0.03, random_start=False)
        mixed_result = evaluation.evaluate(network, dataset, attack, log_every=0)
        copy_result = evaluation.evaluate(copy, dataset, attack, log_every=0)
        self.assertEqual(mixed_result.robust_acc, copy_result.robust_acc)
        self.assertEqual(mixed_result.clean_acc, copy_result.clean_acc)
        # The training attack on the mixed network itself moves as far.
        _, robust = attacks.robust_correct(network, x, y, attack)
        self.assertAllClose(
            np.mean(robust.numpy()), copy_result.robust_acc, atol=0.03, msg=str(copy_result)
        )
        self.assertLess(copy_result.robust_acc, copy_result.clean_acc - 0.2)


if __name__ == "__main__":
    tf.test.main()
