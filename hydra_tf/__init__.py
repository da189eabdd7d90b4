"""hydra_tf: robustness-aware neural-network pruning (HYDRA) for Keras 3 on TensorFlow.

Data flows one way through the package:

  data -> architectures / layers (score layers, masks, scores)
       -> objectives (attacks) -> trainer / phases / training
       -> evaluation -> export; pipeline runs them all.
"""

from hydra_tf.architectures import ARCHITECTURES, LayerFactory, build
from hydra_tf.attacks import PGDConfig, pgd, robust_correct
from hydra_tf.data import DatasetInfo, DatasetUnavailableError, load, make_pipeline
from hydra_tf.evaluation import EvalResult, default_attack, evaluate
from hydra_tf.export import layer_sparsity, strip_scores
from hydra_tf.layers import ScoredConv2D, ScoredDense, scored_layers
from hydra_tf.masks import kept_count, sparsity, topk_mask
from hydra_tf.objectives import OBJECTIVES, ObjectiveConfig
from hydra_tf.phases import PHASES, CheckpointMismatchError, prepare, transfer_weights
from hydra_tf.pipeline import PRESETS, PipelineConfig
from hydra_tf.scores import scaled_init
from hydra_tf.trainer import RobustTrainer
from hydra_tf.training import NonFiniteLossError, TrainConfig, train

__all__ = [
    "ARCHITECTURES",
    "OBJECTIVES",
    "PHASES",
    "PRESETS",
    "CheckpointMismatchError",
    "DatasetInfo",
    "DatasetUnavailableError",
    "EvalResult",
    "LayerFactory",
    "NonFiniteLossError",
    "ObjectiveConfig",
    "PGDConfig",
    "PipelineConfig",
    "RobustTrainer",
    "ScoredConv2D",
    "ScoredDense",
    "TrainConfig",
    "build",
    "default_attack",
    "evaluate",
    "kept_count",
    "layer_sparsity",
    "load",
    "make_pipeline",
    "pgd",
    "prepare",
    "robust_correct",
    "scaled_init",
    "scored_layers",
    "sparsity",
    "strip_scores",
    "topk_mask",
    "train",
    "transfer_weights",
]
