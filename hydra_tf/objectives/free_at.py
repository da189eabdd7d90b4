"""Free adversarial training (Shafahi et al., NeurIPS 2019, "Adversarial Training for Free!").

PGD-AT spends K + 1 backward passes on each optimizer update. Free AT spends
one: every minibatch is replayed `replays` (m) times, and each replay's single
backward pass gives the gradient of the loss with respect to both the trained
variables and the input perturbation delta. The optimizer applies the first;
the second moves delta by one FGSM step of size eps:

    x_adv = clip(x + delta, 0, 1)
    loss  = CE(y, model(x_adv, training=True))
    w     <- optimizer update on d loss / d w
    delta <- clip(delta + eps * sign(d loss / d delta), -eps, eps)

delta is not reset between minibatches: the next batch starts from the last
one's delta (its first `batch` rows; the rows a smaller batch does not use
keep their values), so the attack keeps strengthening over the replays of
all batches.

**Epochs.** Each batch makes m optimizer updates, so the paper trains for
epochs / m passes over the data (90 ImageNet epochs / m). Here a run's
`epochs` count gradient computations, as for every other objective, and
`objectives.data_epochs` turns them into the passes `training.train` makes:
ceil(epochs / replays). The optimizer's step counter (and with it the
learning-rate schedule) advances m times per batch.

**State.** delta lives in a non-trainable variable, one copy per replica under
tf.distribute (each replica perturbs its own examples). Its rows follow the
largest batch seen, so any batch size works; XLA cannot resize a variable,
so `supports_jit` is False and Keras compiles the trainer without XLA
(warning if `jit_compile=True` was asked for). delta IS checkpointed: the
trainer saves it with its BackupAndRestore backups (`save_state` /
`load_state`), each replica's copy under its own key, so a resumed run
continues exactly as one that ran through; a run resumed on another number
of replicas restarts delta at zero.

**Masks.** Every replay's update may move trained scores (prune phase), so
each replay selects the masks anew (`RobustTrainer.step_masks`) and the loss
gets the straight-through gradient to them, exactly as the default step.

Networks trained with free AT are evaluated by an attack (not certified, not
verified), like PGD-AT.
"""

import dataclasses
import functools

import tensorflow as tf
from absl import logging

from hydra_tf.objectives import base

_STATE_KEY = "free_at_delta"


@dataclasses.dataclass(frozen=True)
class FreeATConfig:
    """Free adversarial training.

    Attributes:
      eps: L-inf radius of the perturbation; also its step size.
      replays: how many times each minibatch is replayed (m); each replay is
        one optimizer update and one FGSM step of delta.
    """

    name: str = dataclasses.field(default="free_at", init=False)
    eps: float = 8 / 255
    replays: int = 4

    def __post_init__(self):
        _validate(self.eps, self.replays)


def _validate(eps, replays):
    if not eps > 0:
        raise ValueError(f"free_at needs eps > 0. Received: eps={eps}")
    if isinstance(replays, bool) or int(replays) != replays or replays < 1:
        raise ValueError(f"free_at replays must be an integer >= 1. Received: replays={replays}")


