"""The base class of bound types: one method per layer kind.

A bound type describes the set of activations a layer can take when the
input ranges over a box (an L-inf ball clipped to the data domain [0, 1]).
It subclasses `Bounds` and implements `apply_<kind>` for every layer kind it
supports (`hydra_tf.models.kinds.KINDS`); `Bounds.propagate` dispatches a
layer to its method, `propagate_layers` walks a whole functional network
forwards and keeps every layer's bounds, `propagate_network` keeps the
output's. A backward bound type (`crown.BackwardBounds`) uses the same
dispatch, walking the layers in reverse (`layer_inputs`, `producer`).

What the base does for every bound type, so none repeats it:

- score layers are bounded through their masked kernel, from the one mask
  function (`kinds.kernel`), so HYDRA's scores receive the straight-through
  gradient of a bound-based loss;
- BatchNormalization is bounded as the affine map it is in inference mode
  (`batch_norm_affine`), and a channel gate (structured pruning) as the
  0/1 scale per channel it is;
- the lines bounding a ReLU on an interval, which every linear relaxation
  uses (`relu_upper_line`, `relu_lower_slope`);
- a layer of no known kind, a kind the bound type has no method for, a
  layer called more than once (shared weights), a conv / dense layer with a
  fused activation, a dilated, grouped or channels-first convolution or
  pooling, or a BatchNorm over another axis than the last is refused with an
  `UnsupportedLayerError` naming the layer.

How to add a bound type: subclass `Bounds`, keep the bounds of one tensor in
the instance, return a new instance from each `apply_*` you support. How to
add a layer kind: add it to `models.kinds.KINDS` and add an `apply_<kind>`
method here (raising) and in each bound type that supports it.
"""

import keras
import tensorflow as tf

from hydra_tf.models import kinds
from hydra_tf.models import masks


class UnsupportedLayerError(ValueError):
    """A bound type cannot propagate through a layer."""


def batch_norm_affine(layer):
    """(scale, offset) of a BatchNormalization layer in inference mode: y = scale * x + offset."""
    variance = tf.convert_to_tensor(layer.moving_variance)
    scale = tf.math.rsqrt(variance + layer.epsilon)
    if layer.gamma is not None:
        scale = scale * layer.gamma
    offset = -tf.convert_to_tensor(layer.moving_mean) * scale
    if layer.beta is not None:
        offset = offset + layer.beta
    return scale, offset


def relu_upper_line(low, high):
    """(slope, intercept) of the chord of relu over [min(low, 0), max(high, 0)], elementwise.

    The tightest line above relu on that range: relu(t) <= slope * t + intercept
    for every t in [low, high]. Slope 1, intercept 0 where low >= 0; slope 0,
    intercept 0 where high <= 0.
    """
    low = tf.minimum(low, 0.0)
    high = tf.maximum(high, 0.0)
    slope = tf.math.divide_no_nan(high, high - low)
    return slope, -low * slope


def relu_lower_slope(low, high):
    """Slope of a line below relu on [low, high], elementwise: 1 where high >= -low, else 0.

    relu(t) >= slope * t holds for any slope in [0, 1]; of those lines, this
    one leaves the least area between itself and relu over [min(low, 0),
    max(high, 0)] (CROWN-IBP's adaptive choice).
    """
    return tf.cast(tf.maximum(high, 0.0) >= -tf.minimum(low, 0.0), tf.float32)


