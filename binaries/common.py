"""Flags shared by the binaries (data, architecture, objective) and helpers.

Importing this module defines the flags; `objective_config()` and friends turn
them into the library's frozen config objects. The library never reads flags.
"""

import dataclasses
import sys

import keras
from absl import app
from absl import flags
from absl import logging

from hydra_tf import data
from hydra_tf import distribute
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.export import tflite
from hydra_tf.models import architectures
from hydra_tf.objectives import adversarial
from hydra_tf.objectives import attacks
from hydra_tf.objectives import mixtrain

DATASET = flags.DEFINE_enum("dataset", "fashion_mnist", data.SUPPORTED_DATASETS, "Dataset.")
DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Directory with local IDX files (mnist / fashion_mnist) or the TFDS data "
    "directory. Fashion-MNIST is read from /usr/share/datasets/fashion-mnist "
    "(apt-get install dataset-fashion-mnist) when this is not set.",
)
TRAIN_LIMIT = flags.DEFINE_integer(
    "train_limit", None, "Use only the first N training examples.", lower_bound=1
)
TEST_LIMIT = flags.DEFINE_integer(
    "test_limit", None, "Use only the first N test examples.", lower_bound=1
)
ARCH = flags.DEFINE_enum(
    "arch", "cnn_small", sorted(architectures.ARCHITECTURES), "Network architecture."
)
BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
OBJECTIVE = flags.DEFINE_enum("objective", "trades", objectives.OBJECTIVES, "Training objective.")
EPS = flags.DEFINE_float("eps", 0.1, "L-inf radius of the training attack.", lower_bound=0.0)
EVAL_EPS = flags.DEFINE_float(
    "eval_eps",
    None,
    "L-inf radius of the evaluation (attack and verified accuracy). Default: --eps in the "
    "pipeline and the study, the card's eps in zoo evaluate (smaller than --eps: networks "
    "trained at a larger radius than they are tested at).",
    lower_bound=0.0,
)
ATTACK_STEPS = flags.DEFINE_integer(
    "attack_steps", 10, "PGD steps of the training attack.", lower_bound=0
)
ATTACK_STEP_SIZE = flags.DEFINE_float(
    "attack_step_size", None, "PGD step size of the training attack (default eps / 4)."
)
BETA = flags.DEFINE_float("beta", 6.0, "TRADES / smoothing trade-off weight.", lower_bound=0.0)
ATTACK_START = flags.DEFINE_enum(
    "attack_start",
    None,
    adversarial.STARTS,
    "trades / pgd_at: where the training attack starts: gaussian (x + 0.001 N(0, I), TRADES' "
    "and the reference's; trades' default), uniform (the eps-ball, Madry et al.'s; pgd_at's "
    "default; sees ReLUs a perturbation switches on) or vertex (a random corner of the ball; "
    "sees first-layer thresholds just below eps), results/adversarial/README.md.",
)
flags.DEFINE_alias("trades_start", "attack_start")  # its name before PGD-AT took it
SIGMA = flags.DEFINE_float(
    "sigma",
    0.25,
    "Gaussian noise of the smoothing / gaussian objectives and of certification.",
    lower_bound=0.0,
)
EPS_WARMUP_EPOCHS = flags.DEFINE_float(
    "eps_warmup_epochs",
    0.0,
    "ibp / crown_ibp: epochs at eps 0 before the eps ramp (the CROWN-IBP code's schedule_start).",
    lower_bound=0.0,
)
EPS_RAMP_EPOCHS = flags.DEFINE_float(
    "eps_ramp_epochs",
    0.0,
    "ibp / crown_ibp: epochs over which eps grows from 0 to --eps, per step (0: full eps at "
    "once; the CROWN-IBP code's schedule_length - 1). The pipeline and the study ramp in "
    "pretraining only; prune and finetune train at full eps, as the reference does.",
    lower_bound=0.0,
)
EPS_RAMP = flags.DEFINE_enum(
    "eps_ramp",
    None,
    mixtrain.RAMPS,
    "Shape of the eps ramp: linear or smoothed (DeepMind's power-law start) per step, or "
    "epoch (linear, constant within an epoch; mixtrain only). Default: linear for ibp / "
    "crown_ibp, epoch for mixtrain (the references').",
)
KAPPA_START = flags.DEFINE_float(
    "kappa_start", 1.0, "ibp / crown_ibp: clean-loss weight at eps 0.", lower_bound=0.0
)
KAPPA_END = flags.DEFINE_float(
    "kappa_end",
    0.5,
    "ibp / crown_ibp: clean-loss weight at full eps (the CROWN-IBP code's final-kappa; the "
    "HYDRA code trains with 0).",
    lower_bound=0.0,
)
FINAL_BETA = flags.DEFINE_float(
    "final_beta",
    0.0,
    "crown_ibp: weight of the CROWN-IBP bound (against IBP) at full eps.",
    lower_bound=0.0,
)
LOSS_FUSION = flags.DEFINE_boolean(
    "loss_fusion",
    False,
    "crown_ibp: bound the cross-entropy itself with one CROWN row per example (loss fusion, "
    "faster) instead of CE of the margins' CROWN-IBP bounds.",
)
MIXTRAIN_SAMPLES = flags.DEFINE_integer(
    "mixtrain_samples",
    5,
    "mixtrain: examples per batch whose symbolic-interval loss is added (reference: 5 for "
    "the small network, 1 for the large one).",
    lower_bound=1,
)
MIXTRAIN_PROBABILITY = flags.DEFINE_float(
    "mixtrain_probability", 0.8, "mixtrain: chance that a batch adds the robust term."
)
MIXTRAIN_WEIGHT = flags.DEFINE_float(
    "mixtrain_weight",
    0.1,
    "mixtrain: initial weight of the robust term (x2.5 every --mixtrain_every epochs after "
    "the eps ramp, capped at 50).",
    lower_bound=0.0,
)
MIXTRAIN_EVERY = flags.DEFINE_float(
    "mixtrain_every",
    5.0,
    "mixtrain: epochs between two x2.5 growths of the robust term's weight (reference: 5; "
    "each phase restarts the schedule, as the reference's).",
)
flags.register_validator(
    "mixtrain_every", lambda value: value > 0, message="--mixtrain_every must be > 0."
)
FREE_REPLAYS = flags.DEFINE_integer(
    "free_replays",
    4,
    "free_at: times each minibatch is replayed (m); each replay is one optimizer update and "
    "one eps-sized step of the carried perturbation. --epochs count updates, so a phase "
    "makes ceil(epochs / m) passes over the data.",
    lower_bound=1,
)
OPTIMIZER = flags.DEFINE_enum("optimizer", "sgd", training.OPTIMIZERS, "Optimizer.")
WEIGHT_DECAY = flags.DEFINE_float(
    "weight_decay", 1e-4, "Weight decay (see --weight_decay_mode).", lower_bound=0.0
)
PRETRAIN_LR = flags.DEFINE_float(
    "pretrain_lr",
    None,
    "Pipeline / study: pretraining learning rate (default 0.1).",
    lower_bound=0.0,
)
FINETUNE_LR = flags.DEFINE_float(
    "finetune_lr",
    None,
    "Pipeline / study: finetuning learning rate (default 0.01).",
    lower_bound=0.0,
)
CROWN_LIMIT = flags.DEFINE_integer(
    "crown_limit",
    100,
    "Full-CROWN verified accuracy (evaluate --verify=crown; the pipeline and the study with "
    "ibp / crown_ibp) on the first N test examples only (0: none; it runs one backward pass "
    "per neuron).",
    lower_bound=0,
)
VERIFY_METHODS = flags.DEFINE_list(
    "verify_methods",
    None,
    "Pipeline / study with a verifiable objective: the bounds to verify with, the table's "
    "first (default ibp,crown_ibp,crown; for mixtrain e.g. symbolic,ibp).",
)
TRAIN_ONLY = flags.DEFINE_boolean(
    "train_only",
    False,
    "Pipeline / study: train every network and stop; the same command without this flag "
    "later reuses them and evaluates.",
)
SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
ATTACK = flags.DEFINE_enum(
    "attack",
    None,
    attacks.ATTACKS,
    "Evaluation attack: autoattack (standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square, each "
    "on the points still robust; the default except in the tiny preset), autoattack-extended "
    "(standard AutoAttack, then APGD-CE and APGD-DLR with 5 restarts and Square with 4 more: "
    "a lower bound on what the standard figure overstates), pgd (quick: PGD-50, 2 restarts) "
    "or one attack.",
)
WEIGHT_DECAY_MODE = flags.DEFINE_enum(
    "weight_decay_mode",
    "coupled",
    training.WEIGHT_DECAY_MODES,
    "coupled: L2 added to the gradient before momentum (PyTorch's weight_decay, as in the "
    "reference code); decoupled: Keras' weight_decay (about 10x weaker with momentum 0.9).",
)
PRUNE_BN = flags.DEFINE_enum(
    "prune_bn",
    "train",
    training.PRUNE_BN_MODES,
    "BatchNorm in the prune phase: train (the reference: gamma/beta trained, batch "
    "statistics), freeze_affine (the reference's --freeze_bn: gamma/beta frozen, batch "
    "statistics), freeze (inference mode with the dense network's statistics).",
)

