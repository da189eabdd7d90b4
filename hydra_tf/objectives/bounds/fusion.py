"""Loss fusion: an upper bound of the cross-entropy itself, by one CROWN pass.

CROWN-IBP bounds the 9 margins z_y - z_j of every example (9 rows walked
back through the network) and trains on CE(-lower bounds). Loss fusion
(as auto_LiRPA does for CROWN-IBP training) bounds the loss directly, with
one row per example:

  CE(z, y) = log(1 + sum_j exp(d_j)),   d_j = z_j - z_y  (j != y).

Each exp(d_j) lies below its chord over IBP's interval [l_j, u_j] of d_j:
exp(d_j) <= exp(u_j) + a_j (d_j - u_j), a_j = (exp(u_j) - exp(l_j)) / (u_j - l_j).
So CE <= log(1 + sum_j exp(u_j) + sum_j a_j (d_j - u_j)), and the only
term that depends on the input, sum_j a_j d_j, is one linear function of the
logits: CROWN bounds it from above in one backward pass. Everything is
shifted by M = max(0, max_j u_j) so that no exponent overflows.

The bound is sound (it is above CE at every point of the box; tested on
sampled points) but it is not the same quantity as CE(-CROWN-IBP lower
bounds): the chord over IBP's looser interval can make it looser, the joint
bound of the sum tighter. It costs a ninth of the margins' backward pass.
"""

import tensorflow as tf

from hydra_tf.objectives.bounds import crown
from hydra_tf.objectives.bounds import specification

# Below this width an interval's chord is replaced by its top (exp(u)).
_MIN_WIDTH = 1e-6


def cross_entropy_upper_bound(network, box, labels, margins, intervals=None):
    """Per-example upper bounds of CE(network(x), label) over every x in `box`.

    Args:
      network: a functional model whose logits come from a dense layer.
      box: `IntervalBounds` of the input (`IntervalBounds.from_linf`).
      labels: (batch,) integer labels.
      margins: `IntervalBounds` (batch, classes - 1) of the margins z_y - z_j
        in the order of `specification.margin_specification` (IBP's, from
        `interval.specification_bounds`).
      intervals: IBP bounds of the layers, shared with the margins' pass
        (`propagation.propagate_layers`); computed if None.

    Returns:
      (batch,) upper bounds of the cross-entropy.
    """
    num_classes = int(network.outputs[0].shape[-1])
    # d_j = z_j - z_y = -margin_j.
    d_lower = -tf.cast(margins.upper, tf.float32)
    d_upper = -tf.cast(margins.lower, tf.float32)
    shift = tf.maximum(tf.reduce_max(d_upper, axis=-1), 0.0)
    top = tf.exp(d_upper - shift[:, None])
    bottom = tf.exp(d_lower - shift[:, None])
    width = d_upper - d_lower
    wide = width > _MIN_WIDTH
    slope = tf.where(wide, (top - bottom) / tf.where(wide, width, 1.0), 0.0)
    # sum_j a_j d_j as a specification row: d_j = -(e_y - e_{c_j}) . z.
    spec = specification.margin_specification(labels, num_classes)
    row = -tf.einsum("bs,bsc->bc", slope, tf.cast(spec, tf.float32))[:, None, :]
    _, upper = crown.backward_bounds(
        network, box, row, mode="crown_ibp", lower=False, intervals=intervals
    )
    total = tf.exp(-shift) + tf.reduce_sum(top - slope * d_upper, axis=-1) + upper[:, 0]
    # The true sum is at least exp(-M); a smaller value is rounding.
    return shift + tf.math.log(tf.maximum(total, tf.exp(-shift)))
