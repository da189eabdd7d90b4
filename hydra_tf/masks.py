"""The one place where a pruning mask is computed from importance scores.

Every consumer (the score layers, export, sparsity statistics) calls
`topk_mask`, so the forward pass, the exported kernels and the reported
sparsity can never disagree about which weights are kept.
"""

import math

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


def _hard_topk(magnitude, keep_ratio):
    """0/1 mask keeping exactly `kept_count` largest entries of `magnitude`."""
    size = magnitude.shape.num_elements()
    k = kept_count(size, keep_ratio)
    flat = tf.reshape(magnitude, [-1])
    if k == size:
        return tf.ones_like(magnitude)
    # top_k costs grow with k: select whichever side of the split is smaller.
    if k <= size - k:
        _, index = tf.math.top_k(flat, k=k, sorted=False)
        fill, base = 1.0, tf.zeros_like(flat)
    else:
        _, index = tf.math.top_k(-flat, k=size - k, sorted=False)
        fill, base = 0.0, tf.ones_like(flat)
    updates = tf.fill(tf.shape(index), tf.constant(fill, flat.dtype))
    mask = tf.tensor_scatter_nd_update(base, index[:, None], updates)
    return tf.reshape(mask, tf.shape(magnitude))


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
    keep_ratio = validate_keep_ratio(keep_ratio)
    scores = tf.convert_to_tensor(scores)

    @tf.custom_gradient
    def _mask(magnitude):
        def grad(upstream):
            return upstream

        return _hard_topk(magnitude, keep_ratio), grad

    return _mask(tf.abs(scores))


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
