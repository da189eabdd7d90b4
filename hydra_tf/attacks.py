"""L-infinity projected gradient descent (PGD) attacks.

The attack always runs the model in inference mode (`training=False`), so
BatchNorm statistics are neither used from the batch nor updated while the
adversarial example is searched. Inputs are images in [0, 1]; every iterate is
projected back into the eps-ball around the clean input and into [0, 1].
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


def _attack_loss(kind, logits, y, target_probs):
    """Per-batch sum of the loss the attack ascends."""
    if kind == "ce":
        return tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(y, tf.int32), logits=logits
            )
        )
    # KL(target || softmax(logits)) up to a constant: the TRADES attack loss.
    return -tf.reduce_sum(target_probs * tf.nn.log_softmax(logits))


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
        x_adv = tf.clip_by_value(
            x + distribute.uniform(tf.shape(x), -eps, eps, x.dtype), lower, upper
        )
    else:
        x_adv = x

    def step(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            value = _attack_loss(loss, model(x_adv, training=False), y, target_probs)
        grad = tape.gradient(value, x_adv)
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
