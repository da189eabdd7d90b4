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
- hidden pixels: input coordinates whose margin gradient is exactly zero at
  the clean point but not at a random corner of the eps-ball. A ReLU that is
  off at the clean input and switches on within eps (a first-layer threshold
  below eps) hides them from every attack that starts near the clean point.
  It says where the gradient attacks are blind, not that the network breaks
  there: a dense TRADES network on Fashion-MNIST hides a third of its pixels
  (every first-layer bias is negative, so a zero background passes no
  gradient) and Square breaks 0.15% of its points; the 99% finetunes that
  Square breaks by 8-40 points hide about half (results/adversarial/README.md).
"""

import keras
import numpy as np
import tensorflow as tf

from hydra_tf.objectives.attacks import square


def relu_probe(network):
    """(names, model): the network's ReLUs, named after the layer feeding each, and a
    model mapping the network's input to their outputs (None if it has no ReLU)."""
    names, outputs = [], []
    for layer in network.layers:
        if isinstance(layer, keras.layers.ReLU):
            names.append(layer.input._keras_history.operation.name)
            outputs.append(layer.output)
        elif getattr(layer, "activation", None) is keras.activations.relu:
            names.append(layer.name)
            outputs.append(layer.output)
    return names, keras.Model(network.inputs, outputs) if outputs else None


def _relu_maps(probe, x):
    maps = probe(x, training=False)
    return [m.numpy() > 0 for m in (maps if isinstance(maps, (list, tuple)) else [maps])]


def active_fraction(network, images):
    """Per example, the fraction of the network's ReLU units that are active."""
    _, probe = relu_probe(network)
    maps = _relu_maps(probe, tf.constant(images, tf.float32))
    return np.concatenate([np.reshape(m, (len(images), -1)) for m in maps], axis=1).mean(axis=1)


def _input_gradients(network, x, y, with_ce=False):
    """The margin z_y - max_{j!=y} z_j per example, its input gradient and (with_ce)
    the cross-entropy's input gradient, both flattened per example (float32)."""
    x = tf.constant(x, tf.float32)
    y = tf.constant(y, tf.int64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        logits = tf.cast(network(x, training=False), tf.float32)
        margin, _ = square.margin_and_wrong(logits, tf.cast(y, tf.int32))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits) if with_ce else None
    flat = lambda g: g.numpy().reshape(len(y), -1)
    margin_grad = flat(tape.gradient(margin, x))
    ce_grad = flat(tape.gradient(ce, x)) if with_ce else None
    del tape
    return margin.numpy(), margin_grad, ce_grad


def margins_and_gradients(network, x, y):
    """Per example: the margin z_y - max_{j!=y} z_j, the L1 norm of its input gradient,
    and whether the float32 cross-entropy input gradient is exactly zero."""
    margin, margin_grad, ce_grad = _input_gradients(network, x, y, with_ce=True)
    return margin, np.abs(margin_grad).sum(axis=1), np.all(ce_grad == 0, axis=1)


def hidden_pixels(network, x, y, eps, draws=4, seed=0):
    """Per example, the fraction of input coordinates whose margin gradient is
    exactly zero at x but nonzero at one of `draws` random corners of the
    eps-ball around x (clipped to [0, 1])."""
    blind = _input_gradients(network, x, y)[1] == 0
    seen = np.zeros_like(blind)
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        corner = np.clip(x + eps * rng.choice([-1.0, 1.0], size=x.shape), 0, 1)
        seen |= _input_gradients(network, corner.astype(np.float32), y)[1] != 0
    return np.mean(blind & seen, axis=1)


def gradient_health(network, images, labels, eps, batch_size=250):
    """Gradient-masking indicators of `network` on (images, labels).

    Returns:
      A dict: "dead_units" {ReLU layer: fraction of units never active},
      "zero_ce_gradient" (fraction of examples whose float32 cross-entropy
      input gradient is exactly zero), "margin_median" and
      "margin_gradient_l1_median" (over correctly classified examples),
      "linear_flip" (fraction of those where eps * gradient L1 >= margin),
      "hidden_pixels_median" (`hidden_pixels`, over the correct examples).
    """
    names, probe = relu_probe(network)
    active = None
    zero_grad, margins, grad_l1, hidden = [], [], [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        if probe is not None:
            # A unit is a channel (last axis), active if positive anywhere.
            batch_active = [
                np.any(np.reshape(m, (-1, m.shape[-1])), axis=0)
                for m in _relu_maps(probe, tf.constant(x, tf.float32))
            ]
            active = (
                batch_active if active is None else [a | b for a, b in zip(active, batch_active)]
            )
        margin, l1, zero = margins_and_gradients(network, x, y)
        margins.append(margin)
        grad_l1.append(l1)
        zero_grad.append(zero)
        hidden.append(hidden_pixels(network, x, y, eps, seed=start))
    zero_grad, margins = np.concatenate(zero_grad), np.concatenate(margins)
    grad_l1, hidden, correct = np.concatenate(grad_l1), np.concatenate(hidden), margins > 0
    right = correct if correct.any() else np.ones_like(correct)
    return {
        "dead_units": {name: float(1.0 - a.mean()) for name, a in zip(names, active or [])},
        "zero_ce_gradient": float(zero_grad.mean()),
        "margin_median": float(np.median(margins[right])),
        "margin_gradient_l1_median": float(np.median(grad_l1[right])),
        "linear_flip": float(np.mean(eps * grad_l1[right] >= margins[right])),
        "hidden_pixels_median": float(np.median(hidden[right])),
    }
