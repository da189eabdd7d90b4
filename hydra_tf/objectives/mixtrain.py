"""MixTrain (Wang et al., 2018): clean training mixed with a symbolic-interval robust loss.

Each batch trains on the clean cross-entropy. With probability `probability`
(0.8 in the reference) it also adds `weight_t * CE(-lower)` of `samples`
examples drawn from the batch (with replacement, as the reference's
`randint`), where `lower` holds the symbolic-interval lower bounds of the
margins z_y - z_j over the L-inf ball of radius eps_t clipped to [0, 1]
(`bounds.symbolic_specification_bounds`), 0 at the true class. Symbolic
intervals keep an equation in every input pixel per neuron, so only a few
examples per batch are bounded (the reference: 5 for the small network, 1
for the large one).

Schedules, per epoch as in the HYDRA code's `trainer/mixtrain.py`, with e
the epoch (from 0) of the optimizer's step counter, which is checkpointed
(a resumed run continues on the same schedule):

    eps_t = eps * e / ramp_epochs while e < ramp_epochs, then eps
    weight_t = min(weight * growth ** floor(max(e - ramp_epochs, 0) / every), cap)

`ramp="linear"` or `"smoothed"` grows eps per step instead, as IBP training
does (`verifiable.ramp_fraction`). A per-epoch ramp jumps from 0 to
eps / ramp_epochs at once; on cnn_large that jump collapsed both seeds in one
epoch (its symbolic margin bounds at eps 0.017 after one clean epoch are
about -6e4, and their gradient about 4e4 times the clean one's).

The draws (whether a batch adds the robust term, and which examples) are
stateless, keyed by the run's seed, the step and the replica
(`distribute.uniform`), so a run is reproducible and each replica draws from
its own examples. Outside a training step the schedule is at the first
epoch after the ramp: full eps, the initial weight.

Departure from the reference: the box is clipped to [0, 1], not to the
image's own minimum and maximum.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from hydra_tf import distribute
from hydra_tf.objectives import bounds
from hydra_tf.objectives import verifiable

# Per epoch (the reference's) or one of the per-step ramps of IBP training.
RAMPS = ("epoch",) + verifiable.RAMPS


@dataclasses.dataclass(frozen=True)
class MixTrainConfig:
    """MixTrain's settings (defaults: the reference's small-network setting).

    Attributes:
      eps: the L-inf radius trained for.
      ramp_epochs: epochs over which eps grows from 0.
      ramp: "epoch" (linearly, per epoch: the reference), or per step
        "linear" or "smoothed" (`verifiable.RAMPS`).
      samples: examples per batch whose symbolic-interval loss is added.
      probability: the chance that a batch adds it.
      weight: the robust term's weight until `every` epochs after the ramp.
      growth, every, cap: the weight is multiplied by `growth` every `every`
        epochs after the ramp, up to `cap`.
    """

    name: str = dataclasses.field(default="mixtrain", init=False)
    eps: float = 0.1
    ramp_epochs: float = 15.0
    ramp: str = "epoch"
    samples: int = 5
    probability: float = 0.8
    weight: float = 0.1
    growth: float = 2.5
    every: float = 5.0
    cap: float = 50.0

    def __post_init__(self):
        if not self.eps > 0:
            raise ValueError(f"mixtrain needs eps > 0. Received: eps={self.eps}")
        if not self.ramp_epochs >= 0:
            raise ValueError(f"ramp_epochs must be >= 0. Received: {self.ramp_epochs}")
        if self.ramp not in RAMPS:
            raise ValueError(f"Unknown ramp {self.ramp!r}. Supported: {', '.join(RAMPS)}.")
        if int(self.samples) != self.samples or self.samples < 1:
            raise ValueError(f"samples must be a positive integer. Received: {self.samples}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1]. Received: {self.probability}")
        if not (self.weight >= 0 and self.growth >= 1 and self.every > 0 and self.cap >= 0):
            raise ValueError(
                "Need weight >= 0, growth >= 1, every > 0 and cap >= 0. Received: "
                f"weight={self.weight}, growth={self.growth}, every={self.every}, cap={self.cap}"
            )

    def at_full_eps(self):
        """This config without the eps ramp: the full radius from the first step."""
        return dataclasses.replace(self, ramp_epochs=0.0)


class MixTrain(verifiable.BoundObjective):
    """CE(clean) + (with probability p) weight_t * CE(-symbolic margin lower bounds of k points)."""

    name = "mixtrain"
    Config = MixTrainConfig

    def __init__(self, config, steps_per_epoch=1):
        super().__init__(config, steps_per_epoch)
        self.metrics = [keras.metrics.Mean(name="eps"), keras.metrics.Mean(name="robust_weight")]

    def schedule(self, step=None):
        """(eps_t, weight_t) at `step` (default: the training step's).

        Outside a training step: the first epoch after the ramp (full eps,
        the initial weight).
        """
        if step is None:
            step = distribute.current_step()
        config = self.config
        if step is None:
            epoch = tf.constant(float(math.ceil(config.ramp_epochs)))
        else:
            epoch = tf.floor(tf.cast(step, tf.float32) / self.steps_per_epoch)
        ramp = config.ramp_epochs
        # The per-epoch ramp is the linear one read at the epoch's first step.
        per_epoch = step is None or config.ramp == "epoch"
        at = epoch * self.steps_per_epoch if per_epoch else step
        shape = "linear" if config.ramp == "epoch" else config.ramp
        fraction = verifiable.ramp_fraction(at, 0.0, ramp * self.steps_per_epoch, shape)
        grown = tf.floor(tf.maximum(epoch - ramp, 0.0) / config.every)
        weight = tf.minimum(config.weight * config.growth**grown, config.cap)
        return config.eps * fraction, weight

    def robust_loss(self, model, x, y, eps):
        """CE of the worst logits symbolic intervals allow for (x, y) at radius eps."""
        num_classes = int(model.outputs[0].shape[-1])
        box = bounds.IntervalBounds.from_linf(x, eps)
        spec = bounds.margin_specification(y, num_classes)
        lower = bounds.symbolic_specification_bounds(model, box, spec).lower
        return self.worst_case_loss(lower, y, num_classes)

    def loss(self, model, x, y, perturbed):
        del perturbed
        eps, weight = self.schedule()
        clean = model(x, training=True)
        ce = self._ce(y, clean)
        batch = tf.shape(x)[0]
        picked = distribute.uniform([self.config.samples], 0.0, 1.0)
        indices = tf.minimum(tf.cast(picked * tf.cast(batch, tf.float32), tf.int32), batch - 1)
        adds = distribute.uniform([], 0.0, 1.0) < self.config.probability
        robust = tf.cond(
            adds,
            lambda: self.robust_loss(model, tf.gather(x, indices), tf.gather(y, indices), eps),
            lambda: tf.constant(0.0),
        )
        self.metrics[0].update_state(eps)
        self.metrics[1].update_state(weight)
        return ce + weight * robust, clean
