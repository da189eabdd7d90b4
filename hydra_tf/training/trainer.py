"""The Keras model that trains a network under a robust objective.

`RobustTrainer` wraps a network (a functional model that outputs logits) and an
objective from `hydra_tf.objectives`. Its `train_step` runs the objective's
attack with the network in inference mode, then takes one optimizer step on the
objective's loss; training is therefore plain `model.fit` with Keras callbacks.
Which variables train (weights, scores, BatchNorm) is decided by
`hydra_tf.pruning.phases`, not here.

Masks: the scores cannot change during a step, so each pruned layer's top-k
mask is selected once per step and reused by every forward pass of the attack
and the loss; the loss passes get the straight-through gradient to the scores
attached to that same mask. A layer whose scores are frozen (finetune) does no
mask work in the step at all: its mask is cached in a variable, refreshed before
the first step of every `fit` / `evaluate` call (after callbacks such as
BackupAndRestore have loaded the weights). The results are those of computing
the mask in every forward pass (`reuse_masks=False`, kept as the reference).

Objectives with a step of their own: an objective may define
`train_step(trainer, x, y)`, which the trainer runs instead of its default
step (free adversarial training replays each batch several times); it
updates through `optimizer_step`, which applies the masks, weight decay,
loss scaling and metrics as the default step does. Such an objective may also
define `build(network)` (called in the strategy scope, to create its state),
`save_state(store)` / `load_state(store)` (its state in the BackupAndRestore
backups) and `supports_jit = False`. Every other objective runs the default
step.
"""

import keras
import tensorflow as tf

from hydra_tf import distribute
from hydra_tf.models import layers as score_layers
from hydra_tf.models import masks


