"""The Keras model that trains a network under a robust objective.

`RobustTrainer` wraps a network (a functional model that outputs logits) and an
objective from `hydra_tf.objectives`. Its `train_step` runs the objective's
attack with the network in inference mode, then takes one optimizer step on the
objective's loss; training is therefore plain `model.fit` with Keras callbacks.
Which variables train (weights, scores, BatchNorm) is decided by
`hydra_tf.phases`, not here.
"""

import keras
import tensorflow as tf


class RobustTrainer(keras.Model):
    """Trains `network` on `objective` inside `model.fit`.

    Args:
      network: a `keras.Model` mapping images to logits.
      objective: an object with `perturb(model, x, y)` and
        `loss(model, x, y, perturbed) -> (loss, logits)`
        (see `hydra_tf.objectives`).
    """

    def __init__(self, network, objective, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.objective = objective
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._eval_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        # The network is a built functional model; the wrapper owns no
        # variables of its own, so it is built too (BackupAndRestore needs it).
        self.built = network.built

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def train_step(self, data):
        x, y = data
        perturbed = self.objective.perturb(self.network, x, y)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            loss, logits = self.objective.loss(self.network, x, y, perturbed)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        self._track(loss, y, logits)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data
        logits = self.network(x, training=False)
        self._track(self._eval_ce(y, logits), y, logits)
        return {m.name: m.result() for m in self.metrics}

    def _track(self, loss, y, logits):
        # Losses are scaled by 1 / replicas for gradient summation; undo that
        # for the reported value.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_tracker.update_state(loss * replicas)
        self.accuracy.update_state(y, logits)
