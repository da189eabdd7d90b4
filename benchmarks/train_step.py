"""Benchmarks the adversarial training step, the mask work and PGD-50 evaluation.

For each case (architecture, phase, keep ratio) it measures, on synthetic
images held in memory (so the input pipeline never limits the step):

- images_per_sec: batch / median time of one full training step (TRADES with
  PGD-10, then the optimizer update), after warm-up steps that include tracing;
- mask_share: median time of the mask work the step does (selecting each
  pruned layer's top-k; reading the cache of frozen masks) over the step time;
- peak_rss_mb: peak resident memory of the process that ran the case (each
  case runs in its own subprocess, so the figure is that case's);
- eval_images_per_sec: images per second of clean + PGD-50 (one restart) on
  the network, as `hydra_tf.evaluation` runs it.

Usage:
  python -m benchmarks.train_step              # the full table (~30 min)
  python -m benchmarks.train_step --quick      # cnn_small / prune / 0.1 only
  python -m benchmarks.train_step --json       # one JSON object per line
  python -m benchmarks.train_step --arch=cnn_small --jit_compile   # XLA
  python -m benchmarks.train_step --per_forward_masks   # the pre-issue-4 path
  python -m benchmarks.train_step --quick --cpu_replicas=2   # mirrored, 2 CPU devices
  python -m benchmarks.train_step --arch=resnet50 --objective=free_at --batch=32 \
      --skip_eval --keep_ratio=1 --keep_ratio=0.1     # ImageNet ResNet-50, free AT

With --objective=free_at a step replays its batch 4 times (4 optimizer
updates); images_per_sec counts the batch once, as a pass over the data does.
"""

import json
import resource
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging

import benchmarks

ARCHS = ("cnn_small", "cnn_large", "vgg16_bn", "resnet50")
DEFAULT_ARCHS = ("cnn_small", "vgg16_bn")
# (phase, keep ratio): pretrain is dense; a prune at keep 1 would train nothing,
# so keep 1 of a score network is measured in finetune.
CASES = (
    ("pretrain", 1.0),
    ("prune", 0.1),
    ("prune", 0.01),
    ("finetune", 1.0),
    ("finetune", 0.1),
    ("finetune", 0.01),
)
# Input shape, classes, L-inf eps and PGD step size per architecture (the
# settings each is trained with: Fashion-MNIST and CIFAR-10).
SETTINGS = {
    "cnn_small": ((28, 28, 1), 10, 0.1, 0.025),
    "cnn_large": ((28, 28, 1), 10, 0.1, 0.025),
    "vgg16_bn": ((32, 32, 3), 10, 8 / 255, 2 / 255),
    # ImageNet (HYDRA's free-AT setting: eps = step = 4/255; PGD-10 1/255).
    "resnet50": ((224, 224, 3), 1000, 4 / 255, 1 / 255),
}
# Repetitions of the timed step and of the timed evaluation batch.
REPEATS = {"cnn_small": (10, 3), "cnn_large": (5, 2), "vgg16_bn": (3, 1), "resnet50": (3, 1)}

_ARCH = flags.DEFINE_multi_enum(
    "arch", list(DEFAULT_ARCHS), ARCHS, "Architectures to measure (repeat the flag)."
)
_PHASE = flags.DEFINE_multi_enum(
    "phase",
    ["pretrain", "prune", "finetune"],
    ["pretrain", "prune", "finetune"],
    "Phases to measure (repeat the flag).",
)
_KEEP = flags.DEFINE_multi_float(
    "keep_ratio", None, "Only these keep ratios (repeat the flag; default: all cases)."
)
_BATCH = flags.DEFINE_integer("batch", 128, "Training batch size.", lower_bound=1)
_OBJECTIVE = flags.DEFINE_enum(
    "objective",
    "trades",
    ["trades", "free_at"],
    "The step's objective: TRADES with PGD-10, or free adversarial training (4 replays of "
    "each batch, so one step is 4 optimizer updates).",
)
_EVAL_BATCH = flags.DEFINE_integer(
    "eval_batch", None, "PGD-50 evaluation batch (default: 128, 32 for vgg16_bn).", lower_bound=1
)
_REPEATS = flags.DEFINE_integer(
    "repeats", None, "Timed training steps per case (default: 10, 3 for vgg16_bn).", lower_bound=1
)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing).", lower_bound=1)
_JSON = flags.DEFINE_boolean("json", False, "Print one JSON object per line.")
_QUICK = flags.DEFINE_boolean("quick", False, "Only cnn_small / prune / keep 0.1 (< 1 min).")
_SKIP_EVAL = flags.DEFINE_boolean("skip_eval", False, "Do not measure PGD-50 evaluation.")
_JIT = flags.DEFINE_boolean("jit_compile", False, "Compile the train step with XLA.")
_PER_FORWARD = flags.DEFINE_boolean(
    "per_forward_masks",
    False,
    "Compute the mask in every forward pass (the reference path) instead of once per step.",
)
_CPU_REPLICAS = flags.DEFINE_integer(
    "cpu_replicas",
    1,
    "Run the step under MirroredStrategy over this many logical CPU devices (the batch is "
    "global, split between them).",
    lower_bound=1,
)
_CASE = flags.DEFINE_string(
    "case", None, "Internal: run one case 'arch:phase:keep' in this process and print its JSON."
)


