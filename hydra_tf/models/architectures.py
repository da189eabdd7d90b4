"""Network architectures, built plain or with score layers from one builder.

Every builder takes a `LayerFactory`; the factory decides whether the conv and
dense layers are plain Keras layers (dense pretraining, export) or HYDRA score
layers (pruning, finetuning). Layer names are fixed by the builder, so weights
move between the plain and the scored form of an architecture by name.
"""

import contextvars

import keras

from hydra_tf.models import layers as score_layers
from hydra_tf.models import masks


class LayerFactory:
    """Makes the prunable layers of an architecture.

    Args:
      keep_ratio: `None` for plain `Conv2D` (`FastConv2D`) / `Dense` layers; a fraction in
        (0, 1] for `ScoredConv2D`/`ScoredDense` layers keeping that fraction of
        each kernel.
      score_initializer: initializer of the scores of score layers.
    """

    def __init__(self, keep_ratio=None, score_initializer="he_uniform"):
        self.keep_ratio = None if keep_ratio is None else masks.validate_keep_ratio(keep_ratio)
        self.score_initializer = score_initializer

    @property
    def scored(self):
        return self.keep_ratio is not None

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
    x = _relu(factory.conv(32, 4, "conv1", strides=2)(inputs))
    x = _relu(factory.conv(64, 4, "conv2", strides=2)(x))
    x = keras.layers.Flatten()(x)
    x = _relu(factory.dense(128, "fc1")(x))
    return factory.dense(num_classes, "fc2")(x)


def cnn_verifiable(inputs, num_classes, factory):
    """The reference code's `cifar_model`, the small network of its verifiable training.

    conv16 4x4/2 - conv32 4x4/2 - fc100 - fc, no BatchNorm. The reference pads
    each convolution by 1 on every side; "same" padding is the same for the
    even input sizes it is used with (28, 32, and the halved 14, 16).
    """
    x = _relu(factory.conv(16, 4, "conv1", strides=2)(inputs))
    x = _relu(factory.conv(32, 4, "conv2", strides=2)(x))
    x = keras.layers.Flatten()(x)
    x = _relu(factory.dense(100, "fc1")(x))
    return factory.dense(num_classes, "fc2")(x)


def cnn_large(inputs, num_classes, factory):
    """The reference code's `cifar_model_large` (no BatchNorm).

    conv32 3x3 - conv32 4x4/2 - conv64 3x3 - conv64 4x4/2 - fc512 - fc512 - fc.
    """
    x = _relu(factory.conv(32, 3, "conv1")(inputs))
    x = _relu(factory.conv(32, 4, "conv2", strides=2)(x))
    x = _relu(factory.conv(64, 3, "conv3")(x))
    x = _relu(factory.conv(64, 4, "conv4", strides=2)(x))
    x = keras.layers.Flatten()(x)
    x = _relu(factory.dense(512, "fc1")(x))
    x = _relu(factory.dense(512, "fc2")(x))
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
        x = _relu(_bn(f"bn{conv_index}")(x))
    x = keras.layers.Flatten()(x)
    x = _relu(factory.dense(256, "fc1")(x))
    x = _relu(factory.dense(256, "fc2")(x))
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
    y = _relu(_bn(f"{name}_bn2")(y))
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
    y = _relu(_bn(f"{name}_bn1")(y))
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


ARCHITECTURES = {
    "cnn_small": cnn_small,
    "cnn_large": cnn_large,
    "cnn_verifiable": cnn_verifiable,
    "vgg16_bn": vgg16_bn,
    "wrn_28_4": lambda inputs, n, f: wide_resnet(inputs, n, f, depth=28, width=4),
    "wrn_28_10": lambda inputs, n, f: wide_resnet(inputs, n, f, depth=28, width=10),
    "resnet18": resnet18,
}


def build(
    arch,
    input_shape,
    num_classes,
    keep_ratio=None,
    score_initializer="he_uniform",
    sync_batch_norm=False,
):
    """Builds a functional model of `arch` that outputs logits.

    Args:
      arch: a name from `ARCHITECTURES`.
      input_shape: (height, width, channels).
      num_classes: number of logits.
      keep_ratio: `None` for a plain model; else the per-layer fraction of
        weights kept by the score layers.
      score_initializer: initializer of the scores (score layers only).
      sync_batch_norm: BatchNorm statistics over the global batch of all
        replicas (tf.distribute) rather than each replica's share.

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
    factory = LayerFactory(keep_ratio, score_initializer)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    token = _SYNC_BATCH_NORM.set(bool(sync_batch_norm))
    try:
        outputs = ARCHITECTURES[arch](inputs, int(num_classes), factory)
    finally:
        _SYNC_BATCH_NORM.reset(token)
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        # Losses and attacks need float32 logits.
        outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(outputs)
    return keras.Model(inputs, outputs, name=arch)
