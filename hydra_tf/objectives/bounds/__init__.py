"""Bound propagation for verifiable training and verified accuracy.

`propagation.Bounds` is the class every bound type derives from: one
`apply_<kind>` method per layer kind of `hydra_tf.models.kinds`, each refusing
by name what it cannot bound, and `propagate_network` walking a functional
network layer by layer. The bound types:

- `interval.IntervalBounds`: interval bound propagation (IBP), forward;
- `crown.BackwardBounds`: backward linear bounds (CROWN, CROWN-IBP), run by
  `crown.backward_bounds`;
- `symbolic.SymbolicIntervalBounds`: symbolic intervals (ReluVal / Neurify,
  MixTrain's bounds), forward, linear equations in the input per neuron.

`fusion.cross_entropy_upper_bound` bounds the cross-entropy itself with one
CROWN row per example (loss fusion, for CROWN-IBP training).

`specification` builds the margin specification C (true class minus each
other class), folds it into the last dense layer and tells verified inputs.
"""

from hydra_tf.objectives.bounds.crown import MODES
from hydra_tf.objectives.bounds.crown import BackwardBounds
from hydra_tf.objectives.bounds.crown import LinearFunction
from hydra_tf.objectives.bounds.crown import backward_bounds
from hydra_tf.objectives.bounds.fusion import cross_entropy_upper_bound
from hydra_tf.objectives.bounds.interval import IntervalBounds
from hydra_tf.objectives.bounds.interval import specification_bounds
from hydra_tf.objectives.bounds.propagation import Bounds
from hydra_tf.objectives.bounds.propagation import UnsupportedLayerError
from hydra_tf.objectives.bounds.propagation import batch_norm_affine
from hydra_tf.objectives.bounds.propagation import conv2d_arguments
from hydra_tf.objectives.bounds.propagation import pool_arguments
from hydra_tf.objectives.bounds.propagation import propagate_layers
from hydra_tf.objectives.bounds.propagation import propagate_network
from hydra_tf.objectives.bounds.specification import final_dense
from hydra_tf.objectives.bounds.specification import fold
from hydra_tf.objectives.bounds.specification import margin_specification
from hydra_tf.objectives.bounds.specification import other_classes
from hydra_tf.objectives.bounds.specification import verified
from hydra_tf.objectives.bounds.symbolic import SymbolicIntervalBounds
from hydra_tf.objectives.bounds.symbolic import symbolic_specification_bounds

__all__ = [
    "MODES",
    "BackwardBounds",
    "Bounds",
    "IntervalBounds",
    "LinearFunction",
    "SymbolicIntervalBounds",
    "UnsupportedLayerError",
    "backward_bounds",
    "batch_norm_affine",
    "conv2d_arguments",
    "cross_entropy_upper_bound",
    "final_dense",
    "fold",
    "margin_specification",
    "other_classes",
    "pool_arguments",
    "propagate_layers",
    "propagate_network",
    "specification_bounds",
    "symbolic_specification_bounds",
    "verified",
]