GRANULARITY = flags.DEFINE_enum(
    "granularity",
    "weight",
    architectures.GRANULARITIES,
    "What the prune and finetune phases keep --keep_ratio of in each layer: weight "
    "(unstructured HYDRA) or channel (whole conv filters / dense units, removed at export "
    "so the network runs faster; the baseline becomes L1-norm filter pruning).",
)


def run_settings(phase=None):
    """The settings training, the pipeline and the study share, from the flags.

    The one place that turns the shared flags into config field values
    (`TrainConfig` and `PipelineConfig` have fields of these names): the data,
    the objective, the batch size, the seed and the training choices.

    Args:
      phase: "finetune" for one finetune run (`binaries.train`): its TRADES /
        PGD-AT attack starts at `adversarial.FINETUNE_START` unless
        --attack_start is given, as the pipeline's finetunes do.
    """
    objective = objective_config()
    if phase == "finetune" and not ATTACK_START.present:
        objective = adversarial.finetune_objective(objective)
    return {
        "dataset": DATASET.value,
        "data_dir": DATA_DIR.value,
        "train_limit": TRAIN_LIMIT.value,
        "test_limit": TEST_LIMIT.value,
        "objective": objective,
        "batch_size": BATCH_SIZE.value,
        "seed": SEED.value,
        "sync_batch_norm": SYNC_BATCH_NORM.value,
        "optimizer": OPTIMIZER.value,
        "weight_decay": WEIGHT_DECAY.value,
        "weight_decay_mode": WEIGHT_DECAY_MODE.value,
        "prune_bn": PRUNE_BN.value,
        "granularity": GRANULARITY.value,
    }


