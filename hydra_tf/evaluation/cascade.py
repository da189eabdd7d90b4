"""Robust accuracy under a cascade of attacks (AutoAttack), resumable.

Each attack of the cascade runs only on the points every earlier attack left
robust (Croce & Hein, 2020): a point counts as robust when it is classified
correctly clean and at the point each attack returned. The predictions are
made here, on the returned points, so an attack cannot claim a success it did
not find; every returned point is checked to lie inside the eps-ball and
[0, 1] (`AttackOutOfBoundsError` otherwise).

A long evaluation keeps its state in one `.npz` file (which points are still
robust, the adversarial points, where each attack stopped) written at most
every `save_every` seconds and after each attack; run again with the same
file, it resumes where it stopped. A state written for other settings (other
attack, other examples) is refused with a clear error.

The attacks' random numbers (starts, restarts, Square's windows) are keyed by
`SEED`, the attack's place in the cascade and the batch's place in it
(`batch_seed`), not drawn from the process's random state: a resumed
evaluation attacks every batch exactly as an uninterrupted one, and two runs
of an evaluation agree point for point.

AutoAttack's own check ("Square Attack improves the robustness evaluation" in
Croce & Hein's flags documentation) is `masking_warning`: a gradient-free
attack that breaks more than `MASKING_THRESHOLD` of the examples after the
gradient attacks left them robust hints that the gradients mislead (gradient
masking), so what the gradient attacks leave overstates robustness.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from hydra_tf import distribute
from hydra_tf.models import layers
from hydra_tf.objectives import attacks

# Largest allowed distance outside the eps-ball or [0, 1] (float32 rounding).
TOLERANCE = 1e-5
# AutoAttack's threshold for its Square check: 0.2% of the examples.
MASKING_THRESHOLD = 0.002
# The seed of the attacks' random numbers (`batch_seed`).
SEED = 0


class AttackOutOfBoundsError(RuntimeError):
    """An attack returned a point outside the eps-ball or outside [0, 1]."""


class StateMismatchError(ValueError):
    """A saved cascade state belongs to other settings."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """Robust accuracy after one attack of the cascade, and its wall time
    (summed over resumed runs)."""

    attack: str
    robust_acc: float
    attacked: int
    broken: int
    seconds: float

    def to_json(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CascadeResult:
    """What a cascade found on a set of examples.

    Attributes:
      clean: whether each example is classified correctly clean.
      robust: whether each example survived every attack.
      adversarial: per example, the adversarial point that broke it, else the
        first attack's best point (the clean image if it was misclassified).
      stages: a `Stage` per attack, in order.
      seconds: wall time, summed over resumed runs.
    """

    clean: np.ndarray
    robust: np.ndarray
    adversarial: np.ndarray
    stages: list
    seconds: float


def gradient_free_gain(stages):
    """The robust accuracy gradient-free attacks took after a gradient attack had run.

    Args:
      stages: the cascade's stages in order, `Stage`s or their `to_json()`.

    Returns:
      The drop in robust accuracy over the gradient-free stages (Square) that
      come after at least one gradient stage; 0.0 when there are none.
    """
    gain, before, gradient_ran = 0.0, None, False
    for stage in stages:
        stage = stage.to_json() if isinstance(stage, Stage) else stage
        if stage["attack"] not in attacks.GRADIENT_FREE:
            gradient_ran = True
        elif gradient_ran:
            gain += before - stage["robust_acc"]
        before = stage["robust_acc"]
    return gain


def fails_square_check(gain):
    """Whether a `gradient_free_gain` is over AutoAttack's threshold."""
    return gain > MASKING_THRESHOLD + 1e-9  # accuracies are ratios of counts: float rounding


def masking_warning(stages):
    """AutoAttack's Square check as one line, or None when the cascade passes it."""
    stages = [s.to_json() if isinstance(s, Stage) else s for s in stages]
    gain = gradient_free_gain(stages)
    if not fails_square_check(gain):
        return None
    names = "/".join(
        dict.fromkeys(s["attack"] for s in stages if s["attack"] in attacks.GRADIENT_FREE)
    )
    return (
        f"{names} broke {100 * gain:.2f}% of the examples after the gradient "
        f"attacks left them robust (AutoAttack's check: more than "
        f"{100 * MASKING_THRESHOLD:g}% hints at gradient masking; the gradient attacks' "
        "robust accuracy overstates robustness)"
    )


