"""Verification specifications: which linear functions of the logits must stay positive.

A specification is a matrix C of shape (batch, n_spec, n_classes), one per
example; a network is verified on an input box when every row of C·z is
positive for every logit vector z the box can produce. The margin
specification of label y has the rows e_y - e_j for every class j != y: all
positive means the label's logit beats every other one.

Bounds of C·z are tighter when C is folded into the network's last dense
layer (one linear layer W·C^T, b·C^T per example) than when C·z is bounded
from bounds of z: interval arithmetic loses the correlations between the
logits. `final_dense` finds that layer, `fold` folds C into it.
"""

import keras
import tensorflow as tf

from hydra_tf.models import kinds
from hydra_tf.objectives.bounds import propagation


def margin_specification(labels, num_classes):
    """The margin specification of `labels`: rows e_y - e_j for every class j != y.

    Args:
      labels: (batch,) int class labels.
      num_classes: number of logits.

    Returns:
      (batch, num_classes - 1, num_classes) float32; row j of example i is
      e_y - e_j for the j-th class other than y (in increasing class order).
    """
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2. Received: num_classes={num_classes}")
    true = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), num_classes, dtype=tf.float32)
    others = tf.one_hot(other_classes(labels, num_classes), num_classes, dtype=tf.float32)
    return true[:, None, :] - others


def other_classes(labels, num_classes):
    """(batch, num_classes - 1) int32: the classes other than each label, in increasing order.

    Static shapes (no boolean masks), so that steps using it compile with XLA.
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    j = tf.range(int(num_classes) - 1)[None, :]
    return j + tf.cast(j >= labels[:, None], tf.int32)


def fold(spec, kernel, bias):
    """C folded into a dense layer z = x·W + b: per-example weights and offsets of C·z.

    Args:
      spec: (batch, n_spec, n_classes) specification C.
      kernel: (n_inputs, n_classes) dense kernel W (the masked kernel of a score layer).
      bias: (n_classes,) bias b, or None.

    Returns:
      (weights, offsets): (batch, n_spec, n_inputs) and (batch, n_spec), with
      C·z = weights·x + offsets for every x.
    """
    spec = tf.cast(spec, tf.float32)
    weights = tf.einsum("bsj,ij->bsi", spec, tf.cast(kernel, tf.float32))
    if bias is None:
        offsets = tf.zeros(tf.shape(spec)[:2], tf.float32)
    else:
        offsets = tf.linalg.matvec(spec, tf.cast(bias, tf.float32))
    return weights, offsets


def final_dense(network):
    """The dense layer that computes `network`'s logits.

    Only identity layers (the float32 cast that ends a mixed-precision
    network) may follow it.

    Raises:
      UnsupportedLayerError: the logits do not come from a dense layer
        without activation; the layer is named.
    """
    layer = propagation.producer(network.outputs[0])
    while kinds.kind(layer) == "identity" and not isinstance(layer, keras.layers.InputLayer):
        layer = propagation.producer(layer.input)
    activation = getattr(layer, "activation", None)
    if kinds.kind(layer) != "dense" or (
        activation is not None and keras.activations.serialize(activation) != "linear"
    ):
        raise propagation.UnsupportedLayerError(
            f"A specification is folded into the network's last dense layer; the logits of "
            f"{network.name!r} come from layer {layer.name!r} ({type(layer).__name__}), "
            f"not a dense layer without activation."
        )
    return layer


def verified(lower_bounds):
    """Whether every specification row is proven positive: (batch,) bool.

    Args:
      lower_bounds: (batch, n_spec) lower bounds of C·z.
    """
    return tf.reduce_all(lower_bounds > 0, axis=-1)
