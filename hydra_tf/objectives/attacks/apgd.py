"""Auto-PGD (Croce & Hein, ICML 2020), L-inf: APGD-CE, APGD-DLR and APGD-T.

APGD is PGD without a step size to tune. It starts with step 2 * eps, moves
with momentum 0.75, and at checkpoints w_j = ceil(p_j * steps), with p_0 = 0,
p_1 = 0.22 and p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), it halves the
step of every example for which

1. the loss rose in at most rho = 0.75 of the steps since the last checkpoint
   (the search oscillates), or
2. the step was not halved at the last checkpoint and the best loss has not
   improved since (the search is stuck),

and restarts those examples from the best point found so far.

Losses (z: logits, y: label, pi_k: index of the k-th largest logit):
- "ce": cross-entropy;
- "dlr": -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12);
- "dlr-targeted": -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), run
  once for each target t among the `targets` highest other classes of the
  clean logits (APGD-T).

Where this module departs from the reference implementation (fra31/auto-attack):
- Condition 1 compares the first step of the first window with the loss at the
  starting point; the reference compares it with an unset entry of its loss
  history (zero), which for DLR (negative while the point is classified
  correctly) never counts as a rise.
- Condition 1 halves when the rises are <= rho * window, as the reference
  does; the paper writes "<". The two differ only when rho * window is a whole
  number (a window of 16 steps).
- The cross-entropy gradient starts its backward pass from the rescaled logit
  gradient of `linf_pgd.input_gradient` (the same sign, no underflow past a margin
  of ~100 in float32). DLR needs no rescaling.
"""

import dataclasses
from typing import ClassVar

import tensorflow as tf

from hydra_tf import distribute
from hydra_tf.objectives.attacks import linf_pgd

DEFAULT_STEPS = 100
DEFAULT_TARGETS = 9
LOSSES = ("ce", "dlr", "dlr-targeted")
_NAMES = {"ce": "apgd-ce", "dlr": "apgd-dlr", "dlr-targeted": "apgd-t"}


def checkpoints(steps):
    """The iterations (0-based, after which the step size is checked) and their window lengths.

    The first window is 22% of the steps, each next one 3% shorter, at least
    6% (the reference's integer version: max(int(0.22 n), 1), decrements of
    max(int(0.03 n), 1), at least max(int(0.06 n), 1)).
    """
    window = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    points, end = [], window
    while end <= steps:
        points.append((end - 1, window))
        window = max(window - shrink, shortest)
        end += window
    return points


def dlr_loss(logits, y):
    """The difference-of-logits-ratio loss, per example (higher: closer to misclassified)."""
    logits = tf.cast(logits, tf.float32)
    y = tf.cast(y, tf.int32)
    top = tf.math.top_k(logits, k=3).values
    true = tf.gather(logits, y, axis=1, batch_dims=1)
    onehot = tf.one_hot(y, tf.shape(logits)[-1]) > 0
    best_other = tf.reduce_max(tf.where(onehot, -float("inf"), logits), axis=-1)
    return -(true - best_other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits, y, target):
    """The targeted DLR loss, per example (higher: closer to classified as `target`)."""
    logits = tf.cast(logits, tf.float32)
    top = tf.math.top_k(logits, k=4).values
    true = tf.gather(logits, tf.cast(y, tf.int32), axis=1, batch_dims=1)
    wanted = tf.gather(logits, tf.cast(target, tf.int32), axis=1, batch_dims=1)
    return -(true - wanted) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


