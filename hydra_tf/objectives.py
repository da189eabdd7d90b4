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

from hydra_tf import attacks

OBJECTIVES = ("natural", "pgd_at", "trades")


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


class Trades(Natural):
    """TRADES: CE(clean) + beta * KL(p(clean) || p(adversarial))."""

    name = "trades"

    def __init__(self, attack, beta=6.0):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"TRADES beta must be >= 0. Received: beta={beta}")
        self.attack = attack
        self.beta = float(beta)
        self._kl = keras.losses.KLDivergence()

    def perturb(self, model, x, y):
        target = tf.nn.softmax(model(x, training=False))
        # TRADES starts from a small Gaussian perturbation of the clean input.
        start = x + 0.001 * tf.random.normal(tf.shape(x), dtype=x.dtype)
        return attacks.pgd(model, x, y, self.attack, loss="kl", target_probs=target, start=start)

    def loss(self, model, x, y, perturbed):
        # Two forward passes, not one on the concatenation, so that BatchNorm
        # normalises clean and adversarial batches separately (as TRADES does).
        clean = model(x, training=True)
        adversarial = model(perturbed, training=True)
        robust = self._kl(tf.nn.softmax(clean), tf.nn.softmax(adversarial))
        return self._ce(y, clean) + self.beta * robust, clean


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What to train against.

    Attributes:
      name: one of `OBJECTIVES`.
      eps: L-inf radius of the training attack.
      steps: PGD steps of the training attack.
      step_size: PGD step size (None: 2.5 * eps / steps).
      beta: TRADES trade-off weight.
    """

    name: str = "trades"
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = 2 / 255
    beta: float = 6.0

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(
                f"Unknown objective {self.name!r}. Supported: {', '.join(OBJECTIVES)}."
            )


def make(config):
    """Builds the objective described by an `ObjectiveConfig`."""
    if config.name == "natural":
        return Natural()
    attack = attacks.PGDConfig(
        eps=config.eps,
        steps=config.steps,
        step_size=config.step_size,
        random_start=True,
    )
    if config.name == "pgd_at":
        return PGDAdversarial(attack)
    return Trades(attack, beta=config.beta)
