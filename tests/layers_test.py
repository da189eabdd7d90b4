"""Tests for hydra_tf.models.layers: forward pass, config, save/load, errors."""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf.models import layers
from hydra_tf.models import masks


class ScoredDenseTest(tf.test.TestCase):
    def test_hand_computed_forward(self):
        layer = layers.ScoredDense(2, keep_ratio=0.5)
        layer.build((None, 2))
        layer.kernel.assign([[1.0, 2.0], [3.0, 4.0]])
        layer.bias.assign([0.5, -0.5])
        layer.score.assign([[0.9, -0.1], [0.2, -0.8]])  # keeps (0,0) and (1,1)
        out = layer(np.array([[1.0, 1.0]], np.float32))
        self.assertAllClose(out, [[1.0 + 0.5, 4.0 - 0.5]])

    def test_uses_a_reused_mask_inside_the_block(self):
        layer = layers.ScoredDense(2, keep_ratio=0.5)
        layer.build((None, 2))
        layer.kernel.assign([[1.0, 2.0], [3.0, 4.0]])
        layer.bias.assign([0.0, 0.0])
        layer.score.assign([[0.9, -0.1], [0.2, -0.8]])
        x = np.array([[1.0, 1.0]], np.float32)
        given = tf.constant([[0.0, 1.0], [1.0, 0.0]])
        with masks.reusing({layer: given}):
            self.assertAllClose(layer(x), [[3.0, 2.0]])
        self.assertAllClose(layer(x), [[1.0, 4.0]])
        with layers.masks_fixed(keras.Sequential([layer])):
            self.assertAllClose(layer(x), [[1.0, 4.0]])

    def test_keep_ratio_one_is_dense(self):
        layer = layers.ScoredDense(3, keep_ratio=1.0)
        x = np.random.RandomState(0).rand(4, 5).astype(np.float32)
        out = layer(x)
        self.assertAllClose(out, x @ layer.kernel.numpy() + layer.bias.numpy())

    def test_gradient_reaches_scores_and_weights(self):
        layer = layers.ScoredDense(4, keep_ratio=0.25)
        x = np.ones((2, 8), np.float32)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        g_kernel, g_score = tape.gradient(loss, [layer.kernel, layer.score])
        mask = layer.mask().numpy()
        self.assertGreater(float(tf.reduce_sum(tf.abs(g_score))), 0.0)
        # Pruned weights get no gradient; scores of pruned weights do.
        self.assertAllEqual(g_kernel.numpy()[mask == 0], np.zeros(int((mask == 0).sum())))
        self.assertGreater(np.abs(g_score.numpy()[mask == 0]).sum(), 0.0)


class ScoredConv2DTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(("same", 1), ("valid", 2), ("same", 2))
    def test_matches_keras_conv_with_masked_kernel(self, padding, strides):
        layer = layers.ScoredConv2D(6, 3, strides=strides, padding=padding, keep_ratio=0.2)
        x = np.random.RandomState(1).rand(2, 9, 9, 3).astype(np.float32)
        out = layer(x)
        ref = keras.layers.Conv2D(6, 3, strides=strides, padding=padding)
        ref.build(x.shape)
        ref.set_weights([layer.masked_kernel().numpy(), layer.bias.numpy()])
        self.assertAllClose(out, ref(x), atol=1e-5)
        self.assertEqual(out.shape[1:], layer.compute_output_shape(x.shape)[1:])

    def test_kept_count_per_layer(self):
        layer = layers.ScoredConv2D(8, 3, keep_ratio=0.05)
        layer.build((None, 5, 5, 4))
        self.assertEqual(int(tf.reduce_sum(layer.mask())), masks.kept_count(3 * 3 * 4 * 8, 0.05))
        self.assertEqual(layer.fan_in, 3 * 3 * 4)

    @parameterized.parameters(
        ({"filters": 0, "kernel_size": 3}, "filters"),
        ({"filters": 4, "kernel_size": 3, "keep_ratio": 0.0}, "keep_ratio"),
        ({"filters": 4, "kernel_size": 3, "keep_ratio": 2}, "keep_ratio"),
        ({"filters": 4, "kernel_size": 3, "padding": "full"}, "padding"),
        ({"filters": 4, "kernel_size": (3, 0)}, "kernel_size"),
    )
    def test_bad_arguments(self, kwargs, word):
        with self.assertRaisesRegex(ValueError, word):
            layers.ScoredConv2D(**kwargs)


class SerializationTest(tf.test.TestCase):
    def test_config_round_trip(self):
        layer = layers.ScoredConv2D(4, (3, 2), strides=2, padding="same", keep_ratio=0.3)
        clone = layers.ScoredConv2D.from_config(layer.get_config())
        self.assertEqual(clone.get_config(), layer.get_config())
        dense = layers.ScoredDense(7, keep_ratio=0.1, activation="relu", use_bias=False)
        self.assertEqual(
            layers.ScoredDense.from_config(dense.get_config()).get_config(), dense.get_config()
        )

    def test_keras_save_load_round_trip(self):
        inputs = keras.Input((8, 8, 2))
        x = layers.ScoredConv2D(4, 3, keep_ratio=0.3, name="c")(inputs)
        x = keras.layers.Flatten()(x)
        outputs = layers.ScoredDense(3, keep_ratio=0.1, name="d")(x)
        model = keras.Model(inputs, outputs)
        # Scores unrelated to the kernels, so a lost score would change outputs.
        for layer in (model.get_layer("c"), model.get_layer("d")):
            layer.score.assign(tf.random.normal(layer.score.shape, seed=3))
        data = np.random.RandomState(2).rand(5, 8, 8, 2).astype(np.float32)
        path = os.path.join(tempfile.mkdtemp(), "m.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        for name in ("c", "d"):
            for attr in ("kernel", "bias", "score"):
                self.assertAllEqual(
                    getattr(loaded.get_layer(name), attr), getattr(model.get_layer(name), attr)
                )
            self.assertEqual(loaded.get_layer(name).keep_ratio, model.get_layer(name).keep_ratio)
        self.assertAllClose(loaded(data), model(data))

    def test_scored_layers_finds_nested(self):
        inner = keras.Sequential([keras.Input((4,)), layers.ScoredDense(2, name="a")], name="inner")
        outer = keras.Sequential([keras.Input((4,)), inner, layers.ScoredDense(2, name="b")])
        self.assertEqual([lyr.name for lyr in layers.scored_layers(outer)], ["a", "b"])


if __name__ == "__main__":
    tf.test.main()
