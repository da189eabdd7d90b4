"""Tests for hydra_tf.objectives.free_at: replays, the carried perturbation, replicas, resume."""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from absl.testing import parameterized

from binaries import common
from hydra_tf import files
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.models import architectures
from hydra_tf.objectives import attacks
from hydra_tf.pruning import phases
from hydra_tf.training import trainer as trainer_lib
from tests import helpers

_EPS = 0.1


def _data(count=16, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(count, 28, 28, 1).astype(np.float32), rng.randint(0, 10, count)


def _linear():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )


def _trainer(network, objective, learning_rate=0.05):
    model = trainer_lib.RobustTrainer(network, objective)
    model.compile(keras.optimizers.SGD(learning_rate, momentum=0.9))
    return model


def _cnn(phase):
    keras.utils.set_random_seed(3)
    source = architectures.build("cnn_small", (28, 28, 1), 10)
    if phase == "pretrain":
        return source
    network = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.1)
    phases.prepare(network, phase, source)
    return network


def _values(variables):
    return {v.path: v.numpy().copy() for v in variables}


class ConfigTest(tf.test.TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not flags.FLAGS.is_parsed():
            flags.FLAGS(["test"])

    @parameterized.parameters(
        ({"eps": 0.0}, "eps=0.0"),
        ({"eps": -0.1}, "eps=-0.1"),
        ({"replays": 0}, "replays=0"),
        ({"replays": 1.5}, "replays=1.5"),
    )
    def test_bad_settings(self, values, received):
        with self.assertRaisesRegex(ValueError, received):
            objectives.FreeATConfig(**values)
        with self.assertRaisesRegex(ValueError, received):
            objectives.FreeAT(**{"eps": _EPS, "replays": 2, **values})

    def test_registry_and_evaluation_kind(self):
        config = objectives.config("free_at", eps=0.2, replays=3, steps=7, beta=6.0)
        self.assertEqual(config, objectives.FreeATConfig(eps=0.2, replays=3))
        self.assertEqual(
            objectives.from_json({"name": "free_at", "eps": 0.2, "replays": 3}), config
        )
        objective = objectives.make(config)
        self.assertIsInstance(objective, objectives.FreeAT)
        self.assertEqual((objective.eps, objective.replays), (0.2, 3))
        # Evaluated by the attack.
        self.assertFalse(objectives.certified(config))
        self.assertFalse(objectives.verified(config))

    def test_epochs_count_gradient_computations(self):
        # The paper: 90 ImageNet epochs with m = 4 are 23 passes.
        self.assertEqual(objectives.data_epochs(objectives.FreeATConfig(replays=4), 90), 23)
        self.assertEqual(objectives.data_epochs(objectives.FreeATConfig(replays=4), 8), 2)
        self.assertEqual(objectives.data_epochs(objectives.FreeATConfig(replays=1), 8), 8)
        self.assertEqual(objectives.data_epochs(objectives.TradesConfig(), 8), 8)

    def test_flags(self):
        with flagsaver.flagsaver(objective="free_at", eps=0.2, free_replays=3):
            config = common.objective_config()
        self.assertEqual(config, objectives.FreeATConfig(eps=0.2, replays=3))
        with self.assertRaises(flags.IllegalFlagValueError):
            flags.FLAGS.free_replays = 0


class TrainStepTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(("pretrain", 1), ("pretrain", 3), ("prune", 3), ("finetune", 3))
    def test_step_makes_one_update_per_replay(self, phase, replays):
        network = _cnn(phase)
        objective = objectives.FreeAT(_EPS, replays)
        model = _trainer(network, objective)
        trained = _values(network.trainable_variables)
        frozen = _values(v for v in network.weights if not v.trainable)
        x, y = _data()
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        self.assertEqual(int(model.optimizer.iterations), replays)
        # What the phase trains moved (scores when pruning, weights
        # otherwise); nothing else did.
        for variable in network.trainable_variables:
            self.assertNotAllClose(trained[variable.path], variable.numpy(), msg=variable.path)
        for variable in network.weights:
            if variable.path in frozen and "moving" not in variable.path:
                self.assertAllEqual(frozen[variable.path], variable.numpy(), msg=variable.path)
        delta = objective.delta.numpy()
        self.assertEqual(delta.shape, x.shape)
        # Signed eps-sized steps from zero, clipped at eps: every entry is
        # -eps, 0 or eps, and some are not 0.
        self.assertAllClose(np.abs(delta).max(), _EPS)
        self.assertContainsSubset(np.unique(np.round(delta / _EPS)), {-1.0, 0.0, 1.0})
        perturbed = objective.perturb(network, x, y).numpy()
        self.assertAllInRange(perturbed, 0.0, 1.0)
        self.assertLessEqual(np.abs(perturbed - x).max(), _EPS + 1e-6)
        # Pixels near 0 or 1 are clipped back into the data domain.
        self.assertTrue(np.any(x + delta < 0.0) or np.any(x + delta > 1.0))

    def test_delta_carries_across_batches(self):
        network = _linear()
        objective = objectives.FreeAT(_EPS, replays=2)
        # No weight change: the second batch's delta can be computed by hand.
        model = _trainer(network, objective, learning_rate=0.0)
        x1, y1 = _data(16, seed=0)
        x2, y2 = _data(4, seed=1)  # the smaller last batch of an epoch
        model.fit(x1, y1, batch_size=16, epochs=1, shuffle=False, verbose=0)
        first = objective.delta.numpy()
        model.fit(x2, y2, batch_size=4, epochs=1, shuffle=False, verbose=0)
        second = objective.delta.numpy()

        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def replayed(start):
            delta = tf.constant(start)
            for _ in range(2):
                with tf.GradientTape() as tape:
                    tape.watch(delta)
                    logits = network(tf.clip_by_value(x2 + delta, 0.0, 1.0), training=True)
                    loss = ce(y2, logits)
                step = _EPS * tf.sign(tape.gradient(loss, delta))
                delta = tf.clip_by_value(delta + step, -_EPS, _EPS)
            return delta.numpy()

        expected = replayed(first[:4])
        self.assertAllClose(second[:4], expected)
        self.assertNotAllClose(second[:4], replayed(np.zeros_like(first[:4])))
        # The rows the smaller batch did not use keep their values.
        self.assertAllEqual(second[4:], first[4:])

    def test_two_replicas_keep_their_own_delta(self):
        strategy = helpers.mirrored_cpus()
        with strategy.scope():
            network = _cnn("prune")
            objective = objectives.FreeAT(_EPS, replays=2)
            model = _trainer(network, objective)
        x, y = _data(16)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        model.fit(ds, epochs=1, shuffle=False, verbose=0)
        self.assertEqual(int(model.optimizer.iterations.numpy()), 2)
        copies = [c.numpy() for c in strategy.experimental_local_results(objective.delta)]
        self.assertLen(copies, 2)
        for copy in copies:
            self.assertEqual(copy.shape, (8, 28, 28, 1))  # each replica's half of the batch
            self.assertGreater(np.abs(copy).max(), 0.0)
            self.assertLessEqual(np.abs(copy).max(), _EPS + 1e-7)
        self.assertNotAllClose(copies[0], copies[1])
        # The backups keep each replica's own delta.
        store = {}
        objective.save_state(store)
        for copy in strategy.experimental_local_results(objective.delta):
            copy.assign(tf.zeros((0, 28, 28, 1)))
        objective.load_state(store)
        restored = strategy.experimental_local_results(objective.delta)
        for copy, value in zip(copies, restored):
            self.assertAllEqual(copy, value.numpy())
        # A backup of another number of replicas restarts delta at zero.
        objective.load_state({"free_at_delta_0": copies[0]})
        for value in strategy.experimental_local_results(objective.delta):
            self.assertEqual(value.numpy().shape, (0, 28, 28, 1))


def _train_config(workdir, objective, **overrides):
    values = {
        "workdir": workdir,
        "train_limit": 1024,
        "test_limit": 64,
        "batch_size": 64,
        "epochs": 8,
        "learning_rate": 0.05,
        "objective": objective,
    }
    values.update(overrides)
    return training.TrainConfig(**values)


class TrainTest(tf.test.TestCase):
    def test_more_robust_than_natural_at_equal_gradient_computations(self):
        # 8 epochs of 16 updates each: natural makes 8 passes, free_at (m = 4) 2.
        natural = training.train(
            _train_config(tempfile.mkdtemp(), objectives.config("natural")), verbose=0
        )
        free = training.train(
            _train_config(tempfile.mkdtemp(), objectives.FreeATConfig(eps=_EPS, replays=4)),
            verbose=0,
        )
        self.assertLen(natural.history["epoch"], 8)
        self.assertLen(free.history["epoch"], 2)
        x, y = helpers.fashion_arrays("test", 500)
        attack = attacks.PGDConfig(eps=_EPS, steps=10, step_size=0.025)
        robust = {}
        for name, result in (("natural", natural), ("free_at", free)):
            _, correct = attacks.robust_correct(files.load_network(result.model_path), x, y, attack)
            robust[name] = float(np.mean(correct))
        # Measured: natural 0.09, free_at 0.44.
        self.assertGreater(robust["free_at"], robust["natural"] + 0.2, robust)

    def test_killed_run_resumes_exactly(self):
        def config(workdir):
            objective = objectives.FreeATConfig(eps=_EPS, replays=2)
            return _train_config(workdir, objective, train_limit=256, epochs=4)

        workdir = tempfile.mkdtemp()
        helpers.train_killed_after_first_epoch(self, config(workdir))
        self.assertFalse(os.path.exists(os.path.join(workdir, "model.keras")))
        resumed = training.train(config(workdir), verbose=0)
        self.assertTrue(resumed.resumed)
        self.assertEqual(resumed.history["epoch"], [0.0, 1.0])

        # The second pass started from the carried delta (and the optimizer
        # state): the same network as a run that went straight through.
        straight = training.train(config(tempfile.mkdtemp()), verbose=0)
        self.assertAllClose(resumed.history["loss"], straight.history["loss"], rtol=1e-6)
        expected = files.load_network(straight.model_path).get_weights()
        for got, want in zip(files.load_network(resumed.model_path).get_weights(), expected):
            self.assertAllClose(got, want, atol=1e-6)


if __name__ == "__main__":
    tf.test.main()
