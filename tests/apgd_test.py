"""Tests for hydra_tf.objectives.attacks.apgd: losses, step-size rule, strength, soundness."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import evaluation
from hydra_tf.evaluation import cascade
from hydra_tf.experiments import report
from hydra_tf.objectives import attacks
from hydra_tf.objectives.attacks import apgd
from tests import helpers


class ConfigTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        {"eps": -0.1},
        {"eps": 0.1, "loss": "hinge"},
        {"eps": 0.1, "steps": 0},
        {"eps": 0.1, "restarts": 0},
        {"eps": 0.1, "targets": 0},
        {"eps": 0.1, "rho": 1.5},
    )
    def test_rejects_bad_settings(self, **kwargs):
        with self.assertRaises(ValueError):
            apgd.APGDConfig(**kwargs)

    def test_registry_names(self):
        self.assertEqual(attacks.make("apgd-ce", 0.1).name, "apgd-ce")
        self.assertEqual(attacks.make("apgd-t", 0.1).loss, "dlr-targeted")
        self.assertEqual(attacks.make("apgd-t", 0.1).targets, 9)
        with self.assertRaisesRegex(ValueError, "Unknown attack 'nope'"):
            attacks.make("nope", 0.1)


class ScheduleTest(tf.test.TestCase):
    def test_checkpoints_of_100_steps(self):
        # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
        p = [0.0, 0.22]
        while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0 + 1e-9:
            p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        self.assertAllClose(apgd.schedule_fractions(100), p)
        self.assertEqual(
            apgd.checkpoints(100),
            [(21, 22), (40, 19), (56, 16), (69, 13), (79, 10), (86, 7), (92, 6), (98, 6)],
        )

    def _drive(self, losses, steps=100):
        """Feeds a scripted loss sequence (one example) to the rule; the halving iterations."""
        control = apgd.StepSizeControl(steps)
        state = control.initial(tf.constant([losses[0]], tf.float32))
        best, halved = losses[0], []
        for i, loss in enumerate(losses[1:]):
            best = max(best, loss)
            state, halve = control.update(
                state, tf.constant(i), tf.constant([loss], tf.float32), tf.constant([best])
            )
            if bool(halve[0]):
                halved.append(i)
        return halved

    def test_rising_loss_never_halves(self):
        self.assertEqual(self._drive([float(i) for i in range(101)]), [])

    def test_flat_loss_halves_at_every_checkpoint(self):
        # No step rises: condition 1 at every checkpoint.
        self.assertEqual(self._drive([1.0] * 101), [i for i, _ in apgd.checkpoints(100)])

    def test_few_rises_halve(self):
        # Rises in 16 of 22 steps (<= 0.75 * 22 = 16.5): halve; 17 of 22: keep.
        for rises, expected in ((16, [21]), (17, [])):
            losses = [0.0]
            for i in range(22):
                losses.append(losses[-1] + (1.0 if i < rises else -0.001))
            losses += [losses[-1] + k + 1 for k in range(78)]
            self.assertEqual(self._drive(losses)[:1], expected, rises)

    def test_stuck_best_halves_once_not_twice(self):
        # Rising steps, so condition 1 never fires; from iteration 41 on the
        # loss drops and creeps up again without beating the best: condition 2
        # halves at iteration 56 (not halved at 40, best unchanged since),
        # not at 69 (it was halved at 56), and again at 79.
        losses = [float(i) for i in range(42)]
        value = 0.0
        for i in range(42, 101):
            value = value + 0.001 if i != 42 else 0.0
            losses.append(value)
        self.assertEqual(self._drive(losses)[:2], [56, 79])


class LossTest(tf.test.TestCase):
    def test_dlr_hand_cases(self):
        z = tf.constant([[1.0, 4.0, 2.0, 3.0], [1.0, 4.0, 2.0, 3.0]])
        # y=0: -(1 - 4) / (4 - 2); y=1: -(4 - 3) / (4 - 2).
        self.assertAllClose(apgd.dlr_loss(z, tf.constant([0, 1])), [1.5, -0.5])

    def test_targeted_dlr_hand_case(self):
        z = tf.constant([[1.0, 4.0, 2.0, 3.0, 0.0]])
        # y=0, t=2: -(1 - 2) / (4 - (2 + 1) / 2) = 0.4.
        self.assertAllClose(apgd.targeted_dlr_loss(z, tf.constant([0]), tf.constant([2])), [0.4])

    def test_dlr_is_scale_invariant(self):
        z = tf.random.normal([8, 10])
        y = tf.constant([0, 1, 2, 3, 4, 5, 6, 7])
        self.assertAllClose(apgd.dlr_loss(z, y), apgd.dlr_loss(50.0 * z, y), atol=1e-5)


class AttackTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("apgd-ce", "apgd-t")
    def test_stays_inside_ball_and_box_and_moves(self, name):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 32)
        for eps in (0.03, 0.3):
            attack = attacks.make(name, eps, steps=10, targets=2)
            x_adv = attack.perturb(model, x, y).numpy()
            self.assertLessEqual(np.abs(x_adv - x).max(), eps + 1e-6)
            self.assertGreaterEqual(x_adv.min(), 0.0)
            self.assertLessEqual(x_adv.max(), 1.0)
            self.assertGreater(np.abs(x_adv - x).max(), 0.5 * eps)

    @parameterized.parameters("apgd-ce", "apgd-t")
    def test_drives_undefended_model_to_near_zero(self, name):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 100)
        x_adv = attacks.make(name, 0.3, steps=20, targets=3).perturb(model, x, y)
        robust = np.mean(np.argmax(model(x_adv, training=False), -1) == y)
        self.assertLess(robust, 0.03)

    def test_autoattack_at_least_as_strong_as_pgd50(self):
        # AutoAttack never reports more robustness than PGD-50 with two restarts
        # on the same network and examples (Square with 1000 queries, for time).
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 100)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
        for eps in (0.02,):
            pgd = evaluation.evaluate(model, dataset, evaluation.default_attack(eps))
            auto = evaluation.evaluate(
                model, dataset, attacks.make("autoattack", eps, queries=1000)
            )
            self.assertEqual(auto.clean_acc, pgd.clean_acc)
            self.assertLessEqual(auto.robust_acc, pgd.robust_acc)
            self.assertLess(auto.robust_acc, auto.clean_acc)  # it broke something
            after = [stage.robust_acc for stage in auto.stages]
            self.assertEqual(after, sorted(after, reverse=True))
            self.assertEqual(after[-1], auto.robust_acc)

    def test_extended_autoattack_begins_as_the_standard_one_and_only_adds(self):
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 64)
        options = {"steps": 10, "targets": 2, "fab_steps": 10, "queries": 200}
        eps = 0.01
        standard = cascade.run(model, x, y, attacks.make("autoattack", eps, **options))
        extended_attack = attacks.make("autoattack-extended", eps, **options)
        extended = cascade.run(model, x, y, extended_attack)
        self.assertEqual(
            [s.attack for s in extended.stages],
            ["apgd-ce", "apgd-t", "fab-t", "square", "apgd-ce", "apgd-dlr", "square"],
        )
        self.assertEqual([a.restarts for a in extended_attack.attacks[4:]], [5, 5, 4])
        self.assertGreater(standard.robust.sum(), 0)  # something left for the extension
        # Draw for draw the standard cascade, then attacks on what it left robust only.
        for ours, theirs in zip(extended.stages[:4], standard.stages):
            self.assertEqual((ours.robust_acc, ours.broken), (theirs.robust_acc, theirs.broken))
        self.assertEqual(extended.stages[4].attacked, int(standard.robust.sum()))
        self.assertFalse(np.any(extended.robust & ~standard.robust))
        self.assertIn(
            "the first four are standard AutoAttack",
            report.describe_attack(extended_attack.to_json()),
        )

    def test_ce_gradient_survives_huge_margins(self):
        # Logits scaled up 1000x: the plain softmax gradient underflows, the
        # rescaled one still moves the attack and breaks the same points.
        model = helpers.natural_cnn_small()
        x, y = helpers.fashion_arrays("test", 64)

        def scaled(images, training=False):
            return 1000.0 * model(images, training=training)

        attack = attacks.make("apgd-ce", 0.1, steps=20)
        plain = np.mean(np.argmax(model(attack.perturb(model, x, y)), -1) == y)
        big = np.mean(np.argmax(model(attack.perturb(scaled, x, y)), -1) == y)
        self.assertLess(big, plain + 0.1)
        self.assertLess(big, 0.5)


if __name__ == "__main__":
    tf.test.main()
