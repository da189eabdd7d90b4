"""Saves a study's runs into the repository, or restores them on another machine.

  python -m binaries.snapshot save --workdir=runs/adv_pgd_at \
      --snapshot=results/adversarial/cnn_small_pgd_at/state
  python -m binaries.snapshot restore --snapshot=results/adversarial/cnn_small_pgd_at/state
  python -m binaries.snapshot show --snapshot=results/adversarial/cnn_small_pgd_at/state

`save` copies what the workdir's runs need to resume (finished networks,
configs, histories, evaluations, TF Lite rows; with --in_progress, the
default, also the backups of phases still training and the state of
evaluations still running) and writes a manifest; it leaves out logs and
files the runs rebuild (hydra_tf/experiments/snapshot.py). Commit the
snapshot. `restore` copies it back, by default to the workdir it came from,
checking every file; it never overwrites a file that differs. Then rerun the
study's command: finished networks are skipped, killed ones resume.
"""

from absl import app
from absl import flags
from absl import logging

from binaries import common
from hydra_tf.experiments import snapshot

_ACTIONS = ("save", "restore", "show")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The study's workdir (save: required; restore: default, where it was)."
)
_SNAPSHOT = flags.DEFINE_string("snapshot", None, "The snapshot directory.", required=True)
_IN_PROGRESS = flags.DEFINE_boolean(
    "in_progress",
    True,
    "save: also keep phases still training (their backups) and evaluations still running.",
)


def _save():
    if _WORKDIR.value is None:
        raise ValueError("save needs --workdir.")
    manifest = snapshot.save(_WORKDIR.value, _SNAPSHOT.value, _IN_PROGRESS.value)
    logging.info("Saved %s: %s", _SNAPSHOT.value, snapshot.describe(manifest))


def _restore():
    workdir, copied = snapshot.restore(_SNAPSHOT.value, _WORKDIR.value)
    manifest = snapshot.read_manifest(_SNAPSHOT.value)
    logging.info(
        "Restored %d of %d files into %s (the others were there already).",
        len(copied),
        len(manifest.files),
        workdir,
    )


def _show():
    logging.info(
        "%s: %s", _SNAPSHOT.value, snapshot.describe(snapshot.read_manifest(_SNAPSHOT.value))
    )


def main(argv):
    args = argv[1:]
    if len(args) != 1 or args[0] not in _ACTIONS:
        raise app.UsageError(f"Give one action: one of {', '.join(_ACTIONS)} (got {args}).")
    common.run_or_exit({"save": _save, "restore": _restore, "show": _show}[args[0]])


if __name__ == "__main__":
    app.run(main)
