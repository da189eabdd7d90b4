"""Tests for hydra_tf.objectives.verifiable: the eps ramp, the IBP / CROWN-IBP losses, training."""

import os
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import distribute
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.models import architectures
from hydra_tf.models import layers as score_layers
from hydra_tf.objectives import bounds
from hydra_tf.objectives import verifiable
from hydra_tf.pruning import phases
from hydra_tf.training import trainer


def _fraction(step, start, end, shape):
    return float(verifiable.ramp_fraction(step, start, end, shape))


def _data(n=32, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 28, 28, 1).astype(np.float32), rng.randint(0, 10, n)


def _network(seed=3, **kwargs):
    keras.utils.set_random_seed(seed)
    return architectures.build("cnn_verifiable", (28, 28, 1), 10, **kwargs)


class RampTest(tf.test.TestCase):
    def test_linear(self):
        values = [_fraction(s, 10, 30, "linear") for s in (0, 10, 15, 20, 30, 50)]
        self.assertAllClose(values, [0.0, 0.0, 0.25, 0.5, 1.0, 1.0])

    def test_no_ramp_is_a_step_at_its_start(self):
        self.assertEqual(_fraction(4, 5, 5, "linear"), 0.0)
        self.assertEqual(_fraction(5, 5, 5, "smoothed"), 1.0)

    def test_smoothed_is_a_power_curve_then_the_line(self):
        start, end = 0, 100
        mid = 25  # a quarter of the ramp
        steps = np.arange(0, 121)
        values = np.array([_fraction(s, start, end, "smoothed") for s in steps])
        self.assertEqual(values[0], 0.0)
        self.assertAllClose(values[100:], np.ones(21))
        self.assertTrue(np.all(np.diff(values) >= 0))
        # Before mid: alpha * t^4, so doubling t multiplies the value by 16.
        self.assertAllClose(values[20] / values[10], 16.0, rtol=1e-4)
        # After mid: a straight line ending at 1, with the curve's slope at mid.
        slope = (values[100] - values[mid]) / (100 - mid)
        self.assertAllClose(np.diff(values[mid:101]), np.full(100 - mid, slope), atol=1e-6)
        curve_slope = 4 * values[mid] / (mid - start)
        self.assertAllClose(curve_slope, slope, rtol=1e-4)
        # Starts slower than the linear ramp.
        self.assertLess(values[mid], mid / 100)

    def test_unknown_shape(self):
        with self.assertRaisesRegex(ValueError, "Unknown ramp"):
            verifiable.ramp_fraction(0, 0, 1, "cosine")


class ScheduleTest(tf.test.TestCase):
    def test_ramp_of_eps_kappa_beta(self):
        config = objectives.CrownIBPConfig(
            eps=0.2, warmup_epochs=1, ramp_epochs=2, kappa_start=1.0, kappa_end=0.5
        )
        objective = objectives.make(config, steps_per_epoch=10)
        expected = {
            0: (0.0, 1.0, 1.0),
            10: (0.0, 1.0, 1.0),
            20: (0.1, 0.75, 0.5),
            30: (0.2, 0.5, 0.0),
            99: (0.2, 0.5, 0.0),
        }
        for step, values in expected.items():
            self.assertAllClose([float(v) for v in objective.schedule(step)], values)

    def test_final_beta_and_ibp_beta(self):
        config = objectives.CrownIBPConfig(eps=0.1, ramp_epochs=1, final_beta=0.25)
        crown = objectives.make(config, steps_per_epoch=4)
        self.assertAllClose(float(crown.schedule(4)[2]), 0.25)
        ibp = objectives.make(objectives.IBPConfig(eps=0.1, ramp_epochs=1), steps_per_epoch=4)
        self.assertAllClose(float(ibp.schedule(2)[2]), 0.0)

    def test_outside_a_training_step_the_schedule_is_at_its_end(self):
        config = objectives.IBPConfig(eps=0.1, warmup_epochs=5, ramp_epochs=5)
        objective = objectives.make(config, steps_per_epoch=100)
        self.assertAllClose([float(v) for v in objective.schedule()], [0.1, 0.5, 0.0])
        with distribute.step_randomness(0, tf.constant(0, tf.int64)):
            self.assertAllClose(float(objective.schedule()[0]), 0.0)

    def test_at_full_eps(self):
        config = objectives.CrownIBPConfig(eps=0.1, warmup_epochs=1, ramp_epochs=5)
        full = config.at_full_eps()
        self.assertEqual((full.warmup_epochs, full.ramp_epochs, full.eps), (0.0, 0.0, 0.1))
        self.assertEqual(full.name, "crown_ibp")

    def test_bad_settings(self):
        for kwargs, pattern in (
            ({"eps": 0.0}, "eps > 0"),
            ({"ramp_epochs": -1.0}, "ramp_epochs"),
            ({"ramp": "cubic"}, "Unknown ramp"),
            ({"kappa_end": 1.5}, "kappa_end"),
        ):
            with self.assertRaisesRegex(ValueError, pattern):
                objectives.IBPConfig(**kwargs)
        with self.assertRaisesRegex(ValueError, "final_beta"):
            objectives.CrownIBPConfig(final_beta=2.0)

    def test_flags_reach_the_config(self):
        config = objectives.config(
            "crown_ibp", eps=0.3, steps=10, ramp_epochs=3.0, ramp="smoothed", final_beta=0.5
        )
        self.assertEqual((config.eps, config.ramp_epochs, config.ramp), (0.3, 3.0, "smoothed"))
        self.assertEqual(objectives.from_json(dict(vars(config), name="crown_ibp")), config)


