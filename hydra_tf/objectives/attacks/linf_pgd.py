"""L-infinity projected gradient descent (PGD) attacks.

The attack always runs the model in inference mode (`training=False`), so
BatchNorm statistics are neither used from the batch nor updated while the
adversarial example is searched. Inputs are images in [0, 1]; every iterate is
projected back into the eps-ball around the clean input and into [0, 1].

The input gradient starts its backward pass from a rescaled logit gradient
(`input_gradient`), so it does not flush to zero on confidently classified
examples, in float32 or in a mixed-precision (float16) network.
"""

import dataclasses

import tensorflow as tf

from hydra_tf import distribute

ATTACK_LOSSES = ("ce", "kl")


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """Settings of an L-inf PGD attack.

    Attributes:
      eps: radius of the L-inf ball.
      steps: number of gradient steps.
      step_size: size of each signed-gradient step; `None` means
        2.5 * eps / steps (Madry et al.), at least eps / steps.
      restarts: number of random restarts (evaluation only); an example counts
        as robust only if no restart finds an adversarial example.
      random_start: start from a uniform point of the eps-ball (else the clean
        input).
    """

    eps: float
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True

    def __post_init__(self):
        if not self.eps >= 0:
            raise ValueError(f"PGD eps must be >= 0. Received: eps={self.eps}")
        if self.steps < 0:
            raise ValueError(f"PGD steps must be >= 0. Received: steps={self.steps}")
        if self.restarts < 1:
            raise ValueError(f"PGD restarts must be >= 1. Received: restarts={self.restarts}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"PGD step_size must be > 0. Received: step_size={self.step_size}")

    @property
    def alpha(self):
        """The step size actually used."""
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * self.eps / max(self.steps, 1)

    def to_json(self):
        return {
            "name": "pgd_linf",
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.alpha,
            "restarts": self.restarts,
            "random_start": self.random_start,
        }


def ascent_direction(kind, logits, y, target_probs):
    """A positive per-example multiple of d(attack loss)/d(logits), never underflowing.

    "ce": the cross-entropy gradient is softmax(z) - onehot(y). For a
    confidently classified example its entries are tiny (e^-margin): they
    flush to zero in float16 (below 2^-24) and even in float32 past a margin
    of ~100, and the attack stops moving. Dividing by the largest wrong-class
    probability, computed in log space, gives exp(z_j - max_{k!=y} z_k) for
    j != y and minus their sum for y: the same direction, with entries of
    order 1. "kl" (the TRADES attack, KL(target || softmax(z)) up to a
    constant): softmax(z) - target, divided by its largest entry.

    PGD follows the sign of the input gradient, which a positive per-example
    scale does not change (each example's loss depends on its own input
    only: the attack runs in inference mode).
    """
    logits = tf.cast(logits, tf.float32)
    if kind == "ce":
        onehot = tf.one_hot(tf.cast(y, tf.int32), tf.shape(logits)[-1], dtype=tf.float32)
        others = tf.where(onehot > 0, tf.constant(-float("inf")), logits)
        scaled = tf.exp(others - tf.reduce_max(others, axis=-1, keepdims=True))
        return scaled - onehot * tf.reduce_sum(scaled, axis=-1, keepdims=True)
    direction = tf.nn.softmax(logits) - tf.cast(target_probs, tf.float32)
    largest = tf.reduce_max(tf.abs(direction), axis=-1, keepdims=True)
    return direction / tf.maximum(largest, 1e-30)


def input_gradient(model, x, y, loss="ce", target_probs=None):
    """A per-example positive multiple of the attack loss' gradient w.r.t. `x`.

    The backward pass starts from `ascent_direction`, whose entries are of
    order 1, so it does not flush to zero in a float16 (mixed precision)
    network; the result is float32, like `x`.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
    direction = ascent_direction(loss, logits, y, target_probs)
    grad = tape.gradient(logits, x, output_gradients=tf.cast(direction, logits.dtype))
    return tf.cast(grad, x.dtype)


def uniform_start(x, eps):
    """x plus uniform noise in [-eps, eps] (callers clip it to the ball and to [0, 1])."""
    eps = tf.cast(eps, x.dtype)
    return x + distribute.uniform(tf.shape(x), -eps, eps, x.dtype)


def vertex_start(x, eps):
    """x plus +-eps on every coordinate, each sign a fair coin: a random corner of
    the eps-ball (callers clip it to [0, 1])."""
    eps = tf.cast(eps, x.dtype)
    coin = distribute.uniform(tf.shape(x), 0.0, 1.0, x.dtype)
    return x + tf.where(coin < 0.5, -eps, eps)


def pgd(model, x, y, config, loss="ce", target_probs=None, start=None):
    """Finds an L-inf adversarial example by projected gradient ascent.

    Args:
      model: callable mapping images to logits; called with `training=False`.
      x: clean images in [0, 1], shape (batch, H, W, C).
      y: integer labels, shape (batch,) (used by the "ce" loss).
      config: a `PGDConfig` (its `restarts` is ignored here).
      loss: "ce" (cross-entropy with the labels, PGD-AT) or "kl" (divergence
        from `target_probs`, the TRADES attack).
      target_probs: clean softmax outputs, needed by the "kl" loss.
      start: optional starting point; overrides `config.random_start`.

    Returns:
      Adversarial images with |x_adv - x|_inf <= eps and values in [0, 1].
    """
    if loss not in ATTACK_LOSSES:
        raise ValueError(f"Unknown attack loss {loss!r}. Supported: {ATTACK_LOSSES}.")
    if loss == "kl" and target_probs is None:
        raise ValueError("The 'kl' attack loss needs target_probs.")
    x = tf.convert_to_tensor(x)
    eps = tf.cast(config.eps, x.dtype)
    alpha = tf.cast(config.alpha, x.dtype)
    lower = tf.maximum(x - eps, 0.0)
    upper = tf.minimum(x + eps, 1.0)
    if start is not None:
        x_adv = tf.clip_by_value(start, lower, upper)
    elif config.random_start:
        x_adv = tf.clip_by_value(uniform_start(x, eps), lower, upper)
    else:
        x_adv = x

    def step(i, x_adv):
        grad = input_gradient(model, x_adv, y, loss, target_probs)
        return i + 1, tf.clip_by_value(x_adv + alpha * tf.sign(grad), lower, upper)

    # An explicit while_loop keeps the graph small for many steps and works
    # whether or not the caller is converted by AutoGraph.
    _, x_adv = tf.while_loop(lambda i, _: i < config.steps, step, (tf.constant(0), x_adv))
    return tf.stop_gradient(x_adv)


def robust_correct(model, x, y, config):
    """Whether each example is classified correctly under the PGD attack.

    An example counts as robust only if it is classified correctly clean and
    after each of `config.restarts` PGD runs (cross-entropy loss).

    Returns:
      A pair of boolean tensors (clean_correct, robust_correct), shape (batch,).
    """
    y = tf.cast(y, tf.int64)
    clean = tf.equal(tf.argmax(model(x, training=False), axis=-1), y)
    robust = clean
    for _ in range(config.restarts):
        x_adv = pgd(model, x, y, config)
        robust = tf.logical_and(robust, tf.equal(tf.argmax(model(x_adv, training=False), -1), y))
    return clean, robust
