"""Gaussian-noise objectives for randomized smoothing (Cohen et al.; HYDRA's smoothing loss).

Their networks are evaluated by certifying the smoothed classifier
(`hydra_tf.evaluation.smoothing`), not by an attack.
"""

import dataclasses

import tensorflow as tf

from hydra_tf import distribute
from hydra_tf.objectives import base


def _validate_sigma(sigma):
    if not sigma > 0:
        raise ValueError(f"Noise sigma must be > 0. Received: sigma={sigma}")
    return float(sigma)


def _add_noise(x, sigma):
    # No clipping to [0, 1]: the smoothed classifier certifies exactly this
    # noise distribution.
    return x + sigma * distribute.normal(tf.shape(x), dtype=x.dtype)


@dataclasses.dataclass(frozen=True)
class GaussianConfig:
    """Cross-entropy on noisy inputs; `sigma` is the noise's standard deviation."""

    name: str = dataclasses.field(default="gaussian", init=False)
    sigma: float = 0.25


@dataclasses.dataclass(frozen=True)
class SmoothingObjectiveConfig(GaussianConfig):
    """HYDRA's smoothing loss: the noise `sigma` and the trade-off weight `beta`."""

    name: str = dataclasses.field(default="smoothing", init=False)
    beta: float = 6.0


class GaussianNoise(base.Natural):
    """Cohen et al.: cross-entropy on inputs with Gaussian noise N(0, sigma^2)."""

    name = "gaussian"
    Config = GaussianConfig
    certified = True

    def __init__(self, sigma):
        super().__init__()
        self.sigma = _validate_sigma(sigma)

    @classmethod
    def from_config(cls, config):
        return cls(config.sigma)

    def perturb(self, model, x, y):
        del model, y
        return _add_noise(x, self.sigma)


class Smoothing(base.Consistency):
    """HYDRA's smoothing objective: CE(clean) + beta * KL(p(clean) || p(noisy)).

    TRADES' loss with Gaussian noise N(0, sigma^2) in place of the attack.
    """

    name = "smoothing"
    Config = SmoothingObjectiveConfig
    certified = True

    def __init__(self, sigma, beta=6.0):
        super().__init__(beta)
        self.sigma = _validate_sigma(sigma)

    @classmethod
    def from_config(cls, config):
        return cls(config.sigma, beta=config.beta)

    def perturb(self, model, x, y):
        del model, y
        return _add_noise(x, self.sigma)
