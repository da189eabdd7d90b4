"""Keeps a study's runs across machines: what they need to resume, in the repository.

A study of many hours outlives the machine it runs on, and its workdir
(`runs/...`) is not committed. `save(workdir, snapshot)` copies into
`snapshot` the files a rerun of the same command needs to carry on where the
runs were, and nothing it can rebuild:

  kept                                       left out
  config.json, pipeline_config.json          tensorboard/ logs
  history.csv, eval.json, tflite/row.json    SavedModel exports, the dense export
  model.keras of the dense network, of       model.keras of every pruned network
    every pruned network not yet evaluated     evaluated (`pipeline.settled`: its
    and of the prune network the run's         row stands without them)
    analysis reads (smallest keep ratio)     adversarial.npy (6 MB per network;
  <network>/<network>.keras (a pruned          only the TF Lite check reads it)
    network's export, for `zoo.publish`)     the TF Lite files of other modes
  the TF Lite file the row names
  with in_progress: backup/ of a phase
    still training, attack_state.npz of
    an evaluation still running

plus `snapshot.json`, the manifest: where the runs were, when, and each
file's size and SHA-256. `restore(snapshot)` copies them back (by default to
where they were; runs are relocatable, `training._relocatable`), checks every
file against the manifest, and never overwrites a file that differs: a
workdir that has moved on keeps its newer state.
"""

import dataclasses
import datetime
import hashlib
import os
import re
import shutil
import time

from hydra_tf import files
from hydra_tf.experiments import pipeline

MANIFEST = "snapshot.json"
_PHASE_FILES = frozenset({"config.json", "pipeline_config.json", "history.csv", "model.keras"})
_EVALUATION_FILES = frozenset({"eval.json"})
_IN_PROGRESS_FILES = frozenset({"attack_state.npz"})


class SnapshotError(ValueError):
    """A snapshot that cannot be saved or restored; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a snapshot holds: `files` maps a relative path to (bytes, sha256)."""

    workdir: str
    saved: str
    files: dict

    def to_json(self):
        return {
            "workdir": self.workdir,
            "saved": self.saved,
            "files": {
                path: {"bytes": n, "sha256": digest} for path, (n, digest) in self.files.items()
            },
        }

    @classmethod
    def from_json(cls, value):
        try:
            entries = {
                path: (int(entry["bytes"]), str(entry["sha256"]))
                for path, entry in value["files"].items()
            }
            return cls(workdir=str(value["workdir"]), saved=str(value["saved"]), files=entries)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise SnapshotError(f"Not a snapshot manifest ({type(error).__name__}: {error}).")

    @property
    def total_bytes(self):
        return sum(n for n, _ in self.files.values())


