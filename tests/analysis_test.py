"""Tests for hydra_tf.experiments.analysis.kept_weights: HYDRA's kept weights against LWM's."""

import os

import keras
import numpy as np
import tensorflow as tf

from hydra_tf.experiments import analysis
from hydra_tf.models import architectures
from hydra_tf.models import layers
from hydra_tf.pruning import phases


def _net(keep_ratio=None):
    factory = architectures.LayerFactory(keep_ratio)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Flatten()(keras.layers.ReLU()(factory.conv(4, 3, "conv1")(inputs)))
    return keras.Model(inputs, factory.dense(3, "fc1")(x), name="tiny")


class KeptWeightsTest(tf.test.TestCase):
    def _paths(self, invert_scores):
        keras.utils.set_random_seed(0)
        dense = _net()
        pruned = _net(keep_ratio=0.25)
        phases.prepare(pruned, "prune", dense)
        if invert_scores:  # keep the smallest magnitudes instead of the largest
            for layer in layers.scored_layers(pruned):
                layer.score.assign(1.0 / (np.abs(layer.kernel.numpy()) + 1e-6))
        root = self.get_temp_dir()
        paths = os.path.join(root, "dense.keras"), os.path.join(root, f"hydra{invert_scores}.keras")
        dense.save(paths[0])
        pruned.save(paths[1])
        return paths

    def test_magnitude_scores_keep_exactly_lwm(self):
        # Scores initialised from the scaled magnitude rank weights as LWM does.
        kept = analysis.kept_weights(*self._paths(invert_scores=False), 0.25)
        np.testing.assert_array_equal(kept["hydra"], kept["lwm"])
        self.assertEqual(kept["overlap"], 1.0)
        self.assertEqual(kept["magnitudes"].shape, kept["hydra"].shape)
        self.assertAllClose(kept["magnitudes"].max(), 1.0)

    def test_inverted_scores_keep_none_of_lwm(self):
        kept = analysis.kept_weights(*self._paths(invert_scores=True), 0.25)
        self.assertEqual(kept["overlap"], 0.0)
        # Each layer keeps its share: 25% of its weights, HYDRA and LWM alike.
        self.assertEqual(kept["hydra"].sum(), kept["lwm"].sum())


if __name__ == "__main__":
    tf.test.main()
