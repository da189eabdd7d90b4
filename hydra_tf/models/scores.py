"""Initialisation of importance scores.

HYDRA starts the prune phase from scores proportional to the trained weight
magnitude, scaled like a He-uniform init so that the scores' optimisation
behaves like that of freshly initialised weights:

    score = sqrt(6 / fan_in) * w / max|w|

Channel gates (structured pruning) start from the L1 norm of each filter of
the layer they gate, scaled the same way. For training from scratch the
`score_initializer` (any Keras initializer; `RANDOM_INITS` lists the usual
ones) is used instead.
"""

import math

import numpy as np

from hydra_tf.models import layers as score_layers

# Random score initialisers for training a sub-network from scratch.
RANDOM_INITS = ("he_uniform", "he_normal", "glorot_uniform", "glorot_normal")


def scaled_values(kernel, fan_in):
    """Scaled-magnitude scores for one kernel (a numpy array)."""
    kernel = np.asarray(kernel, dtype=np.float32)
    peak = float(np.max(np.abs(kernel)))
    if peak == 0.0 or not math.isfinite(peak):
        raise ValueError(
            "Cannot derive scores from a kernel whose largest magnitude is "
            f"{peak}: the source weights are all zero or not finite."
        )
    return (math.sqrt(6.0 / fan_in) * kernel / peak).astype(np.float32)


def channel_norms(kernel):
    """L1 norm of each output channel of a conv / dense kernel (its last axis)."""
    kernel = np.asarray(kernel, dtype=np.float32)
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def scaled_init(model):
    """Sets every score layer's and channel gate's scores from the trained weights.

    A score layer's scores are its kernel's scaled magnitude; a channel
    gate's are the scaled L1 norms of its source layer's filters (the
    measure of Li et al.'s filter pruning, so that finetuning from these
    scores is that baseline): sqrt(6 / fan_in) * norm / max(norm).

    Args:
      model: a model containing `ScoredConv2D` / `ScoredDense` layers or
        `ChannelGate`s.

    Returns:
      The number of layers initialised.

    Raises:
      ValueError: if the model has no score layers or gates, or a gate's
        source is not a conv / dense layer of the model.
    """
    layers = score_layers.scored_layers(model)
    gates = score_layers.channel_gates(model)
    if not layers and not gates:
        raise ValueError(
            f"Model {model.name!r} has no score layers or channel gates to initialise."
        )
    for layer in layers:
        layer.score.assign(scaled_values(layer.kernel.numpy(), layer.fan_in))
    for gate in gates:
        source = gate_source(model, gate)
        kernel = source.kernel.numpy()
        fan_in = kernel.size // kernel.shape[-1]
        gate.score.assign(scaled_values(channel_norms(kernel), fan_in))
    return len(layers) + len(gates)


def gate_source(model, gate):
    """The conv / dense layer of `model` whose channels `gate` scores."""
    found = [layer for layer in score_layers.walk(model) if layer.name == gate.source]
    source = found[0] if found else None
    if source is None or getattr(source, "kernel", None) is None:
        raise ValueError(
            f"Channel gate {gate.name!r} scores layer {gate.source!r}, which is not a conv / "
            f"dense layer of {model.name!r}."
        )
    if tuple(source.kernel.shape[-1:]) != tuple(gate.score.shape):
        raise ValueError(
            f"Channel gate {gate.name!r} has {gate.score.shape[0]} scores but its source "
            f"{source.name!r} has {source.kernel.shape[-1]} output channels."
        )
    return source
