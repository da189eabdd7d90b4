"""Runs one phase: data -> network -> objective -> `model.fit` -> checkpoint.

`train(config)` is what `binaries/train.py` and the pipeline call. A run owns
its work directory:

    <workdir>/config.json     the resolved configuration
    <workdir>/model.keras     the trained network (written when training ends)
    <workdir>/history.csv     per-epoch metrics
    <workdir>/backup/         state for resuming a killed run (Keras
                              BackupAndRestore; removed when training ends)
    <workdir>/tensorboard/    TensorBoard logs

Running the same config again resumes a killed run from its last finished
epoch, and returns at once if the run already finished.

`config.epochs` count gradient computations. An objective that replays each
batch (`free_at`, m times) makes ceil(epochs / m) passes over the data
(`objectives.data_epochs`); the fit's epochs, the history, the backups and
the progress lines count those passes, and the learning-rate schedule spans
the optimizer's updates (m per batch).
"""

import dataclasses
import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from hydra_tf import data
from hydra_tf import distribute
from hydra_tf import files
from hydra_tf import objectives
from hydra_tf.models import architectures
from hydra_tf.pruning import phases
from hydra_tf.training import trainer as trainer_lib

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
# coupled: L2 added to the gradient before momentum / Adam (PyTorch's
# `weight_decay`, the reference code's); decoupled: Keras' `weight_decay`
# (w -= lr * wd * w after the update, as in AdamW).
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
# BatchNorm while pruning; see `phases.prepare`.
PRUNE_BN_MODES = phases.PRUNE_BN_MODES
# Bumped when training changes what a configuration computes, so that a
# finished run of older code is not mistaken for a run of this one.
# 2: exact (unclipped) TRADES / smoothing KL; coupled weight decay and
#    trained BatchNorm in the prune phase by default.
REVISION = 2
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class CollapsedRunError(RuntimeError):
    """The network fell to a constant output (chance-level accuracy)."""


