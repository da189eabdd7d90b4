"""Randomized smoothing: prediction and L2 certification (Cohen et al., 2019).

The smoothed classifier of a base network f is
    g(x) = argmax_c P(f(x + e) = c),   e ~ N(0, sigma^2 I).
`certify` returns g's class at x with an L2 radius within which g provably
does not change (with probability at least 1 - alpha over the sampling), or
abstains; `predict` returns g's class, or abstains when the two most frequent
classes are not significantly different.

Sampling is batched and compiled; noise is drawn with stateless random ops
keyed by (seed, example, draw, chunk), so a result depends only on the
settings and the example's index, not on which examples were certified before.
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf
from absl import logging
from scipy import stats

from hydra_tf import distribute
from hydra_tf.models import layers
from hydra_tf.models import precision

ABSTAIN = -1
# Radii at which certified accuracy is reported (Cohen et al.'s table).
REPORT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class SmoothingConfig:
    """Settings of the smoothed classifier and its certification.

    Attributes:
      sigma: standard deviation of the Gaussian noise.
      n0: samples used to select the class (certify).
      n: samples used to estimate its probability (certify) or to vote (predict).
      alpha: failure probability of the certificate / the test.
      batch: noisy copies evaluated per network call.
      seed: seed of the noise.
    """

    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    batch: int = 1000
    seed: int = 0

    def __post_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0. Received: sigma={self.sigma}")
        if self.n0 < 1 or self.n < 1:
            raise ValueError(f"n0 and n must be >= 1. Received: n0={self.n0}, n={self.n}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1). Received: alpha={self.alpha}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1. Received: batch={self.batch}")

    def to_json(self):
        return dataclasses.asdict(self)


def lower_confidence_bound(successes, trials, alpha):
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"Need 0 <= successes <= trials, trials >= 1; got {successes}/{trials}.")
    if successes == 0:
        return 0.0
    return float(stats.beta.ppf(alpha, successes, trials - successes + 1))


def radius(p_lower, sigma):
    """The certified L2 radius sigma * Phi^-1(p_lower) (0 when p_lower <= 0.5)."""
    if p_lower <= 0.5:
        return 0.0
    return float(sigma * stats.norm.ppf(p_lower))


class Smoother:
    """The smoothed classifier of `network` (logits out, inference mode).

    Args:
      network: a Keras model mapping images to logits.
      num_classes: number of classes.
      config: a `SmoothingConfig`.
      strategy: a `tf.distribute.Strategy` (default: the current one). With
        several replicas, each takes its own chunk of noisy copies and the
        class counts are summed; since a chunk's noise depends only on its
        index, the counts are those of one device.
    """

    def __init__(self, network, num_classes, config, strategy=None):
        self.num_classes = int(num_classes)
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            # A mixed-precision network is certified in float32 (`precision`).
            self.network = precision.as_float32(network)
        self._counts = tf.function(self._group_counts, reduce_retracing=True)

    def _replica_counts(self, x, num, first_chunk, key):
        """Class counts of this replica's chunk (`first_chunk` + replica id) of `num` copies."""
        chunk = first_chunk + distribute.replica_id()
        batch = tf.constant(self.config.batch, tf.int64)
        # The last group of chunks may give some replicas fewer copies, or none.
        size = tf.clip_by_value(num - chunk * batch, 0, batch)
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), key + chunk])
        # A replica without copies still runs one (convolutions reject empty
        # batches here) and counts nothing.
        noise = tf.random.stateless_normal(
            tf.concat([[tf.maximum(size, 1)], tf.shape(x, out_type=tf.int64)], 0),
            seed=seed,
            dtype=x.dtype,
        )
        noisy = x[None] + self.config.sigma * noise
        # Scores are fixed while sampling: select each mask once.
        with layers.masks_fixed(self.network):
            logits = self.network(noisy, training=False)
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        counts = tf.math.bincount(predicted, minlength=self.num_classes, maxlength=self.num_classes)
        return counts * tf.cast(size > 0, counts.dtype)

    def _group_counts(self, x, num, first_chunk, key):
        """Class counts of one chunk per replica, summed over the replicas."""
        per_replica = self.strategy.run(self._replica_counts, args=(x, num, first_chunk, key))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def sample_counts(self, x, num, example, draw):
        """Counts of each class over `num` noisy copies of image `x`.

        The copies come in chunks of `config.batch`; chunk c's noise is keyed
        by (seed, example, draw, c), with `draw` 0 for selection and 1 for
        estimation, so the same call always sees the same noise, on any
        number of replicas.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        key = tf.constant(example * 1_000_003 + draw * 100_003, tf.int64)
        total = tf.constant(num, tf.int64)
        replicas = self.strategy.num_replicas_in_sync
        chunks = -(-num // self.config.batch)
        counts = np.zeros(self.num_classes, np.int64)
        for first in range(0, chunks, replicas):
            counts += self._counts(x, total, tf.constant(first, tf.int64), key).numpy()
        return counts

    def predict(self, x, example=0):
        """g(x), or `ABSTAIN` if the top two classes are not significantly apart.

        A two-sided binomial test of the top two counts over `n` samples at
        level alpha (Cohen et al.'s PREDICT).
        """
        counts = self.sample_counts(x, self.config.n, example, draw=1)
        top2 = np.argsort(counts)[::-1][:2]
        count_a, count_b = int(counts[top2[0]]), int(counts[top2[1]])
        p_value = stats.binomtest(count_a, count_a + count_b, 0.5).pvalue
        return int(top2[0]) if p_value <= self.config.alpha else ABSTAIN

    def certify(self, x, example=0):
        """(class, radius, p_lower) of g at x, or (ABSTAIN, 0, p_lower).

        The class is chosen on `n0` samples; its probability is bounded below
        on `n` fresh samples (Cohen et al.'s CERTIFY).
        """
        selection = self.sample_counts(x, self.config.n0, example, draw=0)
        top = int(np.argmax(selection))
        estimation = self.sample_counts(x, self.config.n, example, draw=1)
        p_lower = lower_confidence_bound(int(estimation[top]), self.config.n, self.config.alpha)
        if p_lower <= 0.5:
            return ABSTAIN, 0.0, p_lower
        return top, radius(p_lower, self.config.sigma), p_lower


def certified_accuracy(records, radii=REPORT_RADII):
    """Fraction of records certified correct at each radius (dict radius -> acc)."""
    if not records:
        raise ValueError("No certification records.")
    result = {}
    for r in radii:
        hits = sum(1 for rec in records if rec["correct"] and rec["radius"] >= r)
        result[float(r)] = hits / len(records)
    return result


def certify_dataset(network, dataset, num_classes, config, limit=None, log_every=10, strategy=None):
    """Certifies each example of an unbatched (image, label) dataset.

    With a `strategy` of several replicas, each example's noisy copies are
    split between them (see `Smoother`).

    Returns:
      A list of per-example dicts: index, label, prediction, radius, p_lower,
      correct, seconds.
    """
    smoother = Smoother(network, num_classes, config, strategy)
    records = []
    start = time.time()
    for index, (x, y) in enumerate(dataset):
        if limit is not None and index >= limit:
            break
        begin = time.time()
        prediction, rad, p_lower = smoother.certify(x, example=index)
        label = int(y)
        records.append(
            {
                "index": index,
                "label": label,
                "prediction": prediction,
                "radius": rad,
                "p_lower": p_lower,
                "correct": prediction == label,
                "seconds": time.time() - begin,
            }
        )
        if log_every and len(records) % log_every == 0:
            accuracy = certified_accuracy(records, (0.0,))[0.0]
            logging.info(
                "certified %d examples: accuracy at radius 0 %.4f (%.1fs)",
                len(records),
                accuracy,
                time.time() - start,
            )
    if not records:
        raise ValueError("The certification dataset is empty.")
    return records


def report(records, config, **extra):
    """A JSON-ready summary: settings, per-radius accuracy, timing, records."""
    seconds = [r["seconds"] for r in records]
    return {
        **extra,
        "smoothing": config.to_json(),
        "num_examples": len(records),
        "certified_accuracy": {f"{r:g}": acc for r, acc in certified_accuracy(records).items()},
        "abstained": sum(1 for r in records if r["prediction"] == ABSTAIN) / len(records),
        "seconds_per_example": sum(seconds) / len(seconds),
        "records": records,
    }


def report_markdown(summary):
    """The certified-accuracy table of a `report` as Markdown."""
    radii = list(summary["certified_accuracy"])
    config = summary["smoothing"]
    title = (
        f"Certified accuracy (L2) of the smoothed classifier, sigma {config['sigma']:g}, "
        f"n0 {config['n0']}, n {config['n']}, alpha {config['alpha']:g}, "
        f"on {summary['num_examples']} test examples "
        f"({summary['seconds_per_example']:.2f} s per example)."
    )
    lines = [
        title,
        "",
        "| radius | " + " | ".join(radii) + " |",
        "|---|" + "---|" * len(radii),
        "| certified accuracy (%) | "
        + " | ".join(f"{100 * summary['certified_accuracy'][r]:.1f}" for r in radii)
        + " |",
        "",
    ]
    return "\n".join(lines)