class StepSizeControl:
    """APGD's per-example step-size rule: at each checkpoint, which examples halve.

    State (a dict of tensors, carried through the attack's loop):
      rises: steps since the last checkpoint whose loss exceeded the one before;
      last_loss: the loss of the previous step;
      best_at_check: the best loss at the last checkpoint;
      halved_at_check: whether the step was halved at the last checkpoint.
    """

    def __init__(self, steps, rho=0.75):
        self.rho = rho
        points = checkpoints(steps)
        is_check = [False] * max(steps, 1)
        window = [0] * max(steps, 1)
        for iteration, length in points:
            is_check[iteration] = True
            window[iteration] = length
        self.is_check = tf.constant(is_check)
        self.window = tf.constant(window, tf.float32)

    @staticmethod
    def initial(loss):
        return {
            "rises": tf.zeros_like(loss),
            "last_loss": loss,
            "best_at_check": loss,
            "halved_at_check": tf.ones_like(loss, tf.bool),
        }

    def update(self, state, iteration, loss, best_loss):
        """The state after step `iteration` reached `loss`; and which examples halve now."""
        rises = state["rises"] + tf.cast(loss > state["last_loss"], tf.float32)
        window = self.window[iteration]
        oscillates = rises <= self.rho * window
        stuck = tf.logical_and(
            tf.logical_not(state["halved_at_check"]), state["best_at_check"] >= best_loss
        )
        check = self.is_check[iteration]
        halve = tf.logical_and(check, tf.logical_or(oscillates, stuck))
        new_state = {
            "rises": tf.where(check, tf.zeros_like(rises), rises),
            "last_loss": loss,
            "best_at_check": tf.where(check, best_loss, state["best_at_check"]),
            "halved_at_check": tf.where(check, halve, state["halved_at_check"]),
        }
        return new_state, halve


