"""Tests for hydra_tf.objectives.bounds.interval: IBP by hand, on our networks, through scores."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import export
from hydra_tf.models import architectures
from hydra_tf.models import kinds
from hydra_tf.objectives import bounds


def _network(layer, input_shape):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


def _box(x, radius):
    x = np.asarray(x, np.float32)
    return bounds.IntervalBounds(x - radius, x + radius)


class IntervalByHandTest(tf.test.TestCase, parameterized.TestCase):
    def test_from_linf_clips_to_the_data_domain(self):
        box = bounds.IntervalBounds.from_linf([[0.05, 0.5, 0.97]], 0.1)
        self.assertAllClose(box.lower, [[0.0, 0.4, 0.87]])
        self.assertAllClose(box.upper, [[0.15, 0.6, 1.0]])
        unclipped = bounds.IntervalBounds.from_linf([[0.05]], 0.1, domain=None)
        self.assertAllClose(unclipped.lower, [[-0.05]])

    def test_dense(self):
        dense = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")
        network = _network(dense, (3,))
        dense.bias.assign([2.0])
        out = bounds.propagate_network(network, _box([[1.0, 2.0, 3.0]], 1.0))
        self.assertAllClose(out.lower, [[5.0]])
        self.assertAllClose(out.upper, [[11.0]])

    def test_dense_with_negative_weights(self):
        dense = keras.layers.Dense(1)
        network = _network(dense, (2,))
        dense.kernel.assign([[2.0], [-1.0]])
        dense.bias.assign([0.5])
        # 2 x - y + 0.5 on x in [0, 1], y in [1, 3]: [-2.5, 1.5].
        out = bounds.propagate_network(network, bounds.IntervalBounds([[0.0, 1.0]], [[1.0, 3.0]]))
        self.assertAllClose(out.lower, [[-2.5]])
        self.assertAllClose(out.upper, [[1.5]])

    def test_conv2d(self):
        conv = keras.layers.Conv2D(1, 2, kernel_initializer="ones")
        network = _network(conv, (2, 2, 1))
        conv.bias.assign([2.0])
        image = np.arange(1.0, 5.0).reshape(1, 2, 2, 1)
        out = bounds.propagate_network(network, _box(image, 1.0))
        self.assertAllClose(out.lower, [[[[8.0]]]])
        self.assertAllClose(out.upper, [[[[16.0]]]])

    def test_relu(self):
        out = bounds.propagate_network(_network(keras.layers.ReLU(), (2,)), _box([[-2.0, 3.0]], 1))
        self.assertAllClose(out.lower, [[0.0, 2.0]])
        self.assertAllClose(out.upper, [[0.0, 4.0]])

    def test_batch_norm_with_negative_scale(self):
        layer = keras.layers.BatchNormalization(epsilon=0.0)
        network = _network(layer, (2,))
        layer.gamma.assign([-2.0, 1.0])
        layer.beta.assign([1.0, 0.0])
        layer.moving_variance.assign([1.0, 4.0])
        # -2 x + 1 on [0, 1] and (y - 0) / 2 on [-2, 2].
        out = bounds.propagate_network(network, bounds.IntervalBounds([[0.0, -2.0]], [[1.0, 2.0]]))
        self.assertAllClose(out.lower, [[-1.0, -1.0]])
        self.assertAllClose(out.upper, [[1.0, 1.0]])

    def test_pools_and_flatten(self):
        image = np.array([1.0, 5.0, 2.0, 0.0]).reshape(1, 2, 2, 1)
        box = _box(image, 1.0)
        max_pool = bounds.propagate_network(_network(keras.layers.MaxPooling2D(2), (2, 2, 1)), box)
        self.assertAllClose(np.ravel(max_pool.lower), [4.0])
        self.assertAllClose(np.ravel(max_pool.upper), [6.0])
        for layer in (keras.layers.AveragePooling2D(2), keras.layers.GlobalAveragePooling2D()):
            out = bounds.propagate_network(_network(layer, (2, 2, 1)), box)
            self.assertAllClose(np.ravel(out.lower), [1.0])
            self.assertAllClose(np.ravel(out.upper), [3.0])
        flat = bounds.propagate_network(_network(keras.layers.Flatten(), (2, 2, 1)), box)
        self.assertAllClose(flat.lower, [[0.0, 4.0, 1.0, -1.0]])

    def test_add(self):
        inputs = keras.Input((2,))
        relu = keras.layers.ReLU()(inputs)
        network = keras.Model(inputs, keras.layers.Add()([inputs, relu]))
        # x + relu(x) on [-2, 1]: [-2, 2] (IBP adds the ends, losing that both are x).
        out = bounds.propagate_network(network, bounds.IntervalBounds([[-2.0, 0]], [[1.0, 1]]))
        self.assertAllClose(out.lower, [[-2.0, 0.0]])
        self.assertAllClose(out.upper, [[2.0, 2.0]])

    def test_specification_is_folded_into_the_last_layer(self):
        dense = keras.layers.Dense(2, use_bias=False)
        network = _network(dense, (1,))
        dense.kernel.assign([[1.0, 1.0]])
        spec = bounds.margin_specification([0], 2)  # z0 - z1 = 0 for every x
        folded = bounds.specification_bounds(network, _box([[0.0]], 1.0), spec)
        self.assertAllClose(folded.lower, [[0.0]])
        self.assertAllClose(folded.upper, [[0.0]])
        # Bounding z first loses that z0 and z1 move together.
        logits = bounds.propagate_network(network, _box([[0.0]], 1.0))
        self.assertAllClose(logits.lower[:, 0] - logits.upper[:, 1], [-2.0])

    def test_unsupported_layers_are_refused_by_name(self):
        cases = [
            (keras.layers.LayerNormalization(name="norm"), (4,), "'norm'"),
            (keras.layers.Dense(2, activation="tanh", name="fused"), (4,), "'fused'.*tanh"),
            (keras.layers.Conv2D(2, 3, dilation_rate=2, name="dilated"), (8, 8, 1), "'dilated'"),
        ]
        for layer, shape, pattern in cases:
            network = _network(layer, shape)
            box = bounds.IntervalBounds.from_linf(np.zeros((1,) + shape, np.float32), 0.1)
            with self.assertRaisesRegex(bounds.UnsupportedLayerError, pattern):
                bounds.propagate_network(network, box)


def _bounds(network, x, eps, labels):
    box = bounds.IntervalBounds.from_linf(x, eps)
    return bounds.specification_bounds(network, box, bounds.margin_specification(labels, 10))


class IntervalNetworkTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("cnn_small", "cnn_large", "cnn_verifiable")
    def test_zero_eps_gives_the_logits(self, arch):
        keras.utils.set_random_seed(0)
        network = architectures.build(arch, (28, 28, 1), 10)
        x = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
        logits = network(x)
        out = bounds.propagate_network(network, bounds.IntervalBounds.from_linf(x, 0.0))
        self.assertAllClose(out.lower, logits, atol=1e-4, rtol=0)
        self.assertAllClose(out.upper, logits, atol=1e-4, rtol=0)
        wide = bounds.propagate_network(network, bounds.IntervalBounds.from_linf(x, 0.1))
        self.assertTrue(np.all(wide.lower <= logits) and np.all(wide.upper >= logits))
        self.assertGreater(float(tf.reduce_mean(wide.upper - wide.lower)), 0.0)

    def test_score_network_equals_its_export_and_passes_gradients_to_scores(self):
        keras.utils.set_random_seed(1)
        network = architectures.build("cnn_verifiable", (28, 28, 1), 10, keep_ratio=0.1)
        plain = export.strip_scores(network)
        x = np.random.default_rng(1).random((4, 28, 28, 1)).astype(np.float32)
        labels = np.array([0, 3, 5, 9])
        scored_margins = _bounds(network, x, 0.05, labels)
        plain_margins = _bounds(plain, x, 0.05, labels)
        self.assertAllClose(scored_margins.lower, plain_margins.lower, atol=1e-5)
        self.assertAllClose(scored_margins.upper, plain_margins.upper, atol=1e-5)

        scores = [layer.score for layer in network.layers if kinds.is_scored(layer)]
        with tf.GradientTape() as tape:
            lower = _bounds(network, x, 0.05, labels).lower
            loss = tf.reduce_sum(lower)
        gradients = tape.gradient(loss, scores)
        self.assertLen(scores, 4)
        for score, gradient in zip(scores, gradients):
            self.assertIsNotNone(gradient, score.path)
            self.assertGreater(float(tf.reduce_max(tf.abs(gradient))), 0.0, score.path)

    def test_mixed_precision_network_is_bounded_in_float32(self):
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            network = architectures.build("cnn_verifiable", (28, 28, 1), 10)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        x = np.random.default_rng(2).random((2, 28, 28, 1)).astype(np.float32)
        out = bounds.propagate_network(network, bounds.IntervalBounds.from_linf(x, 0.0))
        self.assertEqual(out.lower.dtype, tf.float32)
        # The float32 bounds match the float16 forward pass up to its rounding.
        self.assertAllClose(out.lower, network(x), atol=0.05, rtol=0.01)
        margins = _bounds(network, x, 0.01, [1, 2])
        self.assertEqual(margins.lower.dtype, tf.float32)


if __name__ == "__main__":
    tf.test.main()