def _attacks(attack):
    return tuple(getattr(attack, "attacks", (attack,)))


def _key(attack, labels, images):
    digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes())
    digest.update(np.ascontiguousarray(images[:, :4]).tobytes())
    return json.dumps({"attack": attack.to_json(), "n": len(labels), "data": digest.hexdigest()})


def _load_state(path, key):
    try:
        with np.load(path, allow_pickle=False) as saved:
            state = {name: saved[name] for name in saved.files}
    except (OSError, ValueError) as error:
        raise StateMismatchError(
            f"Cannot read the attack state {path} ({error}); delete it to start again."
        ) from None
    if str(state["key"]) != key:
        raise StateMismatchError(
            f"{path} holds an evaluation with other settings (attack or examples); delete it or "
            "use another directory."
        )
    return state


def attacks_done(path):
    """How many attacks a saved cascade state (`state_path`) has finished; None if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return int(saved["stage"])
    except (OSError, ValueError, KeyError):
        return None


def _save_state(path, state):
    tmp = path + ".tmp.npz"
    np.savez(tmp, **state)
    os.replace(tmp, path)


def batch_seed(stage, offset):
    """The step number (`distribute.step_randomness`) of the batch that starts at
    `offset` of attack `stage`'s points: where it is, not when it runs."""
    return tf.constant(stage * 2**24 + offset, tf.int64)


@contextlib.contextmanager
def attacking(network, step):
    """How a batch is attacked (inside a traced function): each mask selected
    once (scores do not change during the attack), random numbers keyed by
    `SEED` and `step`, the batch's place in the evaluation."""
    with layers.masks_fixed(network), distribute.step_randomness(SEED, step):
        yield


def _compiled(network, attack):
    @tf.function(reduce_retracing=True)
    def perturb(x, y, step):
        with attacking(network, step):
            x_adv = attack.perturb(network, x, y)
            predicted = tf.argmax(network(x_adv, training=False), axis=-1)
        return x_adv, predicted

    return perturb


def _distributed(perturb, strategy):
    """`perturb` with each replica attacking its share of the batch."""

    def replica(x, y, index, step):
        # Each replica draws its own numbers (`distribute.replica_id` is in the seed).
        x_adv, predicted = perturb(x, y, step)
        return x_adv, predicted, index

    @tf.function
    def run(batch, step):
        per_replica = strategy.run(replica, args=(*batch, step))
        return [strategy.gather(value, axis=0) for value in per_replica]

    def call(x, y, step):
        index = np.arange(len(y))
        dataset = tf.data.Dataset.from_tensor_slices((x, y, index)).batch(len(y))
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
        x_adv, predicted, order = (v.numpy() for v in run(batch, step))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return x_adv[inverse], predicted[inverse]

    return call


def _predict(network, images, batch_size):
    @tf.function(reduce_retracing=True)
    def predict(x):
        return tf.argmax(network(x, training=False), axis=-1)

    return np.concatenate(
        [
            predict(tf.constant(images[i : i + batch_size])).numpy()
            for i in range(0, len(images), batch_size)
        ]
    )


