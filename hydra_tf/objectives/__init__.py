"""Training objectives: what loss a batch contributes in every phase.

`REGISTRY` maps each objective's name to its class; the binaries take their
`--objective` choices from it. Each class has its own config class
(`Config`), builds itself from it (`from_config`) and says whether its
networks are certified (`certified`) rather than attacked. See
`hydra_tf.objectives.base` for the interface.

Adding an objective: a module with the class and its config (copy
`adversarial.py` or `noise.py`), one entry in `REGISTRY`, and its tests. An
objective that needs a training step of its own (copy `free_at.py`) defines
`train_step`; see `hydra_tf.training.trainer`.

Epochs: a run's `epochs` count gradient computations. Every objective makes
one pass over the data per epoch except `free_at`, which replays each batch
`replays` times and so makes ceil(epochs / replays) passes (`data_epochs`).
"""

import dataclasses
import math

from hydra_tf.objectives import adversarial
from hydra_tf.objectives import base
from hydra_tf.objectives import free_at
from hydra_tf.objectives import mixtrain
from hydra_tf.objectives import noise
from hydra_tf.objectives import verifiable
from hydra_tf.objectives.adversarial import PGDAdversarial
from hydra_tf.objectives.adversarial import PGDATConfig
from hydra_tf.objectives.adversarial import Trades
from hydra_tf.objectives.adversarial import TradesConfig
from hydra_tf.objectives.base import LogitKLDivergence
from hydra_tf.objectives.base import Natural
from hydra_tf.objectives.base import NaturalConfig
from hydra_tf.objectives.free_at import FreeAT
from hydra_tf.objectives.free_at import FreeATConfig
from hydra_tf.objectives.mixtrain import MixTrain
from hydra_tf.objectives.mixtrain import MixTrainConfig
from hydra_tf.objectives.noise import GaussianConfig
from hydra_tf.objectives.noise import GaussianNoise
from hydra_tf.objectives.noise import Smoothing
from hydra_tf.objectives.noise import SmoothingObjectiveConfig
from hydra_tf.objectives.verifiable import IBP
from hydra_tf.objectives.verifiable import CrownIBP
from hydra_tf.objectives.verifiable import CrownIBPConfig
from hydra_tf.objectives.verifiable import IBPConfig

REGISTRY = {
    cls.name: cls
    for cls in (
        base.Natural,
        adversarial.PGDAdversarial,
        adversarial.Trades,
        free_at.FreeAT,
        noise.Smoothing,
        noise.GaussianNoise,
        verifiable.IBP,
        verifiable.CrownIBP,
        mixtrain.MixTrain,
    )
}
OBJECTIVES = tuple(REGISTRY)


def _objective_class(name):
    if name not in REGISTRY:
        raise ValueError(f"Unknown objective {name!r}. Supported: {', '.join(OBJECTIVES)}.")
    return REGISTRY[name]


def config(name, **values):
    """The config of objective `name` from `values`, ignoring settings it does not have.

    The binaries pass every objective setting they have flags for (eps,
    steps, step_size, beta, sigma, the eps ramp, replays); each objective keeps its own.
    """
    config_class = _objective_class(name).Config
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    return config_class(**{key: value for key, value in values.items() if key in fields})


def from_json(values):
    """An objective config from its JSON dict (`{"name": ..., settings}`).

    Settings the objective does not have are ignored, so configs written
    when every objective carried every setting still load.
    """
    values = dict(values)
    return config(values.pop("name"), **values)


def make(objective_config, steps_per_epoch=1):
    """The objective an objective config describes.

    `steps_per_epoch` turns the epochs of a scheduled objective (the eps ramp
    of `ibp` / `crown_ibp`) into training steps; the others ignore it.
    """
    cls = _objective_class(objective_config.name)
    if cls.scheduled:
        return cls.from_config(objective_config, steps_per_epoch=steps_per_epoch)
    return cls.from_config(objective_config)


def replays(objective_config):
    """Optimizer updates per batch: free_at's `replays`, 1 for every other objective."""
    return getattr(objective_config, "replays", 1)


def data_epochs(objective_config, epochs):
    """The passes over the training data that `epochs` epochs of this objective make.

    `epochs` count gradient computations (one per optimizer update and
    batch), so that objectives compare at equal cost. Free adversarial
    training makes `replays` updates per batch and so fewer passes, as its
    paper does (90 ImageNet epochs with m = 4 are 23 passes): ceil(epochs /
    replays), rounded up so that no run makes fewer updates than asked. Every
    other objective makes `epochs` passes.
    """
    return math.ceil(epochs / replays(objective_config))


def certified(objective_config):
    """Whether networks trained on this objective are certified rather than attacked."""
    return _objective_class(objective_config.name).certified


def verified(objective_config):
    """Whether networks trained on this objective are evaluated by verified accuracy."""
    return _objective_class(objective_config.name).verified


__all__ = [
    "IBP",
    "OBJECTIVES",
    "REGISTRY",
    "CrownIBP",
    "CrownIBPConfig",
    "FreeAT",
    "FreeATConfig",
    "GaussianConfig",
    "GaussianNoise",
    "IBPConfig",
    "LogitKLDivergence",
    "MixTrain",
    "MixTrainConfig",
    "Natural",
    "NaturalConfig",
    "PGDATConfig",
    "PGDAdversarial",
    "Smoothing",
    "SmoothingObjectiveConfig",
    "Trades",
    "TradesConfig",
    "certified",
    "config",
    "data_epochs",
    "from_json",
    "make",
    "replays",
    "verified",
]