LWM_EQUAL_BUDGET = flags.DEFINE_boolean(
    "lwm_equal_budget",
    False,
    "Pipeline / study: LWM finetunes for --prune_epochs + --finetune_epochs (HYDRA's whole "
    "budget after pretraining) instead of --finetune_epochs.",
)
FINETUNE_ATTACK_START = flags.DEFINE_enum(
    "finetune_attack_start",
    None,
    adversarial.STARTS,
    "Pipeline / study, trades / pgd_at: where the finetune phase's attack starts (default: "
    "vertex, a random corner of the eps-ball, whatever --attack_start says; "
    "results/adversarial/README.md). Give --attack_start's value to finetune from the "
    "objective's own start (the reference's choice; this flag's default until 12-01).",
)
flags.DEFINE_alias("finetune_trades_start", "finetune_attack_start")
ALSO_PGD = flags.DEFINE_boolean(
    "also_pgd",
    False,
    "Pipeline / study: also attack every network with PGD (--eval_steps, --eval_restarts) "
    "beside AutoAttack, reported next to it.",
)


def pipeline_settings():
    """`run_settings()` plus what the pipeline and the study evaluate with."""
    settings = run_settings()
    return {
        **settings,
        "eval_eps": attack_eps(settings["objective"]),
        "crown_limit": CROWN_LIMIT.value,
        **{
            name: flag.value
            for name, flag in (("pretrain_lr", PRETRAIN_LR), ("finetune_lr", FINETUNE_LR))
            if flag.value is not None
        },
        **({"verify_methods": tuple(VERIFY_METHODS.value)} if VERIFY_METHODS.value else {}),
        "tflite_mode": TFLITE_MODE.value,
        "lwm_equal_budget": LWM_EQUAL_BUDGET.value,
        # Not given: the pipeline's default (`adversarial.FINETUNE_START`).
        "finetune_attack_start": FINETUNE_ATTACK_START.value or "default",
        "also_pgd": ALSO_PGD.value,
        **certify_settings(),
    }


