"""Evaluation: clean accuracy and accuracy under a strong L-inf PGD attack.

The network always runs in inference mode. The default attack (50 steps, 2
random restarts) is strong enough to trust for the models trained here; an
example counts as robust only if it is classified correctly clean and after
every restart.
"""

import dataclasses
import time

import tensorflow as tf
from absl import logging

from hydra_tf import attacks
from hydra_tf import layers

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


def evaluate(network, dataset, attack, log_every=20):
    """Clean and PGD accuracy of `network` on a batched `dataset`.

    Args:
      network: a model mapping images in [0, 1] to logits.
      dataset: a batched `tf.data.Dataset` of (images, labels).
      attack: an `attacks.PGDConfig`.
      log_every: log progress every this many batches.

    Returns:
      An `EvalResult`.
    """

    batch_counts = batch_counter(network, attack)
    start = time.time()
    clean_total = robust_total = seen = 0
    for index, (x, y) in enumerate(dataset):
        clean, robust = batch_counts(x, y)
        clean_total += int(clean)
        robust_total += int(robust)
        seen += int(tf.shape(y)[0])
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
