"""What a plain network costs to store and run: parameters and multiply-adds.

Counted on the exported (plain) model, as it runs: an unstructured-pruned
network stores mostly zeros and multiplies by them (TF Lite densifies sparse
weights when it loads a file), so its multiply-adds are the dense network's;
a network whose channels were removed is smaller in both.
"""

import dataclasses
import math

import numpy as np

from hydra_tf.models import kinds
from hydra_tf.models import layers as score_layers


@dataclasses.dataclass(frozen=True)
class Costs:
    """Attributes:
    params: parameters of every layer (BatchNorm statistics included).
    nonzero_params: those that are not exactly 0.
    macs: multiply-adds of the conv and dense layers for one image.
    """

    params: int
    nonzero_params: int
    macs: int


def _layer_macs(layer):
    """Multiply-adds of one conv / dense layer: output positions x kernel entries.

    Each output position of a convolution (1-D, 2-D or depthwise) multiplies
    every kernel entry once; a dense layer's "positions" are its leading
    axes (1 for a flat input).
    """
    positions = math.prod(int(d) for d in layer.output.shape[1:-1])
    return max(positions, 1) * math.prod(int(d) for d in layer.kernel.shape)


def costs(model):
    """The `Costs` of a built functional model (one image)."""
    params = 0
    nonzero = 0
    macs = 0
    for layer in score_layers.leaf_layers(model):
        for weight in layer.weights:
            value = np.asarray(weight)
            params += value.size
            nonzero += int(np.count_nonzero(value))
        if kinds.is_prunable(layer):
            macs += _layer_macs(layer)
    return Costs(params=params, nonzero_params=nonzero, macs=macs)
