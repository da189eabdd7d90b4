"""Network architectures, built plain or with scores from one builder.

Every builder takes a `LayerFactory`; the factory decides whether the conv and
dense layers are plain Keras layers (dense pretraining, export), HYDRA score
layers (unstructured pruning) or plain layers followed by channel gates
(structured pruning). Layer names are fixed by the builder, so weights move
between the plain and the pruned forms of an architecture by name.
"""

import contextvars

import keras

from hydra_tf import data
from hydra_tf.models import layers as score_layers
from hydra_tf.models import masks

GRANULARITIES = ("weight", "channel")


def validate_granularity(granularity):
    """Returns `granularity`, or raises if it is not one of `GRANULARITIES`."""
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"Unknown granularity {granularity!r}. Supported: {', '.join(GRANULARITIES)}."
        )
    return granularity


class LayerFactory:
    """Makes the prunable layers of an architecture.

    Args:
      keep_ratio: `None` for a plain network; a fraction in (0, 1] for a
        network pruned at `granularity`.
      score_initializer: initializer of the scores.
      granularity: "weight": `ScoredConv2D` / `ScoredDense` layers keeping
        that fraction of each kernel; "channel": plain conv / dense layers,
        each followed (after its activation) by a `ChannelGate` keeping that
        fraction of its output channels, except where the builder says the
        channels must stay (the logits, the inputs of a residual addition).
    """

    def __init__(self, keep_ratio=None, score_initializer="he_uniform", granularity="weight"):
        self.keep_ratio = None if keep_ratio is None else masks.validate_keep_ratio(keep_ratio)
        self.score_initializer = score_initializer
        self.granularity = validate_granularity(granularity)

    @property
    def scored(self):
        """Whether the conv / dense layers are score layers (weight granularity)."""
        return self.keep_ratio is not None and self.granularity == "weight"

    @property
    def gated(self):
        """Whether channel gates are added (channel granularity)."""
        return self.keep_ratio is not None and self.granularity == "channel"

    def _pruning_kwargs(self):
        if not self.scored:
            return {}
        return {
            "keep_ratio": self.keep_ratio,
            "score_initializer": self.score_initializer,
        }

    def conv(self, filters, kernel_size, name, strides=1, padding="same", use_bias=True):
        cls = score_layers.ScoredConv2D if self.scored else score_layers.FastConv2D
        return cls(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            kernel_initializer="he_normal",
            name=name,
            **self._pruning_kwargs(),
        )

    def dense(self, units, name, use_bias=True):
        cls = score_layers.ScoredDense if self.scored else keras.layers.Dense
        return cls(units, use_bias=use_bias, name=name, **self._pruning_kwargs())

    def gate(self, x, source):
        """`x` (the activated output of layer `source`) with its channels gated, if gated."""
        if not self.gated:
            return x
        gate = score_layers.ChannelGate(
            source,
            keep_ratio=self.keep_ratio,
            score_initializer=self.score_initializer,
            name=f"{source}_channels",
        )
        return gate(x)


def _relu(x):
    return keras.layers.ReLU()(x)


# Set by `build(sync_batch_norm=...)` while a network is being built.
_SYNC_BATCH_NORM = contextvars.ContextVar("sync_batch_norm", default=False)


def _bn(name):
    # PyTorch's BatchNorm defaults (momentum 0.1 there = 0.9 here, eps 1e-5),
    # which the paper's reference code used.
    return keras.layers.BatchNormalization(
        momentum=0.9, epsilon=1e-5, synchronized=_SYNC_BATCH_NORM.get(), name=name
    )


def cnn_small(inputs, num_classes, factory):
    """conv32 4x4/2 - conv64 4x4/2 - fc128 - fc: a small CNN for 28x28 inputs."""
    x = factory.gate(_relu(factory.conv(32, 4, "conv1", strides=2)(inputs)), "conv1")
    x = factory.gate(_relu(factory.conv(64, 4, "conv2", strides=2)(x)), "conv2")
    x = keras.layers.Flatten()(x)
    x = factory.gate(_relu(factory.dense(128, "fc1")(x)), "fc1")
    return factory.dense(num_classes, "fc2")(x)


