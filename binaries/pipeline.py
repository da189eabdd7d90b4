"""The main job: pretrain -> HYDRA prune -> finetune, plus the LWM baseline.

For each of --keep_ratios it trains a HYDRA network (prune, then finetune) and
an LWM network (finetune from the magnitude mask), all derived from one robust
dense network; evaluates each (clean + standard AutoAttack: APGD-CE, APGD-T,
FAB-T, Square, with the robust accuracy after each; --attack=pgd for quick
PGD-50 with 2 restarts, the tiny preset's choice; with --objective=smoothing
or gaussian, the certified accuracy of the smoothed classifier at
--certify_radius instead);
exports each (plain .keras + SavedModel); and writes <workdir>/results.json and
<workdir>/results.md (a table shaped like the paper's Table 1).

--granularity=channel prunes whole channels instead (structured HYDRA, against
L1-norm filter pruning; exported networks are physically smaller); its
results go to <workdir>/channels/, so one workdir can hold both runs
(binaries.deployment compares them).

With no flags it runs the `small` preset with TRADES at eps 0.1 on the real
Fashion-MNIST from Debian's dataset-fashion-mnist (offline), in under 15
minutes on a 2-core CPU. --preset=tiny takes seconds; --preset=paper uses the
paper's epochs and the full data (use a GPU); --preset=imagenet is HYDRA's
ImageNet setting (ResNet-50, free adversarial training at 4/255, see
`presets`). Flags given on the command line override a preset's values.
Rerunning resumes a killed run.

Example:
  python -m binaries.pipeline --workdir=runs/pipeline
  python -m binaries.pipeline --preset=paper --dataset=cifar10 --arch=vgg16_bn \
      --eps=0.031 --attack_step_size=0.0078 --workdir=runs/cifar_vgg
  # ImageNet on 8 GPUs (ILSVRC2012_img_{train,val}.tar in /data/tfds/downloads/manual):
  python -m binaries.pipeline --preset=imagenet --data_dir=/data/tfds \
      --strategy=mirrored --workdir=runs/imagenet
  # A dry run of that setting on random TFDS mock data (a few steps, on a CPU):
  python -m binaries.pipeline --preset=imagenet --mock_data=8 --train_limit=8 \
      --test_limit=4 --batch_size=4 --pretrain_epochs=4 --prune_epochs=4 \
      --finetune_epochs=4 --keep_ratios=0.1 --attack=pgd --eval_steps=2 \
      --tflite_mode=none --workdir=/tmp/imagenet_dry
"""

import contextlib
import dataclasses

from absl import app
from absl import flags
from absl import logging

from binaries import common
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import presets
from hydra_tf.experiments import report

_PRESET = flags.DEFINE_enum("preset", "small", sorted(presets.PRESETS), "Size preset.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/pipeline", "Output directory.")
_KEEP_RATIOS = flags.DEFINE_list(
    "keep_ratios",
    ["0.1", "0.05", "0.01"],
    "Fractions of weights (or, with --granularity=channel, channels) kept, each in (0, 1].",
)
_PRETRAIN_EPOCHS = flags.DEFINE_integer("pretrain_epochs", None, "Override the preset.")
_PRUNE_EPOCHS = flags.DEFINE_integer("prune_epochs", None, "Override the preset.")
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", None, "Override the preset.")
_EVAL_STEPS = flags.DEFINE_integer(
    "eval_steps", None, "Override the preset's PGD steps (--attack=pgd)."
)
_EVAL_RESTARTS = flags.DEFINE_integer(
    "eval_restarts", None, "Override the preset's PGD restarts (--attack=pgd)."
)
_PRUNE_LR = flags.DEFINE_float(
    "prune_lr",
    None,
    "Learning rate of the score training (default 0.1, measured in results/fixes/README.md).",
    lower_bound=0.0,
)


def _ratios(values):
    try:
        ratios = tuple(float(v) for v in values)
    except ValueError:
        return False
    return bool(ratios) and all(0.0 < r <= 1.0 for r in ratios)


flags.register_validator(
    "keep_ratios",
    _ratios,
    message="--keep_ratios must be numbers in (0, 1], comma-separated.",
)


_MOCK_DATA = flags.DEFINE_integer(
    "mock_data",
    None,
    "A dry run: TFDS datasets (ImageNet, CIFAR-10, SVHN) are replaced by this many random "
    "examples per split (tfds.testing.mock_data), to check a command before the data is there.",
    lower_bound=1,
)


def _mock_data():
    if _MOCK_DATA.value is None:
        return contextlib.nullcontext()
    import tensorflow_datasets as tfds  # slow to import; only for a dry run

    logging.warning("--mock_data: TFDS datasets are random mock data; the results mean nothing.")
    return tfds.testing.mock_data(
        num_examples=_MOCK_DATA.value, policy=tfds.testing.MockPolicy.USE_CODE
    )


# Settings a preset may hold that are also flags (a given flag wins).
_PRESET_FLAGS = (
    "dataset",
    "batch_size",
    "optimizer",
    "weight_decay",
    "pretrain_lr",
    "finetune_lr",
)


def config_from_flags():
    """The `PipelineConfig` the flags and the preset describe."""
    settings = dict(presets.PRESETS[_PRESET.value])
    shared = common.pipeline_settings()
    # The preset's values hold unless a flag sets them.
    for name in ("train_limit", "test_limit"):
        if shared[name] is None:
            del shared[name]
    for name in _PRESET_FLAGS:
        if name in settings and name in shared and not flags.FLAGS[name].present:
            del shared[name]
    if "objective" in settings:
        shared["objective"] = common.objective_config(preset=settings["objective"])
        shared["eval_eps"] = common.attack_eps(shared["objective"])
    arch = settings.pop("arch", None)
    if arch is None or flags.FLAGS["arch"].present:
        arch = common.ARCH.value
    overrides = {
        "pretrain_epochs": _PRETRAIN_EPOCHS.value,
        "prune_epochs": _PRUNE_EPOCHS.value,
        "finetune_epochs": _FINETUNE_EPOCHS.value,
        "eval_steps": _EVAL_STEPS.value,
        "eval_restarts": _EVAL_RESTARTS.value,
        "eval_attack": common.ATTACK.value,
        "prune_lr": _PRUNE_LR.value,
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings.update(shared)
    return pipeline.PipelineConfig(
        workdir=_WORKDIR.value,
        arch=arch,
        keep_ratios=tuple(float(k) for k in _KEEP_RATIOS.value),
        **settings,
    )


def _pipeline():
    strategy = common.strategy()
    config = config_from_flags()
    logging.info("Pipeline config: %s", dataclasses.asdict(config))
    with _mock_data():
        results = pipeline.run(
            config,
            strategy=strategy,
            jit_compile=common.JIT_COMPILE.value,
            train_only=common.TRAIN_ONLY.value,
        )
    if results.rows:
        logging.info("\n%s", report.results_markdown(results))


if __name__ == "__main__":
    app.run(common.main_without_args(_pipeline))
