"""Tests for hydra_tf.objectives: losses against hand computations."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import objectives
from hydra_tf.objectives import attacks


def _linear_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])


def _ce(logits, y):
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.mean(logp[np.arange(len(y)), y])


def _consistency(clean, other, y, beta):
    """CE(clean) + beta * KL(softmax(clean) || softmax(other)), by hand."""
    p = np.exp(clean) / np.exp(clean).sum(-1, keepdims=True)
    q = np.exp(other) / np.exp(other).sum(-1, keepdims=True)
    kl = np.mean(np.sum(p * np.log(p / q), -1))
    return _ce(clean, y) + beta * kl, kl


class ObjectiveTest(tf.test.TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.RandomState(0)
        self.x = rng.rand(5, 2, 2, 1).astype(np.float32)
        self.y = np.array([0, 1, 2, 1, 0])

    def test_natural_is_cross_entropy(self):
        model = _linear_model()
        objective = objectives.Natural()
        loss, logits = objective.loss(
            model, self.x, self.y, objective.perturb(model, self.x, self.y)
        )
        self.assertAllClose(loss, _ce(model(self.x).numpy(), self.y), rtol=1e-5)
        self.assertAllClose(logits, model(self.x))

    def test_pgd_at_trains_on_adversarial_inputs(self):
        model = _linear_model()
        attack = attacks.PGDConfig(eps=0.2, steps=3)
        objective = objectives.PGDAdversarial(attack)
        x_adv = objective.perturb(model, self.x, self.y)
        self.assertLessEqual(float(tf.reduce_max(tf.abs(x_adv - self.x))), 0.2 + 1e-6)
        loss, _ = objective.loss(model, self.x, self.y, x_adv)
        self.assertAllClose(loss, _ce(model(x_adv).numpy(), self.y), rtol=1e-5)
        self.assertGreater(float(loss), _ce(model(self.x).numpy(), self.y))

    def test_trades_hand_computed(self):
        model = _linear_model()
        objective = objectives.Trades(attacks.PGDConfig(eps=0.1, steps=2), beta=6.0)
        x_adv = objective.perturb(model, self.x, self.y)
        loss, logits = objective.loss(model, self.x, self.y, x_adv)
        clean = model(self.x).numpy()
        expected, kl = _consistency(clean, model(x_adv).numpy(), self.y, 6.0)
        self.assertAllClose(loss, expected, rtol=1e-4)
        self.assertAllClose(logits, clean)
        self.assertGreater(kl, 0.0)

    def test_trades_uniform_start_sees_a_unit_the_gaussian_start_does_not(self):
        # One ReLU unit, off on a zero image by a margin (bias -0.05) that the
        # Gaussian start (0.001 per pixel) does not cross but eps 0.1 does: the
        # mechanism of the TRADES finetune break (results/adversarial/README.md).
        model = keras.Sequential(
            [
                keras.Input((4, 4, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(1, activation="relu"),
                keras.layers.Dense(2, use_bias=False),
            ]
        )
        model.layers[1].set_weights([np.ones((16, 1), np.float32), np.array([-0.05], np.float32)])
        model.layers[2].set_weights([np.array([[1.0, -1.0]], np.float32)])
        x = np.zeros((8, 4, 4, 1), np.float32)
        y = np.zeros(8, np.int64)
        attack = attacks.PGDConfig(eps=0.1, steps=5, step_size=0.025)
        kl = {}
        for start in objectives.adversarial.STARTS:
            objective = objectives.Trades(attack, start=start)
            x_adv = objective.perturb(model, x, y)
            self.assertGreaterEqual(float(tf.reduce_min(x_adv)), 0.0)
            self.assertLessEqual(float(tf.reduce_max(x_adv)), 0.1 + 1e-6)
            _, kl[start] = _consistency(model(x).numpy(), model(x_adv).numpy(), y, 6.0)
        # Gaussian: the unit stays off, the input gradient is zero, nothing is found.
        self.assertLess(kl["gaussian"], 1e-6)
        # Uniform: the unit is on from the start, and the ascent drives every pixel to eps.
        self.assertGreater(kl["uniform"], 0.5)

    def test_trades_vertex_start_sees_thresholds_just_below_eps(self):
        # Per pixel one ReLU unit, on above 0.09 (bias -0.09 after a weight of 1),
        # summed into the logits: the live first-layer unit of the cnn_large 99%
        # networks (results/adversarial/README.md). On a zero image a pixel gets a
        # gradient only once it starts above the threshold: the uniform start puts
        # (0.1 - 0.09) / 0.2 = 5% of them there, the vertex start half of them.
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(1, 1, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(2, use_bias=False),
            ]
        )
        model.layers[0].set_weights([np.ones((1, 1, 1, 1), np.float32), np.array([-0.09])])
        model.layers[2].set_weights([np.tile([[1.0, -1.0]], (28 * 28, 1)).astype(np.float32)])
        x = np.zeros((4, 28, 28, 1), np.float32)
        # Label 1: PGD-AT's cross-entropy ascent raises logit 0, so it too pushes
        # every pixel it sees above the threshold (TRADES ignores the label).
        y = np.ones(4, np.int64)
        attack = attacks.PGDConfig(eps=0.1, steps=5, step_size=0.025)
        for objective_class in (objectives.Trades, objectives.PGDAdversarial):
            above = {}
            for start in objectives.adversarial.STARTS:
                x_adv = objective_class(attack, start=start).perturb(model, x, y).numpy()
                self.assertBetween(float(x_adv.min()), 0.0, 0.1 + 1e-6)
                self.assertLessEqual(float(x_adv.max()), 0.1 + 1e-6)
                above[start] = float(np.mean(x_adv > 0.09))
            with self.subTest(objective_class.name):
                self.assertEqual(above["gaussian"], 0.0)
                self.assertLess(above["uniform"], 0.1)
                self.assertBetween(above["vertex"], 0.45, 0.55)

    def test_attack_start_is_checked(self):
        for config_class in (objectives.TradesConfig, objectives.PGDATConfig):
            with self.assertRaisesRegex(ValueError, "Unknown attack start 'normal'.*uniform"):
                config_class(start="normal")
        for objective_class in (objectives.Trades, objectives.PGDAdversarial):
            with self.assertRaisesRegex(ValueError, "Unknown attack start"):
                objective_class(attacks.PGDConfig(eps=0.1), start="normal")
        # Configs written before the setting existed load with each objective's
        # reference start: TRADES' Gaussian, Madry et al.'s uniform.
        config = objectives.from_json({"name": "trades", "eps": 0.1, "beta": 6.0})
        self.assertEqual(config.start, "gaussian")
        config = objectives.from_json({"name": "pgd_at", "eps": 0.1, "steps": 10})
        self.assertEqual(config.start, "uniform")
        self.assertEqual(objectives.make(config).start, "uniform")

    def test_pgd_at_without_a_start_keeps_its_attacks_own(self):
        # PGDAdversarial(attack) as the API built it before the setting: the
        # attack's random_start decides. With no steps, random_start=False
        # returns the clean point; the uniform start moves it.
        model = _linear_model()
        fixed = objectives.PGDAdversarial(attacks.PGDConfig(eps=0.1, steps=0, random_start=False))
        self.assertAllEqual(fixed.perturb(model, self.x, self.y), self.x)
        moved = objectives.PGDAdversarial(attacks.PGDConfig(eps=0.1, steps=0), start="uniform")
        self.assertGreater(
            float(tf.reduce_max(tf.abs(moved.perturb(model, self.x, self.y) - self.x))), 0.0
        )

    def test_trades_with_zero_beta_is_clean_cross_entropy(self):
        model = _linear_model()
        objective = objectives.Trades(attacks.PGDConfig(eps=0.1, steps=2), beta=0.0)
        loss, _ = objective.loss(model, self.x, self.y, objective.perturb(model, self.x, self.y))
        self.assertAllClose(loss, _ce(model(self.x).numpy(), self.y), rtol=1e-5)

    def test_gaussian_noise_has_sigma_and_is_not_clipped(self):
        objective = objectives.GaussianNoise(sigma=0.5)
        x = np.full((2000, 2, 2, 1), 0.5, np.float32)
        noise = (objective.perturb(None, x, None) - x).numpy()
        self.assertAllClose(noise.mean(), 0.0, atol=0.02)
        self.assertAllClose(noise.std(), 0.5, rtol=0.03)
        self.assertGreater(float(np.max(x + noise)), 1.0)
        model = _linear_model()
        loss, logits = objective.loss(model, self.x, self.y, self.x + 0.1)
        self.assertAllClose(loss, _ce(model(self.x + 0.1).numpy(), self.y), rtol=1e-5)
        self.assertAllClose(logits, model(self.x + 0.1))

    def test_smoothing_hand_computed(self):
        model = _linear_model()
        objective = objectives.Smoothing(sigma=0.25, beta=2.0)
        noisy = objective.perturb(model, self.x, self.y)
        self.assertNotAllClose(noisy, self.x)
        loss, logits = objective.loss(model, self.x, self.y, noisy)
        clean = model(self.x).numpy()
        expected, _ = _consistency(clean, model(noisy).numpy(), self.y, 2.0)
        self.assertAllClose(loss, expected, rtol=1e-4)
        self.assertAllClose(logits, clean)

    @parameterized.parameters("trades", "smoothing")
    def test_divergence_is_exact_on_saturated_logits(self, name):
        # The perturbed prediction puts ~e^-20 mass on the clean class: a
        # clipped KL (keras.losses.KLDivergence) saturates at ~16.1 with a
        # gradient of ~1e-12; the exact one is ~19.99 with gradient q - p.
        clean = np.zeros((1, 10), np.float32)
        clean[0, 0] = 10.0
        other = np.zeros((1, 10), np.float32)
        other[0, 1] = 20.0
        p = np.exp(clean[0].astype(np.float64)) / np.exp(clean[0].astype(np.float64)).sum()
        q = np.exp(other[0].astype(np.float64)) / np.exp(other[0].astype(np.float64)).sum()
        expected_kl = float(np.sum(p * (np.log(p) - np.log(q))))
        self.assertGreater(expected_kl, 19.9)
        beta = 2.0
        objective = objectives.make(objectives.config(name, beta=beta))
        identity = lambda t, training=False: t  # the "network" outputs its input as logits
        other = tf.constant(other)
        with tf.GradientTape() as tape:
            tape.watch(other)
            loss, _ = objective.loss(identity, tf.constant(clean), np.array([0]), other)
        divergence = (float(loss) - _ce(clean.astype(np.float64), np.array([0]))) / beta
        self.assertAllClose(divergence, expected_kl, rtol=1e-4)
        grad = tape.gradient(loss, other).numpy()[0] / beta
        self.assertAllClose(grad, q - p, atol=1e-4)
        self.assertLess(grad[0], -0.99)
        self.assertGreater(grad[1], 0.99)

    def test_bad_sigma(self):
        with self.assertRaisesRegex(ValueError, "sigma"):
            objectives.Smoothing(sigma=0.0)

    @parameterized.parameters(
        "natural", "pgd_at", "trades", "smoothing", "gaussian", "ibp", "crown_ibp", "mixtrain"
    )
    def test_make(self, name):
        objective = objectives.make(objectives.config(name, eps=0.1))
        self.assertEqual(objective.name, name)

    def test_each_objective_keeps_its_own_settings(self):
        flags = {
            "eps": 0.1,
            "steps": 7,
            "step_size": 0.02,
            "beta": 3.0,
            "sigma": 0.5,
            "warmup_epochs": 1.0,
            "ramp_epochs": 4.0,
            "ramp": "smoothed",
            "kappa_start": 0.9,
            "kappa_end": 0.2,
            "final_beta": 0.1,
            "loss_fusion": True,
            "samples": 3,
            "probability": 0.7,
            "weight": 0.2,
            "every": 2.0,
            "start": "uniform",
        }
        ramp = {
            "eps": 0.1,
            "warmup_epochs": 1.0,
            "ramp_epochs": 4.0,
            "ramp": "smoothed",
            "kappa_start": 0.9,
            "kappa_end": 0.2,
        }
        expected = {
            "natural": {"name": "natural"},
            "pgd_at": {
                "name": "pgd_at",
                "eps": 0.1,
                "steps": 7,
                "step_size": 0.02,
                "start": "uniform",
            },
            "trades": {
                "name": "trades",
                "eps": 0.1,
                "steps": 7,
                "step_size": 0.02,
                "beta": 3.0,
                "start": "uniform",
            },
            "smoothing": {"name": "smoothing", "sigma": 0.5, "beta": 3.0},
            "gaussian": {"name": "gaussian", "sigma": 0.5},
            "free_at": {"name": "free_at", "eps": 0.1, "replays": 4},
            "ibp": {"name": "ibp", **ramp},
            "crown_ibp": {"name": "crown_ibp", **ramp, "final_beta": 0.1, "loss_fusion": True},
            "mixtrain": {
                "name": "mixtrain",
                "eps": 0.1,
                "ramp_epochs": 4.0,
                "ramp": "smoothed",
                "samples": 3,
                "probability": 0.7,
                "weight": 0.2,
                "growth": 2.5,
                "every": 2.0,
                "cap": 50.0,
            },
        }
        self.assertEqual(set(objectives.OBJECTIVES), set(expected))
        for name, values in expected.items():
            config = objectives.config(name, **flags)
            self.assertEqual(dataclasses.asdict(config), values)
            self.assertEqual(objectives.from_json(dataclasses.asdict(config)), config)
            self.assertIsInstance(objectives.make(config), objectives.REGISTRY[name])

    def test_configs_with_every_setting_still_load(self):
        # Before the registry one config class carried every objective's settings.
        flat = {"name": "smoothing", "eps": 0.1, "steps": 10, "step_size": 0.025}
        config = objectives.from_json({**flat, "beta": 6.0, "sigma": 0.25})
        self.assertEqual(config, objectives.SmoothingObjectiveConfig(sigma=0.25, beta=6.0))

    def test_certified_objectives(self):
        certified = [n for n in objectives.OBJECTIVES if objectives.certified(objectives.config(n))]
        self.assertEqual(sorted(certified), ["gaussian", "smoothing"])
        verified = [n for n in objectives.OBJECTIVES if objectives.verified(objectives.config(n))]
        self.assertEqual(sorted(verified), ["crown_ibp", "ibp", "mixtrain"])

    def test_unknown_objective(self):
        with self.assertRaisesRegex(ValueError, "Unknown objective 'fgsm'.*trades"):
            objectives.config("fgsm")

    def test_negative_beta(self):
        with self.assertRaisesRegex(ValueError, "beta"):
            objectives.Trades(attacks.PGDConfig(eps=0.1), beta=-1.0)


if __name__ == "__main__":
    tf.test.main()