def run(
    network,
    images,
    labels,
    attack,
    batch_size=500,
    state_path=None,
    strategy=None,
    save_every=60.0,
    log_every=30.0,
):
    """Runs (or resumes) `attack` on every example; returns a `CascadeResult`.

    Args:
      network: maps images in [0, 1] to logits (run in inference mode).
      images, labels: numpy arrays of all the examples.
      attack: an attack of `hydra_tf.objectives.attacks` or an
        `attacks.Cascade` of them.
      batch_size: examples per attack call (split between replicas). Larger
        batches pay each step's fixed cost fewer times (Square's 5000
        queries, APGD's 100 steps per target): 500 was 10% faster than 250
        on the default pipeline's networks.
      state_path: `.npz` file that makes the evaluation resumable (None: not).
      strategy: a `tf.distribute.Strategy`; with several replicas each attacks
        its share of a batch.
      save_every, log_every: seconds between state saves and progress lines.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    steps = _attacks(attack)
    eps = steps[0].eps
    key = _key(attack, labels, images)
    if state_path and os.path.exists(state_path):
        state = _load_state(state_path, key)
        logging.info(
            "Resuming the attack from %s (%d of its %d attacks done).",
            state_path,
            int(state["stage"]),
            len(steps),
        )
    else:
        clean = _predict(network, images, batch_size) == labels
        state = {
            "key": np.array(key),
            "clean": clean,
            "robust": clean.copy(),
            "adversarial": images.copy(),
            "stage": np.array(0),
            # The points the current attack runs on, and how many it has done.
            "targets": np.flatnonzero(clean),
            "done": np.array(0),
            "stages": np.array("[]"),
            "seconds": np.array(0.0),
            # Spent on the current attack by the runs this one resumes.
            "stage_seconds": np.array(0.0),
        }
    stages = json.loads(str(state["stages"]))
    earlier = float(state["seconds"])  # spent by the runs this one resumes
    start = last_save = last_log = time.time()
    elapsed = lambda: earlier + time.time() - start
    while int(state["stage"]) < len(steps):
        current = steps[int(state["stage"])]
        perturb = _compiled(network, current)
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            perturb = _distributed(perturb, strategy)
        targets = state["targets"]
        # Back-dated by what the resumed runs spent on this attack (states saved
        # before that was kept lack it: their resumed attack counts this run only).
        stage_start = time.time() - float(state.get("stage_seconds", 0.0))
        while int(state["done"]) < len(targets):
            done = int(state["done"])
            index = targets[done : done + batch_size]
            x, y = images[index], labels[index]
            step = batch_seed(int(state["stage"]), done)
            x_adv, predicted = perturb(tf.constant(x), tf.constant(y), step)
            x_adv, predicted = np.asarray(x_adv), np.asarray(predicted)
            _check_bounds(x_adv, x, eps, current.name)
            broken = predicted != y
            state["robust"][index[broken]] = False
            keep = broken if stages else np.ones_like(broken)
            state["adversarial"][index[keep]] = x_adv[keep]
            state["done"] = np.array(done + len(index))
            now = time.time()
            if log_every and now - last_log >= log_every:
                last_log = now
                logging.info(
                    "%s: %d of %d points attacked, robust accuracy %.4f (%.0fs)",
                    current.name,
                    int(state["done"]),
                    len(targets),
                    state["robust"].mean(),
                    elapsed(),
                )
            if state_path and now - last_save >= save_every:
                last_save = now
                state["stage_seconds"] = np.array(now - stage_start)
                _save(state_path, state, stages, elapsed())
        robust = state["robust"]
        stages.append(
            Stage(
                attack=current.name,
                robust_acc=float(robust.mean()),
                attacked=len(targets),
                broken=int(len(targets) - robust[targets].sum()),
                seconds=time.time() - stage_start,
            ).to_json()
        )
        logging.info(
            "%s: robust accuracy %.4f after it (%d of %d attacked points broken, %.1fs)",
            current.name,
            robust.mean(),
            stages[-1]["broken"],
            len(targets),
            stages[-1]["seconds"],
        )
        state.update(
            stage=np.array(int(state["stage"]) + 1),
            targets=np.flatnonzero(robust),
            done=np.array(0),
            stage_seconds=np.array(0.0),
        )
        if state_path:
            _save(state_path, state, stages, elapsed())
    return CascadeResult(
        clean=state["clean"],
        robust=state["robust"],
        adversarial=state["adversarial"],
        stages=[Stage(**s) for s in stages],
        seconds=elapsed(),
    )


def _save(path, state, stages, seconds):
    state["stages"] = np.array(json.dumps(stages))
    state["seconds"] = np.array(seconds)
    _save_state(path, state)


def _check_bounds(x_adv, x, eps, name):
    outside = max(
        float(np.max(np.abs(x_adv - x))) - eps,
        float(-np.min(x_adv)),
        float(np.max(x_adv)) - 1.0,
        0.0,
    )
    if outside > TOLERANCE or not np.all(np.isfinite(x_adv)):
        raise AttackOutOfBoundsError(
            f"Attack {name} returned points {outside:.2e} outside the eps-ball or [0, 1] "
            f"(eps {eps:g})."
        )
