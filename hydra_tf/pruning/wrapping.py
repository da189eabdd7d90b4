"""HYDRA for any Keras 3 model: wrap its layers in score layers or gates, strip them again.

`prune(model, keep_ratio, granularity)` takes a built functional or Sequential
model (keras.applications networks, nested models and shared layers
included) and returns the same graph, pruned:

- granularity "weight": every selected Conv1D / Conv2D / DepthwiseConv2D /
  Dense becomes its score layer (`hydra_tf.models.layers`) with the same
  settings and weights, keeping `keep_ratio` of its kernel;
- granularity "channel": a `ChannelGate` follows each selected conv / dense
  layer's output chain (its BatchNorm, activation, padding, pooling, and a
  depthwise convolution that keeps one channel per input channel), where
  the dropped channels can be removed from the exported network
  (`hydra_tf.export.channels.gate_position`); a layer whose channels reach
  an addition, a concatenation or the network's output keeps them all.

The scores start from the weights' scaled magnitude (or a random init), so
the result is ready for HYDRA's prune phase: `set_phase(pruned, "prune")`,
train, `set_phase(pruned, "finetune")`, train, `strip(pruned)` for a plain
Keras model to save or convert to TF Lite.

What cannot be wrapped is refused by name (`UnwrappableModelError`): a
subclassed model, a layer setting the score layers do not have (dilation,
groups, channels-first data, regularizers, constraints, LoRA, quantization),
a custom layer hiding conv / dense layers, a model that ends in a softmax.
"""

import keras
from absl import logging
from keras.src.models.functional import Functional  # Keras has no public name for it.

from hydra_tf import export
from hydra_tf.export import channels
from hydra_tf.models import architectures
from hydra_tf.models import kinds
from hydra_tf.models import layers as score_layers
from hydra_tf.models import masks
from hydra_tf.models import scores
from hydra_tf.pruning import phases


class UnwrappableModelError(ValueError):
    """A model, or one of its layers, that `prune` cannot wrap (named in the message)."""


# Layer kind -> (score layer class, the config keys it takes).
_SHARED_KEYS = ("name", "trainable", "dtype", "activation", "use_bias", "bias_initializer")
_CONV_KEYS = ("filters", "kernel_size", "strides", "padding", "kernel_initializer")
_SCORED = {
    "dense": (score_layers.ScoredDense, ("units", "kernel_initializer")),
    "conv2d": (score_layers.ScoredConv2D, _CONV_KEYS),
    "conv1d": (score_layers.ScoredConv1D, _CONV_KEYS),
    "depthwise_conv2d": (
        score_layers.ScoredDepthwiseConv2D,
        ("kernel_size", "strides", "padding", "depth_multiplier", "depthwise_initializer"),
    ),
}
# Config keys a score layer does not have, with the only values it supports.
_PLAIN_ONLY = {
    "data_format": ("channels_last",),
    "dilation_rate": (1,),
    "groups": (1,),
    "padding": ("valid", "same"),
    "lora_rank": (None, 0),
    "quantization_config": (None,),
    "kernel_regularizer": (None,),
    "depthwise_regularizer": (None,),
    "bias_regularizer": (None,),
    "activity_regularizer": (None,),
    "kernel_constraint": (None,),
    "depthwise_constraint": (None,),
    "bias_constraint": (None,),
}


def _unsupported_settings(config):
    found = []
    for key, allowed in _PLAIN_ONLY.items():
        if key not in config:
            continue
        value = config[key]
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if any(v not in allowed for v in values):
            found.append(f"{key}={value!r}")
    return found


