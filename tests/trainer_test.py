"""Tests for hydra_tf.training.trainer: the train step, and loss scaling under tf.distribute."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import objectives
from hydra_tf.models import architectures
from hydra_tf.models import layers as score_layers
from hydra_tf.objectives import attacks
from hydra_tf.pruning import phases
from hydra_tf.training import trainer
from tests import helpers


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
    if name in ("ibp", "crown_ibp"):
        # A ramp over the 4 steps of the run (2 per epoch): eps, kappa and
        # beta change every step, from the step counter of each replica.
        config = objectives.config(name, eps=0.05, ramp_epochs=2.0)
        return objectives.make(config, steps_per_epoch=2)
    # TRADES' start is random per replica, and its signed KL gradient near the
    # start is small enough for float noise (batch split across replicas) to
    # flip signs. A fixed perturbation (no steps) keeps the comparison exact
    # while exercising the KL term's loss scaling.
    trades = objectives.Trades(attack, beta=6.0)
    trades.perturb = lambda model, x, y: tf.clip_by_value(x + 0.05 * tf.sin(1000.0 * x), 0, 1)
    return trades


def _train(strategy, objective_name, phase, granularity="weight"):
    with strategy.scope():
        keras.utils.set_random_seed(7)
        source = architectures.build("cnn_small", (28, 28, 1), 10)
        if phase == "pretrain":
            network = source
        else:
            keep = 0.1 if granularity == "weight" else 0.5
            network = architectures.build(
                "cnn_small", (28, 28, 1), 10, keep_ratio=keep, granularity=granularity
            )
            phases.prepare(network, phase, source)
        model = trainer.RobustTrainer(network, _objective(objective_name))
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-3))
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(ds, epochs=2, shuffle=False, verbose=0)
    return [v.numpy() for v in network.trainable_variables], history.history["loss"]


class DistributedTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ("natural", "pretrain"),
        ("pgd_at", "prune"),
        ("trades", "finetune"),
        ("trades", "pretrain"),
        ("crown_ibp", "pretrain"),
        ("ibp", "prune"),
    )
    def test_two_replicas_match_one_device(self, objective_name, phase):
        devices = tf.config.list_logical_devices("CPU")
        self.assertGreaterEqual(len(devices), 2, "conftest.py should create 2 logical CPUs")
        single, single_loss = _train(tf.distribute.get_strategy(), objective_name, phase)
        mirrored, mirrored_loss = _train(helpers.mirrored_cpus(), objective_name, phase)
        self.assertLen(mirrored, len(single))
        for a, b in zip(single, mirrored):
            self.assertAllClose(a, b, atol=2e-5, rtol=1e-4)
        self.assertAllClose(single_loss, mirrored_loss, rtol=1e-4)
        # The update really moved the weights (a no-op would also "match").
        keras.utils.set_random_seed(7)
        initial = architectures.build("cnn_small", (28, 28, 1), 10)
        self.assertNotAllClose(initial.get_layer("fc2").bias, single[-1])

    @parameterized.parameters("pgd_at", "ibp")
    def test_channel_pruning_on_two_replicas_matches_one_device(self, objective_name):
        single, single_loss = _train(
            tf.distribute.get_strategy(), objective_name, "prune", "channel"
        )
        mirrored, mirrored_loss = _train(
            helpers.mirrored_cpus(), objective_name, "prune", "channel"
        )
        self.assertLen(single, 3)  # the gates' scores, nothing else
        for a, b in zip(single, mirrored):
            self.assertAllClose(a, b, atol=2e-5, rtol=1e-4)
        self.assertAllClose(single_loss, mirrored_loss, rtol=1e-4)
        keras.utils.set_random_seed(7)
        source = architectures.build("cnn_small", (28, 28, 1), 10)
        start = architectures.build(
            "cnn_small", (28, 28, 1), 10, keep_ratio=0.5, granularity="channel"
        )
        phases.prepare(start, "prune", source)
        self.assertNotAllClose(start.get_layer("conv1_channels").score, single[0])


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


def _pruned_trainer(phase, reuse_masks, keep_ratio=0.1):
    keras.utils.set_random_seed(3)
    source = architectures.build("cnn_small", (28, 28, 1), 10)
    network = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=keep_ratio)
    phases.prepare(network, phase, source)
    attack = attacks.PGDConfig(eps=0.1, steps=3, step_size=0.04)
    model = trainer.RobustTrainer(
        network, objectives.Trades(attack, beta=6.0), reuse_masks=reuse_masks
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-3))
    return model, network


def _op_counts(model, op_type):
    """How many `op_type` ops the traced train step holds (nested bodies included)."""
    x, y = _data()
    step = tf.function(model.train_step)
    graph_def = step.get_concrete_function((x[:16], y[:16])).graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return sum(node.op == op_type for node in nodes)


class MaskReuseTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("prune", "finetune")
    def test_same_seed_same_result_as_per_forward_masks(self, phase):
        x, y = _data()
        results = []
        for reuse in (False, True):
            model, network = _pruned_trainer(phase, reuse)
            # The same seeded random starts in both runs.
            keras.utils.set_random_seed(11)
            ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
            model.fit(ds, epochs=2, shuffle=False, verbose=0)
            results.append([v.numpy() for v in network.weights])
        for reference, reused in zip(*results):
            self.assertAllClose(reference, reused, atol=1e-6, rtol=1e-6)
        # Training moved what the phase trains (scores or kernels).
        _, initial = _pruned_trainer(phase, True)
        trained = "score" if phase == "prune" else "kernel"
        before = initial.get_layer("fc1").weights
        after = network.get_layer("fc1").weights
        for b, a in zip(before, after):
            if trained in b.path:
                self.assertNotAllClose(b.numpy(), a.numpy())

    @parameterized.parameters((0.01, "TopKV2", 1), (0.1, "DenseBincount", 2))
    def test_prune_step_selects_each_mask_once(self, keep_ratio, op_type, per_selection):
        # Below 1/32 kept the mask is a top_k; above, a radix select with two
        # histograms.
        model, network = _pruned_trainer("prune", True, keep_ratio=keep_ratio)
        layers = len(score_layers.pruned_layers(network))
        self.assertEqual(layers, 4)  # conv1, conv2, fc1, fc2
        self.assertEqual(_op_counts(model, op_type), per_selection * layers)
        # The reference selects it in each of the ~6 forward passes it traces.
        reference, _ = _pruned_trainer("prune", False, keep_ratio=keep_ratio)
        self.assertGreater(_op_counts(reference, op_type), 2 * per_selection * layers)

    def test_finetune_step_does_no_mask_work(self):
        model, _ = _pruned_trainer("finetune", True)
        self.assertEqual(_op_counts(model, "TopKV2") + _op_counts(model, "DenseBincount"), 0)

    def test_frozen_mask_cache_follows_new_scores_between_fits(self):
        model, network = _pruned_trainer("finetune", True, keep_ratio=0.5)
        x, y = _data()
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        layer = network.get_layer("fc2")
        # New frozen scores (e.g. restored from a backup) must be picked up.
        layer.score.assign(-layer.score)
        new = np.random.RandomState(5).rand(*layer.score.shape).astype(np.float32)
        layer.score.assign(new)
        logs = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
        logits = network(x, training=False)  # computes the mask from the scores
        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
        self.assertAllClose(logs["loss"], ce, rtol=1e-5)

    def test_keep_ratio_one_does_no_mask_work(self):
        model, _ = _pruned_trainer("finetune", True, keep_ratio=1.0)
        self.assertEqual(_op_counts(model, "TopKV2") + _op_counts(model, "DenseBincount"), 0)


if __name__ == "__main__":
    tf.test.main()
