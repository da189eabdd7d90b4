"""Tests for hydra_tf.objectives.bounds.symbolic: by hand, sound, never looser than IBP.

Soundness uses the random networks of `tests.soundness` (dense and conv,
strides 1 and 2, same and valid padding, inference-mode BatchNorm, a
residual Add, average pooling): 10^4 sampled points of each example's box
must lie between every layer's lower and upper equations, evaluated at each
point, and inside their concretisation; the margins inside
`symbolic_specification_bounds`.
"""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import export
from hydra_tf.models import architectures
from hydra_tf.models import kinds
from hydra_tf.objectives import bounds
from tests import soundness


def _network(layer, input_shape):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


def _box(lower, upper):
    return bounds.IntervalBounds(np.float32(lower), np.float32(upper))


def _symbolic(network, box, intersect=True):
    start = bounds.SymbolicIntervalBounds.from_box(box, intersect=intersect)
    return bounds.propagate_network(network, start)


def _relu_then(dense):
    """x -> ReLU -> dense, for a scalar x."""
    inputs = keras.Input((1,))
    return keras.Model(inputs, dense(keras.layers.ReLU()(inputs)))


class SymbolicByHandTest(tf.test.TestCase, parameterized.TestCase):
    def test_dense(self):
        dense = keras.layers.Dense(1, kernel_initializer="ones")
        network = _network(dense, (3,))
        dense.bias.assign([2.0])
        out = _symbolic(network, _box([[0.0, 1.0, 2.0]], [[2.0, 3.0, 4.0]]))
        self.assertAllClose(out.lower_weights, [[[1.0], [1.0], [1.0]]])
        self.assertAllClose(out.upper_offsets, [[2.0]])
        concrete = out.concretize()
        self.assertAllClose(concrete.lower, [[5.0]])
        self.assertAllClose(concrete.upper, [[11.0]])

    def test_dense_with_negative_weights_swaps_the_sides(self):
        # -relu(x) on x in [-1, 2]. The ReLU's lower equation is x (slope 1:
        # u = 2 >= -l = 1), its upper one the chord (2/3)(x + 1); negated, they
        # swap: -(2/3)(x + 1) in [-2, 0] <= -relu(x) <= -x in [-2, 1].
        dense = keras.layers.Dense(1, use_bias=False)
        network = _relu_then(dense)
        dense.kernel.assign([[-1.0]])
        box = _box([[-1.0]], [[2.0]])
        out = _symbolic(network, box, intersect=False)
        self.assertAllClose(out.lower_weights, [[[-2.0 / 3]]])
        self.assertAllClose(out.lower_offsets, [[-2.0 / 3]])
        self.assertAllClose(out.upper_weights, [[[-1.0]]])
        self.assertAllClose(out.upper_offsets, [[0.0]])
        self.assertAllClose(out.concretize().lower, [[-2.0]])
        self.assertAllClose(out.concretize().upper, [[1.0]])
        # IBP's [-2, 0] caps the upper end.
        self.assertAllClose(_symbolic(network, box).concretize().upper, [[0.0]])

    def test_lower_line_is_zero_where_the_negative_side_is_wider(self):
        # relu(x) on x in [-2, 1]: u = 1 < -l = 2, so the lower equation is 0.
        out = _symbolic(_network(keras.layers.ReLU(), (1,)), _box([[-2.0]], [[1.0]]), False)
        self.assertAllClose(out.lower_weights, [[[0.0]]])
        self.assertAllClose(out.lower_offsets, [[0.0]])
        self.assertAllClose(out.upper_weights, [[[1.0 / 3]]])
        self.assertAllClose(out.upper_offsets, [[2.0 / 3]])

    @parameterized.parameters(([[0.5]], [[2.0]], 1.0), ([[-3.0]], [[-1.0]], 0.0))
    def test_stable_relu_keeps_or_zeroes_the_equations(self, low, high, slope):
        out = _symbolic(_network(keras.layers.ReLU(), (1,)), _box(low, high), intersect=False)
        for weights in (out.lower_weights, out.upper_weights):
            self.assertAllClose(weights, [[[slope]]])
        self.assertAllClose(out.upper_offsets, [[0.0]])
        self.assertAllClose(out.concretize().lower, np.maximum(low, 0.0))
        self.assertAllClose(out.concretize().upper, np.maximum(high, 0.0))

    def test_cancellation_through_unstable_relus(self):
        # relu(x) - relu(x) on x in [-1, 3]: both neurons have the equations
        # x <= relu(x) <= (3/4)(x + 1), so the difference is between
        # x/4 - 3/4 and 3/4 - x/4: in [-1, 1]. IBP subtracts two unrelated
        # [0, 3]s: [-3, 3].
        inputs = keras.Input((1,))
        twice = keras.layers.Dense(2, use_bias=False, kernel_initializer="ones")(inputs)
        difference = keras.layers.Dense(1, use_bias=False)
        network = keras.Model(inputs, difference(keras.layers.ReLU()(twice)))
        difference.kernel.assign([[1.0], [-1.0]])
        box = _box([[-1.0]], [[3.0]])
        for intersect in (False, True):
            out = _symbolic(network, box, intersect).concretize()
            self.assertAllClose(out.lower, [[-1.0]])
            self.assertAllClose(out.upper, [[1.0]])
        ibp = bounds.propagate_network(network, box)
        self.assertAllClose(ibp.lower, [[-3.0]])
        self.assertAllClose(ibp.upper, [[3.0]])

    def test_cancellation_through_stable_relus(self):
        # relu(x) + relu(1 - x) = 1 on x in [0, 1], exactly; IBP gives [0, 2].
        inputs = keras.Input((1,))
        hidden = keras.layers.Dense(2)
        total = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
        network = keras.Model(inputs, total(keras.layers.ReLU()(hidden(inputs))))
        hidden.kernel.assign([[1.0, -1.0]])
        hidden.bias.assign([0.0, 1.0])
        box = bounds.IntervalBounds.from_linf([[0.5]], 0.5)
        out = _symbolic(network, box, intersect=False).concretize()
        self.assertAllClose(out.lower, [[1.0]])
        self.assertAllClose(out.upper, [[1.0]])
        self.assertAllClose(bounds.propagate_network(network, box).upper, [[2.0]])

    def test_add_and_where_the_intersection_helps(self):
        # x + relu(x) on x in [-1, 2]: 2x <= . <= x + (2/3)(x + 1), in [-2, 4];
        # IBP's [-1, 4] tightens the lower end. On [0, 1] it is 2x, in [0, 2].
        inputs = keras.Input((2,))
        network = keras.Model(inputs, keras.layers.Add()([inputs, keras.layers.ReLU()(inputs)]))
        box = _box([[-1.0, 0.0]], [[2.0, 1.0]])
        alone = _symbolic(network, box, intersect=False)
        self.assertAllClose(alone.lower_weights, [[[2.0, 0.0], [0.0, 2.0]]])
        self.assertAllClose(alone.concretize().lower, [[-2.0, 0.0]])
        self.assertAllClose(alone.concretize().upper, [[4.0, 2.0]])
        intersected = _symbolic(network, box).concretize()
        self.assertAllClose(intersected.lower, [[-1.0, 0.0]])
        self.assertAllClose(intersected.upper, [[4.0, 2.0]])

    def test_conv2d_and_batch_norm_with_negative_scale(self):
        conv = keras.layers.Conv2D(1, 2, kernel_initializer="ones")
        network = _network(conv, (2, 2, 1))
        conv.bias.assign([2.0])
        image = np.arange(1.0, 5.0).reshape(1, 2, 2, 1)
        out = _symbolic(network, _box(image - 1, image + 1)).concretize()
        self.assertAllClose(out.lower, [[[[8.0]]]])
        self.assertAllClose(out.upper, [[[[16.0]]]])

        layer = keras.layers.BatchNormalization(epsilon=0.0)
        network = _network(layer, (2,))
        layer.gamma.assign([-2.0, 1.0])
        layer.beta.assign([1.0, 0.0])
        layer.moving_variance.assign([1.0, 4.0])
        # -2 x + 1 on [0, 1] and (y - 0) / 2 on [-2, 2].
        out = _symbolic(network, _box([[0.0, -2.0]], [[1.0, 2.0]]), intersect=False)
        self.assertAllClose(out.lower_weights, [[[-2.0, 0.0], [0.0, 0.5]]])
        self.assertAllClose(out.concretize().lower, [[-1.0, -1.0]])
        self.assertAllClose(out.concretize().upper, [[1.0, 1.0]])

    def test_average_pools_and_flatten(self):
        image = np.array([1.0, 5.0, 2.0, 0.0]).reshape(1, 2, 2, 1)
        box = _box(image - 1, image + 1)
        for layer in (keras.layers.AveragePooling2D(2), keras.layers.GlobalAveragePooling2D()):
            out = _symbolic(_network(layer, (2, 2, 1)), box, intersect=False).concretize()
            self.assertAllClose(np.ravel(out.lower), [1.0])
            self.assertAllClose(np.ravel(out.upper), [3.0])
        flat = _symbolic(_network(keras.layers.Flatten(), (2, 2, 1)), box, intersect=False)
        self.assertAllClose(flat.concretize().lower, [[0.0, 4.0, 1.0, -1.0]])
        self.assertAllClose(flat.lower_weights, np.eye(4)[None])

    def test_specification_is_folded_into_the_last_layer(self):
        # z0 - z1 = 0 for every x: after a ReLU both logits are the same neuron.
        inputs = keras.Input((1,))
        logits = keras.layers.Dense(2, use_bias=False, kernel_initializer="ones")
        network = keras.Model(inputs, logits(keras.layers.ReLU()(inputs)))
        spec = bounds.margin_specification([0], 2)
        for intersect in (False, True):
            margins = bounds.symbolic_specification_bounds(
                network, _box([[-1.0]], [[1.0]]), spec, intersect
            )
            self.assertAllClose(margins.lower, [[0.0]])
            self.assertAllClose(margins.upper, [[0.0]])

    def test_unsupported_layers_are_refused_by_name(self):
        cases = [
            (keras.layers.MaxPooling2D(2, name="pool"), (4, 4, 1), "'pool' \\(MaxPooling2D"),
            (keras.layers.Dropout(0.5, name="drop"), (4,), "'drop' \\(Dropout\\)"),
            (keras.layers.Dense(2, activation="tanh", name="fused"), (4,), "'fused'.*tanh"),
            (keras.layers.Conv2D(2, 3, dilation_rate=2, name="dilated"), (8, 8, 1), "'dilated'"),
        ]
        for layer, shape, pattern in cases:
            network = _network(layer, shape)
            box = bounds.IntervalBounds.from_linf(np.zeros((1,) + shape, np.float32), 0.1)
            with self.assertRaisesRegex(bounds.UnsupportedLayerError, pattern):
                _symbolic(network, box)