def cnn_verifiable(inputs, num_classes, factory):
    """The reference code's `cifar_model`, the small network of its verifiable training.

    conv16 4x4/2 - conv32 4x4/2 - fc100 - fc, no BatchNorm. The reference pads
    each convolution by 1 on every side; "same" padding is the same for the
    even input sizes it is used with (28, 32, and the halved 14, 16).
    """
    x = factory.gate(_relu(factory.conv(16, 4, "conv1", strides=2)(inputs)), "conv1")
    x = factory.gate(_relu(factory.conv(32, 4, "conv2", strides=2)(x)), "conv2")
    x = keras.layers.Flatten()(x)
    x = factory.gate(_relu(factory.dense(100, "fc1")(x)), "fc1")
    return factory.dense(num_classes, "fc2")(x)


def cnn_large(inputs, num_classes, factory):
    """The reference code's `cifar_model_large` (no BatchNorm).

    conv32 3x3 - conv32 4x4/2 - conv64 3x3 - conv64 4x4/2 - fc512 - fc512 - fc.
    """
    x = factory.gate(_relu(factory.conv(32, 3, "conv1")(inputs)), "conv1")
    x = factory.gate(_relu(factory.conv(32, 4, "conv2", strides=2)(x)), "conv2")
    x = factory.gate(_relu(factory.conv(64, 3, "conv3")(x)), "conv3")
    x = factory.gate(_relu(factory.conv(64, 4, "conv4", strides=2)(x)), "conv4")
    x = keras.layers.Flatten()(x)
    x = factory.gate(_relu(factory.dense(512, "fc1")(x)), "fc1")
    x = factory.gate(_relu(factory.dense(512, "fc2")(x)), "fc2")
    return factory.dense(num_classes, "fc3")(x)


_VGG16 = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def vgg16_bn(inputs, num_classes, factory):
    """VGG16 with BatchNorm and a 256-256 classifier, as used for CIFAR-10."""
    x = inputs
    conv_index = 0
    pool_index = 0
    for item in _VGG16:
        if item == "M":
            pool_index += 1
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{pool_index}")(x)
            continue
        conv_index += 1
        x = factory.conv(item, 3, f"conv{conv_index}", use_bias=False)(x)
        x = factory.gate(_relu(_bn(f"bn{conv_index}")(x)), f"conv{conv_index}")
    x = keras.layers.Flatten()(x)
    x = factory.gate(_relu(factory.dense(256, "fc1")(x)), "fc1")
    x = factory.gate(_relu(factory.dense(256, "fc2")(x)), "fc2")
    return factory.dense(num_classes, "fc3")(x)