# A network "collapsed" when it gives one class for at least this share of the
# check images and its accuracy is below twice chance; it is "healthy" when
# neither holds. A run stops when a healthy network collapses.
_COLLAPSE_SHARE = 0.9
_CHECK_IMAGES = 512
# A run from scratch (no source checkpoint) still collapsed after this many
# epochs and steps never took off, and stops. PGD-AT at eps 0.1 and lr 0.1
# left cnn_large (no BatchNorm) at chance after 2 epochs (938 steps); lr 0.01
# reached 75% clean validation accuracy within 200 steps
# (results/adversarial/README.md, "cnn_large, PGD-AT").
_STUCK_EPOCHS = 2
_STUCK_STEPS = 500
_LOWER_LR = "Lower the learning rate (a new --workdir for the new setting)."


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one phase run needs; binaries build it from flags."""

    workdir: str
    phase: str = "pretrain"
    arch: str = "cnn_small"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    # A config of `objectives.REGISTRY` (by default TRADES at 8/255).
    objective: object = dataclasses.field(default_factory=objectives.TradesConfig)
    keep_ratio: float = 1.0
    # "weight" (unstructured HYDRA) or "channel" (structured: channel gates).
    granularity: str = "weight"
    score_init: str = "scaled"
    source_checkpoint: str | None = None
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_mode: str = "coupled"
    prune_bn: str = "train"
    schedule: str = "cosine"
    # BatchNorm statistics over all replicas' examples (tf.distribute).
    sync_batch_norm: bool = False
    seed: int = 0
    revision: int = REVISION

    def __post_init__(self):
        phases.validate_phase(self.phase)
        objectives.make(self.objective)  # Raises on an unknown objective or bad settings.
        data.info(self.dataset)  # Raises on an unknown dataset.
        if self.phase == "pretrain" and self.keep_ratio != 1.0:
            raise ValueError(
                f"pretrain trains a dense network; keep_ratio must be 1. "
                f"Received: keep_ratio={self.keep_ratio}"
            )
        if self.phase == "prune" and self.keep_ratio == 1.0:
            raise ValueError(
                "prune with keep_ratio 1 would train nothing (every weight is kept "
                "whatever the scores); pass --keep_ratio below 1."
            )
        if self.phase != "pretrain" and not self.source_checkpoint:
            raise ValueError(
                f"The {self.phase} phase needs --source_checkpoint (the model of the "
                "previous phase)."
            )
        if self.score_init not in phases.SCORE_INITS:
            raise ValueError(
                f"Unknown score init {self.score_init!r}. "
                f"Supported: {', '.join(phases.SCORE_INITS)}."
            )
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1]. Received: {self.keep_ratio}")
        architectures.validate_granularity(self.granularity)
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1. Received: epochs={self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1. Received: batch_size={self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Unknown optimizer {self.optimizer!r}. Supported: {', '.join(OPTIMIZERS)}."
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"Unknown schedule {self.schedule!r}. Supported: {', '.join(SCHEDULES)}."
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0. Received: {self.learning_rate}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0. Received: {self.weight_decay}")
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"Unknown weight_decay_mode {self.weight_decay_mode!r}. "
                f"Supported: {', '.join(WEIGHT_DECAY_MODES)}."
            )
        if self.prune_bn not in PRUNE_BN_MODES:
            raise ValueError(
                f"Unknown prune_bn {self.prune_bn!r}. Supported: {', '.join(PRUNE_BN_MODES)}."
            )

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values):
        values = dict(values)
        values["objective"] = objectives.from_json(values["objective"])
        # A config written before revision 2 trained with what is now the
        # other choice; say so rather than take today's defaults.
        values.setdefault("revision", 1)
        if values["revision"] < 2:
            values.setdefault("weight_decay_mode", "decoupled")
            values.setdefault("prune_bn", "freeze")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model_path: str
    history: dict
    seconds: float
    resumed: bool


def make_optimizer(config, steps_per_epoch):
    """The optimizer and learning-rate schedule of `config`.

    Decoupled weight decay is the optimizer's (Keras `weight_decay`); coupled
    weight decay is not, it is `coupled_l2(config)` given to the trainer.
    """
    lr = config.learning_rate
    if config.schedule == "cosine":
        # Over the run's optimizer updates: `replays` per batch for free_at.
        passes = objectives.data_epochs(config.objective, config.epochs)
        updates = passes * steps_per_epoch * objectives.replays(config.objective)
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=updates)
    decay = (config.weight_decay if config.weight_decay_mode == "decoupled" else 0.0) or None
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=config.momentum, weight_decay=decay)
    return keras.optimizers.Adam(lr, weight_decay=decay)


def coupled_l2(config):
    """The trainer's coupled L2 coefficient (0 with decoupled weight decay)."""
    return config.weight_decay if config.weight_decay_mode == "coupled" else 0.0


class _StopOnNonFinite(keras.callbacks.Callback):
    """Raises as soon as the loss is not finite, before anything is saved.

    Raising (rather than setting `stop_training`) keeps the BackupAndRestore
    state of the last finished epoch untouched, so the last good state survives.
    """

    def __init__(self, backup_dir):
        super().__init__()
        self._backup_dir = backup_dir
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"The training loss became {float(loss)} at epoch {self._epoch + 1}, "
                f"batch {batch + 1}; training stopped. The state of the last finished "
                f"epoch is kept in {self._backup_dir} and is resumed by rerunning the "
                "same command; lower the learning rate (or check the data) first."
            )