def _equation(weights, offsets, points):
    """The equations at `points` (batch, n, n_inputs), in float64: (batch, n, ...)."""
    weights = np.asarray(weights, np.float64)
    flat = weights.reshape(weights.shape[:2] + (-1,))
    values = np.einsum("bpi,bik->bpk", points, flat)
    return values.reshape(values.shape[:2] + weights.shape[2:]) + np.asarray(offsets)[:, None]


def _between(test, lower, values, upper, what):
    below = float(np.max(lower - values))
    above = float(np.max(values - upper))
    test.assertLessEqual(below, soundness.TOLERANCE, f"{what}: below its lower bound by {below}")
    test.assertLessEqual(above, soundness.TOLERANCE, f"{what}: above its upper bound by {above}")


class SymbolicSoundnessTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        *[
            (name, seed, intersect)
            for name in ("dense", "conv", "residual")
            for seed in (1, 2)
            for intersect in (False, True)
        ]
    )
    def test_sampled_points_stay_inside_every_bound(self, name, seed, intersect):
        network = soundness.network(name, seed)
        rng = np.random.default_rng(seed)
        x = rng.uniform(0.02, 0.98, (soundness.BATCH,) + soundness.SHAPE).astype(np.float32)
        box = bounds.IntervalBounds.from_linf(x, soundness.EPS)
        points = soundness.samples(box, rng)
        values = soundness.layer_values(network, points)
        flat_points = points.reshape(soundness.BATCH, soundness.SAMPLES, -1).astype(np.float64)

        start = bounds.SymbolicIntervalBounds.from_box(box, intersect=intersect)
        symbolic = bounds.propagate_layers(network, start)
        unstable = []
        for layer_name, layer_values in values.items():
            result = symbolic[layer_name]
            lower = _equation(result.lower_weights, result.lower_offsets, flat_points)
            upper = _equation(result.upper_weights, result.upper_offsets, flat_points)
            _between(self, lower, layer_values, upper, f"equations of {layer_name}")
            concrete = result.concretize()
            soundness.inside(self, layer_values, concrete.lower, concrete.upper, layer_name)
            if isinstance(network.get_layer(layer_name), keras.layers.ReLU):
                source = symbolic[network.get_layer(layer_name).input._keras_history.operation.name]
                source = source.concretize()
                unstable.append(np.mean((source.lower < 0) & (source.upper > 0)))
        # Enough unstable neurons that the relaxations are exercised.
        self.assertGreater(np.mean(unstable), 0.1)

        labels = rng.integers(0, soundness.CLASSES, soundness.BATCH)
        spec = bounds.margin_specification(labels, soundness.CLASSES)
        margins = np.einsum("bsj,bnj->bns", spec, values[network.layers[-1].name])
        result = bounds.symbolic_specification_bounds(network, box, spec, intersect)
        soundness.inside(self, margins, result.lower, result.upper, "margins")

    @parameterized.parameters(
        *[(name, seed) for name in ("dense", "conv", "residual") for seed in (1, 2)]
    )
    def test_intersected_bounds_are_never_looser_than_ibp(self, name, seed):
        network = soundness.network(name, seed)
        rng = np.random.default_rng(seed)
        x = rng.uniform(0.02, 0.98, (soundness.BATCH,) + soundness.SHAPE).astype(np.float32)
        box = bounds.IntervalBounds.from_linf(x, soundness.EPS)
        intervals = bounds.propagate_layers(network, box)
        symbolic = bounds.propagate_layers(network, bounds.SymbolicIntervalBounds.from_box(box))
        for layer_name, ibp in intervals.items():
            concrete = symbolic[layer_name].concretize()
            _between(self, ibp.lower, concrete.lower, np.inf, f"lower bounds of {layer_name}")
            _between(self, -np.inf, concrete.upper, ibp.upper, f"upper bounds of {layer_name}")

        spec = bounds.margin_specification(rng.integers(0, soundness.CLASSES, 3), soundness.CLASSES)
        ibp = bounds.specification_bounds(network, box, spec)
        ours = bounds.symbolic_specification_bounds(network, box, spec)
        _between(self, ibp.lower, ours.lower, np.inf, "margin lower bounds")
        _between(self, -np.inf, ours.upper, ibp.upper, "margin upper bounds")
        # And strictly tighter on average: the dependencies pay off.
        self.assertLess(
            float(np.mean(ours.upper - ours.lower)), 0.9 * float(np.mean(ibp.upper - ibp.lower))
        )


