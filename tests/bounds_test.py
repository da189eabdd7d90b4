"""Tests for hydra_tf.objectives.bounds.propagation.

Dispatch per layer kind, the network walk, refusals.
"""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf.models import architectures
from hydra_tf.objectives import bounds


class _Point(bounds.Bounds):
    """A zero-width box: the bounds of one input point, i.e. the exact forward pass.

    Propagating it through a network must give the network's output, which
    checks the dispatch, the walk, the masked kernels and the BatchNorm map.
    """

    def __init__(self, x):
        self.x = x

    def apply_conv2d(self, layer, kernel, bias):
        y = tf.nn.conv2d(self.x, kernel, layer.strides, layer.padding.upper())
        return type(self)(y if bias is None else y + bias)

    def apply_dense(self, layer, kernel, bias):
        y = tf.matmul(self.x, kernel)
        return type(self)(y if bias is None else y + bias)

    def apply_batch_norm(self, layer, scale, offset):
        return type(self)(self.x * scale + offset)

    def apply_relu(self, layer):
        return type(self)(tf.nn.relu(self.x))

    def apply_flatten(self, layer):
        return type(self)(tf.reshape(self.x, (tf.shape(self.x)[0], -1)))

    def apply_add(self, layer, inputs):
        return type(self)(tf.add_n([b.x for b in inputs]))

    def apply_max_pool(self, layer):
        return type(self)(layer(self.x))

    def apply_avg_pool(self, layer):
        return type(self)(layer(self.x))

    def apply_global_avg_pool(self, layer):
        return type(self)(tf.reduce_mean(self.x, axis=[1, 2]))


class BoundsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ("cnn_small", (28, 28, 1)),
        ("cnn_large", (28, 28, 1)),
        ("vgg16_bn", (32, 32, 3)),
        ("resnet18", (32, 32, 3)),
    )
    def test_zero_width_box_gives_the_forward_pass(self, arch, shape):
        keras.utils.set_random_seed(0)
        network = architectures.build(arch, shape, 10, keep_ratio=0.1)
        # Move BatchNorm statistics away from their init, so the affine map matters.
        for layer in network.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.1, np.float32))
                layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, np.float32))
        x = np.random.default_rng(0).random((3,) + shape).astype(np.float32)
        out = bounds.propagate_network(network, _Point(tf.constant(x)))
        self.assertAllClose(out.x, network(x, training=False), atol=1e-4, rtol=1e-4)

    def test_score_layers_are_bounded_through_the_masked_kernel(self):
        seen = {}

        class Recorder(_Point):
            def apply_dense(self, layer, kernel, bias):
                seen[layer.name] = np.asarray(kernel)
                return super().apply_dense(layer, kernel, bias)

        network = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.1)
        bounds.propagate_network(network, Recorder(tf.zeros((1, 28, 28, 1))))
        fc1 = network.get_layer("fc1")
        self.assertAllEqual(seen["fc1"], fc1.masked_kernel())
        self.assertAlmostEqual(float(np.mean(seen["fc1"] != 0)), 0.1, delta=0.01)

    def test_unsupported_layers_are_named(self):
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(3, name="head")(keras.layers.Dropout(0.5, name="drop")(inputs))
        network = keras.Model(inputs, outputs)
        with self.assertRaisesRegex(bounds.UnsupportedLayerError, "'drop' \\(Dropout\\)"):
            bounds.propagate_network(network, _Point(tf.zeros((1, 4))))
        # A bound type without a method for a kind refuses that layer by name.
        dense = keras.Model(inputs, keras.layers.Dense(3, name="head")(inputs))
        with self.assertRaisesRegex(
            bounds.UnsupportedLayerError, "Bounds cannot bound layer 'head'"
        ):
            bounds.propagate_network(dense, bounds.Bounds())

    def test_propagate_layers_gives_every_layer_and_stops_before_one(self):
        network = architectures.build("cnn_small", (28, 28, 1), 10)
        x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
        values = bounds.propagate_layers(network, _Point(tf.constant(x)))
        self.assertEqual(list(values), [layer.name for layer in network.layers])
        conv1 = keras.Model(network.inputs[0], network.get_layer("conv1").output)
        self.assertAllClose(values["conv1"].x, conv1(x), atol=1e-5)
        partial = bounds.propagate_layers(network, _Point(tf.constant(x)), stop_before="fc2")
        self.assertEqual(list(partial), [layer.name for layer in network.layers][:-1])

    def test_fused_activation_and_other_axes_are_refused(self):
        inputs = keras.Input((4,))
        fused = keras.Model(inputs, keras.layers.Dense(3, activation="relu", name="fc")(inputs))
        with self.assertRaisesRegex(bounds.UnsupportedLayerError, "'fc'.*fused activation 'relu'"):
            bounds.propagate_network(fused, _Point(tf.zeros((1, 4))))
        linear = keras.Model(inputs, keras.layers.Dense(3, activation="linear")(inputs))
        bounds.propagate_network(linear, _Point(tf.zeros((1, 4))))
        images = keras.Input((2, 2, 3))
        norm = keras.layers.BatchNormalization(axis=1, name="bn_rows")
        with self.assertRaisesRegex(bounds.UnsupportedLayerError, "'bn_rows'.*axis 1"):
            bounds.propagate_network(
                keras.Model(images, norm(images)), _Point(tf.zeros((1, 2, 2, 3)))
            )

    def test_shared_layer_is_refused(self):
        inputs = keras.Input((4,))
        shared = keras.layers.Dense(4, name="shared")
        network = keras.Model(inputs, shared(shared(inputs)))
        with self.assertRaisesRegex(bounds.UnsupportedLayerError, "'shared'.*2 times"):
            bounds.propagate_network(network, _Point(tf.zeros((1, 4))))

    def test_batch_norm_affine_by_hand(self):
        layer = keras.layers.BatchNormalization(epsilon=0.0)
        layer.build((None, 2))
        layer.gamma.assign([2.0, 1.0])
        layer.beta.assign([1.0, 0.0])
        layer.moving_mean.assign([1.0, -1.0])
        layer.moving_variance.assign([4.0, 1.0])
        scale, offset = bounds.batch_norm_affine(layer)
        # y = gamma (x - mean) / sqrt(var) + beta
        self.assertAllClose(scale, [1.0, 1.0])
        self.assertAllClose(offset, [0.0, 1.0])


if __name__ == "__main__":
    tf.test.main()