def _wide_block(x, filters, strides, name, factory):
    """Pre-activation wide residual block."""
    out = _relu(_bn(f"{name}_bn1")(x))
    if strides != 1 or x.shape[-1] != filters:
        shortcut = factory.conv(filters, 1, f"{name}_shortcut", strides=strides, use_bias=False)(
            out
        )
    else:
        shortcut = x
    y = factory.conv(filters, 3, f"{name}_conv1", strides=strides, use_bias=False)(out)
    y = factory.gate(_relu(_bn(f"{name}_bn2")(y)), f"{name}_conv1")
    y = factory.conv(filters, 3, f"{name}_conv2", use_bias=False)(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def wide_resnet(inputs, num_classes, factory, depth=28, width=4):
    """Wide ResNet WRN-depth-width (pre-activation), e.g. WRN-28-4, WRN-28-10."""
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"WideResNet depth must be 6n+4 (>= 10). Received: depth={depth}")
    if width < 1:
        raise ValueError(f"WideResNet width must be >= 1. Received: width={width}")
    blocks = (depth - 4) // 6
    x = factory.conv(16, 3, "conv1", use_bias=False)(inputs)
    for group, (filters, strides) in enumerate(((16 * width, 1), (32 * width, 2), (64 * width, 2))):
        for block in range(blocks):
            x = _wide_block(
                x,
                filters,
                strides if block == 0 else 1,
                f"g{group + 1}b{block + 1}",
                factory,
            )
    x = _relu(_bn("bn_final")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return factory.dense(num_classes, "fc")(x)


def _basic_block(x, filters, strides, name, factory):
    """ResNet basic block (post-activation)."""
    y = factory.conv(filters, 3, f"{name}_conv1", strides=strides, use_bias=False)(x)
    y = factory.gate(_relu(_bn(f"{name}_bn1")(y)), f"{name}_conv1")
    y = factory.conv(filters, 3, f"{name}_conv2", use_bias=False)(y)
    y = _bn(f"{name}_bn2")(y)
    if strides != 1 or x.shape[-1] != filters:
        x = factory.conv(filters, 1, f"{name}_shortcut", strides=strides, use_bias=False)(x)
        x = _bn(f"{name}_shortcut_bn")(x)
    return _relu(keras.layers.Add(name=f"{name}_add")([y, x]))


def resnet18(inputs, num_classes, factory):
    """ResNet-18 with the 3x3 stem used for 32x32 images."""
    x = factory.conv(64, 3, "conv1", use_bias=False)(inputs)
    x = _relu(_bn("bn1")(x))
    for stage, (filters, strides) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
        for block in range(2):
            x = _basic_block(
                x,
                filters,
                strides if block == 0 else 1,
                f"s{stage + 1}b{block + 1}",
                factory,
            )
    x = keras.layers.GlobalAveragePooling2D()(x)
    return factory.dense(num_classes, "fc")(x)


def resnet50(inputs, num_classes, factory):
    """ResNet-50 (keras.applications' graph), with ImageNet's mean / std inside.

    The network takes images in [0, 1] like every other one here, so attacks
    and bounds work in pixel space; its first layer normalises them with
    ImageNet's channel statistics (`data.imagenet_normalization`). Built
    plain: `build` prunes it with `hydra_tf.prune` (the factory's layers are
    not used), so its pruned forms keep keras.applications' layer names.
    """
    del factory
    x = data.imagenet_normalization()(inputs)
    base = keras.applications.ResNet50(
        include_top=True,
        weights=None,
        input_tensor=x,
        classes=num_classes,
        classifier_activation=None,
    )
    return base.output


# Architectures built from a whole graph and pruned afterwards by
# `hydra_tf.prune` (the others build their score layers or gates directly).
WRAPPED = ("resnet50",)

ARCHITECTURES = {
    "cnn_small": cnn_small,
    "cnn_large": cnn_large,
    "cnn_verifiable": cnn_verifiable,
    "vgg16_bn": vgg16_bn,
    "wrn_28_4": lambda inputs, n, f: wide_resnet(inputs, n, f, depth=28, width=4),
    "wrn_28_10": lambda inputs, n, f: wide_resnet(inputs, n, f, depth=28, width=10),
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def build(
    arch,
    input_shape,
    num_classes,
    keep_ratio=None,
    score_initializer="he_uniform",
    sync_batch_norm=False,
    granularity="weight",
):
    """Builds a functional model of `arch` that outputs logits.

    Args:
      arch: a name from `ARCHITECTURES`.
      input_shape: (height, width, channels).
      num_classes: number of logits.
      keep_ratio: `None` for a plain model; else the per-layer fraction of
        weights (or channels) kept.
      score_initializer: initializer of the scores (pruned networks only).
      sync_batch_norm: BatchNorm statistics over the global batch of all
        replicas (tf.distribute) rather than each replica's share.
      granularity: "weight" (unstructured, HYDRA) or "channel" (structured:
        whole output channels; see `LayerFactory`). Residual networks gate
        only the channels inside a block: the channels of a residual sum stay.

    Returns:
      A `keras.Model` named `arch`. Under a mixed-precision policy its logits
      are cast to float32 by a last layer.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {arch!r}. Supported: {', '.join(sorted(ARCHITECTURES))}."
        )
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2. Received: num_classes={num_classes}")
    if arch in WRAPPED and keep_ratio is not None:
        # Imported here: `wrapping` builds on this module.
        from hydra_tf.pruning import wrapping

        plain = build(arch, input_shape, num_classes, sync_batch_norm=sync_batch_norm)
        # Random scores from the initializer; the prune phase sets them from
        # the source's weights (`phases.prepare`), as for the other networks.
        return wrapping.prune(plain, keep_ratio, granularity, score_init=score_initializer)
    factory = LayerFactory(keep_ratio, score_initializer, granularity)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    token = _SYNC_BATCH_NORM.set(bool(sync_batch_norm))
    try:
        outputs = ARCHITECTURES[arch](inputs, int(num_classes), factory)
    finally:
        _SYNC_BATCH_NORM.reset(token)
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        # Losses and attacks need float32 logits.
        outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(outputs)
    model = keras.Model(inputs, outputs, name=arch)
    if arch in WRAPPED and sync_batch_norm:
        model = _synchronized(model)
    return model


def _synchronized(model):
    """`model` with every BatchNorm synchronized across replicas (a graph we did not build)."""

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)