class SymbolicNetworkTest(tf.test.TestCase):
    def test_zero_eps_gives_the_margins(self):
        keras.utils.set_random_seed(0)
        network = architectures.build("cnn_verifiable", (28, 28, 1), 10)
        x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
        spec = bounds.margin_specification([3, 8], 10)
        margins = tf.einsum("bsj,bj->bs", spec, network(x))
        box = bounds.IntervalBounds.from_linf(x, 0.0)
        out = bounds.symbolic_specification_bounds(network, box, spec, intersect=False)
        self.assertAllClose(out.lower, margins, atol=1e-4, rtol=0)
        self.assertAllClose(out.upper, margins, atol=1e-4, rtol=0)

    def test_score_network_equals_its_export_and_passes_gradients_to_scores(self):
        keras.utils.set_random_seed(1)
        network = architectures.build("cnn_verifiable", (28, 28, 1), 10, keep_ratio=0.1)
        plain = export.strip_scores(network)
        x = np.random.default_rng(1).random((2, 28, 28, 1)).astype(np.float32)
        spec = bounds.margin_specification([0, 9], 10)
        box = bounds.IntervalBounds.from_linf(x, 0.05)
        scored = bounds.symbolic_specification_bounds(network, box, spec)
        exported = bounds.symbolic_specification_bounds(plain, box, spec)
        self.assertAllClose(scored.lower, exported.lower, atol=1e-5)
        self.assertAllClose(scored.upper, exported.upper, atol=1e-5)

        scores = [layer.score for layer in network.layers if kinds.is_scored(layer)]

        @tf.function
        def gradients(x):
            with tf.GradientTape() as tape:
                box = bounds.IntervalBounds.from_linf(x, 0.05)
                lower = bounds.symbolic_specification_bounds(network, box, spec).lower
                loss = tf.reduce_sum(lower)
            return tape.gradient(loss, scores)

        self.assertLen(scores, 4)
        for score, gradient in zip(scores, gradients(tf.constant(x))):
            self.assertGreater(float(tf.reduce_max(tf.abs(gradient))), 0.0, score.path)


if __name__ == "__main__":
    tf.test.main()