CERTIFY_RADIUS = flags.DEFINE_float(
    "certify_radius",
    None,
    "Smoothing objectives: L2 radius whose certified accuracy the table reports (default 0.5).",
    lower_bound=0.0,
)
CERTIFY_N = flags.DEFINE_integer(
    "certify_n", None, "Smoothing objectives: estimation samples (preset default).", lower_bound=1
)
CERTIFY_LIMIT = flags.DEFINE_integer(
    "certify_limit", None, "Smoothing objectives: test examples certified.", lower_bound=1
)


# Objective config field -> the flag that sets it (`--attack_step_size`
# defaults to eps / 4 and is handled apart).
_OBJECTIVE_FLAGS = {
    "eps": EPS,
    "steps": ATTACK_STEPS,
    "beta": BETA,
    "start": ATTACK_START,
    "sigma": SIGMA,
    "warmup_epochs": EPS_WARMUP_EPOCHS,
    "ramp_epochs": EPS_RAMP_EPOCHS,
    "ramp": EPS_RAMP,
    "kappa_start": KAPPA_START,
    "kappa_end": KAPPA_END,
    "final_beta": FINAL_BETA,
    "loss_fusion": LOSS_FUSION,
    "samples": MIXTRAIN_SAMPLES,
    "probability": MIXTRAIN_PROBABILITY,
    "weight": MIXTRAIN_WEIGHT,
    "every": MIXTRAIN_EVERY,
    "replays": FREE_REPLAYS,
}


def objective_config(preset=None):
    """The config of the objective the flags describe (it keeps the settings it has).

    Args:
      preset: None, or an objective config (a preset's) that holds unless
        --objective is given; the other objective flags given on the
        command line still override its settings.
    """
    if preset is not None and not flags.FLAGS["objective"].present:
        values = dataclasses.asdict(preset)
        name = values.pop("name")
        values.update(
            {field: flag.value for field, flag in _OBJECTIVE_FLAGS.items() if flag.present}
        )
        if ATTACK_STEP_SIZE.present:
            values["step_size"] = ATTACK_STEP_SIZE.value
        return objectives.config(name, **values)
    step = ATTACK_STEP_SIZE.value
    if step is None:
        step = EPS.value / 4 if EPS.value > 0 else None
    # A flag without a value (--eps_ramp) leaves the objective's own default.
    values = {
        field: flag.value for field, flag in _OBJECTIVE_FLAGS.items() if flag.value is not None
    }
    return objectives.config(OBJECTIVE.value, step_size=step, **values)


def eval_eps():
    """--eval_eps, else --eps: the radius at which evaluate and export test a network."""
    return EPS.value if EVAL_EPS.value is None else EVAL_EPS.value


def attack_eps(objective):
    """`eval_eps` for a pipeline: --eval_eps, else --eps if the objective has no radius of its own.

    None leaves the objective's eps. Certified objectives (smoothing) have
    none; the TF Lite export still checks robust accuracy under PGD at --eps.
    """
    if EVAL_EPS.value is not None:
        return EVAL_EPS.value
    return None if hasattr(objective, "eps") else EPS.value