class _FrozenMasks:
    """Per-layer mask variables for layers whose scores do not train.

    Not a Keras or TF trackable: the cache is derived state, never saved. It is
    refreshed eagerly, outside the compiled step, so a step only reads it.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        self.values = [
            tf.Variable(
                tf.zeros(layer.score.shape),
                name=f"{layer.name}_frozen_mask",
                trainable=False,
                # Each replica reads its own copy; all hold the same mask.
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            for layer in self.layers
        ]
        self.stale = True

    def refresh_if_stale(self):
        if self.stale:
            for layer, value in zip(self.layers, self.values):
                value.assign(layer.hard_mask())
            self.stale = False

    def read(self):
        return {layer: value.read_value() for layer, value in zip(self.layers, self.values)}


class RobustTrainer(keras.Model):
    """Trains `network` on `objective` inside `model.fit`.

    Args:
      network: a `keras.Model` mapping images to logits.
      objective: an object with `perturb(model, x, y)` and
        `loss(model, x, y, perturbed) -> (loss, logits)`
        (see `hydra_tf.objectives`).
      reuse_masks: select each mask once per step (and cache frozen masks);
        False computes the mask in every forward pass, the slow reference
        with the same results.
      seed: keys the step's random numbers (attack starts, noise) with the
        step counter and the replica (`distribute.step_randomness`).
      l2: coupled weight decay: `l2 * w` is added to the gradient of every
        trained variable before the optimizer sees it (PyTorch's SGD / Adam
        `weight_decay`, which the reference code used). With momentum 0.9 it
        decays about 10x more than the same decoupled (Keras) weight decay.
    """

    def __init__(self, network, objective, reuse_masks=True, seed=0, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        if not l2 >= 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        self.l2 = float(l2)
        self.seed = int(seed)
        self.network = network
        self.objective = objective
        self.reuse_masks = bool(reuse_masks)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._eval_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        frozen = [
            layer
            for layer in score_layers.pruned_layers(network)
            if not self._trains(layer.score, network.trainable_variables)
        ]
        self._frozen = _FrozenMasks(frozen if self.reuse_masks else [])
        if hasattr(objective, "build"):
            objective.build(network)
        if not getattr(objective, "supports_jit", True):
            # Keras then compiles without XLA (and warns if XLA was asked for).
            self.supports_jit = False
        # The network is a built functional model; the wrapper owns no
        # variables of its own, so it is built too (BackupAndRestore needs it).
        self.built = network.built

    @staticmethod
    def _trains(variable, trainable):
        return any(variable is v for v in trainable)

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    @property
    def metrics(self):
        # An objective may track more (the eps of a ramp, verified accuracy);
        # those are training-only: `test_step` does not report them.
        return [self.loss_tracker, self.accuracy, *getattr(self.objective, "metrics", [])]

    def fit(self, *args, **kwargs):
        self._frozen.stale = True
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._frozen.stale = True
        return super().evaluate(*args, **kwargs)

    def _refreshing(self, function):
        """Wraps a compiled step function to refresh stale frozen masks first.

        The first step of a `fit` runs after `on_train_begin` callbacks, so
        weights restored by BackupAndRestore are already in place.
        """
        if function is None or getattr(function, "refreshes_frozen_masks", False):
            return function

        def run(iterator):
            self._frozen.refresh_if_stale()
            return function(iterator)

        run.refreshes_frozen_masks = True
        return run

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy Keras reads one batch here to build
        # the model, which starts an extra pass over the data: a reshuffling
        # dataset would then train on another order than on one device. The
        # network is built already and there are no compiled losses or
        # metrics, so only the optimizer needs building (in cross-replica
        # context).
        if not self.built:
            return super()._maybe_symbolic_build(iterator, data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def make_train_function(self, force=False):
        super().make_train_function(force)
        self.train_function = self._refreshing(self.train_function)
        return self.train_function

    def make_test_function(self, force=False):
        super().make_test_function(force)
        self.test_function = self._refreshing(self.test_function)
        return self.test_function

    def step_masks(self):
        """Each pruned layer's mask for one step, without gradient.

        Frozen layers read their cache; layers whose scores train select the
        top-k once. Empty when `reuse_masks` is False.
        """
        if not self.reuse_masks:
            return {}
        result = self._frozen.read()
        trainable = self.network.trainable_variables
        for layer in score_layers.pruned_layers(self.network):
            if layer not in result or self._trains(layer.score, trainable):
                result[layer] = layer.hard_mask()
        return result

    def train_step(self, data):
        with distribute.step_randomness(self.seed, self.optimizer.iterations):
            if hasattr(self.objective, "train_step"):
                x, y = data
                self.objective.train_step(self, x, y)
                return self._results()
            return self._train_step(data)

    def _train_step(self, data):
        x, y = data
        hard = self.step_masks()
        with masks.reusing(hard):
            perturbed = self.objective.perturb(self.network, x, y)
        self.optimizer_step(hard, y, lambda: self.objective.loss(self.network, x, y, perturbed))
        return self._results()

    def optimizer_step(self, hard, y, loss_fn, wrt=()):
        """One optimizer update on the loss `loss_fn` computes; tracks loss and accuracy.

        Args:
          hard: the step's masks (`step_masks()`); trained scores get their
            straight-through gradient attached to these.
          y: the labels, for the accuracy.
          loss_fn: `() -> (loss, logits)`, run on the tape (an objective's
            `loss`, with the network in training mode).
          wrt: tensors (e.g. an input perturbation) whose gradients the same
            backward pass returns.

        Returns:
          The gradients with respect to `wrt` of the loss as the optimizer
          saw it: divided by the number of replicas and multiplied by the
          mixed precision loss scale.
        """
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            tape.watch(wrt)
            # The loss passes need the gradient to trained scores: attach it to
            # the mask already selected, rather than selecting it again.
            graded = {
                layer: masks.straight_through(layer.score, mask)
                for layer, mask in hard.items()
                if self._trains(layer.score, variables)
            }
            with masks.reusing({**hard, **graded}):
                loss, logits = loss_fn()
            total = tf.cast(loss, tf.float32) + self._l2_penalty(variables)
            scaled = self.optimizer.scale_loss(total)
        grads = tape.gradient(scaled, [*variables, *wrt])
        self.optimizer.apply(grads[: len(variables)], variables)
        self._track(loss, y, logits)
        return grads[len(variables) :]

    def save_own_variables(self, store):
        # The wrapper owns no variables; an objective's state (free_at's
        # perturbation) goes into the backups so that a resume continues it.
        super().save_own_variables(store)
        if hasattr(self.objective, "save_state"):
            self.objective.save_state(store)

    def load_own_variables(self, store):
        if hasattr(self.objective, "load_state"):
            self.objective.load_state(store)
        else:
            super().load_own_variables(store)

    def _l2_penalty(self, variables):
        """0.5 * l2 * sum ||v||^2, whose gradient is l2 * v (coupled weight decay).

        Added to the loss rather than to the gradients, so that the mixed
        precision loss scale and its unscaling treat it like the data term.
        Divided by the number of replicas like the losses: the optimizer sums
        the replicas' gradients, which then hold l2 * v once.
        """
        if not self.l2:
            return 0.0
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        total = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])
        return (0.5 * self.l2 / replicas) * total

    def test_step(self, data):
        x, y = data
        with masks.reusing(self.step_masks()):
            logits = self.network(x, training=False)
        self._track(self._eval_ce(y, logits), y, logits)
        return self._results([self.loss_tracker, self.accuracy])

    def _results(self, metrics=None):
        results = {m.name: m.result() for m in (self.metrics if metrics is None else metrics)}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras averages a multi-worker step's outputs over axis 0, which
            # scalars do not have (Keras 3.15): give each a length-1 axis.
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    def _track(self, loss, y, logits):
        # Losses are scaled by 1 / replicas for gradient summation; undo that
        # for the reported value.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_tracker.update_state(loss * replicas)
        self.accuracy.update_state(y, logits)