class LossTest(tf.test.TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.network = _network()
        x, y = _data()
        self.x, self.y = tf.constant(x), tf.constant(y)
        self.ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def _loss(self, name, step, **settings):
        config = objectives.config(name, eps=0.02, ramp_epochs=1.0, **settings)
        objective = objectives.make(config, steps_per_epoch=10)
        with distribute.step_randomness(0, tf.constant(step, tf.int64)):
            loss, logits = objective.loss(self.network, self.x, self.y, self.x)
        return objective, float(loss), logits

    @parameterized.parameters("ibp", "crown_ibp")
    def test_at_eps_zero_the_loss_is_the_clean_cross_entropy(self, name):
        # Margin bounds at eps 0 are the margins: CE(-lower) = CE(logits),
        # whatever kappa weighs.
        _, loss, logits = self._loss(name, 0, kappa_start=0.0, kappa_end=0.0)
        self.assertAllClose(loss, float(self.ce(self.y, logits)), rtol=1e-5)

    def test_ibp_loss_is_the_cross_entropy_of_the_worst_logits(self):
        _, loss, logits = self._loss("ibp", 5, kappa_start=1.0, kappa_end=0.0)  # eps 0.01
        box = bounds.IntervalBounds.from_linf(self.x, 0.01)
        lower = bounds.specification_bounds(
            self.network, box, bounds.margin_specification(self.y, 10)
        ).lower.numpy()
        worst = np.zeros((len(self.y), 10), np.float32)
        for i, label in enumerate(self.y.numpy()):
            others = [c for c in range(10) if c != label]
            worst[i, others] = -lower[i]
        expected = 0.5 * self.ce(self.y, worst) + 0.5 * self.ce(self.y, logits)
        self.assertAllClose(loss, float(expected), rtol=1e-5)
        self.assertGreater(loss, float(self.ce(self.y, logits)))

    def test_crown_ibp_mixes_the_two_bounds_by_beta(self):
        objective = objectives.make(objectives.CrownIBPConfig(eps=0.01), steps_per_epoch=1)
        spec = bounds.margin_specification(self.y, 10)
        box = bounds.IntervalBounds.from_linf(self.x, 0.01)
        ibp = bounds.specification_bounds(self.network, box, spec).lower
        crown, _ = bounds.backward_bounds(self.network, box, spec, upper=False)
        self.assertGreater(float(tf.reduce_max(tf.abs(crown - ibp))), 1e-3)
        for beta in (0.0, 0.3, 1.0):
            mixed = objective.margin_lower_bounds(self.network, self.x, self.y, 0.01, beta)
            self.assertAllClose(mixed, beta * crown + (1 - beta) * ibp, atol=1e-5)

    def test_scatter_margins_puts_zero_at_the_label(self):
        lower = tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
        labels = tf.constant([0, 1, 2])
        self.assertAllEqual(
            verifiable.scatter_margins(lower, labels, 3),
            [[0.0, 1.0, 2.0], [3.0, 0.0, 4.0], [5.0, 6.0, 0.0]],
        )


def _fit(network, objective, phase_epochs=1):
    model = trainer.RobustTrainer(network, objective)
    model.compile(keras.optimizers.Adam(1e-2))
    x, y = _data(64)
    history = model.fit(x, y, batch_size=32, epochs=phase_epochs, shuffle=False, verbose=0)
    return history.history


class TrainingTest(tf.test.TestCase):
    def test_prune_phase_trains_scores_through_the_bound_loss(self):
        source = _network()
        network = _network(keep_ratio=0.1)
        phases.prepare(network, "prune", source)
        layers = score_layers.pruned_layers(network)
        scores = [layer.score.numpy() for layer in layers]
        kernels = [layer.kernel.numpy() for layer in layers]
        masks = [layer.hard_mask().numpy() for layer in layers]
        # Pure robust loss (kappa 0): every score gradient comes from the bounds.
        objective = objectives.make(
            objectives.IBPConfig(eps=0.05, kappa_start=0.0, kappa_end=0.0), steps_per_epoch=2
        )
        history = _fit(network, objective, phase_epochs=2)
        for layer, before, kernel in zip(layers, scores, kernels):
            self.assertNotAllClose(layer.score.numpy(), before, msg=layer.name)
            self.assertAllEqual(layer.kernel.numpy(), kernel)
        changed = sum(
            int(np.sum(layer.hard_mask().numpy() != mask)) for layer, mask in zip(layers, masks)
        )
        self.assertGreater(changed, 0)
        self.assertAllClose(history["eps"], [0.05, 0.05])

    def test_history_shows_the_ramp_and_verified_accuracy(self):
        objective = objectives.make(
            objectives.CrownIBPConfig(eps=0.1, warmup_epochs=1, ramp_epochs=2), steps_per_epoch=2
        )
        history = _fit(_network(), objective, phase_epochs=4)
        # Steps 0-1 at eps 0; steps 2, 3 at 0, 0.025; 4, 5 at 0.05, 0.075; then 0.1.
        self.assertAllClose(history["eps"], [0.0, 0.0125, 0.0625, 0.1], atol=1e-6)
        self.assertLen(history["verified_accuracy"], 4)
        for value in history["verified_accuracy"]:
            self.assertBetween(value, 0.0, 1.0)

    def test_mixed_precision_bounds_are_float32_and_match(self):
        x, y = _data()
        objective = objectives.make(objectives.CrownIBPConfig(eps=0.01), steps_per_epoch=1)
        weights = _network().get_weights()
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            mixed = architectures.build("cnn_verifiable", (28, 28, 1), 10)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        mixed.set_weights(weights)
        plain = _network()
        for beta in (0.0, 1.0):
            expected = objective.margin_lower_bounds(plain, x, y, 0.01, beta)
            got = objective.margin_lower_bounds(mixed, x, y, 0.01, beta)
            self.assertEqual(got.dtype, tf.float32)
            self.assertAllClose(got, expected, atol=1e-5)
        model = trainer.RobustTrainer(mixed, objective)
        model.compile(keras.optimizers.Adam(1e-3))
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))


