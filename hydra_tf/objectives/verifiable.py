"""Verifiable training: IBP (Gowal et al., 2018) and CROWN-IBP (Zhang et al., ICLR 2020).

Both train on the cross-entropy of the negated lower bounds of the margins
z_y - z_j (j != y) over the L-inf ball of radius eps_t around each input,
clipped to [0, 1] (`bounds`), mixed with the clean cross-entropy:

    loss = (1 - kappa_t) * CE(-lower) + kappa_t * CE(clean logits)

where `lower` holds the margin lower bounds at the wrong classes and 0 at the
true class, so CE(-lower) is the cross-entropy of the worst logits the box
allows. `crown_ibp` takes lower = beta_t * CROWN-IBP + (1 - beta_t) * IBP;
`ibp` has beta_t = 0 throughout.

**The ramp.** Training from eps 0 straight to the full radius fails, so eps_t
grows per step: 0 for `warmup_epochs`, then over `ramp_epochs` up to `eps`
("linear", or "smoothed": a power-4 curve for the first quarter of the
ramp that turns into the linear one, DeepMind's IBP schedule), then `eps`.
With r = eps_t / eps in [0, 1]:

    kappa_t = kappa_start + r * (kappa_end - kappa_start)
    beta_t = 1 - r * (1 - final_beta)

as in the CROWN-IBP code (kappa 1 -> `final-kappa`, 0.5 by default; beta
1 -> `final-beta`, 0). With beta_t = 0 (after the ramp, by default) or
eps_t = 0 (the warm-up) the CROWN pass is skipped. The schedule is a
function of the optimizer's step counter, which training checkpoints with
the weights, so a killed and resumed run trains exactly as one that ran
through. Outside a training step (tests, evaluation) the schedule is at its
end.

Departures from the references:

- The box is clipped to the data domain [0, 1]; the CROWN-IBP and HYDRA
  code clip it to the batch's own minimum and maximum.
- The HYDRA code trains with the robust term only (kappa = 0) in every
  phase; the default here is the CROWN-IBP code's mix (kappa_end = 0.5).
  Set `kappa_start = kappa_end = 0` for the HYDRA code's loss.
- The ramp is in epochs of this run's steps; the CROWN-IBP code's
  `schedule_start = s, schedule_length = L` is `warmup_epochs = s,
  ramp_epochs = L - 1`.

BatchNormalization is bounded as its inference-mode affine map (moving
statistics), which the clean pass in training mode updates; the verifiable
architectures have none.
"""

import dataclasses

import keras
import tensorflow as tf

from hydra_tf import distribute
from hydra_tf.objectives import base
from hydra_tf.objectives import bounds

RAMPS = ("linear", "smoothed")
# The smoothed ramp: power-law for the first `_SMOOTH_MID` of the ramp, then linear.
_SMOOTH_MID = 0.25
_SMOOTH_POWER = 4.0
# Below this beta the CROWN pass adds nothing worth its cost (the CROWN-IBP code's cut).
_BETA_CUT = 1e-5


def ramp_fraction(step, start, end, shape="linear"):
    """eps_t / eps at `step` of a ramp from step `start` to step `end`: 0 before, 1 after.

    Args:
      step: a scalar (tensor or number), the optimizer's step counter.
      start, end: the first and last steps of the ramp (floats, end >= start).
      shape: "linear" or "smoothed".

    Returns:
      A float32 scalar tensor in [0, 1].
    """
    if shape not in RAMPS:
        raise ValueError(f"Unknown ramp {shape!r}. Supported: {', '.join(RAMPS)}.")
    step = tf.cast(step, tf.float64)
    start, end = float(start), float(end)
    if end <= start:
        return tf.cast(step >= start, tf.float32)
    linear = lambda at, value: value + (1.0 - value) * (step - at) / (end - at)
    if shape == "linear":
        value = linear(start, 0.0)
    else:
        # A polynomial alpha * (t - start)^power up to `mid`, continued by the
        # line from its value at `mid` to 1 at `end`, with the same slope.
        mid = start + float(int((end - start) * _SMOOTH_MID))
        if mid <= start:
            value = linear(start, 0.0)
        else:
            t = (mid - start) ** (_SMOOTH_POWER - 1.0)
            alpha = 1.0 / ((end - mid) * _SMOOTH_POWER * t + (mid - start) * t)
            mid_value = alpha * (mid - start) ** _SMOOTH_POWER
            curve = alpha * tf.maximum(step - start, 0.0) ** _SMOOTH_POWER
            value = tf.where(step < mid, curve, linear(mid, mid_value))
    return tf.cast(tf.clip_by_value(value, 0.0, 1.0), tf.float32)


