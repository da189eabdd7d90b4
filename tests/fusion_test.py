"""Tests for hydra_tf.objectives.bounds.fusion: the fused cross-entropy bound and its training."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import objectives
from hydra_tf.models import architectures
from hydra_tf.objectives import bounds
from tests import soundness


def _fused(network, x, labels, eps):
    box = bounds.IntervalBounds.from_linf(x, eps)
    num_classes = int(network.outputs[0].shape[-1])
    spec = bounds.margin_specification(labels, num_classes)
    margins = bounds.specification_bounds(network, box, spec)
    return box, margins, bounds.cross_entropy_upper_bound(network, box, labels, margins)


def _cross_entropy(logits, labels):
    """(batch, n) cross-entropies of logits (batch, n, classes) at each example's label."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    picked = np.take_along_axis(shifted, labels[:, None, None], axis=-1)[..., 0]
    return log_z - picked


class CrossEntropyBoundTest(tf.test.TestCase, parameterized.TestCase):
    def test_hand_computed_one_input(self):
        # z = (0, x) on x in [0.3, 0.7], label 0: CE = log(1 + e^x) is largest at
        # x = 0.7 and linear in x inside the exp, so the bound is exact there.
        inputs = keras.Input((1,))
        network = keras.Model(inputs, keras.layers.Dense(2, name="logits")(inputs))
        network.get_layer("logits").set_weights([np.array([[0.0, 1.0]]), np.zeros(2)])
        x = np.array([[0.5]], np.float32)
        _, _, fused = _fused(network, x, np.array([0]), 0.2)
        self.assertAllClose(fused, [np.log(1 + np.exp(0.7))], atol=1e-6)

    @parameterized.product(name=sorted(soundness.BODIES), seed=(0, 1))
    def test_above_the_cross_entropy_at_sampled_points(self, name, seed):
        network = soundness.network(name, seed)
        rng = np.random.default_rng(seed)
        x = rng.uniform(0.02, 0.98, (soundness.BATCH,) + soundness.SHAPE).astype(np.float32)
        labels = rng.integers(0, soundness.CLASSES, soundness.BATCH)
        box, margins, fused = _fused(network, x, labels, soundness.EPS)
        points = soundness.samples(box, rng)
        logits = network.predict(points, batch_size=4096, verbose=0).reshape(
            (soundness.BATCH, soundness.SAMPLES, soundness.CLASSES)
        )
        worst = _cross_entropy(logits, labels).max(axis=1)
        self.assertAllGreaterEqual(np.asarray(fused) - worst, -soundness.TOLERANCE)
        # Not vacuous: within a few nats of the sampled worst case.
        self.assertAllLess(np.asarray(fused) - worst, 20.0)
        del margins

    def test_large_logits_do_not_overflow(self):
        network = soundness.network("dense", 0)
        last = network.layers[-1]
        kernel, bias = last.get_weights()
        last.set_weights([kernel * 200.0, bias * 200.0])
        x = np.random.default_rng(0).uniform(0.1, 0.9, (3,) + soundness.SHAPE).astype(np.float32)
        _, _, fused = _fused(network, x, np.array([0, 1, 2]), soundness.EPS)
        self.assertTrue(np.all(np.isfinite(fused)))
        self.assertAllGreater(fused, 0.0)


class LossFusionTrainingTest(tf.test.TestCase):
    def test_fused_loss_bounds_clean_loss_and_trains_every_weight(self):
        keras.utils.set_random_seed(0)
        network = architectures.build("cnn_verifiable", (28, 28, 1), 10)
        rng = np.random.default_rng(0)
        x = tf.constant(rng.random((16, 28, 28, 1)), tf.float32)
        y = tf.constant(rng.integers(0, 10, 16))
        config = objectives.config(
            "crown_ibp", eps=0.05, kappa_start=0.0, kappa_end=0.0, final_beta=1.0, loss_fusion=True
        )
        fused = objectives.make(config)
        plain = objectives.make(objectives.config("crown_ibp", eps=0.05, final_beta=1.0))
        with tf.GradientTape() as tape:
            loss, logits = fused.loss(network, x, y, None)
        clean = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
        self.assertGreater(float(loss), float(clean))
        gradients = tape.gradient(loss, network.trainable_variables)
        for variable, gradient in zip(network.trainable_variables, gradients):
            self.assertGreater(float(tf.reduce_max(tf.abs(gradient))), 0.0, variable.path)
        self.assertFalse(plain.config.loss_fusion)
