"""Reproduces the paper's central claim at small scale: HYDRA vs LWM over seeds.

For each --archs and --seeds it runs the pipeline (robust dense network, then
HYDRA and LWM at each of --keep_ratios, evaluated with standard AutoAttack
unless --attack says otherwise), and
writes to --output_dir:

  results.json   per (arch, method, keep ratio): mean and std over seeds
  results.md     tables shaped like the paper's Table 1, with the gap
  <arch>/plots/  robust accuracy vs pruning ratio, kept-weight magnitudes,
                 per-layer sparsity

Defaults: TRADES (beta 6) at L-inf eps 0.1 on the full Fashion-MNIST
training set (offline), cnn_small and cnn_large, seeds 0 and 1. Every run is
resumable: rerun the same command after a kill. With a smoothing objective
(--objective=smoothing or gaussian) the networks are certified instead of
attacked, and the tables report certified accuracy at --certify_radius.

Examples:
  python -m binaries.reproduce --workdir=runs/reproduce --output_dir=results/reproduce
  python -m binaries.reproduce --finetune_epochs=1 --arch_epochs=cnn_large=3/2/1
  # How far a long study is (the same flags, plus --progress): writes progress.md.
  python -m binaries.reproduce --finetune_epochs=1 --arch_epochs=cnn_large=3/2/1 --progress
  python -m binaries.reproduce --merge=studies/cnn_small,studies/cnn_large \
      --output_dir=results/reproduce
  python -m binaries.reproduce --objective=smoothing --sigma=0.25 --archs=cnn_small \
      --certify_limit=500 --workdir=runs/smoothing --output_dir=results/smoothing
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from binaries import common
from hydra_tf import files
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import records
from hydra_tf.experiments import reproduce
from hydra_tf.models import architectures

_WORKDIR = flags.DEFINE_string("workdir", "runs/reproduce", "Where the runs go.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/reproduce", "Where the study goes.")
_ARCHS = flags.DEFINE_list("archs", ["cnn_small", "cnn_large"], "Architectures.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
_KEEP_RATIOS = flags.DEFINE_list("keep_ratios", ["0.1", "0.05", "0.01"], "Keep ratios.")
_PRETRAIN_EPOCHS = flags.DEFINE_integer("pretrain_epochs", 5, "Pretrain epochs.", lower_bound=1)
_PRUNE_EPOCHS = flags.DEFINE_integer("prune_epochs", 2, "Prune epochs.", lower_bound=1)
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", 2, "Finetune epochs.", lower_bound=1)
_SCHEDULES = flags.DEFINE_list(
    "arch_epochs",
    [],
    "Per-architecture epochs replacing the three above, as <arch>=<pretrain>/<prune>/<finetune>, "
    "e.g. cnn_large=3/2/1.",
)
_MERGE = flags.DEFINE_list(
    "merge",
    [],
    "Instead of running: merge these study directories (each with a results.json, e.g. one "
    "per architecture) into one study in --output_dir.",
)
_PROGRESS = flags.DEFINE_boolean(
    "progress",
    False,
    "Write how far the study's runs are (progress.md in --output_dir: each network's state "
    "and the figures measured so far) from the workdir alone; trains and evaluates nothing.",
)
_PRUNE_LR = flags.DEFINE_float(
    "prune_lr",
    0.1,
    "Learning rate of the score training (prune phase). 0.1 (the reference's) trains both "
    "architectures at every ratio (results/fixes/README.md); 0.01 under-trains cnn_large at "
    "keep 0.01.",
    lower_bound=0.0,
)
_EVAL_STEPS = flags.DEFINE_integer("eval_steps", 50, "PGD steps (--attack=pgd).")
_EVAL_RESTARTS = flags.DEFINE_integer("eval_restarts", 2, "PGD restarts (--attack=pgd).")


def _merge():
    studies = []
    for directory in _MERGE.value:
        path = os.path.join(directory, "results.json")
        if not os.path.exists(path):
            raise app.UsageError(f"--merge: {path} not found.")
        with open(path) as f:
            studies.append(records.Study.from_json(json.load(f)))
    try:
        study = reproduce.merge(studies, _MERGE.value, _OUTPUT_DIR.value)
    except ValueError as error:
        raise app.UsageError(f"--merge: {error}")
    logging.info("\n%s", reproduce.markdown(study))


def _reproduce():
    if _MERGE.value:
        return _merge()
    strategy = common.strategy()
    unknown = sorted(set(_ARCHS.value) - set(architectures.ARCHITECTURES))
    if unknown:
        raise app.UsageError(
            f"Unknown --archs {unknown}. Supported: {sorted(architectures.ARCHITECTURES)}."
        )
    try:
        seeds = tuple(int(s) for s in _SEEDS.value)
        ratios = tuple(float(k) for k in _KEEP_RATIOS.value)
    except ValueError as error:
        raise app.UsageError(f"--seeds must be integers, --keep_ratios numbers: {error}")
    try:
        schedules = reproduce.parse_schedules(_SCHEDULES.value)
    except ValueError as error:
        raise app.UsageError(f"--arch_epochs: {error}")
    extra = sorted(set(schedules) - set(_ARCHS.value))
    if extra:
        raise app.UsageError(f"--arch_epochs names architectures not in --archs: {extra}.")
    base = pipeline.PipelineConfig(
        workdir=_WORKDIR.value,
        keep_ratios=ratios,
        pretrain_epochs=_PRETRAIN_EPOCHS.value,
        prune_epochs=_PRUNE_EPOCHS.value,
        prune_lr=_PRUNE_LR.value,
        finetune_epochs=_FINETUNE_EPOCHS.value,
        eval_steps=_EVAL_STEPS.value,
        eval_restarts=_EVAL_RESTARTS.value,
        eval_attack=common.ATTACK.value or "autoattack",
        **common.pipeline_settings(),
    )
    if _PROGRESS.value:
        networks = reproduce.progress(base, tuple(_ARCHS.value), seeds, schedules)
        text = reproduce.progress_markdown(networks, base)
        files.make_dir(_OUTPUT_DIR.value, "--output_dir")
        with open(os.path.join(_OUTPUT_DIR.value, "progress.md"), "w") as f:
            f.write(text)
        logging.info("\n%s", text)
        return
    study = reproduce.run(
        base,
        tuple(_ARCHS.value),
        seeds,
        _OUTPUT_DIR.value,
        strategy=strategy,
        jit_compile=common.JIT_COMPILE.value,
        schedules=schedules,
        train_only=common.TRAIN_ONLY.value,
    )
    if study is not None:
        logging.info("\n%s", reproduce.markdown(study))


if __name__ == "__main__":
    app.run(common.main_without_args(_reproduce))
