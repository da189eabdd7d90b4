"""Tests for hydra_tf.evaluation.smoothing.

The bound, certification on a linear classifier, abstention.
"""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from scipy import stats

from hydra_tf.evaluation import smoothing

_SHAPE = (4, 4, 1)


def _linear(w, b):
    """A two-class network whose class is 1 iff <w, x> + b > 0.

    Its smoothed classifier is the same linear classifier, with
    P(class 1) = Phi((<w, x> + b) / (sigma |w|)), and the exact L2 robust
    radius at x is |<w, x> + b| / |w|.
    """
    inputs = keras.Input(_SHAPE)
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(flat))
    dense.set_weights([np.stack([np.zeros(w.size), w.ravel()], 1), np.array([0.0, b])])
    return model


def _point(w, b, margin):
    """The image at signed distance `margin` from the boundary, along w."""
    unit = w / np.linalg.norm(w)
    return (unit * (margin - b / np.linalg.norm(w))).reshape(_SHAPE).astype(np.float32)


class BoundTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters((9990, 10000, 0.001), (70, 100, 0.05), (1, 10, 0.01), (10, 10, 0.1))
    def test_clopper_pearson_matches_scipy(self, k, n, alpha):
        # The one-sided (1 - alpha) bound is the lower end of the two-sided
        # (1 - 2 alpha) exact interval.
        expected = stats.binomtest(k, n).proportion_ci(1 - 2 * alpha, method="exact").low
        self.assertAllClose(smoothing.lower_confidence_bound(k, n, alpha), expected, rtol=1e-9)

    def test_all_successes_closed_form(self):
        # P(k = n | p) = p^n = alpha  =>  p_lower = alpha^(1/n).
        self.assertAllClose(
            smoothing.lower_confidence_bound(10000, 10000, 0.001), 0.001 ** (1 / 10000)
        )
        self.assertEqual(smoothing.lower_confidence_bound(0, 50, 0.001), 0.0)

    def test_bad_counts(self):
        with self.assertRaisesRegex(ValueError, "successes"):
            smoothing.lower_confidence_bound(11, 10, 0.01)

    def test_radius(self):
        self.assertEqual(smoothing.radius(0.5, 0.25), 0.0)
        self.assertAllClose(smoothing.radius(stats.norm.cdf(2.0), 0.25), 0.5)

    @parameterized.parameters(
        ({"sigma": 0.0}, "sigma"),
        ({"n": 0}, "n0 and n"),
        ({"alpha": 1.5}, "alpha"),
        ({"batch": 0}, "batch"),
    )
    def test_bad_config(self, kwargs, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            smoothing.SmoothingConfig(**kwargs)


class LinearCertifyTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.RandomState(0)
        self.w = rng.randn(*_SHAPE)
        self.b = 0.3
        self.sigma = 0.5
        self.model = _linear(self.w, self.b)

    def test_radius_sound_and_tight(self):
        config = smoothing.SmoothingConfig(sigma=self.sigma, n=20000, batch=5000, seed=1)
        smoother = smoothing.Smoother(self.model, 2, config)
        for index, margin in enumerate([0.2, 0.5, 1.0, -0.7]):
            x = _point(self.w, self.b, margin)
            prediction, radius, p_lower = smoother.certify(x, example=index)
            true_class = int(margin > 0)
            true_radius = abs(margin)
            self.assertEqual(prediction, true_class)
            self.assertLessEqual(radius, true_radius)
            # Close with many samples: the bound loses little at n = 20000.
            self.assertGreater(radius, true_radius - 0.1 * self.sigma)
            exact_p = stats.norm.cdf(true_radius / self.sigma)
            self.assertLessEqual(p_lower, exact_p)

    def test_certified_point_is_never_broken(self):
        # The worst perturbation of a linear classifier is along -w. Inside
        # the certified radius the exact smoothed class must not change.
        config = smoothing.SmoothingConfig(sigma=self.sigma, n=5000, batch=5000, seed=2)
        smoother = smoothing.Smoother(self.model, 2, config)
        x = _point(self.w, self.b, 0.6)
        prediction, radius, _ = smoother.certify(x)
        self.assertEqual(prediction, 1)
        self.assertGreater(radius, 0.3)
        unit = (self.w / np.linalg.norm(self.w)).reshape(_SHAPE)
        attacked = x - 0.999 * radius * unit
        logits = self.model(attacked[None]).numpy()[0]
        self.assertGreater(logits[1], logits[0])
        # Sampled prediction never gives the other class (near the boundary it
        # may abstain).
        self.assertIn(smoother.predict(attacked.astype(np.float32), example=7), (1, -1))
        # Beyond the exact radius the class does flip (the test can fail).
        beyond = x - 1.01 * 0.6 * unit
        logits = self.model(beyond[None].astype(np.float32)).numpy()[0]
        self.assertLess(logits[1], logits[0])

    def test_abstains_on_the_boundary(self):
        config = smoothing.SmoothingConfig(sigma=self.sigma, n=2000, batch=2000, seed=3)
        smoother = smoothing.Smoother(self.model, 2, config)
        x = _point(self.w, self.b, 0.0)
        prediction, radius, p_lower = smoother.certify(x)
        self.assertEqual(prediction, smoothing.ABSTAIN)
        self.assertEqual(radius, 0.0)
        self.assertLess(p_lower, 0.5)
        self.assertEqual(smoother.predict(x), smoothing.ABSTAIN)
        # Far from the boundary predict does not abstain.
        self.assertEqual(smoother.predict(_point(self.w, self.b, 1.0)), 1)

    def test_reproducible_with_a_seed(self):
        x = _point(self.w, self.b, 0.1)
        counts = []
        for seed in (5, 5, 6):
            config = smoothing.SmoothingConfig(sigma=self.sigma, n=999, batch=400, seed=seed)
            counts.append(smoothing.Smoother(self.model, 2, config).sample_counts(x, 999, 0, 1))
        self.assertAllEqual(counts[0], counts[1])
        self.assertEqual(int(counts[0].sum()), 999)
        self.assertNotAllEqual(counts[0], counts[2])


class ReportTest(tf.test.TestCase):
    def test_certified_accuracy_and_markdown(self):
        records = [
            {"correct": True, "radius": 0.6, "prediction": 1, "seconds": 1.0},
            {"correct": True, "radius": 0.3, "prediction": 2, "seconds": 1.0},
            {"correct": False, "radius": 0.9, "prediction": 0, "seconds": 1.0},
            {"correct": False, "radius": 0.0, "prediction": -1, "seconds": 3.0},
        ]
        accuracy = smoothing.certified_accuracy(records)
        self.assertEqual(accuracy, {0.0: 0.5, 0.25: 0.5, 0.5: 0.25, 0.75: 0.0, 1.0: 0.0})
        summary = smoothing.report(records, smoothing.SmoothingConfig())
        self.assertEqual(summary["abstained"], 0.25)
        self.assertEqual(summary["seconds_per_example"], 1.5)
        self.assertIn(
            "| certified accuracy (%) | 50.0 | 50.0 | 25.0 | 0.0 | 0.0 |",
            smoothing.report_markdown(summary),
        )


if __name__ == "__main__":
    tf.test.main()
