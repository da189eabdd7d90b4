"""Score layers: convolution and dense layers pruned by trainable importance scores.

Each layer holds a `kernel`, an optional `bias` and a `score` of the kernel's
shape. The forward pass uses `kernel * topk_mask(score, keep_ratio)`; the mask
is computed by `hydra_tf.models.masks.topk_mask`, the single mask function. The
argument names follow `keras.layers.Conv2D` / `keras.layers.Dense`, so that
`hydra_tf.export` can turn a score layer into its plain counterpart by
dropping the pruning arguments from the config.
"""

import contextlib

import keras
from keras import ops

from hydra_tf.models import convolution
from hydra_tf.models import masks

# Config keys that exist only on score layers; removing them from a score
# layer's config leaves a valid config of the plain Keras layer.
PRUNING_CONFIG_KEYS = ("keep_ratio", "score_initializer")


class _Scored(keras.layers.Layer):
    """Shared part of the score layers: score variable, mask, config."""

    def __init__(
        self,
        keep_ratio=1.0,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        score_initializer="he_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.keep_ratio = masks.validate_keep_ratio(keep_ratio)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.score_initializer = keras.initializers.get(score_initializer)

    def _last_dim(self, input_shape):
        """The (known) size of the input's last dimension, which the kernel needs."""
        if input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: the last input dimension must be known. "
                f"Received: input_shape={input_shape}"
            )
        return int(input_shape[-1])

    def _add_variables(self, kernel_shape, bias_size):
        self.kernel = self.add_weight(
            name="kernel", shape=kernel_shape, initializer=self.kernel_initializer
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(bias_size,), initializer=self.bias_initializer
            )
        else:
            self.bias = None
        # Scores, and the masks selected from them, stay float32 under a
        # mixed-precision policy: float16 would tie many more of them.
        self.score = self.add_weight(
            name="score",
            shape=kernel_shape,
            initializer=self.score_initializer,
            autocast=False,
        )

    @property
    def fan_in(self):
        """Number of inputs to one output unit (all kernel dims but the last)."""
        shape = self.kernel.shape
        size = 1
        for dim in shape[:-1]:
            size *= int(dim)
        return size

    @property
    def prunes(self):
        """Whether the layer drops any weight (keep_ratio < 1)."""
        return self.keep_ratio < 1.0

    def mask(self):
        """The current 0/1 mask of the kernel (straight-through to `score`)."""
        return masks.topk_mask(self.score, self.keep_ratio)

    def hard_mask(self):
        """The current 0/1 mask of the kernel, without a gradient."""
        return masks.hard_topk(self.score, self.keep_ratio)

    def masked_kernel(self):
        """The kernel the forward pass uses.

        Inside a `hydra_tf.models.masks.reusing` block that names this layer, the
        mask given there is used (a training step computes it once for all its
        forward passes); otherwise it is computed from the scores. A layer that
        keeps every weight does no mask work at all.
        """
        if not self.prunes:
            return ops.convert_to_tensor(self.kernel)
        mask = masks.current_mask(self)
        kernel = ops.convert_to_tensor(self.kernel)  # the compute dtype inside `call`
        return kernel * ops.cast(mask, kernel.dtype)

    def _finish(self, outputs):
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "keep_ratio": self.keep_ratio,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "score_initializer": keras.initializers.serialize(self.score_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="hydra_tf")
class ScoredDense(_Scored):
    """A dense layer whose kernel is pruned to the top-k |score| entries.

    Args:
      units: output size.
      keep_ratio: fraction of kernel entries kept, in (0, 1]. 1 means dense.
      activation, use_bias, kernel_initializer, bias_initializer: as in
        `keras.layers.Dense`.
      score_initializer: initializer of the importance scores (a random init
        for training from scratch; `hydra_tf.models.scores.scaled_init` overwrites it
        from the kernel magnitude before pruning a trained network).
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"units must be a positive integer. Received: units={units!r}")
        self.units = units
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        self._add_variables((self._last_dim(input_shape), self.units), self.units)

    def call(self, inputs):
        return self._finish(ops.matmul(inputs, self.masked_kernel()))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config


class _ScoredConv(_Scored):
    """Shared part of the score convolutions of one rank (channels last)."""

    rank = None  # Spatial axes: 1 or 2.

    def __init__(self, filters, kernel_size, strides=1, padding="valid", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(f"filters must be a positive integer. Received: filters={filters!r}")
        self.filters = filters
        self.kernel_size = _sizes(kernel_size, "kernel_size", self.rank)
        self.strides = _sizes(strides, "strides", self.rank)
        self.padding = _padding(padding)
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)

    def build(self, input_shape):
        channels = self._last_dim(input_shape)
        self._add_variables(self.kernel_size + (channels, self.filters), self.filters)

    def compute_output_shape(self, input_shape):
        spatial = _output_sizes(
            input_shape[1 : 1 + self.rank], self.kernel_size, self.strides, self.padding
        )
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="hydra_tf")
class ScoredConv2D(_ScoredConv):
    """A 2-D convolution (channels last) whose kernel is pruned by scores.

    Args:
      filters, kernel_size, strides, padding: as in `keras.layers.Conv2D`.
      **kwargs: `keep_ratio`, `score_initializer` and the arguments of
        `ScoredDense` other than `units`.
    """

    rank = 2

    def call(self, inputs):
        outputs = convolution.conv2d(inputs, self.masked_kernel(), self.strides, self.padding)
        return self._finish(outputs)


@keras.saving.register_keras_serializable(package="hydra_tf")
class ScoredConv1D(_ScoredConv):
    """A 1-D convolution (channels last) whose kernel is pruned by scores.

    For `hydra_tf.prune` on models with `keras.layers.Conv1D` (audio, text,
    sensor networks).

    Args:
      filters, kernel_size, strides, padding: as in `keras.layers.Conv1D`
        ("valid" or "same" padding).
      **kwargs: `keep_ratio`, `score_initializer` and the arguments of
        `ScoredDense` other than `units`.
    """

    rank = 1

    def call(self, inputs):
        outputs = ops.conv(inputs, self.masked_kernel(), self.strides, self.padding)
        return self._finish(outputs)


@keras.saving.register_keras_serializable(package="hydra_tf")
class ScoredDepthwiseConv2D(_Scored):
    """A depthwise 2-D convolution (channels last) whose kernel is pruned by scores.

    The kernel has shape (kh, kw, in_channels, depth_multiplier), like
    `keras.layers.DepthwiseConv2D`'s, and the config names its initializer
    `depthwise_initializer` as that layer does, so that export turns it into
    the built-in layer by dropping the pruning arguments.

    Args:
      kernel_size, strides, padding, depth_multiplier: as in
        `keras.layers.DepthwiseConv2D`.
      depthwise_initializer: initializer of the kernel.
      **kwargs: `keep_ratio`, `score_initializer`, `activation`, `use_bias`,
        `bias_initializer`.
    """

    def __init__(
        self,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        depth_multiplier=1,
        depthwise_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(kernel_initializer=depthwise_initializer, **kwargs)
        if not isinstance(depth_multiplier, int) or depth_multiplier <= 0:
            raise ValueError(
                "depth_multiplier must be a positive integer. "
                f"Received: depth_multiplier={depth_multiplier!r}"
            )
        self.depth_multiplier = depth_multiplier
        self.kernel_size = _sizes(kernel_size, "kernel_size", 2)
        self.strides = _sizes(strides, "strides", 2)
        self.padding = _padding(padding)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = self._last_dim(input_shape)
        self._add_variables(
            self.kernel_size + (channels, self.depth_multiplier), channels * self.depth_multiplier
        )

    @property
    def fan_in(self):
        """Inputs to one output unit: one input channel's window (kh * kw)."""
        return self.kernel_size[0] * self.kernel_size[1]

    def call(self, inputs):
        outputs = ops.depthwise_conv(inputs, self.masked_kernel(), self.strides, self.padding)
        return self._finish(outputs)

    def compute_output_shape(self, input_shape):
        spatial = _output_sizes(input_shape[1:3], self.kernel_size, self.strides, self.padding)
        channels = None if input_shape[-1] is None else input_shape[-1] * self.depth_multiplier
        return (input_shape[0], *spatial, channels)

    def get_config(self):
        config = super().get_config()
        config["depthwise_initializer"] = config.pop("kernel_initializer")
        config.update(
            {
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "depth_multiplier": self.depth_multiplier,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="hydra_tf")
class FastConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` with `hydra_tf.models.convolution`'s faster input gradient.

    Same arguments, weights and outputs; the dense (plain) networks use it so
    that adversarial training is fast before pruning too. Export turns it back
    into `keras.layers.Conv2D`. Grouped, dilated or channels-first
    convolutions use Keras' own op.
    """

    def convolution_op(self, inputs, kernel):
        if (
            self.groups != 1
            or tuple(self.dilation_rate) != (1, 1)
            or self.data_format != "channels_last"
        ):
            return super().convolution_op(inputs, kernel)
        return convolution.conv2d(inputs, kernel, self.strides, self.padding)


@keras.saving.register_keras_serializable(package="hydra_tf")
class ChannelGate(keras.layers.Layer):
    """Structured pruning: keeps the top-k channels of a tensor by trainable scores.

    One score per channel of its input (the last axis): the output is the
    input times `masks.topk_mask(score, keep_ratio)`, broadcast over the
    other axes, with the mask function's straight-through gradient to the
    scores. The builders put a gate after the activation of each prunable
    layer whose channels may go (`source`, the conv filters or dense units
    it scores); its scores start from the L1 norms of the source's filters
    (`hydra_tf.models.scores.scaled_init`).

    Why the mask gates the block's output rather than the source's kernel: a
    channel whose kernel and bias are zero still leaves BatchNorm's constant
    (beta - gamma * mean / std) downstream, and a "same"-padded convolution
    turns a constant channel into border effects no bias can absorb; so a
    kernel mask would not equal the smaller network export makes. A gated
    channel is exactly 0 wherever it is used, and removing it (the source's
    filter, its bias and BatchNorm entries, the consumers' input channels:
    `hydra_tf.export`) changes no output.

    Args:
      source: name of the conv / dense layer whose output channels are gated.
      keep_ratio: fraction of channels kept, in (0, 1] (`masks.kept_count`).
      score_initializer: initializer of the scores before `scaled_init`.
    """

    def __init__(self, source, keep_ratio=1.0, score_initializer="he_uniform", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(source, str) or not source:
            raise ValueError(f"source must name a layer. Received: source={source!r}")
        self.source = source
        self.keep_ratio = masks.validate_keep_ratio(keep_ratio)
        self.score_initializer = keras.initializers.get(score_initializer)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: the channel dimension must be known. Received: {input_shape}"
            )
        self.score = self.add_weight(
            name="score",
            shape=(int(input_shape[-1]),),
            initializer=self.score_initializer,
            autocast=False,
        )

    @property
    def prunes(self):
        """Whether the gate drops any channel."""
        return masks.kept_count(int(self.score.shape[0]), self.keep_ratio) < self.score.shape[0]

    def mask(self):
        """The 0/1 mask of the channels (straight-through to `score`)."""
        return masks.topk_mask(self.score, self.keep_ratio)

    def hard_mask(self):
        """The 0/1 mask of the channels, without a gradient."""
        return masks.hard_topk(self.score, self.keep_ratio)

    def call(self, inputs):
        if not self.prunes:
            return inputs
        return inputs * ops.cast(masks.current_mask(self), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "source": self.source,
                "keep_ratio": self.keep_ratio,
                "score_initializer": keras.initializers.serialize(self.score_initializer),
            }
        )
        return config


def _output_sizes(sizes, kernel_size, strides, padding):
    """The spatial output sizes of a convolution (None where the input's is unknown)."""
    result = []
    for size, k, s in zip(sizes, kernel_size, strides):
        if size is None:
            result.append(None)
        elif padding == "same":
            result.append((size + s - 1) // s)
        else:
            result.append((size - k) // s + 1)
    return tuple(result)


def _padding(padding):
    padding = str(padding).lower()
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same'. Received: padding={padding!r}")
    return padding


def _sizes(value, name, rank):
    """`value` (an int, or `rank` ints) as a tuple of `rank` positive ints."""
    if isinstance(value, int):
        value = (value,) * rank
    value = tuple(value)
    if len(value) != rank or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(
            f"{name} must be a positive int or {rank} of them. Received: {name}={value!r}"
        )
    return value


def is_scored(layer):
    """Whether `layer` is a score layer (its kernel is masked by its scores)."""
    return isinstance(layer, _Scored)


def is_gate(layer):
    """Whether `layer` is a `ChannelGate` (structured pruning)."""
    return isinstance(layer, ChannelGate)


def scored_layers(model):
    """All score layers of `model`, in order (nested models included)."""
    return [layer for layer in walk(model) if is_scored(layer)]


def channel_gates(model):
    """All channel gates of `model`, in order (nested models included)."""
    return [layer for layer in walk(model) if is_gate(layer)]


def mask_layers(model):
    """Every layer of `model` that owns scores and a mask: score layers and gates."""
    return [layer for layer in walk(model) if is_scored(layer) or is_gate(layer)]


def pruned_layers(model):
    """The layers of `model` whose masks drop something (weights or channels)."""
    return [layer for layer in mask_layers(model) if layer.prunes]


@contextlib.contextmanager
def masks_fixed(model):
    """Within the block, `model`'s masks are computed once, without gradient.

    For code that runs the same network many times with unchanged scores and
    needs no gradient to them, such as an evaluation attack.
    """
    with masks.reusing({layer: layer.hard_mask() for layer in pruned_layers(model)}):
        yield


def walk(model):
    """Every layer of `model`, nested models and their layers included, each once."""
    seen = set()
    for layer in _walk(model):
        if id(layer) not in seen:
            seen.add(id(layer))
            yield layer


def leaf_layers(model):
    """The layers of `model` that are not models themselves (nested models' layers included)."""
    return [layer for layer in walk(model) if not isinstance(layer, keras.Model)]


def _walk(layer):
    for sub in getattr(layer, "layers", []) or []:
        yield sub
        yield from _walk(sub)