class Bounds:
    """Bounds on one tensor of a network; subclasses implement the propagation.

    Each `apply_<kind>` takes the layer (and, for layers with weights, the
    weights to use) and returns the bounds of the layer's output. The
    defaults refuse the layer by name.
    """

    def propagate(self, layer, *others):
        """The bounds of `layer`'s output, given these bounds of its input(s).

        Args:
          layer: a Keras layer.
          *others: for an `Add` layer, the bounds of its other inputs.
        """
        kind = kinds.kind(layer)
        if kind is None:
            raise UnsupportedLayerError(
                f"{type(self).__name__} cannot bound layer {layer.name!r} "
                f"({type(layer).__name__}): no bound type knows this kind of layer. "
                f"Known kinds: {', '.join(kinds.KINDS)}."
            )
        if kind in kinds.PRUNABLE_KINDS:
            self._check_linear(layer)
            return getattr(self, f"apply_{kind}")(layer, kinds.kernel(layer), layer.bias)
        if kind == "batch_norm":
            self._check_last_axis(layer)
            return self.apply_batch_norm(layer, *batch_norm_affine(layer))
        if kind == "channel_gate":
            # A 0/1 scale per channel (straight-through to the gate's scores).
            mask = tf.cast(masks.current_mask(layer), tf.float32)
            return self.apply_batch_norm(layer, mask, tf.zeros_like(mask))
        if kind == "add":
            return self.apply_add(layer, (self,) + others)
        return getattr(self, f"apply_{kind}")(layer)

    def _check_linear(self, layer):
        # The apply_* methods bound a channels-last convolution without
        # dilation or groups (every layer our builders make); a layer of a
        # user's model may be otherwise.
        for name, plain in (("dilation_rate", 1), ("groups", 1), ("data_format", "channels_last")):
            value = getattr(layer, name, plain)
            values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if any(v != plain for v in values):
                raise UnsupportedLayerError(
                    f"{type(self).__name__} cannot bound layer {layer.name!r} "
                    f"({type(layer).__name__}): {name}={value!r} is not supported."
                )
        # A conv / dense layer with a fused activation is not the affine map
        # the apply_* methods bound; our builders use separate ReLU layers.
        activation = getattr(layer, "activation", None)
        if activation is not None and keras.activations.serialize(activation) != "linear":
            raise UnsupportedLayerError(
                f"{type(self).__name__} cannot bound layer {layer.name!r} "
                f"({type(layer).__name__}): it has a fused activation "
                f"{keras.activations.serialize(activation)!r}; use a separate activation layer."
            )

    def _check_last_axis(self, layer):
        axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
        rank = len(layer.input.shape)
        if axis not in (-1, rank - 1, (-1,), (rank - 1,)):
            raise UnsupportedLayerError(
                f"{type(self).__name__} cannot bound layer {layer.name!r} "
                f"({type(layer).__name__}): it normalises axis {axis!r}, not the last one."
            )

    def _unsupported(self, layer):
        return UnsupportedLayerError(
            f"{type(self).__name__} cannot bound layer {layer.name!r} "
            f"({type(layer).__name__}, kind {kinds.kind(layer)!r})."
        )

    def apply_conv2d(self, layer, kernel, bias):
        """A 2-D convolution with this kernel (masked for score layers) and bias (or None)."""
        raise self._unsupported(layer)

    def apply_conv1d(self, layer, kernel, bias):
        """A 1-D convolution (no bound type has one yet)."""
        raise self._unsupported(layer)

    def apply_depthwise_conv2d(self, layer, kernel, bias):
        """A depthwise 2-D convolution (no bound type has one yet)."""
        raise self._unsupported(layer)

    def apply_dense(self, layer, kernel, bias):
        """A dense layer with this kernel (masked for score layers) and bias (or None)."""
        raise self._unsupported(layer)

    def apply_batch_norm(self, layer, scale, offset):
        """Inference-mode BatchNormalization: scale * x + offset per channel."""
        raise self._unsupported(layer)

    def apply_relu(self, layer):
        """max(x, 0)."""
        raise self._unsupported(layer)

    def apply_flatten(self, layer):
        """A reshape to (batch, -1), in Keras' (row, column, channel) order."""
        raise self._unsupported(layer)

    def apply_add(self, layer, inputs):
        """The sum of `inputs` (bounds of every input, this one first)."""
        raise self._unsupported(layer)

    def apply_max_pool(self, layer):
        """Max pooling."""
        raise self._unsupported(layer)

    def apply_avg_pool(self, layer):
        """Average pooling."""
        raise self._unsupported(layer)

    def apply_global_avg_pool(self, layer):
        """The mean over height and width."""
        raise self._unsupported(layer)

    def apply_identity(self, layer):
        """A layer that passes its input through (an input layer, a linear activation)."""
        del layer
        return self


