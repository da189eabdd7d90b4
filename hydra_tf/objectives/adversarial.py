"""Adversarial training objectives: PGD-AT (Madry et al.) and TRADES (Zhang et al.)."""

import dataclasses

import tensorflow as tf

from hydra_tf import distribute
from hydra_tf.objectives import attacks
from hydra_tf.objectives import base


@dataclasses.dataclass(frozen=True)
class PGDATConfig:
    """PGD adversarial training.

    Attributes:
      eps: L-inf radius of the training attack.
      steps: PGD steps of the training attack.
      step_size: PGD step size (None: 2.5 * eps / steps).
    """

    name: str = dataclasses.field(default="pgd_at", init=False)
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = 2 / 255

    def attack(self):
        """The training attack (random start)."""
        return attacks.PGDConfig(
            eps=self.eps, steps=self.steps, step_size=self.step_size, random_start=True
        )


@dataclasses.dataclass(frozen=True)
class TradesConfig(PGDATConfig):
    """TRADES: the attack settings of PGD-AT and the trade-off weight `beta`."""

    name: str = dataclasses.field(default="trades", init=False)
    beta: float = 6.0


class PGDAdversarial(base.Natural):
    """Madry et al.: cross-entropy on L-inf PGD examples."""

    name = "pgd_at"
    Config = PGDATConfig

    def __init__(self, attack):
        super().__init__()
        self.attack = attack

    @classmethod
    def from_config(cls, config):
        return cls(config.attack())

    def perturb(self, model, x, y):
        return attacks.pgd(model, x, y, self.attack, loss="ce")


class Trades(base.Consistency):
    """TRADES: CE(clean) + beta * KL(p(clean) || p(adversarial))."""

    name = "trades"
    Config = TradesConfig

    def __init__(self, attack, beta=6.0):
        super().__init__(beta)
        self.attack = attack

    @classmethod
    def from_config(cls, config):
        return cls(config.attack(), beta=config.beta)

    def perturb(self, model, x, y):
        target = tf.nn.softmax(model(x, training=False))
        # TRADES starts from a small Gaussian perturbation of the clean input.
        start = x + 0.001 * distribute.normal(tf.shape(x), dtype=x.dtype)
        return attacks.pgd(model, x, y, self.attack, loss="kl", target_probs=target, start=start)