@dataclasses.dataclass(frozen=True)
class IBPConfig:
    """Interval bound propagation training.

    Attributes:
      eps: the L-inf radius trained for (reached at the end of the ramp).
      warmup_epochs: epochs at eps 0 (clean training) before the ramp.
      ramp_epochs: epochs over which eps grows from 0 to `eps` (0: the full
        radius from the first step after the warm-up).
      ramp: "linear" or "smoothed".
      kappa_start, kappa_end: the clean cross-entropy's weight at eps 0 and at
        the full radius.
    """

    name: str = dataclasses.field(default="ibp", init=False)
    eps: float = 0.1
    warmup_epochs: float = 0.0
    ramp_epochs: float = 0.0
    ramp: str = "linear"
    kappa_start: float = 1.0
    kappa_end: float = 0.5

    def __post_init__(self):
        if not self.eps > 0:
            raise ValueError(f"{self.name} needs eps > 0. Received: eps={self.eps}")
        if not (self.warmup_epochs >= 0 and self.ramp_epochs >= 0):
            raise ValueError(
                f"warmup_epochs and ramp_epochs must be >= 0. Received: "
                f"warmup_epochs={self.warmup_epochs}, ramp_epochs={self.ramp_epochs}"
            )
        if self.ramp not in RAMPS:
            raise ValueError(f"Unknown ramp {self.ramp!r}. Supported: {', '.join(RAMPS)}.")
        for field in ("kappa_start", "kappa_end"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(f"{field} must be in [0, 1]. Received: {getattr(self, field)}")

    def at_full_eps(self):
        """This config without warm-up or ramp: the full radius from the first step."""
        return dataclasses.replace(self, warmup_epochs=0.0, ramp_epochs=0.0)


@dataclasses.dataclass(frozen=True)
class CrownIBPConfig(IBPConfig):
    """CROWN-IBP training: IBP's settings, the final CROWN weight `final_beta`, `loss_fusion`.

    With `loss_fusion` the CROWN term is an upper bound of the cross-entropy
    itself (`bounds.fusion`, one backward row per example instead of one per
    margin): robust loss = beta_t * fused bound + (1 - beta_t) * CE(-IBP).
    """

    name: str = dataclasses.field(default="crown_ibp", init=False)
    final_beta: float = 0.0
    loss_fusion: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.final_beta <= 1.0:
            raise ValueError(f"final_beta must be in [0, 1]. Received: {self.final_beta}")


def scatter_margins(lower, labels, num_classes):
    """(batch, classes - 1) margin bounds -> (batch, classes), 0 at the true class.

    Row j of the margin specification is the j-th class other than the label
    (`bounds.margin_specification`).
    """
    others = bounds.other_classes(labels, num_classes)
    return tf.einsum("bs,bsc->bc", lower, tf.one_hot(others, num_classes, dtype=lower.dtype))


class BoundObjective(base.Natural):
    """What the bound-trained objectives share: a config, a schedule over steps, the robust CE.

    Subclasses set `name` and `Config`, list their Keras `metrics`, and
    implement `schedule` and `loss`; `worst_case_loss` is the cross-entropy of
    the worst logits that margin lower bounds allow.
    """

    verified = True
    scheduled = True

    def __init__(self, config, steps_per_epoch=1):
        super().__init__()
        self.config = config
        self.steps_per_epoch = int(steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1. Received: {steps_per_epoch}")
        self._robust_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @classmethod
    def from_config(cls, config, steps_per_epoch=1):
        return cls(config, steps_per_epoch)

    def worst_case_loss(self, lower, y, num_classes):
        """CE(-lower) with `lower` (batch, classes - 1) scattered, 0 at the true class."""
        return self._robust_ce(y, -scatter_margins(lower, y, num_classes))


class IBP(BoundObjective):
    """IBP training: CE of the negated IBP margin lower bounds, mixed with the clean CE."""

    name = "ibp"
    Config = IBPConfig

    def __init__(self, config, steps_per_epoch=1):
        super().__init__(config, steps_per_epoch)
        # Per-epoch means shown beside the loss (history.csv, TensorBoard).
        self.metrics = [
            keras.metrics.Mean(name="eps"),
            keras.metrics.Mean(name="verified_accuracy"),
        ]

    def schedule(self, step=None):
        """(eps_t, kappa_t, beta_t) at `step` (default: the training step's, else the end)."""
        if step is None:
            step = distribute.current_step()
        config = self.config
        if step is None:
            fraction = tf.constant(1.0)
        else:
            start = config.warmup_epochs * self.steps_per_epoch
            end = start + config.ramp_epochs * self.steps_per_epoch
            fraction = ramp_fraction(step, start, end, config.ramp)
        eps = config.eps * fraction
        kappa = config.kappa_start + fraction * (config.kappa_end - config.kappa_start)
        final_beta = getattr(config, "final_beta", None)
        beta = tf.constant(0.0) if final_beta is None else 1.0 - fraction * (1.0 - final_beta)
        return eps, kappa, beta

    def ibp_margins(self, model, x, y, eps):
        """(box, spec, layer intervals, IBP `IntervalBounds` of the margins) at radius `eps`."""
        num_classes = int(model.outputs[0].shape[-1])
        box = bounds.IntervalBounds.from_linf(x, eps)
        spec = bounds.margin_specification(y, num_classes)
        last = bounds.final_dense(model)
        intervals = bounds.propagate_layers(model, box, stop_before=last.name)
        margins = bounds.specification_bounds(model, box, spec, intervals=intervals)
        return box, spec, intervals, margins

    def margin_lower_bounds(self, model, x, y, eps, beta):
        """(batch, classes - 1) lower bounds of z_y - z_j over the eps-ball of `x` in [0, 1]."""
        box, spec, intervals, margins = self.ibp_margins(model, x, y, eps)
        ibp = margins.lower
        if getattr(self.config, "final_beta", None) is None:
            return ibp

        def mixed():
            crown, _ = bounds.backward_bounds(
                model, box, spec, mode="crown_ibp", upper=False, intervals=intervals
            )
            return beta * crown + (1.0 - beta) * ibp

        return tf.cond(_crown_needed(eps, beta), mixed, lambda: ibp)

    def robust_loss(self, model, x, y, eps, beta):
        """(the robust cross-entropy, the margin lower bounds the history counts as verified)."""
        lower = self.margin_lower_bounds(model, x, y, eps, beta)
        num_classes = int(model.outputs[0].shape[-1])
        return self.worst_case_loss(lower, y, num_classes), lower

    def loss(self, model, x, y, perturbed):
        del perturbed
        eps, kappa, beta = self.schedule()
        clean = model(x, training=True)
        robust, lower = self.robust_loss(model, x, y, eps, beta)
        loss = (1.0 - kappa) * robust + kappa * self._ce(y, clean)
        self.metrics[0].update_state(eps)
        self.metrics[1].update_state(tf.cast(bounds.verified(lower), tf.float32))
        return loss, clean


def _crown_needed(eps, beta):
    """Whether the CROWN term counts: beta above the cut, and eps > 0 (at eps 0 every bound
    is the clean margin)."""
    return tf.logical_and(beta > _BETA_CUT, eps > 0.0)


class CrownIBP(IBP):
    """CROWN-IBP training: the lower bound beta_t * CROWN-IBP + (1 - beta_t) * IBP."""

    name = "crown_ibp"
    Config = CrownIBPConfig

    def robust_loss(self, model, x, y, eps, beta):
        if not self.config.loss_fusion:
            return super().robust_loss(model, x, y, eps, beta)
        box, _, intervals, margins = self.ibp_margins(model, x, y, eps)
        num_classes = int(model.outputs[0].shape[-1])
        ibp = self.worst_case_loss(margins.lower, y, num_classes)

        def mixed():
            fused = bounds.cross_entropy_upper_bound(model, box, y, margins, intervals)
            return beta * tf.reduce_mean(fused) + (1.0 - beta) * ibp

        # Loss fusion bounds no margin: the history shows IBP-verified batches.
        return tf.cond(_crown_needed(eps, beta), mixed, lambda: ibp), margins.lower
