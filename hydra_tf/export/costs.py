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
    kernel = layer.kernel
    if kinds.kind(layer) == "conv2d":
        height, width = (int(d) for d in layer.output.shape[1:3])
        return height * width * math.prod(int(d) for d in kernel.shape)
    if kinds.kind(layer) == "dense":
        positions = math.prod(int(d) for d in layer.output.shape[1:-1])
        return max(positions, 1) * math.prod(int(d) for d in kernel.shape)
    return 0


def costs(model):
    """The `Costs` of a built functional model (one image)."""
    params = 0
    nonzero = 0
    macs = 0
    for layer in model.layers:
        for weight in layer.weights:
            value = np.asarray(weight)
            params += value.size
            nonzero += int(np.count_nonzero(value))
        if kinds.is_prunable(layer):
            macs += _layer_macs(layer)
    return Costs(params=params, nonzero_params=nonzero, macs=macs)