def _peak_rss_mb():
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(arch, phase, keep_ratio):
    """Measures one case in this process; returns its figures as a dict."""
    from hydra_tf import distribute

    if _CPU_REPLICAS.value > 1:
        distribute.split_cpu(_CPU_REPLICAS.value)
    import keras
    import numpy as np
    import tensorflow as tf

    from hydra_tf import evaluation
    from hydra_tf import objectives
    from hydra_tf.models import architectures
    from hydra_tf.models import layers
    from hydra_tf.objectives import attacks
    from hydra_tf.pruning import phases
    from hydra_tf.training import trainer as trainer_lib

    shape, classes, eps, step_size = SETTINGS[arch]
    steps_repeats, eval_repeats = REPEATS[arch]
    steps_repeats = _REPEATS.value or steps_repeats
    batch = _BATCH.value
    keras.utils.set_random_seed(0)

    strategy = (
        distribute.make_strategy("mirrored")
        if _CPU_REPLICAS.value > 1
        else distribute.make_strategy("default")
    )
    source = architectures.build(arch, shape, classes) if phase != "pretrain" else None
    with strategy.scope():
        network = phases.build_network(phase, arch, shape, classes, keep_ratio=keep_ratio)
        if source is not None:
            phases.prepare(network, phase, source)
        objective = objectives.make(
            objectives.config(_OBJECTIVE.value, eps=eps, steps=10, step_size=step_size, replays=4)
        )
        # Coupled weight decay 1e-4, the training default.
        model = trainer_lib.RobustTrainer(
            network, objective, reuse_masks=not _PER_FORWARD.value, l2=1e-4
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            jit_compile=_JIT.value,
        )
        model.optimizer.build(model.trainable_variables)

    rng = np.random.RandomState(0)
    images = rng.rand(batch, *shape).astype(np.float32)
    labels = rng.randint(0, classes, batch)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2)
    if strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    iterator = iter(dataset)
    model.make_train_function()

    def step():
        logs = model.train_function(iterator)
        float(logs["loss"])  # Wait for the step to finish.

    logging.info("%s/%s/%g: warm-up (tracing)", arch, phase, keep_ratio)
    for _ in range(_WARMUP.value):
        step()
    logging.info("%s/%s/%g: timing %d steps", arch, phase, keep_ratio, steps_repeats)
    step_seconds = benchmarks.median_seconds(step, steps_repeats)

    # The mask work of one step, compiled the way the step compiles it.
    pruned = layers.pruned_layers(network)
    if pruned:
        # The warm-up steps filled the cache of frozen masks that step_masks reads.
        if _PER_FORWARD.value:
            # The reference selects every mask in each forward pass:
            # 1 clean + 10 attack passes + 2 loss passes for TRADES.
            per_step = 13

            @tf.function(jit_compile=_JIT.value)
            def mask_work():
                return tf.add_n([tf.reduce_sum(layer.hard_mask()) for layer in pruned])
        else:
            per_step = 1

            @tf.function(jit_compile=_JIT.value)
            def mask_work():
                return tf.add_n([tf.reduce_sum(m) for m in model.step_masks().values()])

        mask_work()
        mask_seconds = per_step * benchmarks.median_seconds(lambda: float(mask_work()), 10)
    else:
        mask_seconds = 0.0

    result = {
        "arch": arch,
        "phase": phase,
        "keep_ratio": keep_ratio,
        "batch": batch,
        "objective": _OBJECTIVE.value,
        "images_per_sec": batch / step_seconds,
        "step_seconds": step_seconds,
        "mask_share": mask_seconds / step_seconds,
        "jit_compile": _JIT.value,
        "masks": "per_forward" if _PER_FORWARD.value else "once_per_step",
        "replicas": strategy.num_replicas_in_sync,
    }

    if not _SKIP_EVAL.value:
        eval_batch = _EVAL_BATCH.value or (32 if arch == "vgg16_bn" else 128)
        attack = attacks.PGDConfig(eps=eps, steps=50, step_size=step_size, restarts=1)

        counts = evaluation.batch_counter(network, attack)
        x_eval = tf.constant(images[:eval_batch])
        y_eval = tf.constant(labels[:eval_batch])
        step = tf.constant(0, tf.int64)  # the batch's index: keys its random start
        counts(x_eval, y_eval, step)
        logging.info("%s/%s/%g: timing PGD-50 evaluation", arch, phase, keep_ratio)
        eval_seconds = benchmarks.median_seconds(
            lambda: int(counts(x_eval, y_eval, step)[1]), eval_repeats
        )
        result["eval_batch"] = eval_batch
        result["eval_images_per_sec"] = eval_batch / eval_seconds

    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def _cases():
    if _QUICK.value:
        return [("cnn_small", "prune", 0.1)]
    return [
        (arch, phase, keep)
        for arch in _ARCH.value
        for phase, keep in CASES
        if phase in _PHASE.value and (not _KEEP.value or keep in _KEEP.value)
    ]


