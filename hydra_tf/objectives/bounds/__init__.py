"""Bound propagation for verifiable training and verified accuracy.

`propagation.Bounds` is the class every bound type (interval bounds, backward linear
bounds, symbolic intervals) derives from: one `apply_<kind>` method per layer
kind of `hydra_tf.models.kinds`, each refusing by name what it cannot bound,
and `propagate_network` walking a functional network layer by layer.
"""

from hydra_tf.objectives.bounds.propagation import Bounds
from hydra_tf.objectives.bounds.propagation import UnsupportedLayerError
from hydra_tf.objectives.bounds.propagation import batch_norm_affine
from hydra_tf.objectives.bounds.propagation import conv2d_arguments
from hydra_tf.objectives.bounds.propagation import pool_arguments
from hydra_tf.objectives.bounds.propagation import propagate_layers
from hydra_tf.objectives.bounds.propagation import propagate_network

__all__ = [
    "Bounds",
    "UnsupportedLayerError",
    "batch_norm_affine",
    "conv2d_arguments",
    "pool_arguments",
    "propagate_layers",
    "propagate_network",
]
