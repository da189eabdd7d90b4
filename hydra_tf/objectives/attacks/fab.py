"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), L-inf.

FAB looks for the adversarial example of smallest L-inf norm. For a target
class t and the label y it linearises g = z_t - z_y at the current point x_i
(one forward and one backward pass), and projects both x_i and the clean
point x_0 onto the linearised boundary {g(x_i) + grad g(x_i).(z - x_i) = 0}
intersected with the box [0, 1]^n (`project_linf`). With d_i, d_0 those two
projections it steps to

    x_{i+1} = clip((1 - a) (x_i + eta d_i) + a (x_0 + eta d_0), 0, 1),
    a = min(|d_i| / (|d_i| + |d_0|), alpha_max),

biased towards x_0 (small a when x_i is already close to the boundary) and
overshooting the boundary by eta. Once x_{i+1} is misclassified it is kept
if its norm is the smallest so far and x_{i+1} moves back towards x_0:
x_0 + beta (x_{i+1} - x_0). FAB-T runs this for the targets t with the 2nd,
3rd, ... highest clean logit, each with `restarts` runs (the first from x_0,
the others from a random point at L-inf distance eps / 2), each on the points
not yet broken. A point counts as broken when an adversarial example of
L-inf norm <= eps was found (AutoAttack's rule); `perturb` returns it, and
the clean point otherwise.

`project_linf` solves min |d|_inf s.t. w.d = -c, 0 <= t + d <= 1 exactly,
for the whole batch at once. Moving each coordinate towards the box edge in
the direction that changes w.d the right way, by min(lam, room_i), changes
w.d by the concave piecewise-linear F(lam) = sum_i |w_i| min(lam, room_i);
the answer is the smallest lam with F(lam) = |c|. Newton steps from lam = 0
on the linear piece through the current lam (an active-set method: never
past the solution, since F is concave; exact once no new coordinate
saturates) settle FAB's projections in 2-3 passes over the batch; rows not
settled after `NEWTON_STEPS` passes are solved by one sort of the rooms and
cumulative sums, which give F at every breakpoint (the reference's method,
without its bisection). On 400 x 784 rows TensorFlow's CPU sort costs about
as much as cnn_small's forward and backward pass on 200 images; the Newton
passes are 4x cheaper. If the boundary does not meet the box, the result is
the box corner closest to it (as the reference).

Where this module follows and departs from the reference (fra31/auto-attack,
`fab_base.py` with `fab_pt.py`, `projection_linf` of `fab_projections.py`),
with the AutoAttack "standard" settings (100 steps, 9 targets, 1 restart,
alpha_max 0.1, eta 1.05, beta 0.9):
- Same: the step, the alpha rule (norms floored at 1e-8), the backward step,
  the targets (2nd..10th highest clean logit), the success test (any
  misclassification, not only as the target), the random restart start
  (x_0 + eps / 2 * u / |u|_inf, u uniform in [-1, 1]^n, clipped), only clean
  correctly classified points attacked, targets and restarts only on the
  points not yet broken within eps.
- One forward and one backward pass per step, instead of the reference's two
  forward passes and one backward pass: the forward pass that gives the input
  gradient at x_i also decides whether x_i is adversarial. After a backward
  step the next FAB step therefore projects the backed-off point onto the
  boundary linearised at the adversarial point x_i, where the reference
  computes a new gradient at the backed-off point. Without backward steps
  the iterates are identical, and for a linear model always. On cnn_small
  (Fashion-MNIST, 200 test points, the first target, 100 steps) the minimal
  norms found match those of the two-forward-pass version (ratio: median
  0.999, 10th-90th percentile 0.995-1.002). The reference checks the 100
  candidates it steps to; so does this module (plus the start point, with
  one extra forward pass for the last candidate).
- A point stops iterating as soon as it has an adversarial example within eps
  (with `minimize_norm=False`, the default of `perturb`), and the batch is
  compacted to the points still running. The reference keeps minimising the
  norm of broken points until the 100 steps are over; whether a point is
  broken at eps, i.e. the robust accuracy AutoAttack reports, is the same,
  but the returned example is the first one found within eps rather than the
  smallest. `fab_t(..., minimize_norm=True)` runs every step, as the
  reference.
- Targets are the highest classes other than y (the label is masked, so a
  tie with y cannot make y its own target), and at most num_classes - 1 of
  them (the reference fails for more).
- The box projection finds the same exact solution by Newton (active-set)
  passes, with a sort for the rows they do not settle (the reference sorts
  every row, then bisects over the breakpoints); the linearised
  boundary offset is passed as the value c of the linearisation at the point
  rather than as a hyperplane offset b, which avoids cancellation in
  w.x - b.
- Random numbers come from `distribute.uniform`, not from a seed kept by the
  attack: stateless per replica inside `distribute.step_randomness` (a
  training step; every batch of an evaluation, `evaluation.cascade.SEED`),
  else TensorFlow's global generator. Each round salts its draw with the
  round's index.

Not XLA-compilable (`jit_compile=True`): the batch shrinks as points are
broken. On 2 CPU cores a fixed-batch version of this attack ran 2x slower
with XLA than without, and 6x slower than this module without XLA.
"""

import dataclasses
import math
from typing import ClassVar

import tensorflow as tf

from hydra_tf import distribute

_TINY = 1e-12
# Active-set passes of `project_linf`; FAB's projections settle in 2-3.
NEWTON_STEPS = 8


def project_linf(t, w, c, newton_steps=NEWTON_STEPS):
    """The smallest L-inf step onto a hyperplane inside the unit box.

    Solves min |d|_inf s.t. c + w.d = 0 and 0 <= t + d <= 1, row by row. If
    no such d exists, returns the step to the box corner where c + w.d is
    closest to 0.

    Args:
      t: points in [0, 1], shape (batch, n).
      w: hyperplane normals, shape (batch, n).
      c: values of the linear function c + w.d at d = 0 (at `t`), shape (batch,).
      newton_steps: active-set passes before the rows not yet settled are
        solved by sorting (0: sort every row).

    Returns:
      d, shape (batch, n); 0 on coordinates where w is 0.
    """
    t = tf.convert_to_tensor(t, tf.float32)
    w = tf.convert_to_tensor(w, tf.float32)
    c = tf.convert_to_tensor(c, tf.float32)
    # Moving coordinate i by direction_i * min(lam, room_i) changes c + w.d
    # towards 0 by F(lam) = sum_i weight_i min(lam, room_i); F must reach `need`.
    u = w * -tf.sign(c)[:, None]
    direction = tf.sign(u)
    room = tf.maximum(tf.where(u > 0, 1.0 - t, t), 0.0)
    weight = tf.abs(u)
    need = tf.abs(c)
    weighted_room = weight * room
    reach = tf.reduce_sum(weighted_room, axis=1)
    widest = tf.reduce_max(room, axis=1)
    reachable = need < reach

    def newton(lam):
        # The linear piece of F through lam, solved for `need`. F is concave,
        # so from below the root of the piece never passes the solution.
        free = room > lam[:, None]
        slope = tf.reduce_sum(tf.where(free, weight, 0.0), axis=1)
        used = tf.reduce_sum(tf.where(free, 0.0, weighted_room), axis=1)
        new = tf.where(slope > 0, (need - used) / tf.maximum(slope, _TINY), widest)
        new = tf.minimum(tf.maximum(new, lam), widest)
        # Settled: no coordinate saturates between lam and new, so new is exact.
        saturated = tf.logical_and(free, room <= new[:, None])
        return new, tf.logical_not(tf.reduce_any(saturated, axis=1))

    def cond(i, lam, settled):
        return tf.logical_and(i < newton_steps, tf.logical_not(tf.reduce_all(settled)))

    def body(i, lam, settled):
        lam, settled = newton(lam)
        return i + 1, lam, tf.logical_or(settled, tf.logical_not(reachable))

    lam = tf.zeros_like(need)
    settled = tf.logical_not(reachable)
    _, lam, settled = tf.while_loop(cond, body, (tf.constant(0), lam, settled))
    rest = tf.where(tf.logical_and(reachable, tf.logical_not(settled)))[:, 0]
    lam_rest = _sorted_level(tf.gather(room, rest), tf.gather(weight, rest), tf.gather(need, rest))
    lam = tf.tensor_scatter_nd_update(lam, rest[:, None], lam_rest)
    lam = tf.where(reachable, lam, widest)
    return direction * tf.minimum(lam[:, None], room)


def _sorted_level(room, weight, need):
    """The smallest lam with sum_i weight_i min(lam, room_i) = need (< the sum at lam = inf).

    One sort of the rooms and cumulative sums give F at every breakpoint; the
    first breakpoint with F >= need brackets lam, found on its linear piece.
    """
    n = tf.shape(room)[1]
    order = tf.argsort(room, axis=1)
    room_sorted = tf.gather(room, order, batch_dims=1)
    weight_sorted = tf.gather(weight, order, batch_dims=1)
    # F at breakpoint k: sum_{j<=k} a_j q_j + q_k sum_{j>k} a_j.
    below = tf.cumsum(weight_sorted * room_sorted, axis=1)
    weight_upto = tf.cumsum(weight_sorted, axis=1)
    total = weight_upto[:, -1]
    gain = below + room_sorted * (total[:, None] - weight_upto)
    k = tf.minimum(tf.reduce_sum(tf.cast(gain < need[:, None], tf.int32), axis=1), n - 1)
    prev = tf.maximum(k - 1, 0)
    has_prev = k > 0
    below_prev = tf.where(has_prev, tf.gather(below, prev, batch_dims=1), 0.0)
    weight_prev = tf.where(has_prev, tf.gather(weight_upto, prev, batch_dims=1), 0.0)
    # On [q_{k-1}, q_k]: F(lam) = below_prev + lam * (total - weight_prev).
    lam = (need - below_prev) / tf.maximum(total - weight_prev, _TINY)
    lower = tf.where(has_prev, tf.gather(room_sorted, prev, batch_dims=1), 0.0)
    upper = tf.gather(room_sorted, k, batch_dims=1)
    return tf.clip_by_value(lam, lower, tf.maximum(upper, lower))


def _linf(v):
    return tf.reduce_max(tf.abs(v), axis=1)


@dataclasses.dataclass(frozen=True)
class FABConfig:
    """Settings of the L-inf FAB-T attack.

    Attributes:
      eps: radius of the L-inf ball; also sets the random restart's start
        (distance eps / 2).
      steps: FAB steps per target and restart.
      targets: how many of the highest other classes of the clean logits are
        attacked, one after the other (the 2nd, 3rd, ... highest).
      restarts: runs per target; the first from the clean point, the others
        from random points.
      alpha_max: the largest weight of the step from the clean point.
      eta: the overshoot of the projections (>= 1).
      beta: the backward step towards the clean point after a success, in (0, 1).
    """

    eps: float
    steps: int = 100
    targets: int = 9
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    name: ClassVar[str] = "fab-t"

    def __post_init__(self):
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"FAB eps must be finite and >= 0. Received: eps={self.eps}")
        if self.steps < 1:
            raise ValueError(f"FAB steps must be >= 1. Received: steps={self.steps}")
        if self.targets < 1:
            raise ValueError(f"FAB targets must be >= 1. Received: targets={self.targets}")
        if self.restarts < 1:
            raise ValueError(f"FAB restarts must be >= 1. Received: restarts={self.restarts}")
        if not 0 < self.alpha_max <= 1:
            raise ValueError(f"FAB alpha_max must be in (0, 1]. Received: {self.alpha_max}")
        if not (self.eta >= 1 and math.isfinite(self.eta)):
            raise ValueError(f"FAB eta must be finite and >= 1. Received: eta={self.eta}")
        if not 0 < self.beta < 1:
            raise ValueError(f"FAB beta must be in (0, 1). Received: beta={self.beta}")

    def to_json(self):
        return {
            "name": self.name,
            "eps": self.eps,
            "steps": self.steps,
            "targets": self.targets,
            "restarts": self.restarts,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "beta": self.beta,
        }

    def perturb(self, model, x, y):
        """Adversarial examples within eps where FAB-T found one, else x (in ball and box)."""
        x = tf.convert_to_tensor(x, tf.float32)
        best, norm = fab_t(model, x, y, self)
        eps = tf.cast(self.eps, tf.float32)
        broken = tf.reshape(norm <= eps, tf.concat([[-1], tf.ones_like(tf.shape(x)[1:])], 0))
        lower = tf.maximum(x - eps, 0.0)
        upper = tf.minimum(x + eps, 1.0)
        return tf.stop_gradient(tf.where(broken, tf.clip_by_value(best, lower, upper), x))


def fab_t(model, x, y, config, minimize_norm=False):
    """Runs FAB-T; the smallest adversarial example found per point and its L-inf norm.

    Args:
      model: callable mapping images to logits; called with `training=False`.
      x: clean images in [0, 1], shape (batch, H, W, C).
      y: integer labels, shape (batch,).
      config: a `FABConfig`.
      minimize_norm: keep stepping points that already have an adversarial
        example within eps (the reference's behaviour) instead of stopping
        them there.

    Returns:
      (x_best, norm): x_best like x; norm (batch,) the L-inf distance of
      x_best to x, 0 for points misclassified clean (x_best = x) and +inf
      where no adversarial example was found (x_best = x).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    shape = tf.shape(x)
    n = tf.reduce_prod(shape[1:])
    flat = tf.reshape(x, [-1, n])
    logits = tf.cast(model(x, training=False), tf.float32)
    num_classes = tf.shape(logits)[-1]
    correct = tf.equal(tf.cast(tf.argmax(logits, axis=-1), tf.int32), y)
    inf = tf.constant(math.inf, tf.float32)
    norm = tf.where(correct, inf, 0.0)
    # The 2nd, 3rd, ... highest clean logits: the label masked, the rest sorted.
    others = tf.where(tf.one_hot(y, num_classes) > 0, -inf, logits)
    count = tf.minimum(config.targets, num_classes - 1)
    order = tf.math.top_k(others, k=count).indices
    rounds = count * config.restarts
    eps = tf.cast(config.eps, tf.float32)
    run = _Run(model, shape[1:], config, eps, minimize_norm)

    def body(r, best, norm):
        todo = tf.where(norm > eps)[:, 0]
        x0 = tf.gather(flat, todo)
        target = tf.gather(tf.gather(order, r // config.restarts, axis=1), todo)
        if config.restarts > 1:
            u = distribute.uniform(tf.shape(x0), -1.0, 1.0, salt=r)  # a new draw per round
            scale = 0.5 * eps / tf.maximum(_linf(u), _TINY)
            jitter = tf.clip_by_value(x0 + scale[:, None] * u, 0.0, 1.0)
            start = tf.where(r % config.restarts > 0, jitter, x0)
        else:
            start = x0
        found, found_norm = run(x0, tf.gather(y, todo), target, start)
        better = found_norm < tf.gather(norm, todo)
        where = tf.boolean_mask(todo, better)[:, None]
        best = tf.tensor_scatter_nd_update(best, where, tf.boolean_mask(found, better))
        norm = tf.tensor_scatter_nd_update(norm, where, tf.boolean_mask(found_norm, better))
        return r + 1, best, norm

    def cond(r, best, norm):
        return tf.logical_and(r < rounds, tf.reduce_any(norm > eps))

    _, best, norm = tf.while_loop(cond, body, (tf.constant(0), flat, norm))
    return tf.reshape(best, shape), norm


class _Run:
    """One targeted FAB run on a batch, in one tf.while_loop."""

    def __init__(self, model, image_shape, config, eps, minimize_norm):
        self.model = model
        self.image_shape = image_shape
        self.config = config
        self.eps = eps
        self.minimize_norm = minimize_norm

    def _logits(self, points):
        images = tf.reshape(points, tf.concat([[-1], self.image_shape], 0))
        return tf.cast(self.model(images, training=False), tf.float32)

    def _record(self, points, logits, x0, y, idx, best, best_norm):
        """Keeps the misclassified points that beat their best norm so far."""
        adv = tf.not_equal(tf.cast(tf.argmax(logits, axis=-1), tf.int32), y)
        norm = _linf(points - x0)
        better = tf.logical_and(adv, norm < tf.gather(best_norm, idx))
        where = tf.boolean_mask(idx, better)[:, None]
        best = tf.tensor_scatter_nd_update(best, where, tf.boolean_mask(points, better))
        best_norm = tf.tensor_scatter_nd_update(best_norm, where, tf.boolean_mask(norm, better))
        return adv, best, best_norm

    def __call__(self, x0_all, y_all, target_all, start):
        config = self.config
        alpha_max = tf.constant(config.alpha_max, tf.float32)
        eta = tf.constant(config.eta, tf.float32)
        beta = tf.constant(config.beta, tf.float32)
        rows = tf.shape(x0_all)[0]

        def body(i, idx, x1, best, best_norm):
            x0 = tf.gather(x0_all, idx)
            y = tf.gather(y_all, idx)
            target = tf.gather(target_all, idx)
            with tf.GradientTape() as tape:
                tape.watch(x1)
                logits = self._logits(x1)
            k = tf.shape(logits)[-1]
            seed = tf.one_hot(target, k, dtype=logits.dtype) - tf.one_hot(y, k, dtype=logits.dtype)
            w = tf.cast(tape.gradient(logits, x1, output_gradients=seed), tf.float32)
            g = tf.reduce_sum(logits * seed, axis=1)
            adv, best, best_norm = self._record(x1, logits, x0, y, idx, best, best_norm)
            # Back off towards x0 after a success; the linearisation stays that of x1.
            point = tf.where(adv[:, None], x0 + beta * (x1 - x0), x1)
            c_point = g + tf.reduce_sum(w * (point - x1), axis=1)
            c_orig = g + tf.reduce_sum(w * (x0 - x1), axis=1)
            d = project_linf(
                tf.concat([point, x0], 0), tf.concat([w, w], 0), tf.concat([c_point, c_orig], 0)
            )
            d_point, d_orig = tf.split(d, 2, axis=0)
            a_point = tf.maximum(_linf(d_point), 1e-8)
            a_orig = tf.maximum(_linf(d_orig), 1e-8)
            alpha = tf.minimum(a_point / (a_point + a_orig), alpha_max)[:, None]
            x1 = (1.0 - alpha) * (point + eta * d_point) + alpha * (x0 + eta * d_orig)
            x1 = tf.clip_by_value(x1, 0.0, 1.0)
            if not self.minimize_norm:
                running = tf.gather(best_norm, idx) > self.eps
                idx = tf.boolean_mask(idx, running)
                x1 = tf.boolean_mask(x1, running)
            return i + 1, idx, x1, best, best_norm

        def cond(i, idx, x1, best, best_norm):
            return tf.logical_and(i < config.steps, tf.size(idx) > 0)

        best = x0_all
        best_norm = tf.fill([rows], tf.constant(math.inf, tf.float32))
        idx = tf.range(rows)
        _, idx, x1, best, best_norm = tf.while_loop(
            cond,
            body,
            (tf.constant(0), idx, start, best, best_norm),
            shape_invariants=(
                tf.TensorShape([]),
                tf.TensorShape([None]),
                tf.TensorShape([None, start.shape[1]]),
                best.shape,
                best_norm.shape,
            ),
        )

        def last_check():
            x0 = tf.gather(x0_all, idx)
            logits = self._logits(x1)
            _, b, bn = self._record(x1, logits, x0, tf.gather(y_all, idx), idx, best, best_norm)
            return b, bn

        # The last candidate, stepped to but not yet evaluated.
        best, best_norm = tf.cond(tf.size(idx) > 0, last_check, lambda: (best, best_norm))
        return best, best_norm
