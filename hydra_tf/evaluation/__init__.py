"""Evaluation: clean accuracy and accuracy under L-inf attacks.

The network always runs in inference mode, and in float32 (a network trained
with mixed precision is evaluated on a float32 copy of its weights). Two kinds
of attack:

- PGD (`attacks.PGDConfig`, 50 steps and 2 random restarts by default): quick;
  an example counts as robust only if it is classified correctly clean and
  after every restart.
- Every other attack of `hydra_tf.objectives.attacks`, and the standard
  AutoAttack cascade, run by `cascade` on the points still robust, resumable.

Both draw their random numbers from seeds keyed by the batch's place in the
evaluation (`cascade.SEED`), so an evaluation gives the same figures whatever
ran before it in the process.
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf
from absl import logging

from hydra_tf.evaluation import cascade
from hydra_tf.models import precision
from hydra_tf.objectives import attacks

DEFAULT_STEPS = 50
DEFAULT_RESTARTS = 2


def default_attack(eps):
    """The trusted evaluation attack at radius `eps`."""
    return attacks.PGDConfig(eps=eps, steps=DEFAULT_STEPS, restarts=DEFAULT_RESTARTS)


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Accuracies of one network on one dataset."""

    clean_acc: float
    robust_acc: float
    num_examples: int
    attack: dict
    seconds: float
    # Robust accuracy after each attack of a cascade (empty for PGD).
    stages: tuple = ()
    # Cascades only: the adversarial point of each example (see `cascade`).
    adversarial: object = dataclasses.field(default=None, repr=False, compare=False)
    # Checks the evaluation failed, one line each (`cascade.masking_warning`).
    warnings: tuple = ()

    def to_json(self):
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.pop("adversarial")
        if not self.stages:
            values.pop("stages")
        else:
            values["stages"] = [stage.to_json() for stage in self.stages]
        if self.warnings:
            values["warnings"] = list(self.warnings)
        else:
            values.pop("warnings")
        return values


def batch_counter(network, attack):
    """A compiled function (x, y, step) -> (clean correct, robust correct) counts.

    `step`: the batch's index (an int64 scalar), which keys its random numbers.
    """

    # reduce_retracing: the last, smaller batch does not trigger a new trace.
    @tf.function(reduce_retracing=True)
    def batch_counts(x, y, step):
        with cascade.attacking(network, step):
            clean, robust = attacks.robust_correct(network, x, y, attack)
        return tf.reduce_sum(tf.cast(clean, tf.int64)), tf.reduce_sum(tf.cast(robust, tf.int64))

    return batch_counts


def _distributed(batch_counts, strategy):
    """`batch_counts` run on every replica of `strategy`, summed (also the batch size)."""

    def counts(x, y, step):
        clean, robust = batch_counts(x, y, step)
        return clean, robust, tf.shape(y, out_type=tf.int64)[0]

    @tf.function
    def run(batch, step):
        per_replica = strategy.run(counts, args=(*batch, step))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica]

    return run


def evaluate(network, dataset, attack, log_every=20, strategy=None, state_path=None):
    """Clean and robust accuracy of `network` on a batched `dataset`.

    Args:
      network: a model mapping images in [0, 1] to logits.
      dataset: a batched `tf.data.Dataset` of (images, labels).
      attack: an `attacks.PGDConfig`, another attack of `attacks.REGISTRY`
        or an `attacks.Cascade` (AutoAttack).
      log_every: log PGD's progress every this many batches.
      strategy: a `tf.distribute.Strategy`; with several replicas each batch
        is split between them (load `network` inside its scope).
      state_path: for attacks other than PGD, the `.npz` file that makes the
        evaluation resumable.

    Returns:
      An `EvalResult`.
    """
    # A mixed-precision network is attacked in float32 (`precision`).
    with (strategy or tf.distribute.get_strategy()).scope():
        network = precision.as_float32(network)
    if not isinstance(attack, attacks.PGDConfig):
        return _evaluate_cascade(network, dataset, attack, strategy, state_path)
    batch_counts = batch_counter(network, attack)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        run = _distributed(batch_counts, strategy)
        dataset = strategy.experimental_distribute_dataset(dataset)
        batch_counts = None
    start = time.time()
    clean_total = robust_total = seen = 0
    for index, batch in enumerate(dataset):
        step = tf.constant(index, tf.int64)
        if batch_counts is None:
            clean, robust, size = run(batch, step)
        else:
            x, y = batch
            clean, robust = batch_counts(x, y, step)
            size = tf.shape(y)[0]
        clean_total += int(clean)
        robust_total += int(robust)
        seen += int(size)
        if log_every and (index + 1) % log_every == 0:
            logging.info(
                "evaluated %d examples: clean %.4f, robust %.4f (%.1fs)",
                seen,
                clean_total / seen,
                robust_total / seen,
                time.time() - start,
            )
    if seen == 0:
        raise ValueError("The evaluation dataset is empty.")
    return EvalResult(
        clean_acc=clean_total / seen,
        robust_acc=robust_total / seen,
        num_examples=seen,
        attack=attack.to_json(),
        seconds=time.time() - start,
    )


def _evaluate_cascade(network, dataset, attack, strategy, state_path):
    pairs = [(x.numpy(), y.numpy()) for x, y in dataset]
    if not pairs:
        raise ValueError("The evaluation dataset is empty.")
    images = np.concatenate([x for x, _ in pairs])
    labels = np.concatenate([y for _, y in pairs])
    result = cascade.run(network, images, labels, attack, state_path=state_path, strategy=strategy)
    warning = cascade.masking_warning(result.stages)
    if warning:
        logging.warning("Evaluation: %s.", warning)
    return EvalResult(
        clean_acc=float(result.clean.mean()),
        robust_acc=float(result.robust.mean()),
        num_examples=len(labels),
        attack=attack.to_json(),
        seconds=result.seconds,
        stages=tuple(result.stages),
        adversarial=result.adversarial,
        warnings=(warning,) if warning else (),
    )