def conv2d_arguments(layer):
    """(strides, padding) of a conv layer for `tf.nn` ops: (1, s, s, 1), "SAME" / "VALID".

    Raises:
      UnsupportedLayerError: a dilated, grouped or channels-first convolution, named.
    """
    dilation = tuple(getattr(layer, "dilation_rate", (1, 1)))
    groups = getattr(layer, "groups", 1)
    data_format = getattr(layer, "data_format", "channels_last")
    if dilation != (1, 1) or groups != 1 or data_format != "channels_last":
        raise UnsupportedLayerError(
            f"Cannot bound layer {layer.name!r} ({type(layer).__name__}): only channels-last "
            f"convolutions without dilation or groups are supported. Received: "
            f"dilation_rate={dilation}, groups={groups}, data_format={data_format!r}."
        )
    return (1, *layer.strides, 1), layer.padding.upper()


def pool_arguments(layer):
    """(ksize, strides, padding) of a 2-D pooling layer for `tf.nn` ops.

    Raises:
      UnsupportedLayerError: a channels-first pooling layer, named.
    """
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise UnsupportedLayerError(
            f"Cannot bound layer {layer.name!r} ({type(layer).__name__}): only channels-last "
            f"pooling is supported. Received: data_format={layer.data_format!r}."
        )
    return (1, *layer.pool_size, 1), (1, *layer.strides, 1), layer.padding.upper()


def propagate_layers(network, bounds, stop_before=None):
    """Bounds of every layer's output, walking `network` from `bounds` of its input.

    Args:
      network: a functional `keras.Model` with one input and one output.
      bounds: a `Bounds` instance for the network's input.
      stop_before: the name of a layer at which to stop: neither it nor any
        layer after it in `network.layers` (a topological order) is bounded.

    Returns:
      {layer name: bounds of that layer's output}, in the network's order;
      the input layer's name maps to `bounds`.

    Raises:
      UnsupportedLayerError: a layer the bound type cannot handle, or one
        that is called more than once (its weights shared), named.
    """
    if len(network.inputs) != 1 or len(network.outputs) != 1:
        raise UnsupportedLayerError(
            f"Bounds need a network with one input and one output; {network.name!r} has "
            f"{len(network.inputs)} and {len(network.outputs)}."
        )
    values = {producer(network.inputs[0]).name: bounds}
    for layer in network.layers:
        if layer.name == stop_before:
            break
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inbound = [values[producer(tensor).name] for tensor in layer_inputs(layer)]
        values[layer.name] = inbound[0].propagate(layer, *inbound[1:])
    return values


def propagate_network(network, bounds):
    """Bounds of `network`'s output given `bounds` of its input.

    Args:
      network: a functional `keras.Model` with one input and one output.
      bounds: a `Bounds` instance for the network's input.

    Raises:
      UnsupportedLayerError: a layer the bound type cannot handle, or one
        that is called more than once (its weights shared), named.
    """
    values = propagate_layers(network, bounds)
    return values[producer(network.outputs[0]).name]


def layer_inputs(layer):
    """The input tensors of a layer of a functional network, checked for bounding.

    Raises:
      UnsupportedLayerError: `layer` is a nested model or is called more than
        once (its weights shared), named.
    """
    if isinstance(layer, keras.Model):
        raise UnsupportedLayerError(
            f"Cannot bound nested model {layer.name!r}: bound its layers in one network."
        )
    if len(layer._inbound_nodes) != 1:
        raise UnsupportedLayerError(
            f"Cannot bound layer {layer.name!r}: it is called "
            f"{len(layer._inbound_nodes)} times (shared weights)."
        )
    return list(layer.input) if isinstance(layer.input, (list, tuple)) else [layer.input]


def producer(tensor):
    """The layer of a functional network that outputs `tensor` (a symbolic Keras tensor)."""
    return tensor._keras_history.operation
