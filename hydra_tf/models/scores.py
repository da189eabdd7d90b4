"""Initialisation of importance scores.

HYDRA starts the prune phase from scores proportional to the trained weight
magnitude, scaled like a He-uniform init so that the scores' optimisation
behaves like that of freshly initialised weights:

    score = sqrt(6 / fan_in) * w / max|w|

For training from scratch the score layers' `score_initializer` (any Keras
initializer; `RANDOM_INITS` lists the usual ones) is used instead.
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


def scaled_init(model):
    """Sets every score layer's scores from its kernel's magnitude.

    Args:
      model: a model containing `ScoredConv2D` / `ScoredDense` layers.

    Returns:
      The number of layers initialised.

    Raises:
      ValueError: if the model has no score layers.
    """
    layers = score_layers.scored_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no score layers to initialise.")
    for layer in layers:
        layer.score.assign(scaled_values(layer.kernel.numpy(), layer.fan_in))
    return len(layers)
