"""The graph TF Lite gets: the plain model's function, laid out for XNNPACK.

`tflite.convert` converts `edge_graph(plain_model)`, not the plain model:

- XNNPACK does not take FULLY_CONNECTED ops with sparse-encoded weights (they
  fell back to the builtin kernels; in float16 they gave wrong outputs and
  crashed the process now and then), so a Flatten + Dense head becomes
  convolutions, which XNNPACK densifies at load;
- Keras' Flatten reads the batch size at run time, which becomes ops XNNPACK
  does not take, so other Flatten layers become constant-shape reshapes.
"""

import math

import keras

from hydra_tf.models import kinds


def _static_flatten(plain_model):
    """A copy whose Flatten layers reshape to (-1, n) instead of (batch, n).

    Keras' Flatten reads the batch size at run time, which becomes SHAPE,
    STRIDED_SLICE and PACK ops that XNNPACK does not take: the graph splits
    into two delegate partitions around them. A constant target shape keeps
    it in one.
    """

    def clone(layer):
        if kinds.kind(layer) == "flatten" and None not in layer.input.shape[1:]:
            size = math.prod(layer.input.shape[1:])
            return keras.layers.Lambda(lambda x: keras.ops.reshape(x, (-1, size)), name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    if not any(kinds.kind(layer) == "flatten" for layer in plain_model.layers):
        return plain_model
    copy = keras.models.clone_model(plain_model, clone_function=clone)
    copy.set_weights(plain_model.get_weights())
    return copy


# Layers that act on each entry alone, so they work on (1, 1, n) maps as on
# (n,) vectors.
_ELEMENTWISE = (
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.Dropout,
    keras.layers.LeakyReLU,
    keras.layers.Identity,  # what a channel gate becomes on export
)


def _dense_head(plain_model):
    """The Flatten layer and the chain after it, if that chain is Dense + elementwise."""
    flattens = [layer for layer in plain_model.layers if kinds.kind(layer) == "flatten"]
    if len(flattens) != 1 or len(plain_model.outputs) != 1:
        return None, []
    flatten = flattens[0]
    if len(flatten.input.shape) != 4 or None in flatten.input.shape[1:]:
        return None, []
    head = plain_model.layers[plain_model.layers.index(flatten) + 1 :]
    previous = flatten
    for layer in head:
        if kinds.kind(layer) != "dense" and not isinstance(layer, _ELEMENTWISE):
            return None, []
        if layer.input is not previous.output:
            return None, []
        previous = layer
    if previous.output is not plain_model.outputs[0] or not head:
        return None, []
    return flatten, head


def edge_graph(plain_model):
    """The graph TF Lite gets: the same function, laid out for XNNPACK.

    If the network ends in Flatten followed by Dense layers (with elementwise
    layers between them), the head becomes convolutions: the first Dense a
    VALID convolution as large as the flattened feature map, the others 1x1
    convolutions, and one reshape to (batch, classes) at the end. XNNPACK
    does not take FULLY_CONNECTED ops with sparse-encoded weights, but it
    takes sparse-encoded convolutions (it densifies their weights at load),
    so only this layout keeps sparse files on the delegate. Otherwise the
    Flatten layers become constant-shape reshapes (see `_static_flatten`).
    """
    flatten, head = _dense_head(plain_model)
    if flatten is None:
        return _static_flatten(plain_model)
    height, width = flatten.input.shape[1:3]
    features = keras.Model(plain_model.inputs, flatten.input)
    x = features.outputs[0]
    first = True
    for layer in head:
        if kinds.kind(layer) == "dense":
            kernel = layer.kernel.numpy()
            size = (height, width) if first else (1, 1)
            conv = keras.layers.Conv2D(
                layer.units,
                size,
                padding="valid",
                activation=layer.activation,
                use_bias=layer.use_bias,
                name=layer.name,
            )
            x = conv(x)
            # Flatten orders entries (row, column, channel): the Dense kernel's
            # rows reshape to the convolution's (row, column, channel) axes.
            weights = [kernel.reshape(size + (-1, layer.units))]
            if layer.use_bias:
                weights.append(layer.bias.numpy())
            conv.set_weights(weights)
            first = False
        else:
            x = layer.__class__.from_config(layer.get_config())(x)
    units = x.shape[-1]
    outputs = keras.layers.Lambda(lambda t: keras.ops.reshape(t, (-1, units)), name="logits")(x)
    return keras.Model(plain_model.inputs, outputs, name=plain_model.name)
