"""Tests for hydra_tf.objectives.attacks.fab: the exact L-inf box projection and FAB-T."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from scipy import optimize

from hydra_tf.objectives.attacks import fab
from tests import helpers


def _exact_projection(t, w, c):
    """min |d|_inf s.t. c + w.d = 0, 0 <= t + d <= 1 by linear programming; None if infeasible."""
    n = len(t)
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    bound = np.zeros((2 * n, n + 1))  # d_i - lam <= 0 and -d_i - lam <= 0
    bound[:n, :n] = np.eye(n)
    bound[n:, :n] = -np.eye(n)
    bound[:, -1] = -1.0
    result = optimize.linprog(
        cost,
        A_ub=bound,
        b_ub=np.zeros(2 * n),
        A_eq=np.append(w, 0.0)[None],
        b_eq=[-c],
        bounds=[(-ti, 1.0 - ti) for ti in t] + [(0.0, None)],
        method="highs",
    )
    return result.x[-1] if result.status == 0 else None


def _linear_two_class(w, b):
    """Logits [w.x + b, 0]: class 0 iff w.x + b > 0."""

    def model(x, training=False):
        del training
        score = tf.reduce_sum(x * w, axis=[1, 2, 3]) + b
        return tf.stack([score, tf.zeros_like(score)], axis=1)

    return model


class FABConfigTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        {"eps": -0.1},
        {"eps": float("nan")},
        {"eps": float("inf")},
        {"steps": 0},
        {"targets": 0},
        {"restarts": 0},
        {"alpha_max": 0.0},
        {"alpha_max": 1.5},
        {"eta": 0.9},
        {"beta": 0.0},
        {"beta": 1.0},
    )
    def test_rejects_bad_settings(self, **bad):
        settings = {"eps": 0.1, **bad}
        (field, value), *_ = bad.items()
        with self.assertRaisesRegex(ValueError, f"{field}.*{value}"):
            fab.FABConfig(**settings)

    def test_defaults_are_standard_autoattack_and_json(self):
        config = fab.FABConfig(eps=0.03)
        self.assertEqual(
            config.to_json(),
            {
                "name": "fab-t",
                "eps": 0.03,
                "steps": 100,
                "targets": 9,
                "restarts": 1,
                "alpha_max": 0.1,
                "eta": 1.05,
                "beta": 0.9,
            },
        )


class ProjectionTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("box_inactive", [0.5, 0.5], [1.0, 1.0], -0.4, [0.2, 0.2]),
        ("box_active", [0.9, 0.5], [1.0, 1.0], -0.4, [0.1, 0.3]),
        ("mixed_signs_from_above", [0.5, 0.2], [1.0, -2.0], 0.6, [-0.2, 0.2]),
        ("zero_weight_stays", [0.5, 0.5, 0.5], [2.0, 0.0, -1.0], -0.3, [0.1, 0.0, -0.1]),
        ("on_the_plane", [0.3, 0.7], [1.0, -1.0], 0.0, [0.0, 0.0]),
        ("from_the_box_corner", [0.0, 1.0], [-1.0, 1.0], 0.5, [0.25, -0.25]),
        ("unreachable_goes_to_corner", [0.9, 0.2], [1.0, -1.0], -0.5, [0.1, -0.2]),
        ("unreachable_no_room", [0.0, 1.0], [-1.0, 1.0], -0.5, [0.0, 0.0]),
    )
    def test_hand_cases(self, t, w, c, expected):
        for newton_steps in (0, fab.NEWTON_STEPS):
            d = fab.project_linf([t], [w], [c], newton_steps=newton_steps)
            self.assertAllClose(d[0], expected, atol=1e-6)

    @parameterized.parameters(0, 1, fab.NEWTON_STEPS)
    def test_matches_linear_programming(self, newton_steps):
        # Rows whose plane is near (box inactive), beyond some box edges
        # (active) and out of the box's reach, with coordinates on the box
        # edges and zero weights; all rows in one call.
        rng = np.random.default_rng(newton_steps)
        rows, n = 240, 6
        t = rng.uniform(0.0, 1.0, (rows, n))
        t[rng.uniform(size=(rows, n)) < 0.15] = 0.0
        t[rng.uniform(size=(rows, n)) < 0.15] = 1.0
        w = rng.normal(size=(rows, n)) * (rng.uniform(size=(rows, n)) > 0.15)
        c = rng.normal(size=rows) * rng.choice([0.05, 0.5, 3.0], size=rows)
        d = fab.project_linf(t, w, c, newton_steps=newton_steps).numpy().astype(np.float64)
        kinds = {"inactive": 0, "active": 0, "unreachable": 0}
        for i in range(rows):
            best = _exact_projection(t[i], w[i], c[i])
            if best is None:
                kinds["unreachable"] += 1
                corner = np.where(-np.sign(c[i]) * w[i] > 0, 1.0 - t[i], -t[i]) * (w[i] != 0)
                self.assertAllClose(d[i], corner, atol=1e-6)
                continue
            room = np.where(-np.sign(c[i]) * w[i] > 0, 1.0 - t[i], t[i])[w[i] != 0]
            kinds["active" if best > room.min() + 1e-6 else "inactive"] += 1
            self.assertAllClose(np.abs(d[i]).max(), best, atol=1e-5, rtol=1e-4)
            self.assertAllClose(c[i] + w[i] @ d[i], 0.0, atol=1e-5 * max(1.0, abs(c[i])))
            self.assertTrue(np.all(t[i] + d[i] >= -1e-6) and np.all(t[i] + d[i] <= 1 + 1e-6))
        self.assertGreater(min(kinds.values()), 10, kinds)

    def test_rows_newton_cannot_settle_fall_back_exactly(self):
        # Rooms spread evenly with geometrically falling weights: Newton steps
        # pass about one breakpoint each, so few steps leave the row unsettled.
        n = 60
        room = np.linspace(0.01, 0.99, n)
        weight = 0.8 ** np.arange(n)
        t, c = 1.0 - room, -0.9 * np.sum(weight * room)
        best = _exact_projection(t, weight, c)
        for newton_steps in (0, 2, 10_000):
            d = fab.project_linf([t], [weight], [c], newton_steps=newton_steps).numpy()[0]
            self.assertAllClose(np.abs(d).max(), best, rtol=1e-4)
            self.assertAllClose(c + weight @ d, 0.0, atol=1e-5)


class FABTest(tf.test.TestCase, parameterized.TestCase):
    def test_linear_model_finds_the_minimal_perturbation(self):
        # The smallest L-inf step onto w.x + b = 0 is |w.x + b| / |w|_1 when the
        # box is not in the way. Every point sits at distance 0.05 (half on
        # each side), well inside the box; FAB must come within 1%.
        rng = np.random.default_rng(0)
        w = rng.normal(size=(1, 4, 4, 1)).astype(np.float32)
        delta = rng.uniform(-0.1, 0.1, size=(4, 4, 4, 1))
        delta -= (np.sum(delta * w, axis=(1, 2, 3)) / np.sum(w * w))[:, None, None, None] * w
        above = 0.5 + delta  # w.x equal for all
        below = above - 2 * 0.05 * np.sign(w)
        x = np.concatenate([above, below]).astype(np.float32)
        y = np.array([0] * 4 + [1] * 4)
        self.assertTrue(np.all((x > 0.1) & (x < 0.9)))
        model = _linear_two_class(w, -0.5 * w.sum() + 0.05 * np.abs(w).sum())
        self.assertAllEqual(np.argmax(model(x), axis=1), y)

        _, norm = fab.fab_t(model, x, y, fab.FABConfig(eps=1.0), minimize_norm=True)
        self.assertAllInRange(norm, 0.05 * (1 - 1e-4), 0.05 * 1.01)
        # Through `perturb`, eagerly: all broken within 1% more than the
        # minimum; nothing (the clean points returned) below it.
        x_adv = fab.FABConfig(eps=0.0505).perturb(model, x, y)
        self.assertTrue(np.all(np.argmax(model(x_adv), axis=1) != y))
        self.assertLessEqual(np.abs(x_adv - x).max(), 0.0505 + 1e-7)
        self.assertAllEqual(fab.FABConfig(eps=0.0495).perturb(model, x, y), x)

    @parameterized.named_parameters(
        ("small", 0.01, 1),
        ("medium", 0.05, 1),
        ("medium_random_restart", 0.05, 2),
        ("large", 0.2, 1),
    )
    def test_inside_ball_and_box_and_moved_points_are_adversarial(self, eps, restarts):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 64)
        y = y.astype(np.int64)
        config = fab.FABConfig(eps=eps, steps=30, targets=3, restarts=restarts)
        # Unknown batch dimension, as in the evaluator.
        perturb = tf.function(
            lambda x, y: config.perturb(model, x, y),
            input_signature=[
                tf.TensorSpec([None, 28, 28, 1], tf.float32),
                tf.TensorSpec([None], tf.int64),
            ],
        )
        x_adv = perturb(x, y).numpy()
        self.assertEqual(x_adv.shape, x.shape)
        self.assertLessEqual(np.abs(x_adv - x).max(), eps + 1e-6)
        self.assertGreaterEqual(x_adv.min(), 0.0)
        self.assertLessEqual(x_adv.max(), 1.0)
        moved = np.any(x_adv != x, axis=(1, 2, 3))
        predicted = np.argmax(model(x_adv, training=False), axis=1)
        self.assertTrue(np.all(predicted[moved] != y[moved]))
        clean = np.argmax(model(x, training=False), axis=1) == y
        if eps >= 0.05:
            self.assertGreater(np.mean(moved), 0.3 * clean.mean())

    def test_breaks_undefended_network(self):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 200)
        config = fab.FABConfig(eps=0.3)
        x_adv = tf.function(lambda x, y: config.perturb(model, x, y))(x, y)
        clean = np.argmax(model(x, training=False), axis=1) == y
        robust = np.argmax(model(x_adv, training=False), axis=1) == y
        self.assertGreater(clean.mean(), 0.6)
        self.assertLess(robust.mean(), 0.02)
        self.assertLessEqual(np.abs(x_adv.numpy() - x).max(), 0.3 + 1e-6)

    @parameterized.parameters((1, False), (2, False), (3, True), (9, True))
    def test_targets_are_the_next_highest_clean_logits(self, targets, broken):
        # Clean logits [1, -1, 0.5, 0.2] for label 0, so the targets in order
        # are classes 2, 3, 1. Only class 1 can win (its logit grows with the
        # mean pixel, above 1 when every pixel rises by more than 0.4); the
        # others are constants. FAB-T breaks the point only once class 1 (the
        # 4th highest logit, the lowest index) is among its targets.
        def model(x, training=False):
            del training
            ones = tf.ones_like(x[:, 0, 0, 0])
            grows = -1.0 + 5.0 * (tf.reduce_mean(x, axis=[1, 2, 3]) - 0.1)
            return tf.stack([ones, grows, 0.5 * ones, 0.2 * ones], axis=1)

        x = np.full((3, 2, 2, 1), 0.1, np.float32)
        y = np.zeros(3, np.int64)
        config = fab.FABConfig(eps=0.5, steps=20, targets=targets)
        x_adv = tf.function(lambda x, y: config.perturb(model, x, y), reduce_retracing=True)(x, y)
        predicted = np.argmax(model(x_adv), axis=1)
        self.assertAllEqual(predicted, [1 if broken else 0] * 3)
        self.assertLessEqual(np.abs(x_adv.numpy() - x).max(), 0.5 + 1e-6)


if __name__ == "__main__":
    tf.test.main()
