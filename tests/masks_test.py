"""Tests for hydra_tf.models.masks: exact kept counts and the straight-through gradient."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf.models import masks


class KeptCountTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (100, 0.1, 10),
        (100, 0.05, 5),
        (1000, 0.01, 10),
        (10, 0.9, 9),  # int((1 - 0.9) * 10) would wrongly give 0 pruned.
        (10, 0.3, 3),
        (7, 0.5, 4),  # rounds half up
        (50, 0.001, 1),  # never prunes a layer to nothing
        (3, 1.0, 3),
    )
    def test_kept_count(self, size, ratio, expected):
        self.assertEqual(masks.kept_count(size, ratio), expected)

    @parameterized.parameters(0.0, -0.1, 1.5, float("nan"), "abc", None)
    def test_bad_keep_ratio(self, ratio):
        with self.assertRaisesRegex(ValueError, "keep_ratio"):
            masks.validate_keep_ratio(ratio)


class TopkMaskTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ((3, 3, 16, 32), 0.1),
        ((3, 3, 16, 32), 0.9),
        ((784, 10), 0.01),
        ((5,), 0.4),
        ((4, 4), 1.0),
    )
    def test_keeps_exactly_the_largest_magnitudes(self, shape, ratio):
        scores = tf.random.stateless_normal(shape, seed=[1, 2])
        mask = masks.topk_mask(scores, ratio).numpy()
        size = int(np.prod(shape))
        k = masks.kept_count(size, ratio)
        self.assertEqual(mask.shape, tuple(shape))
        self.assertEqual(set(np.unique(mask)) <= {0.0, 1.0}, True)
        self.assertEqual(int(mask.sum()), k)
        magnitude = np.abs(scores.numpy())
        if k < size:
            self.assertGreater(magnitude[mask == 1].min(), magnitude[mask == 0].max())

    def test_uses_magnitude_not_sign(self):
        scores = tf.constant([-5.0, 0.1, 3.0, -0.2])
        self.assertAllEqual(masks.topk_mask(scores, 0.5), [1.0, 0.0, 1.0, 0.0])

    @parameterized.parameters(0.005, 0.02, 0.1, 0.5, 0.97)
    def test_matches_a_stable_sort_with_ties(self, ratio):
        # Both selection paths (top_k below 1/32, radix above) keep the lower
        # position among equal magnitudes; tiny, zero and huge values included.
        rng = np.random.RandomState(4)
        values = np.round(rng.randn(64, 50) * 4) / 4  # many ties
        values[0, :5] = 0.0
        values[1, :3] = [1e-30, -1e-30, 3e30]
        size = values.size
        k = masks.kept_count(size, ratio)
        expected = np.zeros(size, np.float32)
        expected[np.argsort(-np.abs(values).ravel(), kind="stable")[:k]] = 1.0
        got = masks.hard_topk(tf.constant(values, tf.float32), ratio).numpy()
        self.assertAllEqual(got.ravel(), expected)

    @parameterized.parameters(0.01, 0.3)
    def test_compiles_with_xla(self, ratio):
        scores = tf.random.stateless_normal((40, 30), seed=[3, 4])
        compiled = tf.function(lambda s: masks.hard_topk(s, ratio), jit_compile=True)
        self.assertAllEqual(compiled(scores), masks.hard_topk(scores, ratio))

    def test_ties_still_keep_exact_count(self):
        scores = tf.ones([10])
        self.assertEqual(float(tf.reduce_sum(masks.topk_mask(scores, 0.3))), 3.0)

    def test_straight_through_gradient(self):
        scores = tf.Variable([[-2.0, 0.5], [1.5, -0.1]])
        upstream = tf.constant([[1.0, 2.0], [3.0, 4.0]])
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(masks.topk_mask(scores, 0.5) * upstream)
        grad = tape.gradient(out, scores)
        # d|s|/ds = sign(s); the mask passes the upstream gradient unchanged,
        # including to the pruned entries.
        self.assertAllClose(grad, [[-1.0, 2.0], [3.0, -4.0]])

    def test_gradient_reaches_pruned_scores_through_weights(self):
        kernel = tf.constant([2.0, 3.0])
        scores = tf.Variable([1.0, 0.1])
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(kernel * masks.topk_mask(scores, 0.5))
        self.assertAllClose(tape.gradient(out, scores), [2.0, 3.0])

    def test_hard_topk_is_the_value_without_gradient(self):
        scores = tf.Variable(np.random.RandomState(0).randn(6, 7).astype(np.float32))
        with tf.GradientTape() as tape:
            hard = masks.hard_topk(scores, 0.2)
            out = tf.reduce_sum(hard)
        self.assertAllEqual(hard, masks.topk_mask(scores, 0.2))
        self.assertIsNone(tape.gradient(out, scores))

    def test_straight_through_on_a_precomputed_mask(self):
        # Selecting outside the tape and attaching the gradient inside gives
        # the same gradient as selecting inside.
        scores = tf.Variable([[-2.0, 0.5], [1.5, -0.1]])
        upstream = tf.constant([[1.0, 2.0], [3.0, 4.0]])
        hard = masks.hard_topk(scores, 0.5)
        with tf.GradientTape() as tape:
            attached = masks.straight_through(scores, hard)
            out = tf.reduce_sum(attached * upstream)
        self.assertAllEqual(attached, hard)
        self.assertAllClose(tape.gradient(out, scores), [[-1.0, 2.0], [3.0, -4.0]])


class ReusingTest(tf.test.TestCase):
    def test_blocks_nest_and_restore(self):
        first, second = object(), object()
        self.assertIsNone(masks.reused_mask(first))
        with masks.reusing({first: "a"}):
            self.assertEqual(masks.reused_mask(first), "a")
            with masks.reusing({first: "b", second: "c"}):
                self.assertEqual(masks.reused_mask(first), "b")
                self.assertEqual(masks.reused_mask(second), "c")
            self.assertEqual(masks.reused_mask(first), "a")
            self.assertIsNone(masks.reused_mask(second))
        self.assertIsNone(masks.reused_mask(first))

    def test_restores_after_an_exception(self):
        layer = object()
        with self.assertRaises(KeyError), masks.reusing({layer: "a"}):
            raise KeyError("boom")
        self.assertIsNone(masks.reused_mask(layer))


class SparsityTest(tf.test.TestCase):
    def test_counts_zeros_over_tensors(self):
        self.assertAlmostEqual(
            masks.sparsity([np.zeros(3), np.array([1.0, 0.0, 2.0, 0.0, 5.0])]), 5 / 8
        )

    def test_empty_raises(self):
        with self.assertRaises(ValueError):
            masks.sparsity([])


if __name__ == "__main__":
    tf.test.main()