class _StopOnCollapse(keras.callbacks.Callback):
    """Raises when a network falls to a constant output, or never leaves it.

    A learning rate that is too high can drive a phase into a constant output
    (validation accuracy at chance level) without any NaN: one prune run of
    the reproduction did so at lr 0.1. Checked on a few test images after
    each epoch, against the network at the start of the run and after each
    earlier epoch: a network that falls there stops the run. One that starts
    there (an LWM mask that already kills the network) is not stopped, except
    a run from scratch still there after `_STUCK_EPOCHS` epochs and
    `_STUCK_STEPS` steps: it never took off. A start whose output does not
    depend on the input is logged as a warning: no gradient reaches what lies
    in front of the layer that passes nothing (cnn_large's PGD-AT network at
    keep 0.01, whose first layer keeps 3 weights and lets no image through,
    stayed at chance through its prune and finetune). Raising before
    BackupAndRestore saves keeps the last good epoch, as `_StopOnNonFinite`
    does.
    """

    def __init__(
        self, images, labels, num_classes, backup_dir, name, from_scratch=False, steps_per_epoch=0
    ):
        super().__init__()
        self._images = images
        self._labels = np.asarray(labels)
        self._chance = 1.0 / num_classes
        self._backup_dir = backup_dir
        self._name = name
        self._from_scratch = from_scratch
        self._steps_per_epoch = steps_per_epoch
        self._was_healthy = False

    def _logits(self):
        return np.asarray(self.model(self._images, training=False))

    def _state(self, logits=None):
        logits = self._logits() if logits is None else logits
        predicted = np.argmax(logits, axis=-1)
        accuracy = float(np.mean(predicted == self._labels))
        share = float(np.max(np.bincount(predicted)) / len(predicted))
        return accuracy, share

    def _healthy(self, accuracy, share):
        return accuracy >= 2 * self._chance and share < _COLLAPSE_SHARE

    def _collapsed(self, accuracy, share):
        return accuracy < 2 * self._chance and share >= _COLLAPSE_SHARE

    def on_train_begin(self, logs=None):
        logits = self._logits()
        self._was_healthy = self._healthy(*self._state(logits))
        if _input_independent(logits):
            logging.warning(
                "%s starts from a network whose output is the same for all %d test images "
                "it is checked on: some layer passes no signal (at a high pruning ratio a "
                "layer can keep too few weights, or only dead ones), and no gradient reaches "
                "the weights or scores in front of it, so this run is unlikely to leave "
                "chance. A lower pruning ratio or another dense network avoids it.",
                self._name,
                len(self._labels),
            )

    def on_epoch_end(self, epoch, logs=None):
        accuracy, share = self._state()
        if self._healthy(accuracy, share):
            self._was_healthy = True
        elif self._was_healthy and self._collapsed(accuracy, share):
            raise CollapsedRunError(
                f"{self._name} collapsed at epoch {epoch + 1}: the network gives one class for "
                f"{100 * share:.0f}% of {len(self._labels)} test images (accuracy "
                f"{100 * accuracy:.1f}%, chance {100 * self._chance:.0f}%); training stopped. "
                f"The last good epoch is kept in {self._backup_dir}. {_LOWER_LR}"
            )
        elif self._never_took_off(epoch, accuracy, share):
            raise CollapsedRunError(
                f"{self._name} never took off: after epoch {epoch + 1} "
                f"({(epoch + 1) * self._steps_per_epoch} steps) the network trained from scratch "
                f"still gives one class for {100 * share:.0f}% of {len(self._labels)} test images "
                f"(accuracy {100 * accuracy:.1f}%, chance {100 * self._chance:.0f}%); training "
                f"stopped. {_LOWER_LR}"
            )

    def _never_took_off(self, epoch, accuracy, share):
        done = epoch + 1
        return (
            self._from_scratch
            and not self._was_healthy
            and self._collapsed(accuracy, share)
            and done >= _STUCK_EPOCHS
            and done * self._steps_per_epoch >= _STUCK_STEPS
        )


def _input_independent(logits):
    """Whether the rows of `logits` (two or more) are all the same (to float32 rounding)."""
    if len(logits) < 2:
        return False
    spread = np.max(np.ptp(logits, axis=0))
    return bool(spread <= 1e-6 * max(1.0, float(np.max(np.abs(logits)))))


