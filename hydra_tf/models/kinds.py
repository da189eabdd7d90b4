"""The layer kinds of our networks, in one table.

Every stage that walks a network layer by layer (export, TF Lite, bound
propagation) asks this module what a layer is, instead of keeping its own
`isinstance` lists:

- `kind(layer)`: the kind name ("conv2d", "conv1d", "depthwise_conv2d",
  "dense", "batch_norm", "relu",
  "flatten", "add", "max_pool", "avg_pool", "global_avg_pool", "identity",
  "channel_gate"), or None for a layer no stage knows;
- `plain_class(layer)`: the built-in Keras layer a score layer (or our
  `FastConv2D`) becomes on export;
- `is_prunable(layer)` / `kernel(layer)`: the kernel a layer computes with,
  through the one mask function for score layers.
"""

import keras

from hydra_tf.models import layers as score_layers

# Our layers and the built-in layer each becomes. FastConv2D differs from
# Conv2D only in its training gradient; score layers also drop their scores.
PLAIN_CLASSES = {
    score_layers.ScoredConv2D: keras.layers.Conv2D,
    score_layers.ScoredDense: keras.layers.Dense,
    score_layers.ScoredConv1D: keras.layers.Conv1D,
    score_layers.ScoredDepthwiseConv2D: keras.layers.DepthwiseConv2D,
    score_layers.FastConv2D: keras.layers.Conv2D,
}

# Kind name -> the Keras classes of that kind (subclasses included: our
# Conv2D / Dense layers subclass or mirror the built-in ones).
KINDS = {
    "conv2d": (keras.layers.Conv2D, score_layers.ScoredConv2D),
    "dense": (keras.layers.Dense, score_layers.ScoredDense),
    "conv1d": (keras.layers.Conv1D, score_layers.ScoredConv1D),
    # Before "conv2d" would matter: DepthwiseConv2D is not a Conv2D subclass.
    "depthwise_conv2d": (keras.layers.DepthwiseConv2D, score_layers.ScoredDepthwiseConv2D),
    "batch_norm": (keras.layers.BatchNormalization,),
    "relu": (keras.layers.ReLU,),
    "flatten": (keras.layers.Flatten,),
    "add": (keras.layers.Add,),
    "max_pool": (keras.layers.MaxPooling2D,),
    "avg_pool": (keras.layers.AveragePooling2D,),
    "global_avg_pool": (keras.layers.GlobalAveragePooling2D,),
    "identity": (keras.layers.InputLayer, keras.layers.Identity),
    "channel_gate": (score_layers.ChannelGate,),
}

PRUNABLE_KINDS = ("conv2d", "dense", "conv1d", "depthwise_conv2d")


def kind(layer):
    """The kind name of `layer` (see `KINDS`), or None if no stage knows it."""
    if isinstance(layer, keras.layers.Activation):
        # Activation layers are named by their function: "relu" or the
        # float32 "linear" cast that ends a mixed-precision network.
        name = keras.activations.serialize(layer.activation)
        return {"relu": "relu", "linear": "identity"}.get(name) if isinstance(name, str) else None
    if isinstance(layer, keras.layers.ReLU) and not _plain_relu(layer):
        return None  # ReLU6, leaky or thresholded: another function than max(x, 0).
    for name, classes in KINDS.items():
        if isinstance(layer, classes):
            return name
    return None


def _plain_relu(layer):
    return (
        layer.max_value is None
        and float(layer.negative_slope) == 0.0
        and float(layer.threshold) == 0.0
    )


def is_prunable(layer):
    """Whether `layer` has a conv or dense kernel (the weights HYDRA prunes)."""
    return kind(layer) in PRUNABLE_KINDS


is_scored = score_layers.is_scored


def kernel(layer):
    """The kernel `layer` computes with: the masked kernel for a score layer."""
    if is_scored(layer):
        return layer.masked_kernel()
    return layer.kernel


def plain_class(layer):
    """The built-in class `layer` becomes on export (its own class if already plain)."""
    for cls, plain in PLAIN_CLASSES.items():
        if isinstance(layer, cls):
            return plain
    return layer.__class__
