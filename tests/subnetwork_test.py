"""HYDRA finds a robust sub-network inside a non-robust (naturally trained) network."""

import os
import tempfile

import tensorflow as tf
from absl import logging

from hydra_tf import evaluation
from hydra_tf import files
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.objectives import attacks
from hydra_tf.pruning import phases
from tests import helpers


def _robust_acc(network, x, y):
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
    return evaluation.evaluate(network, ds, attacks.PGDConfig(eps=0.1, steps=20)).robust_acc


class RobustSubnetworkTest(tf.test.TestCase):
    def test_adversarial_prune_of_natural_network(self):
        natural = helpers.natural_cnn_small()
        source = os.path.join(tempfile.mkdtemp(), "natural.keras")
        natural.save(source)
        config = training.TrainConfig(
            workdir=tempfile.mkdtemp(),
            phase="prune",
            keep_ratio=0.3,
            source_checkpoint=source,
            train_limit=3000,
            test_limit=100,
            batch_size=64,
            epochs=2,
            learning_rate=0.1,
            objective=objectives.config("pgd_at", eps=0.1, steps=5, step_size=0.03),
        )
        pruned = files.load_network(training.train(config, verbose=0).model_path)

        # The same sub-network size chosen by weight magnitude (no training).
        lwm = phases.build_network("prune", "cnn_small", (28, 28, 1), 10, keep_ratio=0.3)
        phases.prepare(lwm, "prune", natural)

        x, y = helpers.fashion_arrays("test", 300)
        natural_acc = _robust_acc(natural, x, y)
        lwm_acc = _robust_acc(lwm, x, y)
        pruned_acc = _robust_acc(pruned, x, y)
        logging.info(
            "PGD-20 eps 0.1: natural %.3f, LWM mask %.3f, HYDRA prune %.3f",
            natural_acc,
            lwm_acc,
            pruned_acc,
        )
        # Only scores were trained: every weight is the natural network's.
        for layer in natural.layers:
            if layer.weights:
                self.assertAllEqual(layer.kernel, pruned.get_layer(layer.name).kernel)
        self.assertLess(natural_acc, 0.15)
        self.assertGreater(pruned_acc, natural_acc + 0.2, (natural_acc, lwm_acc, pruned_acc))
        self.assertGreater(pruned_acc, lwm_acc + 0.2, (natural_acc, lwm_acc, pruned_acc))


if __name__ == "__main__":
    tf.test.main()