def _subprocess_case(arch, phase, keep_ratio):
    """Runs one case in a fresh interpreter, so its peak memory is its own."""
    passed = [
        f"--case={arch}:{phase}:{keep_ratio}",
        f"--batch={_BATCH.value}",
        f"--objective={_OBJECTIVE.value}",
        f"--warmup={_WARMUP.value}",
        f"--jit_compile={_JIT.value}",
        f"--per_forward_masks={_PER_FORWARD.value}",
        f"--skip_eval={_SKIP_EVAL.value}",
        f"--cpu_replicas={_CPU_REPLICAS.value}",
    ]
    if _REPEATS.value:
        passed.append(f"--repeats={_REPEATS.value}")
    if _EVAL_BATCH.value:
        passed.append(f"--eval_batch={_EVAL_BATCH.value}")
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", *passed],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(
            f"Case {arch}/{phase}/{keep_ratio} failed (exit {completed.returncode}):\n"
            f"{completed.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def _row(result):
    evaluation = result.get("eval_images_per_sec")
    return (
        f"{result['arch']:<10} {result['phase']:<9} {result['keep_ratio']:>5g} "
        f"{result['images_per_sec']:>9.1f} {100 * result['mask_share']:>7.1f}% "
        f"{result['peak_rss_mb']:>8.0f} "
        + (f"{evaluation:>9.1f}" if evaluation is not None else f"{'-':>9}")
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _CASE.value:
        arch, phase, keep = _CASE.value.split(":")
        print(json.dumps(run_case(arch, phase, float(keep))), flush=True)
        return
    if not _JSON.value:
        print(
            f"TRADES PGD-10 train step, batch {_BATCH.value}, "
            f"masks {'per forward pass' if _PER_FORWARD.value else 'once per step'}, "
            f"XLA {'on' if _JIT.value else 'off'}, {_CPU_REPLICAS.value} replica(s); "
            "medians after warm-up."
        )
        print(
            f"{'arch':<10} {'phase':<9} {'keep':>5} {'img/s':>9} {'masks':>8} "
            f"{'RSS MB':>8} {'PGD50/s':>9}"
        )
    for arch, phase, keep in _cases():
        result = _subprocess_case(arch, phase, keep)
        print(json.dumps(result) if _JSON.value else _row(result), flush=True)


if __name__ == "__main__":
    app.run(main)
