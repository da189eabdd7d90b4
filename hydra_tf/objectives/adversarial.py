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
      start: where the attack starts, one of `STARTS` (uniform: Madry et
        al.'s; vertex sees a first-layer threshold just below eps, as for
        TRADES, see `TradesConfig`).
    """

    name: str = dataclasses.field(default="pgd_at", init=False)
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = 2 / 255
    start: str = "uniform"

    def __post_init__(self):
        _check_start(self.start)

    def attack(self):
        """The training attack (its start is drawn by `start_point`)."""
        return attacks.PGDConfig(
            eps=self.eps, steps=self.steps, step_size=self.step_size, random_start=True
        )


# Where a training attack starts: "gaussian", x + 0.001 * N(0, I) (TRADES' and
# the HYDRA reference's TRADES); "uniform", uniformly in the eps-ball (Madry et
# al.'s PGD-AT); "vertex", a random corner of the eps-ball (every pixel moved
# by +-eps). See `TradesConfig` for what each can see.
STARTS = ("gaussian", "uniform", "vertex")

# Where the finetune phase's attack starts unless told (the pipeline's and
# `binaries.train --phase=finetune`'s default), whatever the objective's own
# start: from the same dense and prune networks it gave each of the default
# pipeline's six pruned networks 7.0-11.6 more AutoAttack points than the
# reference's Gaussian start, at the same clean accuracy
# (results/adversarial/README.md, "Which attack start").
FINETUNE_START = "vertex"


def finetune_objective(objective):
    """`objective` with the finetune's default start (`FINETUNE_START`) if it is
    TRADES or PGD-AT; any other objective as it is."""
    if isinstance(objective, PGDATConfig):
        return dataclasses.replace(objective, start=FINETUNE_START)
    return objective


def _check_start(start):
    if start not in STARTS:
        raise ValueError(f"Unknown attack start {start!r}. Supported: {', '.join(STARTS)}.")


def start_point(start, x, eps):
    """The training attack's first point for `x` (one of `STARTS`; pgd clips it)."""
    if start == "gaussian":
        return x + 0.001 * distribute.normal(tf.shape(x), dtype=x.dtype)
    if start == "uniform":
        return attacks.uniform_start(x, eps)
    return attacks.vertex_start(x, eps)


@dataclasses.dataclass(frozen=True)
class TradesConfig(PGDATConfig):
    """TRADES: the attack settings of PGD-AT, the trade-off weight `beta` and
    where the attack starts (`start`, one of `STARTS`; Gaussian by default).

    From the Gaussian start the attack's first gradient is taken within 0.001
    of the clean input, so it cannot see a ReLU that is off there by a larger
    margin but that a perturbation of eps switches on (on Fashion-MNIST's zero
    background, a first-layer filter whose bias sits just below zero). The
    uniform start samples the whole ball, but puts a background pixel above a
    threshold t < eps only with probability (eps - t) / (2 eps); the vertex
    start puts half of them at eps, above every such threshold. A 99% network
    whose first layer keeps a single live weight sees its input only through
    that threshold, and finetuned from the uniform start it lowered it below
    eps, where only a gradient-free attack finds it
    (`results/adversarial/README.md`).
    """

    name: str = dataclasses.field(default="trades", init=False)
    beta: float = 6.0
    start: str = "gaussian"


class PGDAdversarial(base.Natural):
    """Madry et al.: cross-entropy on L-inf PGD examples."""

    name = "pgd_at"
    Config = PGDATConfig

    def __init__(self, attack, start=None):
        """`start`: one of `STARTS`, or None for the attack's own (`attack.random_start`)."""
        super().__init__()
        if start is not None:
            _check_start(start)
        self.attack = attack
        self.start = start

    @classmethod
    def from_config(cls, config):
        return cls(config.attack(), start=config.start)

    def perturb(self, model, x, y):
        start = None if self.start is None else start_point(self.start, x, self.attack.eps)
        return attacks.pgd(model, x, y, self.attack, loss="ce", start=start)


class Trades(base.Consistency):
    """TRADES: CE(clean) + beta * KL(p(clean) || p(adversarial))."""

    name = "trades"
    Config = TradesConfig

    def __init__(self, attack, beta=6.0, start="gaussian"):
        super().__init__(beta)
        _check_start(start)
        self.attack = attack
        self.start = start

    @classmethod
    def from_config(cls, config):
        return cls(config.attack(), beta=config.beta, start=config.start)

    def perturb(self, model, x, y):
        target = tf.nn.softmax(model(x, training=False))
        start = start_point(self.start, x, self.attack.eps)
        return attacks.pgd(model, x, y, self.attack, loss="kl", target_probs=target, start=start)
