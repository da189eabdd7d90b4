"""Why gradient attacks may fail on a network: dead units, saturated softmax, flat logits.

A gradient attack can report robustness the network does not have when its
input gradients carry no signal (gradient masking). `gradient_health` measures
the usual causes on test examples, in float32 and inference mode:

- dead units: ReLU units (a channel of a convolution, a neuron of a dense
  layer) that are zero on every example, per ReLU layer;
- saturated softmax: examples whose plain cross-entropy input gradient is
  exactly zero in float32 (softmax(z)_y rounds to 1), so a PGD built on it
  does not move (ours rescales the logit gradient, see `attacks.linf_pgd`);
- flat logits: the input-gradient L1 norm of the margin z_y - max_{j!=y} z_j,
  the most an L-inf step of size 1 can change it to first order; eps times
  it, against the margin, says whether a linear step can flip the point.
"""

import keras
import numpy as np
import tensorflow as tf


def _relu_outputs(network):
    """(name, output) of the network's ReLUs, named after the layer that feeds each."""
    outputs = []
    for layer in network.layers:
        if isinstance(layer, keras.layers.ReLU):
            source = layer.input._keras_history.operation.name
            outputs.append((source, layer.output))
        elif getattr(layer, "activation", None) is keras.activations.relu:
            outputs.append((layer.name, layer.output))
    return outputs


def gradient_health(network, images, labels, eps, batch_size=250):
    """Gradient-masking indicators of `network` on (images, labels).

    Returns:
      A dict: "dead_units" {ReLU layer: fraction of units never active},
      "zero_ce_gradient" (fraction of examples whose float32 cross-entropy
      input gradient is exactly zero), "margin_median" and
      "margin_gradient_l1_median" (over correctly classified examples),
      "linear_flip" (fraction of those where eps * gradient L1 >= margin).
    """
    relus = _relu_outputs(network)
    probe = keras.Model(network.inputs, [out for _, out in relus]) if relus else None
    active = None
    zero_grad, margins, grad_l1, correct = [], [], [], []
    for start in range(0, len(images), batch_size):
        x = tf.constant(images[start : start + batch_size], tf.float32)
        y = tf.constant(labels[start : start + batch_size], tf.int64)
        if probe is not None:
            maps = probe(x, training=False)
            maps = maps if isinstance(maps, (list, tuple)) else [maps]
            # A unit is a channel (last axis), active if positive anywhere.
            batch_active = [
                np.any(np.reshape(m.numpy() > 0, (-1, m.shape[-1])), axis=0) for m in maps
            ]
            active = (
                batch_active if active is None else [a | b for a, b in zip(active, batch_active)]
            )
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            logits = tf.cast(network(x, training=False), tf.float32)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            onehot = tf.one_hot(y, tf.shape(logits)[-1]) > 0
            true = tf.reduce_max(tf.where(onehot, logits, -np.inf), axis=-1)
            other = tf.reduce_max(tf.where(onehot, -np.inf, logits), axis=-1)
            margin = true - other
        ce_grad = tape.gradient(ce, x)
        margin_grad = tape.gradient(margin, x)
        del tape
        zero_grad.append(np.all(ce_grad.numpy().reshape(len(y), -1) == 0, axis=1))
        margins.append(margin.numpy())
        grad_l1.append(np.abs(margin_grad.numpy()).reshape(len(y), -1).sum(axis=1))
        correct.append(margin.numpy() > 0)
    zero_grad, margins = np.concatenate(zero_grad), np.concatenate(margins)
    grad_l1, correct = np.concatenate(grad_l1), np.concatenate(correct)
    right = correct if correct.any() else np.ones_like(correct)
    return {
        "dead_units": {name: float(1.0 - a.mean()) for (name, _), a in zip(relus, active or [])},
        "zero_ce_gradient": float(zero_grad.mean()),
        "margin_median": float(np.median(margins[right])),
        "margin_gradient_l1_median": float(np.median(grad_l1[right])),
        "linear_flip": float(np.mean(eps * grad_l1[right] >= margins[right])),
    }
