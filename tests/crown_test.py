"""Tests for hydra_tf.objectives.bounds.crown: relaxations by hand, exactness on linear networks."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import export
from hydra_tf.models import architectures
from hydra_tf.objectives import bounds


def _relu_network():
    """z = relu(x) for a scalar x (a dense identity, a ReLU, a dense identity)."""
    inputs = keras.Input((1,))
    hidden = keras.layers.Dense(1, kernel_initializer="ones", name="pre")(inputs)
    outputs = keras.layers.Dense(1, kernel_initializer="ones", name="out")(
        keras.layers.ReLU(name="relu")(hidden)
    )
    return keras.Model(inputs, outputs)


def _crown(network, lower, upper, spec, mode="crown_ibp"):
    box = bounds.IntervalBounds(np.float32(lower), np.float32(upper))
    return bounds.backward_bounds(network, box, np.float32(spec), mode=mode)


class CrownByHandTest(tf.test.TestCase, parameterized.TestCase):
    def test_relu_relaxation_lower_slope_one(self):
        # x in [-1, 2]: u >= -l, so the lower line is x; the upper line is
        # (2/3)(x + 1). Over the box: relu(x) in [-1, 2], -relu(x) in [-2, 1].
        lower, upper = _crown(_relu_network(), [[-1.0]], [[2.0]], [[[1.0], [-1.0]]])
        self.assertAllClose(lower, [[-1.0, -2.0]])
        self.assertAllClose(upper, [[2.0, 1.0]])

    def test_relu_relaxation_lower_slope_zero(self):
        # x in [-2, 1]: u < -l, so the lower line is 0; the upper line is (x + 2) / 3.
        lower, upper = _crown(_relu_network(), [[-2.0]], [[1.0]], [[[1.0], [-1.0]]])
        self.assertAllClose(lower, [[0.0, -1.0]])
        self.assertAllClose(upper, [[1.0, 0.0]])

    @parameterized.parameters(([[0.5]], [[2.0]]), ([[-3.0]], [[-1.0]]), ([[0.0]], [[0.0]]))
    def test_stable_relu_is_exact(self, low, high):
        lower, upper = _crown(_relu_network(), low, high, [[[1.0]]])
        self.assertAllClose(lower, np.maximum(low, 0.0))
        self.assertAllClose(upper, np.maximum(high, 0.0))

    def test_residual_add_sends_coefficients_to_both_branches(self):
        # z = x + relu(x) + 1 on [-1, 2]: the lower line is 2x + 1, the upper
        # line x + (2/3)(x + 1) + 1; the offset 1 counts once.
        inputs = keras.Input((1,))
        total = keras.layers.Add()([inputs, keras.layers.ReLU(name="relu")(inputs)])
        out = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="ones")
        network = keras.Model(inputs, out(total))
        lower, upper = _crown(network, [[-1.0]], [[2.0]], [[[1.0]]])
        self.assertAllClose(lower, [[-1.0]])
        self.assertAllClose(upper, [[5.0]])

    def test_max_pool_relaxation(self):
        # Windows of two: [a, b] with a in [0, 1], b in [2, 3] (b dominates:
        # the lower line is b, the upper constant 3) -> max in [2, 3].
        inputs = keras.Input((1, 2, 1))
        pooled = keras.layers.MaxPooling2D((1, 2), name="pool")(inputs)
        network = keras.Model(
            inputs,
            keras.layers.Dense(1, kernel_initializer="ones")(keras.layers.Flatten()(pooled)),
        )
        box_lower = np.array([0.0, 2.0], np.float32).reshape(1, 1, 2, 1)
        box_upper = np.array([1.0, 3.0], np.float32).reshape(1, 1, 2, 1)
        lower, upper = _crown(network, box_lower, box_upper, [[[1.0], [-1.0]]])
        self.assertAllClose(lower, [[2.0, -3.0]])
        self.assertAllClose(upper, [[3.0, -2.0]])

    def test_max_pool_with_a_dominant_element_is_exact(self):
        # max(a, b) - b with a in [0, 1], b in [2, 3]: b dominates, so the
        # upper line is b, not the constant 3, and the bounds are exact: 0.
        inputs = keras.Input((1, 2, 1))
        pooled = keras.layers.Flatten()(keras.layers.MaxPooling2D((1, 2))(inputs))
        minus_b = keras.layers.Dense(1, use_bias=False, name="minus_b")
        total = keras.layers.Add()([pooled, minus_b(keras.layers.Flatten()(inputs))])
        network = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="ones")(total))
        minus_b.kernel.assign([[0.0], [-1.0]])
        box_lower = np.array([0.0, 2.0], np.float32).reshape(1, 1, 2, 1)
        box_upper = np.array([1.0, 3.0], np.float32).reshape(1, 1, 2, 1)
        lower, upper = _crown(network, box_lower, box_upper, [[[1.0], [-1.0]]])
        self.assertAllClose(lower, [[0.0, 0.0]])
        self.assertAllClose(upper, [[0.0, 0.0]])
        # Without a dominant element (a in [0, 2.5]) the upper line is the constant 3.
        box_upper[0, 0, 0, 0] = 2.5
        lower, upper = _crown(network, box_lower, box_upper, [[[1.0]]])
        self.assertAllClose(lower, [[0.0]])
        self.assertAllClose(upper, [[1.0]])

    def test_unknown_mode_and_nothing_to_compute(self):
        network = _relu_network()
        with self.assertRaisesRegex(ValueError, "mode.*'fast'"):
            _crown(network, [[0.0]], [[1.0]], [[[1.0]]], mode="fast")
        with self.assertRaisesRegex(ValueError, "Nothing to compute"):
            bounds.backward_bounds(
                network,
                bounds.IntervalBounds([[0.0]], [[1.0]]),
                [[[1.0]]],
                lower=False,
                upper=False,
            )

    def test_one_side_only(self):
        box = bounds.IntervalBounds([[-1.0]], [[2.0]])
        lower, upper = bounds.backward_bounds(_relu_network(), box, [[[1.0]]], upper=False)
        self.assertIsNone(upper)
        self.assertAllClose(lower, [[-1.0]])

    def test_unsupported_layers_are_refused_by_name(self):
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(4, activation="relu", name="fused")(inputs)
        network = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
        box = bounds.IntervalBounds.from_linf(np.zeros((1, 4), np.float32), 0.1)
        spec = bounds.margin_specification([0], 2)
        with self.assertRaisesRegex(bounds.UnsupportedLayerError, "'fused'.*relu"):
            bounds.backward_bounds(network, box, spec)
        dropout = keras.layers.Dropout(0.5, name="drop")(inputs)
        network = keras.Model(inputs, keras.layers.Dense(2, name="out2")(dropout))
        for mode in bounds.MODES:
            with self.assertRaisesRegex(bounds.UnsupportedLayerError, "'drop' \\(Dropout\\)"):
                bounds.backward_bounds(network, box, spec, mode=mode)


def _linear_network(seed):
    """A network of every linear layer kind: CROWN must be exact on it."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((7, 7, 2))
    a = keras.layers.Conv2D(3, 3, strides=2, padding="same")(inputs)  # 4x4
    b = keras.layers.Conv2D(3, 2, strides=2, padding="valid")(inputs)  # 3x3, a row unused
    b = keras.layers.Conv2D(3, 2, padding="same")(b)
    a = keras.layers.BatchNormalization()(a)
    a = keras.layers.AveragePooling2D(2, strides=1, padding="valid")(a)  # 3x3
    merged = keras.layers.Add()([a, b])
    pooled = keras.layers.AveragePooling2D(2, padding="same")(merged)  # 2x2
    flat = keras.layers.Dense(5)(keras.layers.Flatten()(pooled))
    spatial_mean = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(merged))
    # A tensor used twice in one sum: its coefficients add up.
    hidden = keras.layers.Add()([flat, spatial_mean, flat])
    network = keras.Model(inputs, keras.layers.Dense(4)(hidden))
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        if getattr(layer, "bias", None) is not None:  # Keras starts biases at zero
            layer.bias.assign(rng.normal(size=layer.bias.shape))
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.normal(size=3))
            layer.beta.assign(rng.normal(size=3))
            layer.moving_mean.assign(rng.normal(size=3))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=3))
    return network


class CrownExactnessTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(0, 1)
    def test_linear_networks_are_bounded_exactly(self, seed):
        network = _linear_network(seed)
        x = np.random.default_rng(seed).random((3, 7, 7, 2)).astype(np.float32)
        spec = bounds.margin_specification([0, 1, 3], 4)
        box = bounds.IntervalBounds.from_linf(x, 0.1)
        # The exact range of a linear function over a box: gradient . centre +- |gradient| . radius.
        centre = tf.constant(box.centre)
        with tf.GradientTape() as tape:
            tape.watch(centre)
            margins = tf.einsum("bsj,bj->bs", spec, network(centre, training=False))
        jacobian = tape.batch_jacobian(margins, centre)
        radius = box.radius[:, None]
        spread = tf.reduce_sum(tf.abs(jacobian) * radius, axis=[2, 3, 4])
        for mode in bounds.MODES:
            lower, upper = bounds.backward_bounds(network, box, spec, mode=mode)
            self.assertAllClose(lower, margins - spread, atol=1e-5)
            self.assertAllClose(upper, margins + spread, atol=1e-5)


class CrownNetworkTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("cnn_small", "cnn_large", "cnn_verifiable")
    def test_zero_eps_gives_the_margins(self, arch):
        keras.utils.set_random_seed(0)
        network = architectures.build(arch, (28, 28, 1), 10)
        x = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
        spec = bounds.margin_specification([0, 1, 2, 3], 10)
        margins = tf.einsum("bsj,bj->bs", spec, network(x))
        lower, upper = bounds.backward_bounds(
            network, bounds.IntervalBounds.from_linf(x, 0.0), spec
        )
        self.assertAllClose(lower, margins, atol=1e-4, rtol=0)
        self.assertAllClose(upper, margins, atol=1e-4, rtol=0)
        lower, upper = bounds.backward_bounds(
            network, bounds.IntervalBounds.from_linf(x, 0.1), spec
        )
        self.assertTrue(np.all(lower <= margins) and np.all(upper >= margins))

    @parameterized.parameters("vgg16_bn", "resnet18", "wrn_28_4")
    def test_zero_eps_on_batch_norm_residual_and_pooling_networks(self, arch):
        keras.utils.set_random_seed(0)
        network = architectures.build(arch, (32, 32, 3), 10)
        for layer in network.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(np.full(layer.moving_mean.shape, -0.05, np.float32))
                layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, np.float32))
        x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
        spec = bounds.margin_specification([0, 1], 10)
        margins = tf.einsum("bsj,bj->bs", spec, network(x, training=False))
        self.assertGreater(float(tf.reduce_max(tf.abs(margins))), 1e-3)
        box = bounds.IntervalBounds.from_linf(x, 0.0)
        lower, upper = bounds.backward_bounds(network, box, spec)
        self.assertAllClose(lower, margins, atol=1e-4, rtol=0)
        self.assertAllClose(upper, margins, atol=1e-4, rtol=0)
        ibp = bounds.specification_bounds(network, box, spec)
        self.assertAllClose(ibp.lower, margins, atol=1e-4, rtol=0)

    def test_full_mode_on_cnn_verifiable_is_tighter_than_crown_ibp(self):
        keras.utils.set_random_seed(0)
        network = architectures.build("cnn_verifiable", (28, 28, 1), 10)
        x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
        spec = bounds.margin_specification([5, 6], 10)
        box = bounds.IntervalBounds.from_linf(x, 0.02)
        crown_ibp, _ = bounds.backward_bounds(network, box, spec, upper=False)
        full, _ = bounds.backward_bounds(network, box, spec, mode="full", upper=False)
        margins = tf.einsum("bsj,bj->bs", spec, network(x))
        self.assertTrue(np.all(full <= margins + 1e-5))
        self.assertTrue(np.all(full >= crown_ibp - 1e-5))

    def test_score_network_equals_its_export(self):
        keras.utils.set_random_seed(1)
        network = architectures.build("cnn_verifiable", (28, 28, 1), 10, keep_ratio=0.1)
        plain = export.strip_scores(network)
        x = np.random.default_rng(1).random((3, 28, 28, 1)).astype(np.float32)
        spec = bounds.margin_specification([0, 4, 9], 10)
        box = bounds.IntervalBounds.from_linf(x, 0.05)
        for mode in bounds.MODES:
            scored = bounds.backward_bounds(network, box, spec, mode=mode)
            exported = bounds.backward_bounds(plain, box, spec, mode=mode)
            for ours, theirs in zip(scored, exported):
                self.assertAllClose(ours, theirs, atol=1e-5)

    def test_shared_interval_pass(self):
        keras.utils.set_random_seed(2)
        network = architectures.build("cnn_verifiable", (28, 28, 1), 10, keep_ratio=0.5)
        x = np.random.default_rng(2).random((3, 28, 28, 1)).astype(np.float32)
        spec = bounds.margin_specification([1, 2, 3], 10)
        box = bounds.IntervalBounds.from_linf(x, 0.05)
        intervals = bounds.propagate_layers(
            network, box, stop_before=bounds.final_dense(network).name
        )
        self.assertAllClose(
            bounds.backward_bounds(network, box, spec, intervals=intervals)[0],
            bounds.backward_bounds(network, box, spec)[0],
        )
        self.assertAllClose(
            bounds.specification_bounds(network, box, spec, intervals=intervals).lower,
            bounds.specification_bounds(network, box, spec).lower,
        )

    def test_lower_bound_has_gradients_to_scores_inside_a_function(self):
        keras.utils.set_random_seed(3)
        network = architectures.build("cnn_verifiable", (28, 28, 1), 10, keep_ratio=0.1)
        scores = [layer.score for layer in network.layers if hasattr(layer, "score")]
        x = tf.constant(np.random.default_rng(3).random((2, 28, 28, 1)).astype(np.float32))
        labels = tf.constant([1, 7])

        @tf.function
        def gradients(x, labels):
            with tf.GradientTape() as tape:
                box = bounds.IntervalBounds.from_linf(x, 0.05)
                spec = bounds.margin_specification(labels, 10)
                lower, _ = bounds.backward_bounds(network, box, spec, upper=False)
                loss = tf.reduce_sum(lower)
            return tape.gradient(loss, scores)

        for score, gradient in zip(scores, gradients(x, labels)):
            self.assertGreater(float(tf.reduce_max(tf.abs(gradient))), 0.0, score.path)


if __name__ == "__main__":
    tf.test.main()