def scored_copy(layer, keep_ratio, score_initializer="he_uniform"):
    """A score layer with `layer`'s settings (unbuilt, no weights), keeping `keep_ratio`.

    Raises:
      UnwrappableModelError: a setting the score layer does not have, named.
    """
    kind = kinds.kind(layer)
    if kind not in _SCORED:
        raise UnwrappableModelError(
            f"Layer {layer.name!r} ({type(layer).__name__}) is not a Conv1D, Conv2D, "
            "DepthwiseConv2D or Dense layer."
        )
    config = layer.get_config()
    problems = _unsupported_settings(config)
    policy = getattr(layer, "dtype_policy", None)
    if policy is not None and getattr(policy, "quantization_mode", None):
        problems.append(f"dtype policy {policy.name!r}")
    if problems:
        raise UnwrappableModelError(
            f"Cannot prune layer {layer.name!r} ({type(layer).__name__}): "
            f"{', '.join(problems)} is not supported by its score layer. "
            "Leave it out with prune(..., layers=...)."
        )
    cls, keys = _SCORED[kind]
    values = {key: config[key] for key in _SHARED_KEYS + keys if key in config}
    return cls(keep_ratio=keep_ratio, score_initializer=score_initializer, **values)


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise UnwrappableModelError(f"Expected a keras.Model. Received: {type(model).__name__}.")
    if not model.built or not isinstance(model, (keras.Sequential, Functional)):
        raise UnwrappableModelError(
            f"Model {model.name!r} ({type(model).__name__}) is not a built functional or "
            "Sequential model: its graph cannot be rebuilt with score layers. Subclassed "
            "models can use the score layers directly (hydra_tf.ScoredConv2D, ...)."
        )
    for layer in score_layers.walk(model):
        if isinstance(layer, keras.Model):
            if not isinstance(layer, (keras.Sequential, Functional)):
                raise UnwrappableModelError(
                    f"Nested model {layer.name!r} ({type(layer).__name__}) is subclassed: "
                    "its graph cannot be rebuilt."
                )
            continue
        hidden = [
            sub.name
            for sub in layer._flatten_layers(include_self=False, recursive=True)
            if kinds.is_prunable(sub)
        ]
        if hidden:
            raise UnwrappableModelError(
                f"Layer {layer.name!r} ({type(layer).__name__}) holds conv / dense layers "
                f"({', '.join(hidden)}) that prune cannot reach; build it from Keras layers "
                "in a functional model."
            )
    if score_layers.mask_layers(model):
        raise UnwrappableModelError(
            f"Model {model.name!r} already has score layers or channel gates; "
            "strip(model) gives its plain form."
        )
    _check_logits(model)


def _check_logits(model):
    for output in model.outputs:
        layer = output._keras_history.operation
        activation = getattr(layer, "activation", None)
        name = keras.activations.serialize(activation) if activation is not None else None
        if name == "softmax" or type(layer).__name__ == "Softmax":
            raise UnwrappableModelError(
                f"Model {model.name!r} ends in a softmax ({layer.name!r}): the objectives, "
                "attacks and bounds need logits. Build it without the final softmax "
                "(keras.applications: classifier_activation=None)."
            )


def _selected(model, layers):
    """The prunable layers of `model` that `layers` selects (all of them for None)."""
    prunable = [layer for layer in score_layers.walk(model) if kinds.is_prunable(layer)]
    if layers is None:
        return prunable
    if callable(layers):
        return [layer for layer in prunable if layers(layer)]
    if isinstance(layers, str):
        raise TypeError(f"layers must be a collection of names, not a string: {layers!r}.")
    names = set(layers)
    unknown = sorted(names - {layer.name for layer in prunable})
    if unknown:
        raise ValueError(
            f"layers names {', '.join(map(repr, unknown))}, which are not conv / dense layers "
            f"of {model.name!r}."
        )
    return [layer for layer in prunable if layer.name in names]


def _gate_positions(model, selected):
    """{name of the layer after which a gate goes: source name}, skipping what cannot go."""
    outputs = {output._keras_history.operation.name for output in model.outputs}
    positions = {}
    for layer in selected:
        if kinds.kind(layer) == "depthwise_conv2d":
            continue  # Its channels are its input's: pruned with its source's.
        try:
            end = channels.gate_position(layer)
        except channels.ChannelRemovalError as error:
            logging.info("Channels of %s stay: %s", layer.name, error)
            continue
        if end.name in outputs:
            logging.info("Channels of %s stay: they are an output of the model.", layer.name)
            continue
        positions[end.name] = layer.name
    return positions


