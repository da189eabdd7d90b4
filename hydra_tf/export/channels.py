"""Physical removal of the channels that channel gates drop (structured pruning).

A gate's dropped channel is exactly 0 wherever it is used, so removing it
changes no output: the gate's source layer loses those output channels (its
kernel's last axis and its bias), every BatchNorm between the source and the
gate loses their entries, and each layer reading the gated tensor loses the
matching inputs: a convolution its kernel's input channels, a dense layer
after `Flatten` the rows p * C + c of every spatial position p (Keras'
row, column, channel order), after global average pooling or directly the
rows c. Activations, padding, pooling, dropout and depthwise convolutions
with one channel per input channel pass channels through; between a gate and
the layers that read it, only those that keep a zero channel at zero (not a
BatchNorm, not a biased depthwise convolution).

`plan(network)` says what each layer keeps; `hydra_tf.export.strip_scores`
applies it. A gate whose channels also reach a layer that combines tensors
(an addition, a concatenation) or whose source's output is used elsewhere
cannot be removed without changing another tensor; it is refused by name.
"""

import dataclasses

import numpy as np

from hydra_tf.models import kinds
from hydra_tf.models import layers as score_layers

# Layers that map each channel to itself, by class name (their kinds, where
# they have one, may be refused by other stages: a ReLU6 has no bounds).
_CHANNELWISE_CLASSES = (
    "ReLU",
    "Activation",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "MaxPooling1D",
    "MaxPooling2D",
    "AveragePooling1D",
    "AveragePooling2D",
    "Identity",
    "InputLayer",
)


class ChannelRemovalError(ValueError):
    """A gate's channels cannot be removed without changing another tensor."""


@dataclasses.dataclass
class LayerPlan:
    """Which channels of one layer's weights survive (None: all).

    Attributes:
      outputs: indices of the output channels kept (a source layer's filters
        or units, a BatchNorm's entries, a depthwise convolution's channels).
      inputs: indices of the kernel's input rows kept (the input channels of
        a convolution, the rows of a dense kernel).
    """

    outputs: np.ndarray | None = None
    inputs: np.ndarray | None = None


def _depthwise_channelwise(layer):
    return kinds.kind(layer) == "depthwise_conv2d" and layer.depth_multiplier == 1


def _channelwise(layer):
    """Whether output channel c of `layer` depends on input channel c only."""
    return (
        type(layer).__name__ in _CHANNELWISE_CLASSES
        or kinds.kind(layer) in ("batch_norm", "channel_gate")
        or _depthwise_channelwise(layer)
    )


def _keeps_zero(layer):
    """Whether `layer` is channelwise and maps an all-zero channel to zeros.

    Only such layers may lie between a gate and the layers whose inputs are
    removed: a BatchNorm or a biased depthwise convolution would turn a gated
    channel into a constant that the consumers still read.
    """
    if kinds.kind(layer) == "batch_norm":
        return False
    if _depthwise_channelwise(layer):
        return not layer.use_bias
    if type(layer).__name__ == "Activation":
        return float(layer.activation(np.zeros((1,), np.float32))[0]) == 0.0
    return _channelwise(layer)


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
    """Marks the source and the channelwise layers with weights between it and the gate."""
    layer, below = _producer(gate), gate
    while layer is not None and layer.name != gate.source:
        if not _channelwise(layer):
            raise _refuse(gate, f"{layer.name!r} lies between it and its source {gate.source!r}")
        _only_consumer(gate, layer, below)
        if layer.weights:
            plans.setdefault(layer.name, LayerPlan()).outputs = kept
        layer, below = _producer(layer), layer
    if layer is None or not kinds.is_prunable(layer) or _depthwise_channelwise(layer):
        raise _refuse(gate, f"its source {gate.source!r} does not feed it")
    _only_consumer(gate, layer, below)
    plans.setdefault(layer.name, LayerPlan()).outputs = kept


def _forward(name, consumers, kept, plans):
    """Marks the input rows of every layer that reads the channels `kept` of a gated tensor.

    Walks the consumers with the indices the kept channels have in each
    tensor: the channels themselves until a `Flatten` spreads them over the
    spatial positions.

    Raises:
      ChannelRemovalError: the channels reach a layer that cannot drop them
        (or the network's output); the message names the gate `name`.
    """
    pending = [(layer, kept) for layer in consumers]
    while pending:
        layer, index = pending.pop()
        kind = kinds.kind(layer)
        if kind in kinds.PRUNABLE_KINDS and not _depthwise_channelwise(layer):
            plans.setdefault(layer.name, LayerPlan()).inputs = index
            continue
        if kind == "flatten":
            channels = int(layer.input.shape[-1])
            positions = int(np.prod(layer.input.shape[1:-1]))
            index = (np.arange(positions)[:, None] * channels + index[None, :]).reshape(-1)
        elif _depthwise_channelwise(layer) and _keeps_zero(layer):
            plans.setdefault(layer.name, LayerPlan()).outputs = index
        elif kind != "global_avg_pool" and not _keeps_zero(layer):
            raise ChannelRemovalError(
                f"Cannot remove the channels of gate {name!r}: its channels reach "
                f"{layer.name!r} ({type(layer).__name__})."
            )
        consumers = _consumers(layer)
        if not consumers:
            raise ChannelRemovalError(
                f"Cannot remove the channels of gate {name!r}: its channels reach the "
                f"network's output at {layer.name!r}."
            )
        pending.extend((consumer, index) for consumer in consumers)


def gate_position(source):
    """Where a gate of `source`'s output channels can go, in a built functional graph.

    Follows `source`'s output through the channelwise layers that use it
    alone (BatchNorm, activations, padding, pooling, depthwise convolutions
    with one channel per input channel), and checks that the channels from
    there reach only layers that can drop them (`plan` would remove them).

    Args:
      source: a conv / dense layer of a functional model (not a depthwise
        convolution: its channels are its input's).

    Returns:
      The layer after whose output the gate goes (`source` itself or a
      layer of its chain).

    Raises:
      ChannelRemovalError: the channels cannot be removed from anywhere in
        the chain (they reach an addition, a concatenation, the output...).
    """
    if not kinds.is_prunable(source) or _depthwise_channelwise(source):
        raise ChannelRemovalError(f"{source.name!r} has no output channels of its own to prune.")
    end = source
    while True:
        consumers = _consumers(end)
        if len(consumers) != 1 or not _channelwise(consumers[0]) or _producer(consumers[0]) is None:
            break
        end = consumers[0]
    if not _consumers(end):
        raise ChannelRemovalError(
            f"Cannot prune the channels of {source.name!r}: they are the network's output "
            f"at {end.name!r}."
        )
    width = int(end.output.shape[-1])
    _forward(f"{source.name}_channels", _consumers(end), np.arange(width), {})
    return end


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
        _forward(gate.name, _consumers(gate), kept, plans)
    return plans


def slice_weights(layer, values, layer_plan):
    """`values` (a layer's weights, kernel first) with the plan's channels only."""
    if layer_plan is None:
        return values
    values = list(values)
    kind = kinds.kind(layer)
    if kind == "depthwise_conv2d" and layer_plan.outputs is not None:
        # One channel per input channel: the kernel's input axis and the bias.
        values[0] = np.take(values[0], layer_plan.outputs, axis=2)
        values[1:] = [np.take(bias, layer_plan.outputs) for bias in values[1:]]
    elif kind in kinds.PRUNABLE_KINDS:
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
