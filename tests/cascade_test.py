"""Tests for hydra_tf.evaluation.cascade: attack order, bounds checks, resume, replicas."""

import dataclasses
import os
import time
from typing import ClassVar
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from hydra_tf import evaluation
from hydra_tf.evaluation import cascade
from hydra_tf.objectives import attacks
from hydra_tf.objectives.attacks import apgd
from tests import helpers


def _mean_model(x, training=False):
    """Two classes: 1 when the image's mean exceeds 0.5."""
    del training
    mean = tf.reduce_mean(x, axis=[1, 2, 3])
    return tf.stack([0.5 - mean, mean - 0.5], axis=1)


@dataclasses.dataclass(frozen=True)
class Shift:
    """A deterministic 'attack': every pixel moved by `shift` (clipped), counting its calls."""

    eps: float
    shift: float
    label: str = "shift"
    calls: list = dataclasses.field(default_factory=list, compare=False)
    fail_after: int | None = None
    delay: float = 0.0  # seconds each eager call takes
    kind: ClassVar[str] = "test"

    @property
    def name(self):
        return self.label

    def to_json(self):
        return {"name": self.label, "eps": self.eps, "shift": self.shift}

    def perturb(self, model, x, y):
        del model, y
        if not tf.executing_eagerly():  # traced: nothing to count
            return tf.clip_by_value(x + self.shift, 0.0, 1.0)
        self.calls.append(int(x.shape[0]))
        time.sleep(self.delay)
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise KeyboardInterrupt("killed")
        return tf.clip_by_value(x + self.shift, 0.0, 1.0)


def _data(n=40):
    # Means spread over [0.3, 0.7]; labels say which side of 0.5.
    means = np.linspace(0.3, 0.7, n).astype(np.float32)
    images = np.broadcast_to(means[:, None, None, None], (n, 4, 4, 1)).copy()
    labels = (means > 0.5).astype(np.int64)
    return images, labels


class CascadeTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        # Functions run eagerly, so the fake attacks can count their calls.
        tf.config.run_functions_eagerly(True)
        self.addCleanup(tf.config.run_functions_eagerly, False)

    def test_each_attack_runs_only_on_points_still_robust(self):
        images, labels = _data()
        up, down = Shift(0.1, 0.1, "up"), Shift(0.1, -0.1, "down")
        result = cascade.run(
            _mean_model, images, labels, attacks.Cascade("c", (up, down)), batch_size=8
        )
        means = images.mean(axis=(1, 2, 3))
        # Moving up breaks class 0 points within 0.1 of 0.5, down class 1 ones.
        up_breaks = (labels == 0) & (means + 0.1 > 0.5)
        down_breaks = (labels == 1) & (means - 0.1 <= 0.5)
        self.assertAllEqual(result.clean, np.ones(40, bool))
        self.assertAllEqual(result.robust, ~(up_breaks | down_breaks))
        self.assertEqual(sum(up.calls), 40)
        self.assertEqual(sum(down.calls), 40 - up_breaks.sum())
        self.assertEqual([s.attack for s in result.stages], ["up", "down"])
        self.assertEqual(result.stages[0].broken, up_breaks.sum())
        self.assertAlmostEqual(result.stages[1].robust_acc, result.robust.mean())
        # Broken points keep the point that broke them.
        broken = np.flatnonzero(down_breaks)
        self.assertAllClose(result.adversarial[broken], images[broken] - 0.1)

    def test_misclassified_points_are_not_attacked(self):
        images, labels = _data()
        labels = 1 - labels
        attack = Shift(0.1, 0.1)
        result = cascade.run(_mean_model, images, labels, attack)
        self.assertEqual(sum(attack.calls), 0)
        self.assertEqual(result.robust.sum(), 0)

    def test_points_outside_the_ball_are_refused(self):
        images, labels = _data()
        with self.assertRaises(cascade.AttackOutOfBoundsError):
            cascade.run(_mean_model, images, labels, Shift(0.05, 0.1))

    def test_killed_run_resumes_without_repeating_work(self):
        images, labels = _data()
        path = os.path.join(self.get_temp_dir(), "state.npz")
        whole = cascade.run(
            _mean_model,
            images,
            labels,
            attacks.Cascade("c", (Shift(0.1, 0.1, "up"), Shift(0.1, -0.1, "down"))),
            batch_size=8,
        )
        # Killed in the second attack, after its first batch was saved.
        down = Shift(0.1, -0.1, "down", fail_after=1)
        killed = attacks.Cascade("c", (Shift(0.1, 0.1, "up"), down))
        with self.assertRaises(KeyboardInterrupt):
            cascade.run(
                _mean_model, images, labels, killed, batch_size=8, state_path=path, save_every=0
            )
        self.assertTrue(os.path.exists(path))
        up, down = Shift(0.1, 0.1, "up"), Shift(0.1, -0.1, "down")
        resumed = cascade.run(
            _mean_model,
            images,
            labels,
            attacks.Cascade("c", (up, down)),
            batch_size=8,
            state_path=path,
        )
        self.assertEqual(up.calls, [])  # the first attack had finished
        self.assertEqual(sum(down.calls), whole.stages[0].attacked - whole.stages[0].broken - 8)
        self.assertAllEqual(resumed.robust, whole.robust)
        self.assertAllClose(resumed.adversarial, whole.adversarial)
        self.assertEqual(
            [s.robust_acc for s in resumed.stages], [s.robust_acc for s in whole.stages]
        )

    def test_resumed_attack_counts_the_time_of_the_run_it_resumes(self):
        images, labels = _data()
        path = os.path.join(self.get_temp_dir(), "state.npz")
        delay = 0.2
        killed = attacks.Cascade(
            "c", (Shift(0.1, 0.1, "up"), Shift(0.1, -0.1, "down", fail_after=1, delay=delay))
        )
        with self.assertRaises(KeyboardInterrupt):
            cascade.run(
                _mean_model, images, labels, killed, batch_size=8, state_path=path, save_every=0
            )
        down = Shift(0.1, -0.1, "down", delay=delay)
        resumed = cascade.run(
            _mean_model,
            images,
            labels,
            attacks.Cascade("c", (Shift(0.1, 0.1, "up"), down)),
            batch_size=8,
            state_path=path,
        )
        # The killed run's saved batch took `delay` as well as each batch of this run.
        self.assertNotEmpty(down.calls)
        self.assertGreaterEqual(resumed.stages[1].seconds, delay * (len(down.calls) + 1))
        self.assertGreaterEqual(resumed.seconds, resumed.stages[1].seconds)

    def test_state_of_other_settings_is_refused(self):
        images, labels = _data()
        path = os.path.join(self.get_temp_dir(), "state.npz")
        cascade.run(_mean_model, images, labels, Shift(0.1, 0.1), state_path=path)
        with self.assertRaisesRegex(cascade.StateMismatchError, "other settings"):
            cascade.run(_mean_model, images, labels, Shift(0.1, -0.1), state_path=path)
        with open(path, "wb") as f:
            f.write(b"not a state")
        with self.assertRaisesRegex(cascade.StateMismatchError, "Cannot read"):
            cascade.run(_mean_model, images, labels, Shift(0.1, 0.1), state_path=path)


@dataclasses.dataclass(frozen=True)
class Killable:
    """APGD-CE that raises after `fail_after` batches (functions must run eagerly)."""

    attack: apgd.APGDConfig
    fail_after: int | None = None
    calls: list = dataclasses.field(default_factory=list, compare=False)

    @property
    def eps(self):
        return self.attack.eps

    @property
    def name(self):
        return self.attack.name

    def to_json(self):
        return self.attack.to_json()

    def perturb(self, model, x, y):
        self.calls.append(int(x.shape[0]))
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise KeyboardInterrupt("killed")
        return self.attack.perturb(model, x, y)


def _random_network_and_points(n=32):
    """A random dense network on 4x4 images and points it classifies as labelled."""
    keras.utils.set_random_seed(0)
    network = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    images = np.random.default_rng(0).random((n, 4, 4, 1)).astype(np.float32)
    labels = np.argmax(network(images), axis=-1).astype(np.int64)
    return network, images, labels


