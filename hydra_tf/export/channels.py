"""Physical removal of the channels that channel gates drop (structured pruning).

A gate's dropped channel is exactly 0 wherever it is used, so removing it
changes no output: the gate's source layer loses those output channels (its
kernel's last axis and its bias), every BatchNorm between the source and the
gate loses their entries, and each layer reading the gated tensor loses the
matching inputs: a convolution its kernel's input channels, a dense layer
after `Flatten` the rows p * C + c of every spatial position p (Keras'
row, column, channel order), after global average pooling or directly the
rows c. Activations, pooling and dropout pass channels through.

`plan(network)` says what each layer keeps; `hydra_tf.export.strip_scores`
applies it. A gate whose channels also reach a layer that combines tensors
(an addition, a concatenation) or whose source's output is used elsewhere
cannot be removed without changing another tensor; it is refused by name.
"""

import dataclasses

import numpy as np

from hydra_tf.models import kinds
from hydra_tf.models import layers as score_layers

# Kinds that map each channel to itself (no weights or per-channel weights).
_PASS_THROUGH = ("relu", "max_pool", "avg_pool", "identity", "batch_norm")
# Layers without a kind of ours that also pass channels through.
_PASS_THROUGH_CLASSES = ("Dropout", "Activation", "SpatialDropout2D")


class ChannelRemovalError(ValueError):
    """A gate's channels cannot be removed without changing another tensor."""


@dataclasses.dataclass
class LayerPlan:
    """Which channels of one layer's weights survive (None: all).

    Attributes:
      outputs: indices of the output channels kept (a source layer's filters
        or units, a BatchNorm's entries).
      inputs: indices of the kernel's input rows kept (the input channels of
        a convolution, the rows of a dense kernel).
    """

    outputs: np.ndarray | None = None
    inputs: np.ndarray | None = None


def _passes_channels(layer):
    return kinds.kind(layer) in _PASS_THROUGH or type(layer).__name__ in _PASS_THROUGH_CLASSES


def _consumers(layer):
    return [node.operation for node in layer._outbound_nodes]


def _producer(layer):
    inbound = layer._inbound_nodes
    if len(inbound) != 1 or len(inbound[0].input_tensors) != 1:
        return None
    return inbound[0].input_tensors[0]._keras_history.operation


def _refuse(gate, reason):
    return ChannelRemovalError(f"Cannot remove the channels of gate {gate.name!r}: {reason}.")


def _only_consumer(gate, layer, expected):
    consumers = _consumers(layer)
    if len(consumers) != 1 or consumers[0] is not expected:
        names = ", ".join(repr(c.name) for c in consumers)
        raise _refuse(gate, f"the output of {layer.name!r} is also used by {names}")


def _backward(gate, kept, plans):
    """Marks the source and the BatchNorms between it and the gate."""
    layer, below = _producer(gate), gate
    while layer is not None and layer.name != gate.source:
        if not _passes_channels(layer):
            raise _refuse(gate, f"{layer.name!r} lies between it and its source {gate.source!r}")
        _only_consumer(gate, layer, below)
        if kinds.kind(layer) == "batch_norm":
            plans.setdefault(layer.name, LayerPlan()).outputs = kept
        layer, below = _producer(layer), layer
    if layer is None or not kinds.is_prunable(layer):
        raise _refuse(gate, f"its source {gate.source!r} does not feed it")
    _only_consumer(gate, layer, below)
    plans.setdefault(layer.name, LayerPlan()).outputs = kept


def _forward(gate, kept, plans):
    """Marks the input rows of every layer that reads the gated channels.

    Walks the consumers with the indices the kept channels have in each
    tensor: the channels themselves until a `Flatten` spreads them over the
    spatial positions.
    """
    pending = [(layer, kept) for layer in _consumers(gate)]
    while pending:
        layer, index = pending.pop()
        kind = kinds.kind(layer)
        if kind in ("conv2d", "dense"):
            plans.setdefault(layer.name, LayerPlan()).inputs = index
            continue
        if kind == "flatten":
            channels = int(layer.input.shape[-1])
            positions = int(np.prod(layer.input.shape[1:-1]))
            index = (np.arange(positions)[:, None] * channels + index[None, :]).reshape(-1)
        elif kind == "batch_norm":
            plans.setdefault(layer.name, LayerPlan()).outputs = index
        elif kind != "global_avg_pool" and not _passes_channels(layer):
            raise _refuse(gate, f"its channels reach {layer.name!r} ({type(layer).__name__})")
        consumers = _consumers(layer)
        if not consumers:
            raise _refuse(gate, f"its channels reach the network's output at {layer.name!r}")
        pending.extend((consumer, index) for consumer in consumers)


def plan(network):
    """{layer name: `LayerPlan`} for removing every gate's dropped channels.

    Raises:
      ChannelRemovalError: a gate whose channels cannot be removed, named.
    """
    plans = {}
    for gate in score_layers.channel_gates(network):
        if not gate.prunes:
            continue
        kept = np.flatnonzero(np.asarray(gate.hard_mask()) > 0)
        _backward(gate, kept, plans)
        _forward(gate, kept, plans)
    return plans


def slice_weights(layer, values, layer_plan):
    """`values` (a layer's weights, kernel first) with the plan's channels only."""
    if layer_plan is None:
        return values
    values = list(values)
    kind = kinds.kind(layer)
    if kind in ("conv2d", "dense"):
        kernel = values[0]
        if layer_plan.inputs is not None:
            kernel = np.take(kernel, layer_plan.inputs, axis=kernel.ndim - 2)
        if layer_plan.outputs is not None:
            kernel = np.take(kernel, layer_plan.outputs, axis=-1)
            values[1:] = [np.take(bias, layer_plan.outputs) for bias in values[1:]]
        values[0] = kernel
    elif kind == "batch_norm" and layer_plan.outputs is not None:
        values = [np.take(value, layer_plan.outputs) for value in values]
    return values
