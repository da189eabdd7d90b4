"""L-inf attacks: PGD, APGD (CE and targeted DLR), FAB-T, Square and AutoAttack.

Every attack is a frozen config dataclass with
  - `name`: its registry name (for example "apgd-ce");
  - `eps`: the L-inf radius;
  - `perturb(model, x, y)`: graph-compatible TensorFlow that returns one
    point per example inside the eps-ball around `x` and inside [0, 1]: an
    adversarial example where the attack found one, else its best try. The
    model is always called with `training=False`;
  - `to_json()`: its settings, for result files and cache keys.

`REGISTRY` maps names to factories `(eps, **options) -> attack`; the binaries
take their `--attack` choices from it. "autoattack" is the standard cascade of
Croce & Hein (2020); `hydra_tf.evaluation` runs it, each attack only on the
points still robust. "autoattack-extended" runs stronger attacks after it, to
measure how much robustness the standard cascade leaves unbroken.

Adding an attack: one module with its config class (copy `apgd.py`; PGD is in
`linf_pgd.py`), one entry in `REGISTRY`, and its tests (inside the ball, breaks
an undefended network).
"""

import dataclasses

from hydra_tf.objectives.attacks import apgd
from hydra_tf.objectives.attacks import fab
from hydra_tf.objectives.attacks import square
from hydra_tf.objectives.attacks.linf_pgd import ATTACK_LOSSES
from hydra_tf.objectives.attacks.linf_pgd import PGDConfig
from hydra_tf.objectives.attacks.linf_pgd import input_gradient
from hydra_tf.objectives.attacks.linf_pgd import pgd
from hydra_tf.objectives.attacks.linf_pgd import robust_correct
from hydra_tf.objectives.attacks.linf_pgd import uniform_start
from hydra_tf.objectives.attacks.linf_pgd import vertex_start

__all__ = [
    "ATTACKS",
    "ATTACK_LOSSES",
    "GRADIENT_FREE",
    "REGISTRY",
    "Cascade",
    "PGDConfig",
    "input_gradient",
    "make",
    "pgd",
    "robust_correct",
    "uniform_start",
    "vertex_start",
]


@dataclasses.dataclass(frozen=True)
class Cascade:
    """Attacks run one after the other, each on the points the earlier ones left robust."""

    name: str
    attacks: tuple

    @property
    def eps(self):
        return self.attacks[0].eps

    def to_json(self):
        return {"name": self.name, "attacks": [a.to_json() for a in self.attacks]}


def _pgd(eps, steps=50, restarts=2, step_size=None, **_):
    return PGDConfig(eps=eps, steps=steps, restarts=restarts, step_size=step_size)


def _apgd(loss):
    def factory(eps, steps=apgd.DEFAULT_STEPS, restarts=1, targets=apgd.DEFAULT_TARGETS, **_):
        return apgd.APGDConfig(eps=eps, loss=loss, steps=steps, restarts=restarts, targets=targets)

    return factory


def _fab(eps, fab_steps=100, targets=apgd.DEFAULT_TARGETS, restarts=1, **_):
    return fab.FABConfig(eps=eps, steps=fab_steps, targets=targets, restarts=restarts)


def _square(eps, queries=5000, restarts=1, **_):
    return square.SquareConfig(eps=eps, queries=queries, restarts=restarts)


def _autoattack(eps, **options):
    """The standard version: APGD-CE, APGD-T, FAB-T, Square."""
    return Cascade(
        name="autoattack",
        attacks=tuple(REGISTRY[name](eps, **options) for name in STANDARD),
    )


def _autoattack_extended(eps, **options):
    """Standard AutoAttack, then `EXTENSION` on the points it left robust.

    Its first four stages are the standard cascade's, draw for draw (the
    cascade keys every draw by the stage and batch), so it never reports more
    robustness than standard AutoAttack, and what its later stages break is
    robustness the standard figure claimed wrongly: a lower bound on how much
    it overstates.
    """
    extra = tuple(REGISTRY[name](eps, **{**options, **settings}) for name, settings in EXTENSION)
    return Cascade(name="autoattack-extended", attacks=_autoattack(eps, **options).attacks + extra)


REGISTRY = {
    "pgd": _pgd,
    "apgd-ce": _apgd("ce"),
    "apgd-dlr": _apgd("dlr"),
    "apgd-t": _apgd("dlr-targeted"),
    "fab-t": _fab,
    "square": _square,
    "autoattack": _autoattack,
    "autoattack-extended": _autoattack_extended,
}
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
# What "autoattack-extended" adds after the standard cascade: the untargeted APGD losses
# with 5 restarts each (as AutoAttack's "plus" version) and Square with 4 more restarts
# of 5000 queries.
EXTENSION = (
    ("apgd-ce", {"restarts": 5}),
    ("apgd-dlr", {"restarts": 5}),
    ("square", {"restarts": 4}),
)
ATTACKS = tuple(REGISTRY)
# Attacks that query only the network's outputs, never its gradient: what they break after
# the gradient attacks gave up hints at gradient masking (`evaluation.cascade`).
GRADIENT_FREE = frozenset({square.SquareConfig.name})


def make(name, eps, **options):
    """The attack `name` at radius `eps`; options it does not take are ignored."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown attack {name!r}. Supported: {', '.join(ATTACKS)}.")
    return REGISTRY[name](eps, **options)