class RandomnessTest(tf.test.TestCase):
    """The attacks' random starts depend on where a batch is, not on the process's state."""

    attack = apgd.APGDConfig(eps=0.05, loss="ce", steps=2, restarts=2)

    def test_same_points_whatever_ran_before(self):
        network, images, labels = _random_network_and_points()
        tf.random.set_seed(1)
        first = cascade.run(network, images, labels, self.attack, batch_size=8)
        tf.random.set_seed(2)
        tf.random.uniform([7])
        second = cascade.run(network, images, labels, self.attack, batch_size=8)
        self.assertAllEqual(first.adversarial, second.adversarial)
        self.assertAllEqual(first.robust, second.robust)
        # The seed does reach the starts: another seed moves the points.
        with mock.patch.object(cascade, "SEED", 1):
            other = cascade.run(network, images, labels, self.attack, batch_size=8)
        self.assertNotAllClose(first.adversarial, other.adversarial)

    def test_resumed_run_attacks_every_batch_as_an_uninterrupted_one(self):
        tf.config.run_functions_eagerly(True)
        self.addCleanup(tf.config.run_functions_eagerly, False)
        network, images, labels = _random_network_and_points()
        path = os.path.join(self.get_temp_dir(), "state.npz")
        tf.random.set_seed(1)
        whole = cascade.run(network, images, labels, Killable(self.attack), batch_size=8)
        with self.assertRaises(KeyboardInterrupt):
            cascade.run(
                network,
                images,
                labels,
                Killable(self.attack, fail_after=2),
                batch_size=8,
                state_path=path,
                save_every=0,
            )
        tf.random.set_seed(5)  # a new process: another random state
        resumed_attack = Killable(self.attack)
        resumed = cascade.run(
            network, images, labels, resumed_attack, batch_size=8, state_path=path
        )
        self.assertEqual(resumed_attack.calls, [8, 8])  # two of the four batches were left
        self.assertAllEqual(resumed.adversarial, whole.adversarial)
        self.assertAllEqual(resumed.robust, whole.robust)

    def test_pgd_counts_whatever_ran_before(self):
        network, images, labels = _random_network_and_points(64)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
        pgd = attacks.PGDConfig(eps=0.05, steps=1, restarts=1, step_size=0.01)

        def robust():
            return evaluation.evaluate(network, dataset, pgd, log_every=0).robust_acc

        tf.random.set_seed(1)
        first = robust()
        tf.random.set_seed(2)
        tf.random.uniform([7])
        self.assertEqual(robust(), first)
        with mock.patch.object(cascade, "SEED", 1):
            self.assertNotEqual(robust(), first)  # the seed reaches PGD's start


class MaskingCheckTest(tf.test.TestCase):
    def _stages(self, *pairs):
        return [{"attack": name, "robust_acc": acc} for name, acc in pairs]

    def test_counts_what_square_breaks_after_gradient_attacks(self):
        stages = self._stages(("apgd-ce", 0.627), ("apgd-t", 0.6095), ("square", 0.2285))
        self.assertAlmostEqual(cascade.gradient_free_gain(stages), 0.381)
        warning = cascade.masking_warning(stages)
        self.assertIn("square broke 38.10% of the examples", warning)
        self.assertIn("gradient masking", warning)
        as_stages = [cascade.Stage(s["attack"], s["robust_acc"], 1, 0, 0.0) for s in stages]
        self.assertEqual(cascade.masking_warning(as_stages), warning)

    def test_passes_at_the_threshold_and_without_a_gradient_attack_before(self):
        at_threshold = self._stages(("apgd-ce", 0.5), ("square", 0.498))
        self.assertIsNone(cascade.masking_warning(at_threshold))
        just_above = self._stages(("apgd-ce", 0.5), ("square", 0.4975))
        self.assertIsNotNone(cascade.masking_warning(just_above))
        square_first = self._stages(("square", 0.2), ("apgd-ce", 0.1))
        self.assertEqual(cascade.gradient_free_gain(square_first), 0.0)
        self.assertIsNone(cascade.masking_warning(self._stages(("apgd-ce", 0.5))))


class ReplicasTest(tf.test.TestCase):
    def test_replicas_attack_their_share_with_the_same_result(self):
        strategy = helpers.mirrored_cpus()
        images, labels = _data(41)
        one = cascade.run(_mean_model, images, labels, Shift(0.1, 0.1), batch_size=10)
        two = cascade.run(
            _mean_model, images, labels, Shift(0.1, 0.1), batch_size=10, strategy=strategy
        )
        self.assertAllEqual(one.robust, two.robust)
        self.assertAllClose(one.adversarial, two.adversarial)


if __name__ == "__main__":
    tf.test.main()
