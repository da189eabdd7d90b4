"""Tests for hydra_tf.evaluation.verified.

What it proves is never broken, and it is exact at eps 0.
"""

import numpy as np
import tensorflow as tf

from hydra_tf.evaluation import cascade
from hydra_tf.evaluation import verified
from hydra_tf.objectives import attacks
from tests import helpers


class VerifiedTest(tf.test.TestCase):
    def test_rejects_bad_arguments(self):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 4)
        with self.assertRaisesRegex(ValueError, "Unknown verification methods"):
            verified.verify(model, x, y, 0.01, methods=("milp",))
        with self.assertRaisesRegex(ValueError, "eps must be >= 0"):
            verified.verify(model, x, y, -0.1)

    def test_at_eps_zero_verified_is_clean_accuracy(self):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 64)
        result = verified.verify(model, x, y, 0.0, methods=("ibp", "crown_ibp", "symbolic"))
        for method in ("ibp", "crown_ibp", "symbolic"):
            self.assertAllEqual(result.verified[method], result.clean)

    def test_verified_points_are_never_broken_by_attacks(self):
        # At a small radius the naturally trained network has verified points;
        # AutoAttack and PGD-50 with 5 restarts break none of them, and the
        # verified accuracy is at most the attacked one. (One radius: the
        # cascade attacks nearly every point there, which takes a minute.)
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 100)
        for eps in (0.001,):
            result = verified.verify(model, x, y, eps, methods=("ibp", "crown_ibp"))
            proved = result.verified["ibp"] | result.verified["crown_ibp"]
            self.assertGreater(proved.sum(), 20)
            self.assertLess(result.verified["ibp"].sum(), result.clean.sum())  # not vacuous
            auto = cascade.run(
                model, x, y, attacks.make("autoattack", eps, queries=500), log_every=0
            )
            self.assertTrue(np.all(auto.robust[proved]))
            _, robust = attacks.robust_correct(
                model, x, y, attacks.PGDConfig(eps=eps, steps=50, restarts=5)
            )
            self.assertTrue(np.all(robust.numpy()[proved]))
            for method in ("ibp", "crown_ibp"):
                self.assertLessEqual(result.accuracy()[method], float(auto.robust.mean()))
            self.assertAllEqual(result.clean, auto.clean)

    def test_symbolic_intervals_prove_what_ibp_proves_and_more_unbroken(self):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 48)
        accuracy, examples = verified.verified_accuracy(
            model, x, y, 0.001, methods=("ibp", "symbolic"), crown_limit=0
        )
        self.assertEqual(examples, {"ibp": 48, "symbolic": 48})
        result = verified.verify(model, x, y, 0.001, methods=("ibp", "symbolic"), batch_size=16)
        ibp, symbolic = result.verified["ibp"], result.verified["symbolic"]
        # Intersected with IBP, symbolic intervals never lose a point IBP proves.
        self.assertTrue(np.all(symbolic[ibp]))
        self.assertGreater(symbolic.sum(), ibp.sum())
        self.assertAllClose(accuracy["symbolic"], symbolic.mean())
        auto = cascade.run(model, x, y, attacks.make("apgd-ce", 0.001), log_every=0)
        self.assertTrue(np.all(auto.robust[symbolic]))

    def test_full_crown_is_sound_on_a_few_points(self):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 6)
        result = verified.verify(model, x, y, 0.004, methods=("ibp", "crown"), batch_size=6)
        auto = cascade.run(model, x, y, attacks.make("apgd-ce", 0.004), log_every=0)
        self.assertTrue(np.all(auto.robust[result.verified["crown"]]))
        self.assertGreaterEqual(result.verified["crown"].sum(), 1)


if __name__ == "__main__":
    tf.test.main()
