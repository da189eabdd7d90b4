"""Export: fold masks into plain Keras layers, then `.keras` and SavedModel.

`strip_scores` rebuilds a network with plain `Conv2D` / `Dense` layers whose
kernels are the masked kernels (pruned entries exactly zero) and without the
channels that channel gates drop (`channels`), so the result
loads with `keras.saving.load_model(..., safe_mode=True)` and no custom
objects, and runs wherever Keras or TensorFlow does.
"""

import os

import keras
import numpy as np

from hydra_tf import files
from hydra_tf.export import channels
from hydra_tf.models import kinds
from hydra_tf.models import layers as score_layers
from hydra_tf.models import masks


def _plain_layer(layer, layer_plan=None):
    # The deployed model computes in float32 whatever policy it was trained
    # with (TF Lite makes its own float16 / int8 files from it).
    if kinds.kind(layer) == "channel_gate":
        return keras.layers.Identity(name=layer.name, dtype="float32")
    config = {**layer.get_config(), "dtype": "float32"}
    for key in score_layers.PRUNING_CONFIG_KEYS:
        config.pop(key, None)
    if layer_plan is not None and layer_plan.outputs is not None:
        for key in ("filters", "units"):
            if key in config:
                config[key] = len(layer_plan.outputs)
    return kinds.plain_class(layer).from_config(config)


def strip_scores(network):
    """A plain copy of `network` with every mask folded in and dropped channels removed.

    Score layers' masks are folded into their kernels (pruned entries
    exactly zero). Channel gates (structured pruning) become identities and
    the channels they drop are removed (`channels.plan`): the copy is a
    smaller network.

    Args:
      network: a functional model, possibly with score layers or gates.

    Returns:
      A new functional model with the same layer names and only built-in
      layers; its outputs equal the network's in inference mode.

    Raises:
      ChannelRemovalError: a gate whose channels cannot be removed, named.
    """
    plans = channels.plan(network)
    plain = keras.models.clone_model(
        network,
        clone_function=lambda layer: _plain_layer(layer, plans.get(layer.name)),
        recursive=True,
    )
    targets = {layer.name: layer for layer in score_layers.walk(plain)}
    for layer in score_layers.leaf_layers(network):
        target = targets[layer.name]
        if kinds.is_scored(layer):
            values = [np.asarray(kinds.kernel(layer))]
            if layer.use_bias:
                values.append(layer.bias.numpy())
        elif layer.weights and not score_layers.is_gate(layer):
            values = layer.get_weights()
        else:
            continue
        target.set_weights(channels.slice_weights(layer, values, plans.get(layer.name)))
    return plain


def kernels(model):
    """The conv and dense kernels of a plain model (the prunable weights), nested ones included."""
    return [layer.kernel for layer in score_layers.walk(model) if kinds.is_prunable(layer)]


def layer_sparsity(model):
    """{layer name: fraction of zero kernel entries} for a plain model."""
    return {
        layer.name: masks.sparsity([layer.kernel])
        for layer in score_layers.walk(model)
        if kinds.is_prunable(layer)
    }


def export(network, directory, name="model"):
    """Writes `<directory>/<name>.keras` (plain) and `<directory>/<name>_savedmodel`.

    Returns:
      (keras_path, saved_model_path, plain_model).
    """
    os.makedirs(directory, exist_ok=True)
    plain = strip_scores(network)
    keras_path = os.path.join(directory, f"{name}.keras")
    saved_model_path = os.path.join(directory, f"{name}_savedmodel")
    # A `.keras` zip has its own timestamps: rewriting an unchanged network
    # (a resumed evaluation) would make a file with the same model and other
    # bytes, which every saved study state would then hold again.
    if not _holds(keras_path, plain):
        plain.save(keras_path)
    plain.export(saved_model_path, verbose=False)
    return keras_path, saved_model_path, plain


def _holds(keras_path, plain):
    """Whether `keras_path` is a model with `plain`'s architecture and weights."""
    try:
        saved = files.load_network(keras_path)
    except (FileNotFoundError, ValueError):  # missing or unreadable: write it
        return False
    return saved.to_json() == plain.to_json() and all(
        np.array_equal(a, b) for a, b in zip(saved.get_weights(), plain.get_weights())
    )
