"""Tests for hydra_tf.objectives.attacks.square: the L-inf Square attack."""

import dataclasses

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf.objectives import attacks
from hydra_tf.objectives.attacks import square
from tests import helpers


def _predictions(model, x):
    return np.argmax(model(tf.constant(x), training=False), axis=-1)


class SquareConfigTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ({"eps": -0.1}, "eps=-0.1"),
        ({"eps": float("nan")}, "eps=nan"),
        ({"eps": 0.1, "queries": 0}, "queries=0"),
        ({"eps": 0.1, "p_init": 0.0}, "p_init=0.0"),
        ({"eps": 0.1, "p_init": 1.5}, "p_init=1.5"),
        ({"eps": 0.1, "restarts": 0}, "restarts=0"),
    )
    def test_rejects_bad_settings(self, kwargs, received):
        with self.assertRaisesRegex(ValueError, received):
            square.SquareConfig(**kwargs)

    def test_accepts_edge_settings_and_writes_json(self):
        config = square.SquareConfig(eps=0.0, queries=1, p_init=1.0, restarts=1)
        self.assertEqual(
            config.to_json(),
            {"name": "square", "eps": 0.0, "queries": 1, "p_init": 1.0, "restarts": 1},
        )
        self.assertEqual(square.SquareConfig(eps=0.3).to_json()["queries"], 5000)
        self.assertNotIn("name", [field.name for field in dataclasses.fields(config)])


class ScheduleTest(tf.test.TestCase, parameterized.TestCase):
    # Hand-checked: the iteration rescaled to 10000 queries must exceed
    # 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 to halve p once more.
    @parameterized.parameters(
        (5000, 0, 1),
        (5000, 5, 1),  # rescaled 10: not > 10
        (5000, 6, 2),
        (5000, 25, 2),
        (5000, 26, 4),
        (5000, 100, 4),
        (5000, 101, 8),
        (5000, 250, 8),
        (5000, 251, 16),
        (5000, 500, 16),
        (5000, 501, 32),
        (5000, 1000, 32),
        (5000, 1001, 64),
        (5000, 2000, 64),
        (5000, 2001, 128),
        (5000, 3000, 128),
        (5000, 3001, 256),
        (5000, 4000, 256),
        (5000, 4001, 512),
        (5000, 4998, 512),
        (10000, 10, 1),
        (10000, 11, 2),
        (100, 1, 4),  # rescaled 100: past 10 and 50 at once
        (100, 2, 4),
        (100, 3, 8),
    )
    def test_p_schedule(self, queries, iteration, divisor):
        self.assertAlmostEqual(square.p_schedule(iteration, queries, 0.8), 0.8 / divisor)

    def test_square_side(self):
        # round(sqrt(0.8 / 2^k * 784)): sqrt(627.2) = 25.04, sqrt(313.6) = 17.7,
        # 12.5, 8.9, 6.3, 4.4, 3.1, 2.2, 1.56, 1.1.
        sides = [square.square_side(0.8 / 2**k, 28, 28, 1) for k in range(10)]
        self.assertEqual(sides, [25, 18, 13, 9, 6, 4, 3, 2, 2, 1])
        self.assertEqual(square.square_side(0.8, 32, 32, 3), 29)  # sqrt(819.2) = 28.6
        self.assertEqual(square.square_side(1.0, 28, 28, 1), 27)  # at most H - 1
        self.assertEqual(square.square_side(1e-4, 28, 28, 1), 1)  # at least 1

    @parameterized.parameters(5000, 100, 7, 1)
    def test_graph_side_matches_python(self, queries):
        side_at = square.side_schedule(queries, 0.8, 28, 28, 1)
        iterations = np.arange(max(queries - 1, 1))
        expected = [
            square.square_side(square.p_schedule(i, queries, 0.8), 28, 28, 1) for i in iterations
        ]
        self.assertAllEqual(side_at(tf.constant(iterations, tf.int32)), expected)


