"""The three HYDRA phases: which network is built and which variables train.

- pretrain: a plain (dense) network; every weight trains.
- prune: a score network (score layers, or channel gates for structured
  pruning); kernels and biases are frozen and the importance scores train.
  Scores start from the source weights' scaled magnitude (or a random init).
  BatchNorm trains as in the reference code (gamma / beta trained, batch
  statistics, moving averages updated), unless `prune_bn` says otherwise: a
  1% sub-network produces other activations than the dense network whose
  statistics it would otherwise be normalised with.
- finetune: a score network whose mask is frozen (scores do not train); the
  surviving weights, biases and BatchNorm train. Starting finetune from a dense
  source gives the LWM baseline (mask = top-k weight magnitude).
"""

import keras

from hydra_tf.models import architectures
from hydra_tf.models import kinds
from hydra_tf.models import layers as score_layers
from hydra_tf.models import scores

PHASES = ("pretrain", "prune", "finetune")
PRUNE_BN_MODES = ("train", "freeze_affine", "freeze")
SCORE_INITS = ("scaled",) + scores.RANDOM_INITS


class CheckpointMismatchError(ValueError):
    """A source checkpoint does not hold the network the run asks for."""


def validate_phase(phase):
    if phase not in PHASES:
        raise ValueError(f"Unknown phase {phase!r}. Supported: {', '.join(PHASES)}.")
    return phase


def validate_prune_bn(prune_bn):
    if prune_bn not in PRUNE_BN_MODES:
        raise ValueError(f"Unknown prune_bn {prune_bn!r}. Supported: {', '.join(PRUNE_BN_MODES)}.")
    return prune_bn


def build_network(
    phase,
    arch,
    input_shape,
    num_classes,
    keep_ratio=1.0,
    score_init="scaled",
    sync_batch_norm=False,
    granularity="weight",
):
    """Builds the network a phase trains (plain for pretrain, pruned at `granularity` otherwise)."""
    validate_phase(phase)
    if score_init not in SCORE_INITS:
        raise ValueError(f"Unknown score init {score_init!r}. Supported: {', '.join(SCORE_INITS)}.")
    if phase == "pretrain":
        return architectures.build(arch, input_shape, num_classes, sync_batch_norm=sync_batch_norm)
    initializer = "he_uniform" if score_init == "scaled" else score_init
    return architectures.build(
        arch,
        input_shape,
        num_classes,
        keep_ratio=keep_ratio,
        score_initializer=initializer,
        sync_batch_norm=sync_batch_norm,
        granularity=granularity,
    )


def _weighted_layers(model):
    """Layers that own variables, by name (nested models flattened)."""
    return {layer.name: layer for layer in score_layers.leaf_layers(model) if layer.weights}


def _variables(layer):
    return {v.name: v for v in layer.weights}


def transfer_weights(source, target):
    """Copies every variable of `target` that `source` has, by layer and name.

    Args:
      source: a trained model of the same architecture (plain or scored).
      target: the model to fill.

    Returns:
      True if the source provided scores for every score layer of the target.

    Raises:
      CheckpointMismatchError: if a layer or variable of the target is missing
        from the source or has another shape (another architecture).
    """
    if source.name != target.name:
        raise CheckpointMismatchError(
            f"The source checkpoint holds a {source.name!r} network, but this run "
            f"builds {target.name!r}. Use a checkpoint of the same --arch."
        )
    source_layers = _weighted_layers(source)
    problems = []
    scores_found = True
    for name, layer in _weighted_layers(target).items():
        if name not in source_layers:
            if score_layers.is_gate(layer):
                scores_found = False  # A dense source has no channel gates.
            else:
                problems.append(f"layer {name!r} is missing")
            continue
        available = _variables(source_layers[name])
        for var_name, var in _variables(layer).items():
            if var_name not in available:
                if var_name == "score":
                    scores_found = False
                    continue
                problems.append(f"variable {name}/{var_name} is missing")
            elif tuple(available[var_name].shape) != tuple(var.shape):
                problems.append(
                    f"{name}/{var_name} has shape {tuple(available[var_name].shape)}, "
                    f"expected {tuple(var.shape)}"
                )
            else:
                var.assign(available[var_name])
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointMismatchError(
            f"The source checkpoint does not match the {target.name!r} network being "
            f"built: {shown}{more}. Was it trained with another --arch, dataset or "
            "number of classes?"
        )
    return scores_found


def prepare(network, phase, source=None, score_init="scaled", prune_bn="train"):
    """Loads the source into `network` and sets what trains in `phase`.

    Args:
      network: built by `build_network` for `phase`.
      phase: one of `PHASES`.
      source: the model of the previous phase (required for prune and
        finetune; optional for pretrain, which then continues from it).
      score_init: "scaled" to set scores from the weight magnitude when the
        source has none; a random init name keeps the layer's random scores.
      prune_bn: BatchNorm in the prune phase: "train" (the reference code:
        gamma / beta train, batch statistics, moving averages updated),
        "freeze_affine" (the reference's --freeze_bn: gamma / beta frozen,
        batch statistics still used and updated) or "freeze" (inference mode
        with the source network's statistics, nothing updated).

    Returns:
      A short description of where the scores came from, for the logs.
    """
    validate_phase(phase)
    validate_prune_bn(prune_bn)
    if phase != "pretrain" and source is None:
        raise ValueError(
            f"The {phase} phase needs a source checkpoint (the model of the previous "
            "phase): pass --source_checkpoint."
        )
    origin = "none (dense)"
    if source is not None:
        scores_found = transfer_weights(source, network)
        if phase != "pretrain":
            if scores_found:
                origin = "source checkpoint"
            elif score_init == "scaled":
                scores.scaled_init(network)
                origin = "scaled weight magnitude"
            else:
                origin = f"random ({score_init})"
    set_trainable(network, phase, prune_bn)
    return origin


def set_trainable(network, phase, prune_bn="train"):
    """Sets which variables of `network` train in `phase` (its weights are in place).

    prune: the scores (and BatchNorm as `prune_bn` says); finetune: the
    surviving weights, with the pruned ones set to zero; pretrain: all.
    """
    validate_phase(phase)
    validate_prune_bn(prune_bn)
    for layer in _weighted_layers(network).values():
        if isinstance(layer, keras.layers.BatchNormalization):
            # Layer-level trainable=False also puts Keras BatchNorm in
            # inference mode; variable-level trainable=False only stops the
            # optimizer, and the layer keeps using batch statistics.
            frozen_layer = phase == "prune" and prune_bn == "freeze"
            frozen_affine = phase == "prune" and prune_bn != "train"
            layer.trainable = not frozen_layer
            for variable in (layer.gamma, layer.beta):
                if variable is not None:
                    variable.trainable = not frozen_affine
    for layer in score_layers.mask_layers(network):
        layer.score.trainable = phase == "prune"
    if phase != "pretrain":
        # Pruning trains scores only: every kernel and bias is frozen, those
        # of the plain conv / dense layers a channel gate scores included.
        for layer in _weighted_layers(network).values():
            if kinds.is_prunable(layer):
                layer.kernel.trainable = phase != "prune"
                if layer.bias is not None:
                    layer.bias.trainable = phase != "prune"
    for layer in score_layers.scored_layers(network):
        if phase == "finetune":
            # Zero the pruned weights: their gradient is exactly zero, so with
            # them at zero weight decay cannot move them either.
            layer.kernel.assign(layer.masked_kernel())
    if phase == "pretrain":
        for layer in _weighted_layers(network).values():
            layer.trainable = True