class _LogProgress(keras.callbacks.Callback):
    """One absl log line per epoch with the metrics and the time taken."""

    def __init__(self, name, epochs):
        super().__init__()
        self._name = name
        self._epochs = epochs
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        logging.info(
            "%s: epoch %d/%d done in %.1fs: %s",
            self._name,
            epoch + 1,
            self._epochs,
            time.time() - self._start,
            shown,
        )


def _backup_epoch(backup_dir):
    """The number of epochs a Keras BackupAndRestore backup has finished (0 if unknown)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    try:
        with open(path) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _relocatable(config_json):
    """A config as JSON without where its run lives: no `workdir`, and the
    source checkpoint as a path relative to it (a moved or copied tree of
    runs keeps its phases' relations, so it resumes and re-evaluates)."""
    located = dict(config_json)
    workdir = located.pop("workdir", None)
    source = located.get("source_checkpoint")
    if workdir and source:
        located["source_checkpoint"] = os.path.relpath(source, workdir)
    return json.loads(json.dumps(located))


def same_config(previous, config):
    """Whether a stored config.json describes `config`, wherever the run now lives.

    Fields added to the config classes since the run was written take their
    defaults, so finished runs stay reusable after such additions.
    """
    current = _relocatable(config.to_json())
    if _relocatable(previous) == current:
        return True
    try:
        upgraded = TrainConfig.from_json(previous).to_json()
    except (TypeError, ValueError, KeyError):
        return False
    return _relocatable(upgraded) == current


def training_data(config, skip_epochs=0):
    """A phase's training batches (shuffled and augmented with its seed) and the example count.

    `skip_epochs` starts from the data order of a later epoch (a resumed run).
    """
    return data.load_pipeline(
        config.dataset,
        "train",
        config.batch_size,
        training=True,
        data_dir=config.data_dir,
        limit=config.train_limit,
        seed=config.seed,
        skip_epochs=skip_epochs,
    )


def train(config, verbose=None, strategy=None, jit_compile=False):
    """Runs (or resumes, or skips if finished) one phase; see the module doc.

    Args:
      config: a `TrainConfig`; its batch size is the global batch.
      verbose: passed to `model.fit`; by default a progress bar on a terminal
        and one line per epoch otherwise.
      strategy: a `tf.distribute.Strategy` (default: the current one). Only
        its chief writes into `config.workdir`; other workers keep their
        backups and logs under `<workdir>/workers/<task>` (`distribute`).
      jit_compile: compile the training step with XLA.

    Returns:
      A `TrainResult`.

    Raises:
      ValueError: bad configuration, or a workdir holding another run's config.
      CheckpointMismatchError: a source checkpoint of another architecture.
      NonFiniteLossError: the loss became NaN/inf (last good state kept).
      CollapsedRunError: the network fell to a constant output (last good
        state kept).
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    files.make_dir(config.workdir)
    own_dir = files.make_dir(distribute.worker_dir(config.workdir, strategy))
    config_path = os.path.join(config.workdir, CONFIG_FILE)
    history_path = os.path.join(own_dir, HISTORY_FILE)
    backup_dir = os.path.join(own_dir, "backup")
    unit = "" if config.granularity == "weight" else f" {config.granularity}s"
    name = f"{config.phase}[{config.arch}, keep={config.keep_ratio:g}{unit}]"

    # Other workers' configs name their own copies of the source checkpoint;
    # the chief's config is the run's.
    if chief and os.path.exists(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        if previous.get("revision", 1) != config.revision:
            raise ValueError(
                f"{config.workdir} holds a run of another hydra_tf training revision "
                f"({previous.get('revision', 1)}; this code is {config.revision}: see "
                "training.REVISION), whose results are not comparable. Use a new --workdir, "
                "or delete the old one."
            )
        if not same_config(previous, config):
            raise ValueError(
                f"{config.workdir} already holds a run with another configuration "
                f"(see {config_path}). Use a new --workdir, or delete the old one."
            )
    # Each process checks its own saved model, so all workers skip together.
    saved = os.path.join(own_dir, MODEL_FILE)
    if os.path.exists(saved):
        logging.info("%s: already finished in %s; skipping.", name, config.workdir)
        return TrainResult(saved, files.read_history(history_path), 0.0, resumed=True)
    if chief:
        files.write_json(config_path, config.to_json())
    resumed = os.path.isdir(backup_dir)
    if not resumed and os.path.exists(history_path):
        # Epochs of a run whose backup is gone (a snapshot saved without it, or
        # deleted): this run starts again at epoch 0, so they are not its history.
        os.remove(history_path)

    keras.utils.set_random_seed(config.seed)
    meta = data.info(config.dataset)
    # ImageNet is streamed and preprocessed per example; the small datasets
    # are shuffled and augmented in memory (`data.load_pipeline`).
    # A resumed run continues with the data order of the next epoch.
    train_ds, num_train = training_data(config, _backup_epoch(backup_dir) if resumed else 0)
    train_ds = train_ds.repeat()
    test_ds, _ = data.load(config.dataset, "test", config.data_dir, config.test_limit)
    check_images, check_labels = next(iter(test_ds.batch(_CHECK_IMAGES)))
    test_ds = data.make_pipeline(test_ds, config.batch_size, training=False)
    steps_per_epoch = math.ceil(num_train / config.batch_size)
    # Passes over the data (fewer than config.epochs for free_at; module doc).
    passes = objectives.data_epochs(config.objective, config.epochs)

    source = files.load_network(config.source_checkpoint) if config.source_checkpoint else None
    with strategy.scope():
        network = phases.build_network(
            config.phase,
            config.arch,
            meta.image_shape,
            meta.num_classes,
            keep_ratio=config.keep_ratio,
            score_init=config.score_init,
            sync_batch_norm=config.sync_batch_norm,
            granularity=config.granularity,
        )
        origin = phases.prepare(
            network, config.phase, source, config.score_init, prune_bn=config.prune_bn
        )
        trainer = trainer_lib.RobustTrainer(
            network,
            objectives.make(config.objective, steps_per_epoch=steps_per_epoch),
            seed=config.seed,
            l2=coupled_l2(config),
        )
        trainer.compile(optimizer=make_optimizer(config, steps_per_epoch), jit_compile=jit_compile)
    logging.info(
        "%s: %d training examples, %d steps/epoch, objective %s, scores from %s, %d replica(s)%s",
        name,
        num_train,
        steps_per_epoch,
        config.objective.name,
        origin,
        strategy.num_replicas_in_sync,
        "; resuming from backup" if resumed else "",
    )
    callbacks = [
        _StopOnNonFinite(backup_dir),
        _StopOnCollapse(
            check_images,
            check_labels,
            meta.num_classes,
            backup_dir,
            name,
            from_scratch=config.source_checkpoint is None,
            steps_per_epoch=steps_per_epoch,
        ),
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.TensorBoard(os.path.join(own_dir, "tensorboard")),
        _LogProgress(name, passes),
    ]
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    start = time.time()
    trainer.fit(
        # One iterator over the repeated data for the whole run: each epoch
        # is the next pass, so a resumed run can skip the passes it made.
        train_ds,
        epochs=passes,
        steps_per_epoch=steps_per_epoch,
        validation_data=test_ds,
        shuffle=False,  # the tf.data pipeline shuffles
        callbacks=callbacks,
        verbose=verbose,
    )
    seconds = time.time() - start
    # Every worker saves (saving may run collective ops); the chief's file is the result.
    network.save(saved)
    logging.info("%s: finished in %.1fs; saved %s", name, seconds, saved)
    return TrainResult(saved, files.read_history(history_path), seconds, resumed)