@dataclasses.dataclass(frozen=True)
class APGDConfig:
    """Settings of an L-inf APGD attack.

    Attributes:
      eps: radius of the L-inf ball.
      loss: one of `LOSSES`.
      steps: iterations per run (per target for "dlr-targeted").
      restarts: runs from new random starts, on the examples not yet broken.
      targets: with "dlr-targeted", how many of the highest other classes of
        the clean logits are tried as targets.
      rho: the fraction of rising steps below which the step is halved.
      momentum: weight of the new step (the reference's 0.75).
    """

    eps: float
    loss: str = "ce"
    steps: int = DEFAULT_STEPS
    restarts: int = 1
    targets: int = DEFAULT_TARGETS
    rho: float = 0.75
    momentum: float = 0.75
    kind: ClassVar[str] = "apgd"

    def __post_init__(self):
        if not self.eps >= 0:
            raise ValueError(f"APGD eps must be >= 0. Received: eps={self.eps}")
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown APGD loss {self.loss!r}. Supported: {LOSSES}.")
        if self.steps < 1:
            raise ValueError(f"APGD steps must be >= 1. Received: steps={self.steps}")
        if self.restarts < 1:
            raise ValueError(f"APGD restarts must be >= 1. Received: restarts={self.restarts}")
        if self.targets < 1:
            raise ValueError(f"APGD targets must be >= 1. Received: targets={self.targets}")
        if not 0 < self.rho <= 1:
            raise ValueError(f"APGD rho must be in (0, 1]. Received: rho={self.rho}")
        if not 0 < self.momentum <= 1:
            raise ValueError(f"APGD momentum must be in (0, 1]. Received: {self.momentum}")

    @property
    def name(self):
        return _NAMES[self.loss]

    def to_json(self):
        values = {"name": self.name, "eps": self.eps, "steps": self.steps}
        values.update(restarts=self.restarts, rho=self.rho, momentum=self.momentum)
        if self.loss == "dlr-targeted":
            values["targets"] = self.targets
        return values

    def perturb(self, model, x, y):
        """Adversarial examples where found, else the highest-loss points (in ball and box)."""
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(y, tf.int64)
        if self.loss == "dlr-targeted":
            # The 2nd, 3rd, ... highest classes of the clean logits.
            order = tf.argsort(model(x, training=False), axis=-1, direction="DESCENDING")
            runs = min(self.targets, int(order.shape[-1]) - 1) * self.restarts
            target_of = lambda r: order[:, 1 + r // self.restarts]
        else:
            runs, target_of = self.restarts, lambda r: None
        best, fooled = self._run(model, x, y, target_of(0), tf.constant(0))

        def more(r, best, fooled):
            candidate, broken = self._run(model, x, y, target_of(r), r)
            # A broken example keeps its first adversarial point.
            best = tf.where(_expand(fooled, x), best, candidate)
            return r + 1, best, tf.logical_or(fooled, broken)

        # One loop for the targets and restarts keeps the graph (and its
        # compile time) to two copies of the attack.
        _, best, _ = tf.while_loop(
            lambda r, *_: r < runs, more, (tf.constant(1), best, fooled), parallel_iterations=1
        )
        return tf.stop_gradient(best)

    def _loss_and_gradient(self, model, x, y, target):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model(x, training=False)
            if self.loss == "dlr":
                loss = dlr_loss(logits, y)
            elif self.loss == "dlr-targeted":
                loss = targeted_dlr_loss(logits, y, target)
        if self.loss == "ce":
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf.cast(logits, tf.float32))
            direction = linf_pgd.ascent_direction("ce", logits, y, None)
            grad = tape.gradient(logits, x, output_gradients=tf.cast(direction, logits.dtype))
        else:
            grad = tape.gradient(loss, x)
        wrong = tf.not_equal(tf.argmax(logits, axis=-1), y)
        return loss, tf.cast(grad, x.dtype), wrong

    def _run(self, model, x, y, target, run):
        """Run number `run`: (adversarial or highest-loss point, broken) per example."""
        eps = tf.constant(self.eps, x.dtype)
        lower, upper = tf.maximum(x - eps, 0.0), tf.minimum(x + eps, 1.0)
        project = lambda z: tf.clip_by_value(z, lower, upper)
        # A random start on the ball's surface (largest coordinate at eps).
        # Salted by the run's index: each target and restart starts elsewhere.
        noise = distribute.uniform(tf.shape(x), -1.0, 1.0, x.dtype, salt=run)
        scale = tf.reduce_max(tf.abs(noise), axis=[1, 2, 3], keepdims=True) + 1e-12
        x_adv = project(x + eps * noise / scale)
        loss, grad, wrong = self._loss_and_gradient(model, x_adv, y, target)
        control = StepSizeControl(self.steps, self.rho)
        state = {
            "x_adv": x_adv,
            "x_prev": x_adv,
            "grad": grad,
            "step": tf.fill(tf.shape(loss), 2.0 * self.eps),
            "x_best": x_adv,
            "grad_best": grad,
            "loss_best": loss,
            "x_found": x_adv,
            "fooled": wrong,
            "control": control.initial(loss),
        }

        def body(i, s):
            step = _expand(s["step"], x)
            weight = tf.where(i > 0, self.momentum, 1.0)
            z = project(s["x_adv"] + step * tf.sign(s["grad"]))
            moved = project(
                s["x_adv"] + weight * (z - s["x_adv"]) + (1.0 - weight) * (s["x_adv"] - s["x_prev"])
            )
            loss, grad, wrong = self._loss_and_gradient(model, moved, y, target)
            newly = tf.logical_and(wrong, tf.logical_not(s["fooled"]))
            improved = loss > s["loss_best"]
            x_best = tf.where(_expand(improved, x), moved, s["x_best"])
            grad_best = tf.where(_expand(improved, x), grad, s["grad_best"])
            loss_best = tf.where(improved, loss, s["loss_best"])
            control_state, halve = control.update(s["control"], i, loss, loss_best)
            restart = _expand(halve, x)
            return i + 1, {
                "x_adv": tf.where(restart, x_best, moved),
                "x_prev": s["x_adv"],
                "grad": tf.where(restart, grad_best, grad),
                "step": tf.where(halve, s["step"] / 2.0, s["step"]),
                "x_best": x_best,
                "grad_best": grad_best,
                "loss_best": loss_best,
                "x_found": tf.where(_expand(newly, x), moved, s["x_found"]),
                "fooled": tf.logical_or(s["fooled"], wrong),
                "control": control_state,
            }

        _, state = tf.while_loop(
            lambda i, _: i < self.steps, body, (tf.constant(0), state), parallel_iterations=1
        )
        found = _expand(state["fooled"], x)
        return tf.where(found, state["x_found"], state["x_best"]), state["fooled"]


def _expand(mask, x):
    """A per-example tensor broadcastable against images like `x`."""
    return tf.reshape(mask, [-1] + [1] * (len(x.shape) - 1))


def schedule_fractions(steps):
    """The checkpoints as fractions p_j of `steps`: 0, 0.22, 0.41, ... for 100 steps."""
    return [0.0] + [(i + 1) / steps for i, _ in checkpoints(steps)]