def _digest(path):
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _chosen_tflite(row_path):
    """The TF Lite file a `tflite/row.json` names, relative to the row's directory, or None."""
    try:
        row = files.read_json(row_path)
    except (OSError, ValueError):
        return None
    path = row.get("path") if isinstance(row, dict) else None
    return os.path.basename(path) if path else None


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the snapshot needs to know of one pipeline run (a dir with pipeline_config.json)."""

    tflite: bool  # whether its networks get a TF Lite row
    analysis_prunes: frozenset  # the prune phases whose networks the run's analysis reads


# A HYDRA network's directory: hydra_0.01, hydra_channels_0.5 (`pipeline.stage_name`).
_HYDRA_NETWORK = re.compile(r"^(hydra_(?:[a-z]+s_)?)([0-9.e+-]+)$")


def _analysis_prunes(run_dir):
    """The prune phase of the smallest keep ratio of each granularity in a run:
    the network the analysis reads (`analysis.kept_weights`). A workdir can
    hold a weight and a channel run sharing one dense network."""
    smallest = {}
    for name in os.listdir(run_dir):
        match = _HYDRA_NETWORK.match(name)
        if not match or not os.path.isdir(os.path.join(run_dir, name, "prune")):
            continue
        try:
            ratio = float(match.group(2))
        except ValueError:
            continue
        prefix = match.group(1)
        if prefix not in smallest or ratio < smallest[prefix][0]:
            smallest[prefix] = (ratio, name)
    return frozenset(os.path.join(run_dir, name, "prune") for _, name in smallest.values())


def _runs(workdir):
    """{run directory: `_Run`} of the pipeline runs under `workdir` whose config reads back."""
    runs = {}
    for directory, _, names in os.walk(workdir):
        if "pipeline_config.json" not in names:
            continue
        try:
            config = pipeline.PipelineConfig.from_json(
                files.read_json(os.path.join(directory, "pipeline_config.json"))
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unknown: every model of it is kept
        directory = os.path.normpath(directory)
        runs[directory] = _Run(
            tflite=config.tflite_mode != "none", analysis_prunes=_analysis_prunes(directory)
        )
    return runs


def _network_done(network_dir, run):
    """Whether a network is evaluated and its TF Lite row written (`pipeline.settled`)."""
    done = os.path.exists(os.path.join(network_dir, "eval.json"))
    if run.tflite:
        done = done and os.path.exists(os.path.join(network_dir, "tflite", "row.json"))
    return done


def _keeps(directory, name, in_progress, runs):
    """Whether file `name` of `directory` is one a snapshot keeps (module doc)."""
    base = os.path.basename(directory)
    if base == "backup":  # a phase's resumable state, worth keeping until the phase ends
        return in_progress and not os.path.exists(os.path.join(directory, "..", "model.keras"))
    if base == "tflite":
        return name == "row.json" or name == _chosen_tflite(os.path.join(directory, "row.json"))
    if in_progress and name in _IN_PROGRESS_FILES:
        return True
    if name == "model.keras":
        network_dir = os.path.dirname(os.path.normpath(directory))
        run = runs.get(os.path.dirname(network_dir))
        if run is not None and os.path.basename(network_dir) != "dense":
            # An evaluated pruned network needs none of its checkpoints
            # (`pipeline.settled`), but the analysis reads one prune network.
            done = _network_done(network_dir, run)
            return not done or os.path.normpath(directory) in run.analysis_prunes
        return True
    # A pruned network's exported plain model is <network>/<network>.keras
    # (what `zoo.publish` takes); the dense one is never published.
    exported = name == f"{base}.keras" and base != "dense"
    return name in _PHASE_FILES or name in _EVALUATION_FILES or exported


def resumable_files(workdir, in_progress=True):
    """The files of `workdir` (relative paths, sorted) that a snapshot keeps (module doc)."""
    runs = _runs(workdir)
    kept = []
    for directory, subdirs, names in os.walk(workdir):
        # Logs and SavedModel exports are rebuilt or not needed to resume.
        subdirs[:] = sorted(
            d
            for d in subdirs
            if d != "tensorboard"
            and not os.path.exists(os.path.join(directory, d, "saved_model.pb"))
        )
        relative = os.path.relpath(directory, workdir)
        kept.extend(
            os.path.normpath(os.path.join(relative, name))
            for name in names
            if _keeps(os.path.normpath(directory), name, in_progress, runs)
        )
    return sorted(kept)


def _copy_settled(source, target, attempts=5):
    """Copies `source` to `target` once no run is writing it (a running
    study's checkpoints change under the copy): size and mtime the same
    before and after the copy."""
    for _ in range(attempts):
        before = os.stat(source)
        shutil.copyfile(source, target + ".tmp")
        after = os.stat(source)
        if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns):
            os.replace(target + ".tmp", target)
            return
        time.sleep(1.0)
    os.remove(target + ".tmp")
    raise SnapshotError(f"{source} kept changing while it was copied; save again.")


def save(workdir, snapshot, in_progress=True):
    """Copies the resumable files of `workdir` into `snapshot` (replacing what it held).

    Returns:
      The `Manifest` written to `<snapshot>/snapshot.json`.

    Raises:
      SnapshotError: `workdir` missing or holding no run, or `snapshot` inside it.
    """
    workdir = os.path.abspath(workdir)
    snapshot = os.path.abspath(snapshot)
    if not os.path.isdir(workdir):
        raise SnapshotError(f"--workdir={workdir} is not a directory.")
    if os.path.commonpath([workdir, snapshot]) == workdir:
        raise SnapshotError(
            f"The snapshot {snapshot} is inside the workdir {workdir}; put it elsewhere."
        )
    kept = resumable_files(workdir, in_progress)
    if not any(os.path.basename(p) == "config.json" for p in kept):
        raise SnapshotError(f"{workdir} holds no run (no config.json); is it a study's --workdir?")
    files.make_dir(snapshot, "--snapshot")
    entries = {}
    for relative in kept:
        target = os.path.join(snapshot, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            _copy_settled(os.path.join(workdir, relative), target)
        except FileNotFoundError as error:
            # A phase or an evaluation finished during the save (its backup
            # or attack state went): the file list is stale.
            raise SnapshotError(f"{error.filename} went while it was saved; save again.")
        entries[relative] = (os.path.getsize(target), _digest(target))
    # What the snapshot held and the workdir no longer keeps (a finished
    # phase's backup, a finished evaluation's state) goes.
    for directory, _, names in os.walk(snapshot, topdown=False):
        for name in names:
            relative = os.path.relpath(os.path.join(directory, name), snapshot)
            if relative != MANIFEST and relative not in entries:
                os.remove(os.path.join(directory, name))
        if directory != snapshot and not os.listdir(directory):
            os.rmdir(directory)
    manifest = Manifest(
        workdir=workdir,
        saved=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        files=entries,
    )
    files.write_json(os.path.join(snapshot, MANIFEST), manifest.to_json())
    return manifest


def read_manifest(snapshot):
    """The `Manifest` of `snapshot`, with a one-line error if it is missing or corrupt."""
    path = os.path.join(snapshot, MANIFEST)
    if not os.path.exists(path):
        raise SnapshotError(f"{snapshot} is not a snapshot (no {MANIFEST}).")
    try:
        return Manifest.from_json(files.read_json(path))
    except ValueError as error:
        raise SnapshotError(f"{path}: {error}") from error


def restore(snapshot, workdir=None):
    """Copies a snapshot's files into `workdir` (default: where they were saved from).

    Files already there with the same content are left; nothing is overwritten.

    Returns:
      (the workdir, the relative paths copied).

    Raises:
      SnapshotError: a file missing from the snapshot or not matching its
        manifest (corrupt), or a workdir file that differs from the
        snapshot's (the workdir has moved on, or holds another run); nothing
        is copied then.
    """
    manifest = read_manifest(snapshot)
    workdir = os.path.abspath(workdir or manifest.workdir)
    for relative, (size, digest) in manifest.files.items():
        source = os.path.join(snapshot, relative)
        if not os.path.exists(source):
            raise SnapshotError(
                f"{source} is in the manifest but missing; the snapshot is incomplete."
            )
        if os.path.getsize(source) != size or _digest(source) != digest:
            raise SnapshotError(f"{source} does not match its manifest: the snapshot is corrupt.")
    conflicts, copies = [], []
    for relative, (_, digest) in manifest.files.items():
        target = os.path.join(workdir, relative)
        if not os.path.exists(target):
            copies.append(relative)
        elif _digest(target) != digest:
            conflicts.append(relative)
    if conflicts:
        raise SnapshotError(
            f"{len(conflicts)} file(s) in {workdir} differ from the snapshot's (first: "
            f"{conflicts[0]}); the workdir has moved on or holds another run. Restore into an "
            "empty --workdir, or delete those files."
        )
    for relative in copies:
        target = os.path.join(workdir, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(snapshot, relative), target + ".tmp")
        os.replace(target + ".tmp", target)
    return workdir, copies


def describe(manifest):
    """One line: how many files, how many MB, from where and when."""
    return (
        f"{len(manifest.files)} files, {manifest.total_bytes / 1e6:.1f} MB, "
        f"saved from {manifest.workdir} at {manifest.saved}"
    )
