"""hydra_tf: robustness-aware neural-network pruning (HYDRA) for Keras 3 on TensorFlow.

Data flows one way through the package, one sub-package per stage:

  data -> models (score layers, masks, scores, layer kinds) + pruning (phases)
       -> objectives (losses, attacks, bounds) -> training (trainer, phase runs)
       -> evaluation (empirical, smoothing) -> export (plain, TF Lite);
  experiments (pipeline, study, plots) run them all, and `zoo` publishes
  and serves the networks they make. `distribute` (tf.distribute
  strategies, per-replica randomness) and `files` (shared files) serve
  every stage.
"""

from hydra_tf.data import DatasetInfo
from hydra_tf.data import DatasetUnavailableError
from hydra_tf.data import load
from hydra_tf.data import make_pipeline
from hydra_tf.distribute import make_strategy
from hydra_tf.evaluation import EvalResult
from hydra_tf.evaluation import default_attack
from hydra_tf.evaluation import evaluate
from hydra_tf.evaluation.smoothing import SmoothingConfig
from hydra_tf.evaluation.smoothing import certify_dataset
from hydra_tf.experiments.pipeline import PipelineConfig
from hydra_tf.experiments.presets import PRESETS
from hydra_tf.export import layer_sparsity
from hydra_tf.export import strip_scores
from hydra_tf.export.channels import ChannelRemovalError
from hydra_tf.export.costs import costs
from hydra_tf.export.tflite import TFLiteConversionError
from hydra_tf.export.tflite_verify import deploy
from hydra_tf.models.architectures import ARCHITECTURES
from hydra_tf.models.architectures import LayerFactory
from hydra_tf.models.architectures import build
from hydra_tf.models.layers import ChannelGate
from hydra_tf.models.layers import FastConv2D
from hydra_tf.models.layers import ScoredConv1D
from hydra_tf.models.layers import ScoredConv2D
from hydra_tf.models.layers import ScoredDense
from hydra_tf.models.layers import ScoredDepthwiseConv2D
from hydra_tf.models.layers import channel_gates
from hydra_tf.models.layers import scored_layers
from hydra_tf.models.masks import kept_count
from hydra_tf.models.masks import sparsity
from hydra_tf.models.masks import topk_mask
from hydra_tf.models.scores import scaled_init
from hydra_tf.objectives import OBJECTIVES
from hydra_tf.objectives import REGISTRY as OBJECTIVE_REGISTRY
from hydra_tf.objectives.attacks import PGDConfig
from hydra_tf.objectives.attacks import pgd
from hydra_tf.objectives.attacks import robust_correct
from hydra_tf.pruning.phases import PHASES
from hydra_tf.pruning.phases import CheckpointMismatchError
from hydra_tf.pruning.phases import prepare
from hydra_tf.pruning.phases import transfer_weights
from hydra_tf.pruning.wrapping import UnwrappableModelError
from hydra_tf.pruning.wrapping import prune
from hydra_tf.pruning.wrapping import set_phase
from hydra_tf.pruning.wrapping import strip
from hydra_tf.training import NonFiniteLossError
from hydra_tf.training import TrainConfig
from hydra_tf.training import train
from hydra_tf.training.trainer import RobustTrainer

__all__ = [
    "ARCHITECTURES",
    "OBJECTIVES",
    "OBJECTIVE_REGISTRY",
    "PHASES",
    "PRESETS",
    "ChannelGate",
    "ChannelRemovalError",
    "CheckpointMismatchError",
    "DatasetInfo",
    "DatasetUnavailableError",
    "EvalResult",
    "FastConv2D",
    "LayerFactory",
    "NonFiniteLossError",
    "PGDConfig",
    "PipelineConfig",
    "RobustTrainer",
    "ScoredConv1D",
    "ScoredConv2D",
    "ScoredDense",
    "ScoredDepthwiseConv2D",
    "SmoothingConfig",
    "TFLiteConversionError",
    "TrainConfig",
    "UnwrappableModelError",
    "build",
    "certify_dataset",
    "channel_gates",
    "costs",
    "default_attack",
    "deploy",
    "evaluate",
    "kept_count",
    "layer_sparsity",
    "load",
    "make_pipeline",
    "make_strategy",
    "pgd",
    "prepare",
    "prune",
    "robust_correct",
    "scaled_init",
    "scored_layers",
    "set_phase",
    "sparsity",
    "strip",
    "strip_scores",
    "topk_mask",
    "train",
    "transfer_weights",
]
