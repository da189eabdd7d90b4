"""Trains one HYDRA phase.

  pretrain: robust training of a dense network.
  prune:    weights frozen; importance scores trained on the objective
            (needs --source_checkpoint, usually a pretrain model.keras).
  finetune: mask frozen; surviving weights trained (from a prune model:
            HYDRA; from a pretrain model: the LWM baseline). TRADES and
            PGD-AT finetunes start their attack at a random corner of the
            eps-ball unless --attack_start is given, as the pipeline's do.

Example:
  python -m binaries.train --phase=pretrain --workdir=runs/dense --epochs=5
  python -m binaries.train --phase=prune --keep_ratio=0.1 \
      --source_checkpoint=runs/dense/model.keras --workdir=runs/prune
  python -m binaries.train --phase=finetune --keep_ratio=0.1 --learning_rate=0.01 \
      --source_checkpoint=runs/prune/model.keras --workdir=runs/finetune

The run writes config.json, model.keras, history.csv and TensorBoard logs to
--workdir; rerunning the same command resumes a killed run.
"""

from absl import app
from absl import flags

from binaries import common
from hydra_tf import training
from hydra_tf.pruning import phases

_PHASE = flags.DEFINE_enum("phase", "pretrain", phases.PHASES, "Which phase to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of this run.", required=True)
_SOURCE = flags.DEFINE_string(
    "source_checkpoint", None, "model.keras of the previous phase (prune, finetune)."
)
_KEEP_RATIO = flags.DEFINE_float(
    "keep_ratio",
    1.0,
    "Fraction of each layer's weights (with --granularity=channel: channels) kept, in (0, 1].",
)
_SCORE_INIT = flags.DEFINE_enum(
    "score_init", "scaled", phases.SCORE_INITS, "Initialisation of the scores."
)
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
_LR = flags.DEFINE_float("learning_rate", 0.1, "Initial learning rate.", lower_bound=0.0)
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
_SCHEDULE = flags.DEFINE_enum("schedule", "cosine", training.SCHEDULES, "LR schedule.")

flags.register_validator(
    "keep_ratio", lambda k: 0.0 < k <= 1.0, message="--keep_ratio must be in (0, 1]."
)


@flags.multi_flags_validator(["phase", "source_checkpoint", "keep_ratio"])
def _check_phase(values):
    if values["phase"] != "pretrain" and not values["source_checkpoint"]:
        raise flags.ValidationError(
            f"--phase={values['phase']} needs --source_checkpoint (the previous phase's model)."
        )
    if values["phase"] == "pretrain" and values["keep_ratio"] != 1.0:
        raise flags.ValidationError(
            "--phase=pretrain trains a dense network: leave --keep_ratio at 1."
        )
    return True


def _train():
    strategy = common.strategy()
    settings = common.run_settings(_PHASE.value)
    config = training.TrainConfig(
        workdir=_WORKDIR.value,
        phase=_PHASE.value,
        arch=common.ARCH.value,
        keep_ratio=_KEEP_RATIO.value,
        score_init=_SCORE_INIT.value,
        source_checkpoint=_SOURCE.value,
        epochs=_EPOCHS.value,
        learning_rate=_LR.value,
        momentum=_MOMENTUM.value,
        schedule=_SCHEDULE.value,
        **settings,
    )
    training.train(config, strategy=strategy, jit_compile=common.JIT_COMPILE.value)


if __name__ == "__main__":
    app.run(common.main_without_args(_train))
