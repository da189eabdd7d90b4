"""Evaluation: clean accuracy and accuracy under a strong L-inf PGD attack.

The network always runs in inference mode, and in float32 (a network trained
with mixed precision is evaluated on a float32 copy of its weights). The
default attack (50 steps, 2 random restarts) is strong enough to trust for
the models trained here; an example counts as robust only if it is
classified correctly clean and after every restart.
"""

import dataclasses
import time

import tensorflow as tf
from absl import logging

from hydra_tf.models import layers
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

    def to_json(self):
        return dataclasses.asdict(self)


def batch_counter(network, attack):
    """A compiled function (x, y) -> (clean correct, robust correct) counts."""

    # reduce_retracing: the last, smaller batch does not trigger a new trace.
    @tf.function(reduce_retracing=True)
    def batch_counts(x, y):
        # Scores do not change during the attack: select each mask once.
        with layers.masks_fixed(network):
            clean, robust = attacks.robust_correct(network, x, y, attack)
        return tf.reduce_sum(tf.cast(clean, tf.int64)), tf.reduce_sum(tf.cast(robust, tf.int64))

    return batch_counts


def _distributed(batch_counts, strategy):
    """`batch_counts` run on every replica of `strategy`, summed (also the batch size)."""

    def counts(x, y):
        clean, robust = batch_counts(x, y)
        return clean, robust, tf.shape(y, out_type=tf.int64)[0]

    @tf.function
    def run(batch):
        per_replica = strategy.run(counts, args=batch)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica]

    return run


def evaluate(network, dataset, attack, log_every=20, strategy=None):
    """Clean and PGD accuracy of `network` on a batched `dataset`.

    Args:
      network: a model mapping images in [0, 1] to logits.
      dataset: a batched `tf.data.Dataset` of (images, labels).
      attack: an `attacks.PGDConfig`.
      log_every: log progress every this many batches.
      strategy: a `tf.distribute.Strategy`; with several replicas each batch
        is split between them (load `network` inside its scope).

    Returns:
      An `EvalResult`.
    """
    # A mixed-precision network is attacked in float32 (`precision`).
    with (strategy or tf.distribute.get_strategy()).scope():
        network = precision.as_float32(network)
    batch_counts = batch_counter(network, attack)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        run = _distributed(batch_counts, strategy)
        dataset = strategy.experimental_distribute_dataset(dataset)
        batch_counts = None
    start = time.time()
    clean_total = robust_total = seen = 0
    for index, batch in enumerate(dataset):
        if batch_counts is None:
            clean, robust, size = run(batch)
        else:
            x, y = batch
            clean, robust = batch_counts(x, y)
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