class FreeAT(base.Natural):
    """Free AT: each batch replayed `replays` times, delta carried across batches.

    Args:
      eps: L-inf radius and step size of delta.
      replays: optimizer updates (and delta steps) per batch.

    The trainer calls `build(network)` in its strategy scope (creating delta),
    runs `train_step` instead of its own, and keeps delta in its backups
    (`save_state` / `load_state`); `perturb` / `loss` are the interface's, on
    the current delta.
    """

    name = "free_at"
    Config = FreeATConfig
    # delta's rows follow the batch, a resize XLA cannot compile.
    supports_jit = False

    def __init__(self, eps=8 / 255, replays=4):
        super().__init__()
        _validate(eps, replays)
        self.eps = float(eps)
        self.replays = int(replays)
        self.delta = None
        self._strategy = None

    @classmethod
    def from_config(cls, config):
        return cls(config.eps, config.replays)

    def build(self, network):
        """Creates delta (zero rows, per replica) for `network`'s inputs.

        Called by `RobustTrainer` inside its strategy scope; a new trainer
        starts from a new, empty delta.
        """
        image_shape = tuple(network.input_shape[1:])
        self._strategy = tf.distribute.get_strategy()
        self.delta = tf.Variable(
            tf.zeros((0, *image_shape)),
            # Rows follow the batch: the first step (and a larger batch) adds
            # zero rows.
            shape=tf.TensorShape([None, *image_shape]),
            trainable=False,
            name="free_at_delta",
            # Each replica keeps its own delta for its own examples.
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def _require_built(self):
        if self.delta is None:
            raise ValueError(
                "free_at has no perturbation yet: train it with a RobustTrainer, "
                "which builds it for its network."
            )

    def _start(self, x):
        """delta's first len(x) rows, with zeros for rows not stored yet."""
        self._require_built()
        stored = self.delta.read_value()
        batch = tf.shape(x)[0]
        missing = tf.maximum(batch - tf.shape(stored)[0], 0)
        zeros = tf.zeros(tf.concat([[missing], tf.shape(stored)[1:]], 0), stored.dtype)
        return tf.cast(tf.concat([stored[:batch], zeros], 0), x.dtype)

    def perturb(self, model, x, y):
        """x + delta (the current delta), clipped to the data domain [0, 1]."""
        del model, y
        return tf.clip_by_value(x + self._start(x), 0.0, 1.0)

    def _replay_loss(self, model, x, y, delta):
        return self.loss(model, x, y, tf.clip_by_value(x + delta, 0.0, 1.0))

    def train_step(self, trainer, x, y):
        """`replays` optimizer updates on (x, y), each moving delta by one signed step.

        Args:
          trainer: the `RobustTrainer` (its masks, optimizer and metrics).
          x, y: the batch (per replica under tf.distribute).
        """
        delta = self._start(x)
        eps = tf.cast(self.eps, x.dtype)
        # Unrolled: the optimizer's cross-replica update cannot run inside a
        # tf.while_loop under tf.distribute, and m is small.
        for _ in range(self.replays):
            # The perturbed input is built inside the loss (on the tape), so
            # the one backward pass reaches delta too.
            (grad,) = trainer.optimizer_step(
                trainer.step_masks(),
                y,
                functools.partial(self._replay_loss, trainer.network, x, y, delta),
                wrt=[delta],
            )
            # The gradient is of the loss the optimizer saw (divided by the
            # replicas, times a mixed-precision loss scale): positive factors
            # that leave its sign alone. Where a loss scale overflowed the
            # gradient is not finite, and delta does not move.
            grad = tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))
            delta = tf.clip_by_value(delta + eps * tf.sign(grad), -eps, eps)
        stored = self.delta.read_value()
        self.delta.assign(tf.concat([tf.cast(delta, stored.dtype), stored[tf.shape(x)[0] :]], 0))

    def _copies(self):
        return self._strategy.experimental_local_results(self.delta)

    def save_state(self, store):
        """Writes each local replica's delta into a Keras weights `store`."""
        self._require_built()
        for index, copy in enumerate(self._copies()):
            store[f"{_STATE_KEY}_{index}"] = copy.numpy()

    def load_state(self, store):
        """Restores what `save_state` wrote (delta restarts at zero if it does not fit)."""
        self._require_built()
        copies = self._copies()
        keys = [f"{_STATE_KEY}_{index}" for index in range(len(copies))]
        names = store.keys()  # a Keras weights store is not iterable itself
        stored = [name for name in names if name.startswith(_STATE_KEY)]
        if sorted(stored) != sorted(keys):
            logging.warning(
                "free_at: the backup holds %d replica perturbation(s), this run has %d "
                "replica(s); delta restarts at zero.",
                len(stored),
                len(copies),
            )
            values = [tf.zeros((0, *self.delta.shape[1:]))] * len(copies)
        else:
            values = [store[key] for key in keys]
        for copy, value in zip(copies, values):
            copy.assign(value)
