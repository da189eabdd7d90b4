"""Tests for hydra_tf.pruning.phases: what each phase trains, and checkpoint transfer."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import objectives
from hydra_tf.models import architectures
from hydra_tf.models import layers
from hydra_tf.objectives import attacks
from hydra_tf.pruning import phases
from hydra_tf.training import trainer


def _bn_net(keep_ratio=None):
    """A small conv-BN-dense network built with the architectures' factory."""
    factory = architectures.LayerFactory(keep_ratio)
    inputs = keras.Input((8, 8, 1))
    x = factory.conv(4, 3, "conv1")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, factory.dense(3, "fc1")(x), name="bn_net")


def _batch():
    rng = np.random.RandomState(0)
    return rng.rand(32, 8, 8, 1).astype(np.float32), rng.randint(0, 3, 32)


def _fit(network, steps=3, weight_decay=1e-2):
    keras.utils.set_random_seed(0)
    attack = attacks.PGDConfig(eps=0.1, steps=2)
    model = trainer.RobustTrainer(network, objectives.PGDAdversarial(attack))
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9, weight_decay=weight_decay))
    x, y = _batch()
    model.fit(x, y, batch_size=16, epochs=steps, verbose=0)


def _snapshot(network):
    return {v.path: v.numpy().copy() for v in network.weights}


class PhaseTest(tf.test.TestCase):
    def _source(self):
        keras.utils.set_random_seed(3)
        dense = _bn_net()
        _fit(dense, steps=1)  # moves BN statistics away from their init
        return dense

    def _prune(self, prune_bn):
        network = _bn_net(keep_ratio=0.3)
        origin = phases.prepare(network, "prune", self._source(), prune_bn=prune_bn)
        self.assertEqual(origin, "scaled weight magnitude")
        before = _snapshot(network)
        _fit(network)
        return before, _snapshot(network)

    def test_prune_changes_scores_and_batch_norm_by_default(self):
        # The reference code: kernels and biases frozen; BN's gamma / beta
        # train and its moving statistics follow the pruned network.
        before, after = self._prune("train")
        for path, value in before.items():
            if path.endswith(("score", "gamma", "beta", "moving_mean", "moving_variance")):
                self.assertNotAllClose(value, after[path], msg=path)
            else:  # kernels and biases
                self.assertAllEqual(value, after[path], msg=path)

    def test_prune_freeze_affine_keeps_gamma_beta_but_updates_statistics(self):
        before, after = self._prune("freeze_affine")
        for path, value in before.items():
            if path.endswith(("score", "moving_mean", "moving_variance")):
                self.assertNotAllClose(value, after[path], msg=path)
            else:
                self.assertAllEqual(value, after[path], msg=path)

    def test_prune_freeze_changes_scores_only(self):
        before, after = self._prune("freeze")
        for path, value in before.items():
            if path.endswith("score"):
                self.assertNotAllClose(value, after[path], msg=path)
            else:  # kernels, biases, BN gamma/beta and moving statistics
                self.assertAllEqual(value, after[path], msg=path)

    def test_prune_batch_norm_uses_batch_statistics_unless_frozen(self):
        x, _ = _batch()
        for prune_bn, batch_stats in (("train", True), ("freeze_affine", True), ("freeze", False)):
            network = _bn_net(keep_ratio=0.3)
            phases.prepare(network, "prune", self._source(), prune_bn=prune_bn)
            bn_out = keras.Model(network.input, network.get_layer("bn1").output)
            differs = not np.allclose(bn_out(x, training=True), bn_out(x, training=False))
            self.assertEqual(differs, batch_stats, msg=prune_bn)

    def test_unknown_prune_bn(self):
        with self.assertRaisesRegex(ValueError, "prune_bn"):
            phases.prepare(_bn_net(keep_ratio=0.3), "prune", self._source(), prune_bn="off")

    def test_finetune_changes_only_surviving_weights(self):
        source = _bn_net(keep_ratio=0.3)
        phases.prepare(source, "prune", self._source())
        _fit(source)
        network = _bn_net(keep_ratio=0.3)
        self.assertEqual(phases.prepare(network, "finetune", source), "source checkpoint")
        masks_before = {lyr.name: lyr.mask().numpy() for lyr in layers.scored_layers(network)}
        before = _snapshot(network)
        _fit(network)
        after = _snapshot(network)
        for layer in layers.scored_layers(network):
            mask = masks_before[layer.name]
            self.assertAllEqual(layer.mask(), mask)
            self.assertAllEqual(before[layer.score.path], after[layer.score.path])
            kernel_before, kernel_after = before[layer.kernel.path], after[layer.kernel.path]
            self.assertAllEqual(kernel_before[mask == 0], kernel_after[mask == 0])
            self.assertFalse(np.allclose(kernel_before[mask == 1], kernel_after[mask == 1]))
        self.assertNotAllClose(before["bn1/gamma"], after["bn1/gamma"])

    def test_lwm_mask_is_top_weight_magnitude(self):
        source = self._source()
        network = _bn_net(keep_ratio=0.2)
        self.assertEqual(phases.prepare(network, "finetune", source), "scaled weight magnitude")
        for layer in layers.scored_layers(network):
            kernel = np.abs(source.get_layer(layer.name).kernel.numpy())
            mask = layer.mask().numpy()
            self.assertGreaterEqual(kernel[mask == 1].min(), kernel[mask == 0].max())

    def test_random_score_init_keeps_layer_scores(self):
        network = _bn_net(keep_ratio=0.2)
        scores_before = network.get_layer("fc1").score.numpy().copy()
        self.assertEqual(
            phases.prepare(network, "prune", self._source(), score_init="he_normal"),
            "random (he_normal)",
        )
        self.assertAllEqual(network.get_layer("fc1").score, scores_before)

    def test_prune_needs_source(self):
        with self.assertRaisesRegex(ValueError, "source checkpoint"):
            phases.prepare(_bn_net(0.1), "prune", None)

    def test_unknown_phase(self):
        with self.assertRaisesRegex(ValueError, "Unknown phase"):
            phases.prepare(_bn_net(), "distill")


class TransferTest(tf.test.TestCase, parameterized.TestCase):
    def test_other_architecture_is_rejected(self):
        source = architectures.build("cnn_large", (28, 28, 1), 10)
        target = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.1)
        with self.assertRaisesRegex(phases.CheckpointMismatchError, "cnn_large.*cnn_small"):
            phases.transfer_weights(source, target)

    def test_other_shapes_are_rejected(self):
        source = architectures.build("cnn_small", (28, 28, 1), 5)
        target = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.1)
        with self.assertRaisesRegex(phases.CheckpointMismatchError, "fc2/kernel has shape"):
            phases.transfer_weights(source, target)

    def test_copies_every_variable(self):
        source = architectures.build("cnn_small", (28, 28, 1), 10)
        target = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.1)
        self.assertFalse(phases.transfer_weights(source, target))
        for layer in layers.scored_layers(target):
            self.assertAllEqual(layer.kernel, source.get_layer(layer.name).kernel)
            self.assertAllEqual(layer.bias, source.get_layer(layer.name).bias)


if __name__ == "__main__":
    tf.test.main()