def _check_unique_names(model):
    """Weights move between a model and its pruned copy by layer name: names must be unique."""
    seen = set()
    for layer in score_layers.leaf_layers(model):
        if layer.weights and layer.name in seen:
            raise UnwrappableModelError(
                f"Two layers of {model.name!r} are named {layer.name!r} (in different nested "
                "models): their weights cannot be told apart. Give them unique names."
            )
        seen.add(layer.name)


def prune(model, keep_ratio, granularity="weight", layers=None, score_init="scaled"):
    """A copy of `model` whose conv / dense layers are pruned by trainable scores.

    Args:
      model: a built functional or Sequential Keras 3 model that outputs logits.
      keep_ratio: fraction of each pruned layer's weights (granularity
        "weight") or output channels ("channel") kept, in (0, 1].
      granularity: "weight" or "channel".
      layers: which conv / dense layers to prune: None for all, a collection
        of layer names, or a function of the layer returning True to prune
        it (e.g. leave the first and last layers dense).
      score_init: "scaled" (from the weights' magnitude, or filter L1 norms
        for channels; HYDRA's start) or a random initializer name.

    Returns:
      The pruned model: same name, layer names and weights; its scores
      train in the prune phase (`set_phase`).

    Raises:
      UnwrappableModelError: what cannot be wrapped, named.
      ValueError: a bad keep ratio, granularity, score init or layer name.
    """
    keep_ratio = masks.validate_keep_ratio(keep_ratio)
    architectures.validate_granularity(granularity)
    if score_init not in phases.SCORE_INITS:
        raise ValueError(
            f"Unknown score init {score_init!r}. Supported: {', '.join(phases.SCORE_INITS)}."
        )
    _check_model(model)
    _check_unique_names(model)
    selected = _selected(model, layers)
    initializer = "he_uniform" if score_init == "scaled" else score_init
    if granularity == "weight":
        chosen = {id(layer) for layer in selected}

        def clone(layer):
            if id(layer) in chosen:
                return scored_copy(layer, keep_ratio, initializer)
            return layer.__class__.from_config(layer.get_config())

        pruned = keras.models.clone_model(model, clone_function=clone, recursive=True)
    else:
        if isinstance(model, keras.Sequential):
            # Its functional graph, which `call_function` needs (same layers).
            single = len(model.inputs) == 1 and len(model.outputs) == 1
            model = keras.Model(
                model.inputs[0] if single else model.inputs,
                model.outputs[0] if single else model.outputs,
                name=model.name,
            )
        positions = _gate_positions(model, selected)

        def call(layer, *args, **kwargs):
            outputs = layer(*args, **kwargs)
            source = positions.get(layer.name)
            if source is None:
                return outputs
            gate = score_layers.ChannelGate(
                source,
                keep_ratio=keep_ratio,
                score_initializer=initializer,
                name=f"{source}_channels",
            )
            return gate(outputs)

        pruned = keras.models.clone_model(model, call_function=call, recursive=True)
    if not score_layers.mask_layers(pruned):
        raise ValueError(f"Nothing of {model.name!r} can be pruned at granularity {granularity!r}.")
    phases.transfer_weights(model, pruned)
    if score_init == "scaled":
        scores.scaled_init(pruned)
    logging.info(
        "Pruned %s at %s granularity, keep %g: %d score layers, %d channel gates.",
        model.name,
        granularity,
        keep_ratio,
        len(score_layers.scored_layers(pruned)),
        len(score_layers.channel_gates(pruned)),
    )
    return pruned


def set_phase(network, phase, prune_bn="train"):
    """Sets what trains in a HYDRA phase of a pruned model (`prune`'s result).

    "prune": only the scores (and BatchNorm, per `prune_bn`: "train",
    "freeze_affine" or "freeze"); "finetune": the surviving weights, with
    the masks frozen and the pruned weights set to zero; "pretrain":
    everything. Compile (or re-create the `RobustTrainer`) after changing it.
    """
    phases.set_trainable(network, phase, prune_bn)


def strip(network):
    """The plain Keras model of a pruned one: masks folded, dropped channels removed."""
    return export.strip_scores(network)
