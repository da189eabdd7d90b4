"""The one place where a pruning mask is computed from importance scores.

Every consumer (the score layers, export, sparsity statistics) calls
`topk_mask`, so the forward pass, the exported kernels and the reported
sparsity can never disagree about which weights are kept.
"""

import contextlib
import math
import threading

import tensorflow as tf


def validate_keep_ratio(keep_ratio):
    """Returns `keep_ratio` as a float, or raises if it is outside (0, 1]."""
    try:
        value = float(keep_ratio)
    except (TypeError, ValueError):
        raise ValueError(
            f"keep_ratio must be a number in (0, 1]. Received: keep_ratio={keep_ratio!r}"
        ) from None
    if not 0.0 < value <= 1.0 or math.isnan(value):
        raise ValueError(
            f"keep_ratio must be in (0, 1] (the fraction of weights kept). "
            f"Received: keep_ratio={keep_ratio!r}"
        )
    return value


def kept_count(size, keep_ratio):
    """Number of weights kept in a layer of `size` weights: round(k * size), >= 1."""
    keep_ratio = validate_keep_ratio(keep_ratio)
    if size <= 0:
        raise ValueError(f"size must be positive. Received: size={size}")
    return max(1, min(size, math.floor(keep_ratio * size + 0.5)))


# Below this kept fraction top_k (cost ~ n log k) beats the radix selection
# (cost ~ n, about 12 ms for 400k weights on 2 CPU cores); measured crossover.
_TOPK_BELOW = 1 / 32
# Radix selection works on the magnitude's float bits: for non-negative floats
# the int32 bit pattern orders like the value. Two passes of 16 bits each.
_HIGH_BINS = 1 << 15  # sign bit is 0
_LOW_BINS = 1 << 16


def hard_topk(scores, keep_ratio):
    """0/1 mask keeping exactly `kept_count` largest |scores| (no gradient).

    Among equal magnitudes at the threshold, lower positions (row-major) are
    kept first. This is the value of `topk_mask`; use it where no gradient to
    the scores is wanted (attacks, evaluation, caches).
    """
    keep_ratio = validate_keep_ratio(keep_ratio)
    magnitude = tf.abs(tf.stop_gradient(tf.convert_to_tensor(scores)))
    size = magnitude.shape.num_elements()
    k = kept_count(size, keep_ratio)
    if k == size:
        return tf.ones_like(magnitude)
    flat = tf.reshape(magnitude, [-1])
    if k < _TOPK_BELOW * size:
        # top_k keeps the lower index among equal values, like the radix path.
        _, index = tf.math.top_k(flat, k=k, sorted=False)
        mask = tf.scatter_nd(index[:, None], tf.ones([k], flat.dtype), [size])
    else:
        mask = _radix_topk(flat, k)
    return tf.reshape(mask, tf.shape(magnitude))


def _last_at_least(counts_from_top, k):
    """Largest bin index whose count of entries in it or above is >= k."""
    return tf.reduce_sum(tf.cast(counts_from_top >= k, tf.int32)) - 1


def _histogram(values, bins, weights=None):
    """Counts (or weight sums) of int32 `values` in [0, bins), as int32.

    The raw op with a constant size, unlike `tf.math.bincount`, compiles
    under XLA, and it is faster than a segment sum.
    """
    if weights is None:
        weights = tf.constant([], tf.int32)
    return tf.raw_ops.DenseBincount(
        input=values, size=tf.constant(bins, tf.int32), weights=weights, binary_output=False
    )


def _radix_topk(flat, k):
    """Top-k mask of non-negative `flat` by a two-pass radix select on its bits."""
    bits = tf.bitcast(flat, tf.int32)
    high = tf.bitwise.right_shift(bits, 16)
    counts = _histogram(high, _HIGH_BINS)
    above = tf.cumsum(counts, reverse=True)
    top_high = _last_at_least(above, k)
    needed = k - (above[top_high] - counts[top_high])
    in_bin = tf.cast(tf.equal(high, top_high), tf.int32)
    low = tf.bitwise.bitwise_and(bits, 0xFFFF)
    low_above = tf.cumsum(_histogram(low, _LOW_BINS, in_bin), reverse=True)
    threshold = tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(top_high, 16), _last_at_least(low_above, needed)
    )
    greater = bits > threshold
    equal = tf.equal(bits, threshold)
    ties_kept = k - tf.reduce_sum(tf.cast(greater, tf.int32))
    kept = tf.logical_or(
        greater, tf.logical_and(equal, tf.cumsum(tf.cast(equal, tf.int32)) <= ties_kept)
    )
    return tf.cast(kept, flat.dtype)


def straight_through(scores, mask):
    """Returns `mask` with HYDRA's straight-through gradient to `scores`.

    The value is `mask` unchanged; the gradient with respect to `scores` is the
    incoming gradient times sign(scores), i.e. the mask is treated as the
    identity of |scores|. Splitting this from `hard_topk` lets a training step
    select the top-k once and attach the gradient where the loss is computed.
    """
    scores = tf.convert_to_tensor(scores)

    @tf.custom_gradient
    def _attach(values):
        def grad(upstream):
            return upstream * tf.sign(values)

        return tf.identity(mask), grad

    return _attach(scores)


def topk_mask(scores, keep_ratio):
    """Binary mask of the top-k |scores|, with a straight-through gradient.

    The forward value is exactly 0 or 1, keeping `kept_count(scores.size,
    keep_ratio)` entries (ties broken by position). The gradient with respect to
    `scores` is the incoming gradient times sign(scores): the mask is treated as
    the identity of |scores| (HYDRA's straight-through estimator).

    Args:
      scores: float tensor of importance scores, any shape (fully defined).
      keep_ratio: fraction of entries kept, in (0, 1].

    Returns:
      A tensor like `scores` holding 0.0 and 1.0.
    """
    return straight_through(scores, hard_topk(scores, keep_ratio))


# Masks given to the layers for the duration of a `reusing` block, per thread:
# tf.distribute runs each replica's step in its own thread, with its own masks.
_REUSED = threading.local()


@contextlib.contextmanager
def reusing(masks_by_layer):
    """Makes score layers use precomputed masks instead of computing their own.

    A PGD training step runs the network ~11 times with the same scores; the
    step computes each mask once and wraps the attack and the loss in this
    block. Blocks nest; the innermost one wins for the layers it names.

    Args:
      masks_by_layer: dict from a score layer to the mask tensor it must use
        (a `topk_mask`-like value, with or without a gradient to the scores).
    """
    previous = getattr(_REUSED, "masks", {})
    current = dict(previous)
    current.update({id(layer): mask for layer, mask in masks_by_layer.items()})
    _REUSED.masks = current
    try:
        yield
    finally:
        _REUSED.masks = previous


def reused_mask(layer):
    """The mask a `reusing` block gives `layer`, or None outside such a block."""
    return getattr(_REUSED, "masks", {}).get(id(layer))


def current_mask(layer):
    """The mask `layer` computes with: the one a `reusing` block gives it, else `layer.mask()`."""
    mask = reused_mask(layer)
    return layer.mask() if mask is None else mask


def sparsity(tensors):
    """Fraction of exactly-zero entries over a list of tensors or arrays."""
    zeros = 0
    total = 0
    for t in tensors:
        t = tf.convert_to_tensor(t)
        zeros += int(tf.reduce_sum(tf.cast(tf.equal(t, 0), tf.int64)))
        total += t.shape.num_elements()
    if total == 0:
        raise ValueError("sparsity() needs at least one non-empty tensor.")
    return zeros / total
