"""Training objectives: what loss a batch contributes in every phase.

An objective has two steps, so that the (expensive, gradient-free for the
weights) attack runs outside the training tape:

- `perturb(model, x, y)` builds the inputs the loss needs (e.g. adversarial
  examples), with the model in inference mode;
- `loss(model, x, y, perturbed)` runs the model in training mode and returns
  `(loss, logits)`, where `loss` is already scaled for `tf.distribute` (it is
  built from Keras `Loss` objects, which divide by the number of replicas), and
  `logits` are what the accuracy metric is measured on.
"""

import dataclasses

import keras
import tensorflow as tf

from hydra_tf import distribute
from hydra_tf.objectives import attacks

OBJECTIVES = ("natural", "pgd_at", "trades", "smoothing", "gaussian")


class Natural:
    """Plain (benign) cross-entropy training."""

    name = "natural"

    def __init__(self):
        self._ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def perturb(self, model, x, y):
        del model, y
        return x

    def loss(self, model, x, y, perturbed):
        del x
        logits = model(perturbed, training=True)
        return self._ce(y, logits), logits


class PGDAdversarial(Natural):
    """Madry et al.: cross-entropy on L-inf PGD examples."""

    name = "pgd_at"

    def __init__(self, attack):
        super().__init__()
        self.attack = attack

    def perturb(self, model, x, y):
        return attacks.pgd(model, x, y, self.attack, loss="ce")


class LogitKLDivergence(keras.losses.Loss):
    """KL(softmax(y_true) || softmax(y_pred)) computed from two sets of logits.

    Both distributions come from `log_softmax`, with no clipping.
    `keras.losses.KLDivergence` clips probabilities to [1e-7, 1]: on exactly
    the examples an attack breaks hardest (the perturbed prediction puts almost
    no mass on the clean class) the clipped loss saturates and its gradient
    vanishes, so TRADES would stop learning from them. As a Keras `Loss` it is
    averaged over the batch and scaled for `tf.distribute` like the other
    losses, and computed in float32 under mixed precision.
    """

    def __init__(self, name="logit_kl_divergence", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        log_p = tf.nn.log_softmax(y_true)
        log_q = tf.nn.log_softmax(y_pred)
        return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


class _Consistency(Natural):
    """CE(clean) + beta * KL(p(clean) || p(perturbed)): TRADES and smoothing."""

    def __init__(self, beta):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"{self.name} beta must be >= 0. Received: beta={beta}")
        self.beta = float(beta)
        self._kl = LogitKLDivergence()

    def loss(self, model, x, y, perturbed):
        # Two forward passes, not one on the concatenation, so that BatchNorm
        # normalises clean and perturbed batches separately (as TRADES does).
        clean = model(x, training=True)
        other = model(perturbed, training=True)
        return self._ce(y, clean) + self.beta * self._kl(clean, other), clean


class Trades(_Consistency):
    """TRADES: CE(clean) + beta * KL(p(clean) || p(adversarial))."""

    name = "trades"

    def __init__(self, attack, beta=6.0):
        super().__init__(beta)
        self.attack = attack

    def perturb(self, model, x, y):
        target = tf.nn.softmax(model(x, training=False))
        # TRADES starts from a small Gaussian perturbation of the clean input.
        start = x + 0.001 * distribute.normal(tf.shape(x), dtype=x.dtype)
        return attacks.pgd(model, x, y, self.attack, loss="kl", target_probs=target, start=start)


def _validate_sigma(sigma):
    if not sigma > 0:
        raise ValueError(f"Noise sigma must be > 0. Received: sigma={sigma}")
    return float(sigma)


def _add_noise(x, sigma):
    # No clipping to [0, 1]: the smoothed classifier certifies exactly this
    # noise distribution.
    return x + sigma * distribute.normal(tf.shape(x), dtype=x.dtype)


class GaussianNoise(Natural):
    """Cohen et al.: cross-entropy on inputs with Gaussian noise N(0, sigma^2)."""

    name = "gaussian"

    def __init__(self, sigma):
        super().__init__()
        self.sigma = _validate_sigma(sigma)

    def perturb(self, model, x, y):
        del model, y
        return _add_noise(x, self.sigma)


class Smoothing(_Consistency):
    """HYDRA's smoothing objective: CE(clean) + beta * KL(p(clean) || p(noisy)).

    TRADES' loss with Gaussian noise N(0, sigma^2) in place of the attack.
    """

    name = "smoothing"

    def __init__(self, sigma, beta=6.0):
        super().__init__(beta)
        self.sigma = _validate_sigma(sigma)

    def perturb(self, model, x, y):
        del model, y
        return _add_noise(x, self.sigma)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What to train against.

    Attributes:
      name: one of `OBJECTIVES`.
      eps: L-inf radius of the training attack.
      steps: PGD steps of the training attack.
      step_size: PGD step size (None: 2.5 * eps / steps).
      beta: TRADES / smoothing trade-off weight.
      sigma: Gaussian noise of the smoothing objectives.
    """

    name: str = "trades"
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = 2 / 255
    beta: float = 6.0
    sigma: float = 0.25

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(
                f"Unknown objective {self.name!r}. Supported: {', '.join(OBJECTIVES)}."
            )


def make(config):
    """Builds the objective described by an `ObjectiveConfig`."""
    if config.name == "natural":
        return Natural()
    if config.name == "gaussian":
        return GaussianNoise(config.sigma)
    if config.name == "smoothing":
        return Smoothing(config.sigma, beta=config.beta)
    attack = attacks.PGDConfig(
        eps=config.eps,
        steps=config.steps,
        step_size=config.step_size,
        random_start=True,
    )
    if config.name == "pgd_at":
        return PGDAdversarial(attack)
    return Trades(attack, beta=config.beta)