class SquareAttackTest(tf.test.TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        tf.random.set_seed(0)

    @parameterized.parameters(0.0, 0.01, 0.1, 0.3)
    def test_returns_box_vertices_inside_the_ball(self, eps):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 32)
        config = square.SquareConfig(eps=eps, queries=30)
        # As the evaluator calls it: a graph with an unknown batch dimension.
        attack = tf.function(
            lambda x, y: config.perturb(model, x, y),
            input_signature=[
                tf.TensorSpec([None, 28, 28, 1], tf.float32),
                tf.TensorSpec([None], tf.int64),
            ],
            reduce_retracing=True,
        )
        x_adv = attack(x, y).numpy()
        self.assertLessEqual(np.abs(x_adv - x).max(), eps + 1e-6)
        self.assertGreaterEqual(x_adv.min(), 0.0)
        self.assertLessEqual(x_adv.max(), 1.0)
        correct = _predictions(model, x) == y
        self.assertAllEqual(x_adv[~correct], x[~correct])  # already misclassified: unchanged
        # Every attacked coordinate moved to a face of the box: x +- eps, clipped to [0, 1].
        lower, upper = np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0)
        on_face = (x_adv == lower) | (x_adv == upper)
        self.assertTrue(on_face[correct].all())
        if eps > 0:
            moved = np.abs(x_adv - x).reshape(len(x), -1).max(axis=1)
            self.assertTrue((moved[correct] >= 0.99 * eps).all())

    def test_breaks_undefended_network(self):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 100)
        x_adv = square.SquareConfig(eps=0.3, queries=300).perturb(model, x, y)
        self.assertGreater((_predictions(model, x) == y).mean(), 0.6)
        self.assertLessEqual((_predictions(model, x_adv) == y).mean(), 0.02)

    def test_breaks_a_gradient_masked_network_pgd_cannot(self):
        natural = helpers.natural_cnn_small()

        def masked(x, training=False):
            # Input quantisation: the logits are piecewise constant in x, so
            # the input gradient is exactly zero (the 0 * x keeps it a tensor).
            return natural(tf.round(x * 8.0) / 8.0 + 0.0 * x, training=training)

        x, y = helpers.fashion_arrays("test", 100)
        self.assertAllEqual(attacks.input_gradient(masked, tf.constant(x), y), np.zeros_like(x))
        eps = 0.2
        clean = (_predictions(masked, x) == y).mean()
        x_pgd = attacks.pgd(masked, x, y, attacks.PGDConfig(eps=eps, steps=10))
        pgd_robust = (_predictions(masked, x_pgd) == y).mean()
        attack = tf.function(square.SquareConfig(eps=eps, queries=300).perturb)
        x_square = attack(masked, tf.constant(x), tf.constant(y))
        square_robust = (_predictions(masked, x_square) == y).mean()
        self.assertGreater(clean, 0.6)
        self.assertGreater(pgd_robust, 0.5 * clean)
        self.assertLess(square_robust, 0.2 * clean)


class RecordingModel:
    """Calls a model eagerly and keeps every batch it was asked about and its logits."""

    def __init__(self, model):
        self.model = model
        self.calls = []

    def __call__(self, x, training=False):
        logits = self.model(x, training=training)
        self.calls.append((x.numpy(), logits.numpy()))
        return logits


def _replay(calls, y, config, height):
    """Runs the attack's decisions on the recorded queries; returns the expected output.

    Checks on the way that every query of a still-unfooled example changes its
    current point, inside one square window of the scheduled side.
    """
    calls = iter(calls)
    x, clean_logits = next(calls)
    fooled = clean_logits.argmax(-1) != y
    best, best_margin = x.copy(), np.full(len(y), np.inf, np.float32)
    picked = np.arange(len(y))

    def margin_of(logits):
        others = np.where(np.eye(logits.shape[-1], dtype=bool)[y], -np.inf, logits)
        return logits[picked, y] - others.max(-1), logits.argmax(-1) != y

    for _ in range(config.restarts):
        current, logits = next(calls)
        margin, wrong = margin_of(logits)
        done = fooled | wrong
        iteration = 0
        while iteration < config.queries - 1 and not done.all():
            candidate, logits = next(calls)
            side = square.square_side(
                square.p_schedule(iteration, config.queries, config.p_init), height, height, 1
            )
            for n in np.flatnonzero(~done):
                rows, cols, _ = np.nonzero(candidate[n] != current[n])
                assert len(rows), f"query {iteration} left example {n} unchanged"
                assert rows.max() - rows.min() < side and cols.max() - cols.min() < side
            new_margin, new_wrong = margin_of(logits)
            accept = ~done & ((new_margin < margin) | new_wrong)
            current = np.where(accept[:, None, None, None], candidate, current)
            margin = np.where(accept, new_margin, margin)
            done |= new_wrong
            iteration += 1
        broken = done & ~fooled
        better = ~fooled & (broken | (margin < best_margin))
        best = np.where(better[:, None, None, None], current, best)
        best_margin = np.where(better, margin, best_margin)
        fooled |= broken
    assert next(calls, None) is None, "more queries than the attack needed"
    return best, fooled


class AcceptanceRuleTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters((1, 0.1, 40), (2, 0.1, 25), (1, 0.3, 200))
    def test_keeps_first_adversarial_point_else_lowest_margin(self, restarts, eps, queries):
        tf.random.set_seed(1)
        model = RecordingModel(helpers.natural_cnn_small())
        x, y = helpers.fashion_arrays("test", 24)
        config = square.SquareConfig(eps=eps, queries=queries, restarts=restarts)
        x_adv = config.perturb(model, x, y).numpy()  # eagerly: the loop body runs in Python
        expected, fooled = _replay(model.calls, y, config, height=28)
        self.assertAllEqual(x_adv, expected)
        # Every example fooled at some query comes back misclassified.
        self.assertAllEqual(_predictions(model.model, x_adv) != y, fooled)
        self.assertTrue(fooled.any())
        if eps == 0.1:
            self.assertFalse(fooled.all())  # some examples went through all queries
        else:
            self.assertLess(len(model.calls), 1 + queries)  # stopped early: all fooled
