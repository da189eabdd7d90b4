"""Tests for hydra_tf.trainer: the train step, and loss scaling under tf.distribute."""

import functools

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import architectures
from hydra_tf import attacks
from hydra_tf import objectives
from hydra_tf import phases
from hydra_tf import trainer


def _data():
    rng = np.random.RandomState(0)
    return rng.rand(32, 28, 28, 1).astype(np.float32), rng.randint(0, 10, 32)


def _objective(name):
    # No random start: both runs must see the same attack to be comparable.
    attack = attacks.PGDConfig(eps=0.1, steps=3, step_size=0.04, random_start=False)
    if name == "natural":
        return objectives.Natural()
    if name == "pgd_at":
        return objectives.PGDAdversarial(attack)
    # TRADES' start is random per replica, and its signed KL gradient near the
    # start is small enough for float noise (batch split across replicas) to
    # flip signs. A fixed perturbation (no steps) keeps the comparison exact
    # while exercising the KL term's loss scaling.
    trades = objectives.Trades(attack, beta=6.0)
    trades.perturb = lambda model, x, y: tf.clip_by_value(x + 0.05 * tf.sin(1000.0 * x), 0, 1)
    return trades


def _train(strategy, objective_name, phase):
    with strategy.scope():
        keras.utils.set_random_seed(7)
        source = architectures.build("cnn_small", (28, 28, 1), 10)
        if phase == "pretrain":
            network = source
        else:
            network = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.1)
            phases.prepare(network, phase, source)
        model = trainer.RobustTrainer(network, _objective(objective_name))
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-3))
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(ds, epochs=2, verbose=0)
    return [v.numpy() for v in network.trainable_variables], history.history["loss"]


@functools.cache
def _mirrored():
    # One strategy per process: separate MirroredStrategy objects reuse
    # collective instance keys and can pair up each other's all-reduces.
    devices = tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


class DistributedTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ("natural", "pretrain"), ("pgd_at", "prune"), ("trades", "finetune"), ("trades", "pretrain")
    )
    def test_two_replicas_match_one_device(self, objective_name, phase):
        devices = tf.config.list_logical_devices("CPU")
        self.assertGreaterEqual(len(devices), 2, "conftest.py should create 2 logical CPUs")
        single, single_loss = _train(tf.distribute.get_strategy(), objective_name, phase)
        mirrored, mirrored_loss = _train(_mirrored(), objective_name, phase)
        self.assertLen(mirrored, len(single))
        for a, b in zip(single, mirrored):
            self.assertAllClose(a, b, atol=2e-5, rtol=1e-4)
        self.assertAllClose(single_loss, mirrored_loss, rtol=1e-4)
        # The update really moved the weights (a no-op would also "match").
        keras.utils.set_random_seed(7)
        initial = architectures.build("cnn_small", (28, 28, 1), 10)
        self.assertNotAllClose(initial.get_layer("fc2").bias, single[-1])


class TrainStepTest(tf.test.TestCase):
    def test_reports_unscaled_loss_and_accuracy(self):
        keras.utils.set_random_seed(1)
        network = architectures.build("cnn_small", (28, 28, 1), 10)
        model = trainer.RobustTrainer(network, objectives.Natural())
        model.compile(keras.optimizers.SGD(0.0))
        x, y = _data()
        logs = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, network(x))
        self.assertAllClose(logs["loss"], ce, rtol=1e-5)
        acc = np.mean(np.argmax(network(x), -1) == y)
        self.assertAllClose(logs["accuracy"], acc)


if __name__ == "__main__":
    tf.test.main()