TFLITE_MODE = flags.DEFINE_enum(
    "tflite_mode",
    "auto",
    tflite.CHOICES,
    "TF Lite export: a mode, 'auto' (the smallest file that runs on XNNPACK and keeps "
    "accuracy) or 'none'.",
)


STRATEGY = flags.DEFINE_enum(
    "strategy",
    "default",
    distribute.STRATEGIES,
    "tf.distribute strategy: default (one device), mirrored (GPUs of this machine), "
    "multi_worker (machines listed in TF_CONFIG), tpu.",
)
NUM_GPUS = flags.DEFINE_integer(
    "num_gpus", None, "mirrored: use the first N GPUs (default: all).", lower_bound=1
)
DEVICES = flags.DEFINE_list("devices", None, "mirrored: explicit devices, e.g. /gpu:0,/gpu:2.")
TPU = flags.DEFINE_string("tpu", None, "tpu: the TPU's address (default: the local TPU).")
CPU_REPLICAS = flags.DEFINE_integer(
    "cpu_replicas",
    None,
    "Split the CPU into N logical devices, so mirrored runs N replicas without GPUs "
    "(for tests and trying the strategy out; it is not faster).",
    lower_bound=1,
)
SYNC_BATCH_NORM = flags.DEFINE_boolean(
    "sync_batch_norm",
    False,
    "BatchNorm statistics over the global batch of all replicas, not each replica's share "
    "(costs one all-reduce per BatchNorm layer and step; matters for small per-replica batches).",
)
MIXED_PRECISION = flags.DEFINE_boolean(
    "mixed_precision",
    False,
    "float16 compute with float32 variables, scores and masks (mixed_float16). Helps on "
    "GPUs with tensor cores (compute capability 7+); slower on CPUs.",
)
JIT_COMPILE = flags.DEFINE_boolean(
    "jit_compile",
    False,
    "Compile the training step with XLA. Helps on GPUs and TPUs (TPUs always compile); on "
    "this CPU it made the cnn_small step slower (295 vs 432 img/s).",
)


def strategy():
    """Applies the device flags and returns the `tf.distribute.Strategy` they ask for.

    Call it before any TensorFlow op runs (`--cpu_replicas` must split the CPU
    before TensorFlow starts).
    """
    if CPU_REPLICAS.value:
        distribute.split_cpu(CPU_REPLICAS.value)
    if MIXED_PRECISION.value:
        keras.mixed_precision.set_global_policy("mixed_float16")
    return distribute.make_strategy(
        STRATEGY.value, num_gpus=NUM_GPUS.value, devices=DEVICES.value, tpu_address=TPU.value
    )


def require_one_device(binary):
    """Refuses the distribution flags in a binary that runs on one device."""
    if STRATEGY.value != "default" or CPU_REPLICAS.value:
        raise app.UsageError(
            f"{binary} runs on one device; --strategy={STRATEGY.value} is not supported here "
            "(training, evaluation and the pipeline take it)."
        )


def certify_settings():
    """The certification flags a user set, as `PipelineConfig` field values."""
    values = {
        "certify_radius": CERTIFY_RADIUS.value,
        "certify_n": CERTIFY_N.value,
        "certify_limit": CERTIFY_LIMIT.value,
    }
    return {name: value for name, value in values.items() if value is not None}


def main_without_args(fn):
    """An absl `main` that rejects stray positional arguments, then runs `fn()`."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        run_or_exit(fn)

    return main


def run_or_exit(fn, *args):
    """Runs `fn`; expected failures end with a one-line error, not a traceback."""
    from hydra_tf import training
    from hydra_tf.pruning import phases

    expected = (
        ValueError,
        FileNotFoundError,
        phases.CheckpointMismatchError,
        training.NonFiniteLossError,
        training.CollapsedRunError,
        data.DatasetUnavailableError,
        distribute.StrategyError,
    )
    try:
        return fn(*args)
    except expected as error:
        logging.error("%s: %s", type(error).__name__, error)
        sys.exit(1)
