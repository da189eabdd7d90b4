"""Tests for hydra_tf.objectives.mixtrain: its schedules, its loss, and training with it."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from hydra_tf import distribute
from hydra_tf import objectives
from hydra_tf.models import architectures
from hydra_tf.models import layers as score_layers
from hydra_tf.objectives import bounds
from hydra_tf.objectives import verifiable
from hydra_tf.pruning import phases
from hydra_tf.training import trainer
from tests import helpers


def _network(seed=3, **kwargs):
    keras.utils.set_random_seed(seed)
    return architectures.build("cnn_verifiable", (28, 28, 1), 10, **kwargs)


def _data(n, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 28, 28, 1).astype(np.float32), rng.randint(0, 10, n)


def _at_step(step, function):
    with distribute.step_randomness(0, tf.constant(step, tf.int64)):
        return function()


class ScheduleTest(tf.test.TestCase):
    def test_eps_per_epoch_and_weight_after_the_ramp(self):
        config = objectives.MixTrainConfig(eps=0.2, ramp_epochs=4, weight=0.1)
        objective = objectives.make(config, steps_per_epoch=10)
        # (step, eps, weight): eps grows per epoch (constant within one), the
        # weight is x2.5 every 5 epochs after the ramp, capped at 50.
        for step, eps, weight in (
            (0, 0.0, 0.1),
            (9, 0.0, 0.1),
            (10, 0.05, 0.1),
            (35, 0.15, 0.1),
            (40, 0.2, 0.1),
            (89, 0.2, 0.1),
            (90, 0.2, 0.25),
            (140, 0.2, 0.625),
            (10_000, 0.2, 50.0),
        ):
            got = [float(v) for v in objective.schedule(step)]
            self.assertAllClose(got, [eps, weight], msg=f"step {step}")

    def test_eps_per_step(self):
        # ramp="linear": eps grows every step, the weight still per epoch after the ramp.
        config = objectives.MixTrainConfig(eps=0.2, ramp_epochs=4, ramp="linear", every=5)
        objective = objectives.make(config, steps_per_epoch=10)
        for step, eps, weight in (
            (0, 0.0, 0.1),
            (5, 0.025, 0.1),
            (35, 0.175, 0.1),
            (40, 0.2, 0.1),
            (90, 0.2, 0.25),
        ):
            got = [float(v) for v in objective.schedule(step)]
            self.assertAllClose(got, [eps, weight], msg=f"step {step}")
        # smoothed: below the linear ramp early on, the full eps at its end.
        smoothed = objectives.make(dataclasses.replace(config, ramp="smoothed"), steps_per_epoch=10)
        early, _ = smoothed.schedule(5)
        self.assertBetween(float(early), 0.0, 0.025 / 10)
        self.assertAllClose(float(smoothed.schedule(40)[0]), 0.2)
        with self.assertRaisesRegex(ValueError, "Unknown ramp 'cosine'"):
            objectives.MixTrainConfig(ramp="cosine")

    def test_outside_a_step_full_eps_and_initial_weight(self):
        objective = objectives.make(objectives.MixTrainConfig(eps=0.1), steps_per_epoch=3)
        self.assertAllClose([float(v) for v in objective.schedule()], [0.1, 0.1])

    def test_bad_settings(self):
        for kwargs, pattern in (
            ({"eps": 0.0}, "eps > 0"),
            ({"samples": 0}, "samples"),
            ({"probability": 1.5}, "probability"),
            ({"growth": 0.5}, "growth >= 1"),
        ):
            with self.assertRaisesRegex(ValueError, pattern):
                objectives.MixTrainConfig(**kwargs)

    def test_at_full_eps(self):
        full = objectives.MixTrainConfig(ramp_epochs=15).at_full_eps()
        self.assertEqual((full.ramp_epochs, full.name), (0.0, "mixtrain"))


class LossTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.network = _network()
        self.ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def _objective(self, **settings):
        config = objectives.MixTrainConfig(eps=0.01, ramp_epochs=0, **settings)
        return objectives.make(config, steps_per_epoch=1)

    def test_without_the_robust_term_the_loss_is_the_clean_cross_entropy(self):
        x, y = _data(8)
        objective = self._objective(probability=0.0)
        loss, logits = _at_step(3, lambda: objective.loss(self.network, x, y, x))
        self.assertAllClose(float(loss), float(self.ce(y, logits)), rtol=1e-6)

    def test_robust_term_is_the_symbolic_worst_case_cross_entropy(self):
        # One example and one sample: the sampled example is that one.
        x, y = _data(1)
        objective = self._objective(probability=1.0, samples=1, weight=0.5)
        loss, logits = _at_step(0, lambda: objective.loss(self.network, x, y, x))
        box = bounds.IntervalBounds.from_linf(x, 0.01)
        lower = bounds.symbolic_specification_bounds(
            self.network, box, bounds.margin_specification(y, 10)
        ).lower
        worst = -verifiable.scatter_margins(lower, tf.constant(y), 10)
        expected = self.ce(y, logits) + 0.5 * self.ce(y, worst)
        self.assertAllClose(float(loss), float(expected), rtol=1e-5)
        self.assertGreater(float(self.ce(y, worst)), float(self.ce(y, logits)))

    def test_the_term_is_added_with_its_probability(self):
        x, y = _data(4)
        objective = self._objective(probability=0.5, samples=1, weight=1.0)
        added = 0
        for step in range(40):
            loss, logits = _at_step(step, lambda: objective.loss(self.network, x, y, x))
            added += int(float(loss) > float(self.ce(y, logits)) + 1e-6)
        self.assertBetween(added, 10, 30)  # binomial(40, 0.5): outside has p < 0.002


class TrainingTest(tf.test.TestCase):
    def test_prune_phase_moves_the_scores_and_logs_the_schedule(self):
        source = _network()
        network = _network(keep_ratio=0.1)
        phases.prepare(network, "prune", source)
        layers = score_layers.pruned_layers(network)
        scores = [layer.score.numpy() for layer in layers]
        objective = objectives.make(
            objectives.MixTrainConfig(eps=0.02, ramp_epochs=0, samples=2, probability=1.0),
            steps_per_epoch=2,
        )
        model = trainer.RobustTrainer(network, objective)
        model.compile(keras.optimizers.Adam(1e-2))
        x, y = _data(32)
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
        for layer, before in zip(layers, scores):
            self.assertNotAllClose(layer.score.numpy(), before, msg=layer.name)
        self.assertAllClose(history["eps"], [0.02, 0.02])
        self.assertAllClose(history["robust_weight"], [0.1, 0.1])
        self.assertTrue(all(np.isfinite(history["loss"])))

    def test_trains_on_two_replicas(self):
        # Each replica draws its own examples, so the result is not the one
        # device's; the loss must be finite and the schedule the same.
        strategy = helpers.mirrored_cpus()
        with strategy.scope():
            network = _network()
            objective = objectives.make(
                objectives.MixTrainConfig(eps=0.02, ramp_epochs=2, samples=2, probability=1.0),
                steps_per_epoch=2,
            )
            model = trainer.RobustTrainer(network, objective)
            model.compile(keras.optimizers.Adam(1e-3))
        x, y = _data(32)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        history = model.fit(dataset, epochs=3, shuffle=False, verbose=0).history
        self.assertTrue(all(np.isfinite(history["loss"])))
        self.assertAllClose(history["eps"], [0.0, 0.01, 0.02])


if __name__ == "__main__":
    tf.test.main()