class _Killed(Exception):
    pass


class ResumeTest(tf.test.TestCase):
    def _config(self, workdir):
        objective = objectives.CrownIBPConfig(eps=0.05, warmup_epochs=1, ramp_epochs=2)
        # Four steps per epoch: the resumed run must also see the data in the
        # order of the uninterrupted one.
        return training.TrainConfig(
            workdir=workdir,
            arch="cnn_verifiable",
            objective=objective,
            train_limit=256,
            test_limit=32,
            batch_size=64,
            epochs=4,
            optimizer="adam",
            learning_rate=1e-3,
            weight_decay=0.0,
        )

    def test_killed_run_resumes_exactly_on_the_ramp(self):
        straight = training.train(self._config(tempfile.mkdtemp()), verbose=0)
        workdir = tempfile.mkdtemp()
        original = training._LogProgress.on_epoch_end

        def kill_after_second_epoch(callback, epoch, logs=None):
            original(callback, epoch, logs)
            if epoch == 1:
                raise _Killed()

        with (
            self.assertRaises(_Killed),
            mock.patch.object(training._LogProgress, "on_epoch_end", kill_after_second_epoch),
        ):
            training.train(self._config(workdir), verbose=0)
        resumed = training.train(self._config(workdir), verbose=0)
        self.assertTrue(resumed.resumed)
        self.assertAllClose(resumed.history["eps"], straight.history["eps"])
        # Steps 0-3 warm-up; 4-11 on the ramp, eps 0.05 * (step - 4) / 8; then full.
        self.assertAllClose(resumed.history["eps"], [0.0, 0.009375, 0.034375, 0.05], atol=1e-6)
        expected = keras.saving.load_model(straight.model_path, safe_mode=True).get_weights()
        got = keras.saving.load_model(os.path.join(workdir, "model.keras")).get_weights()
        for a, b in zip(got, expected):
            self.assertAllClose(a, b, atol=1e-5)


if __name__ == "__main__":
    tf.test.main()
