"""Tests for hydra_tf.experiments.snapshot: a study's runs saved, restored elsewhere, resumed."""

import dataclasses
import json
import os
from unittest import mock

import keras
import tensorflow as tf

from hydra_tf import objectives
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import presets
from hydra_tf.experiments import snapshot
from tests import helpers


def _write(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _hand_made_workdir(root):
    """A workdir shaped like a study's run, files written by hand (but its
    config): the dense network and one pruned network per method evaluated,
    one phase still training, one evaluation running."""
    config = pipeline.PipelineConfig(workdir=root, keep_ratios=(0.1, 0.01), lwm_equal_budget=False)
    _write(os.path.join(root, "pipeline_config.json"), json.dumps(config.to_json()))
    dense = os.path.join(root, "dense")
    for name in ("config.json", "history.csv", "model.keras"):
        _write(os.path.join(dense, "pretrain", name))
    _write(os.path.join(dense, "pretrain", "tensorboard", "train", "events.out"))
    # A finished phase's stale backup is not kept.
    _write(os.path.join(dense, "pretrain", "backup", "latest.weights.h5"))
    _write(os.path.join(dense, "eval.json"), "{}")
    _write(os.path.join(dense, "adversarial.npy"))
    _write(os.path.join(dense, "dense.keras"))
    _write(os.path.join(dense, "dense_savedmodel", "saved_model.pb"))
    _write(os.path.join(dense, "dense_savedmodel", "variables", "variables.index"))
    _write(
        os.path.join(dense, "tflite", "row.json"), json.dumps({"path": "dense/tflite/int8.tflite"})
    )
    _write(os.path.join(dense, "tflite", "int8.tflite"))
    _write(os.path.join(dense, "tflite", "float32.tflite"))
    # Evaluated pruned networks: HYDRA's at the smallest ratio keeps its prune network.
    for name, phases in (("hydra_0.01", ("prune", "finetune")), ("lwm_0.01", ("finetune",))):
        network = os.path.join(root, name)
        for phase in phases:
            for file in ("config.json", "history.csv", "model.keras"):
                _write(os.path.join(network, phase, file))
        _write(os.path.join(network, "eval.json"), "{}")
        _write(os.path.join(network, f"{name}.keras"))
        row = json.dumps({"path": f"{name}/tflite/int8.tflite"})
        _write(os.path.join(network, "tflite", "row.json"), row)
        _write(os.path.join(network, "tflite", "int8.tflite"))
    prune = os.path.join(root, "hydra_0.1", "prune")
    _write(os.path.join(prune, "config.json"))
    _write(os.path.join(prune, "history.csv"))
    _write(os.path.join(prune, "backup", "latest.weights.h5"), "weights")
    _write(os.path.join(prune, "backup", "training_metadata.json"), "{}")
    _write(os.path.join(root, "lwm_0.1", "finetune", "model.keras"))
    _write(os.path.join(root, "lwm_0.1", "attack_state.npz"))


class ResumableFilesTest(tf.test.TestCase):
    def test_keeps_what_a_rerun_needs_and_nothing_it_rebuilds(self):
        root = helpers.make_tempdir(self)
        _hand_made_workdir(root)
        finished = [
            "dense/eval.json",
            "dense/pretrain/config.json",
            "dense/pretrain/history.csv",
            "dense/pretrain/model.keras",
            "dense/tflite/int8.tflite",
            "dense/tflite/row.json",
            "hydra_0.01/eval.json",
            "hydra_0.01/finetune/config.json",
            "hydra_0.01/finetune/history.csv",
            "hydra_0.01/hydra_0.01.keras",
            "hydra_0.01/prune/config.json",
            "hydra_0.01/prune/history.csv",
            "hydra_0.01/prune/model.keras",
            "hydra_0.01/tflite/int8.tflite",
            "hydra_0.01/tflite/row.json",
            "hydra_0.1/prune/config.json",
            "hydra_0.1/prune/history.csv",
            "lwm_0.01/eval.json",
            "lwm_0.01/finetune/config.json",
            "lwm_0.01/finetune/history.csv",
            "lwm_0.01/lwm_0.01.keras",
            "lwm_0.01/tflite/int8.tflite",
            "lwm_0.01/tflite/row.json",
            "lwm_0.1/finetune/model.keras",
            "pipeline_config.json",
        ]
        running = [
            "hydra_0.1/prune/backup/latest.weights.h5",
            "hydra_0.1/prune/backup/training_metadata.json",
            "lwm_0.1/attack_state.npz",
        ]
        self.assertEqual(snapshot.resumable_files(root), sorted(finished + running))
        self.assertEqual(snapshot.resumable_files(root, in_progress=False), sorted(finished))

    def test_keeps_the_analysis_prune_network_of_each_granularity(self):
        # A channel run shares the workdir (and the dense network) with a weight run.
        root = helpers.make_tempdir(self)
        _hand_made_workdir(root)
        for name in ("hydra_channels_0.5", "hydra_channels_0.25"):
            for phase in ("prune", "finetune"):
                _write(os.path.join(root, name, phase, "model.keras"))
            _write(os.path.join(root, name, "eval.json"), "{}")
            _write(os.path.join(root, name, "tflite", "row.json"), "{}")
        models = [p for p in snapshot.resumable_files(root) if p.endswith("model.keras")]
        self.assertEqual(
            models,
            [
                "dense/pretrain/model.keras",
                "hydra_0.01/prune/model.keras",
                "hydra_channels_0.25/prune/model.keras",
                "lwm_0.1/finetune/model.keras",
            ],
        )


class SaveRestoreTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.workdir = os.path.join(helpers.make_tempdir(self), "runs")
        _hand_made_workdir(self.workdir)
        self.snap = os.path.join(helpers.make_tempdir(self), "state")

    def test_round_trip_to_where_it_was_and_elsewhere(self):
        manifest = snapshot.save(self.workdir, self.snap)
        self.assertEqual(manifest.workdir, os.path.abspath(self.workdir))
        self.assertLen(manifest.files, 28)
        self.assertEqual(snapshot.read_manifest(self.snap), manifest)
        self.assertFalse(os.path.exists(os.path.join(self.snap, "dense", "adversarial.npy")))
        # Into an empty directory: every file, with its content.
        elsewhere = os.path.join(helpers.make_tempdir(self), "moved")
        workdir, copied = snapshot.restore(self.snap, elsewhere)
        self.assertEqual(workdir, elsewhere)
        self.assertLen(copied, 28)
        with open(
            os.path.join(elsewhere, "hydra_0.1", "prune", "backup", "latest.weights.h5")
        ) as f:
            self.assertEqual(f.read(), "weights")
        # By default where it was saved from; there every file is already in place.
        workdir, copied = snapshot.restore(self.snap)
        self.assertEqual((workdir, copied), (os.path.abspath(self.workdir), []))

    def test_saving_again_drops_what_the_runs_no_longer_keep(self):
        snapshot.save(self.workdir, self.snap)
        # The prune phase finishes: its backup goes, its model comes.
        prune = os.path.join(self.workdir, "hydra_0.1", "prune")
        _write(os.path.join(prune, "model.keras"))
        for name in os.listdir(os.path.join(prune, "backup")):
            os.remove(os.path.join(prune, "backup", name))
        os.rmdir(os.path.join(prune, "backup"))
        manifest = snapshot.save(self.workdir, self.snap)
        self.assertIn("hydra_0.1/prune/model.keras", manifest.files)
        self.assertNotIn("hydra_0.1/prune/backup/latest.weights.h5", manifest.files)
        self.assertFalse(os.path.exists(os.path.join(self.snap, "hydra_0.1", "prune", "backup")))

    def test_a_corrupt_snapshot_is_refused_and_nothing_copied(self):
        snapshot.save(self.workdir, self.snap)
        _write(os.path.join(self.snap, "dense", "eval.json"), '{"changed": 1}')
        target = os.path.join(helpers.make_tempdir(self), "new")
        with self.assertRaisesRegex(snapshot.SnapshotError, "does not match its manifest"):
            snapshot.restore(self.snap, target)
        self.assertFalse(os.path.exists(target))
        os.remove(os.path.join(self.snap, "dense", "eval.json"))
        with self.assertRaisesRegex(snapshot.SnapshotError, "missing"):
            snapshot.restore(self.snap, target)

    def test_a_workdir_that_moved_on_keeps_its_files(self):
        snapshot.save(self.workdir, self.snap)
        newer = os.path.join(self.workdir, "hydra_0.1", "prune", "backup", "latest.weights.h5")
        _write(newer, "newer weights")
        os.remove(os.path.join(self.workdir, "dense", "eval.json"))
        with self.assertRaisesRegex(snapshot.SnapshotError, "1 file.*differ.*latest.weights.h5"):
            snapshot.restore(self.snap)
        with open(newer) as f:
            self.assertEqual(f.read(), "newer weights")
        # Nothing was copied, not even the missing file.
        self.assertFalse(os.path.exists(os.path.join(self.workdir, "dense", "eval.json")))

    def test_a_file_written_during_the_copy_is_copied_again(self):
        source = os.path.join(self.workdir, "dense", "pretrain", "model.keras")
        copies = []
        real_copy = snapshot.shutil.copyfile

        def copy_while_a_run_writes(src, dst):
            real_copy(src, dst)
            if src == source and not copies:
                copies.append(src)
                _write(src, "the run's newer bytes")  # the run wrote during the copy
                os.utime(src, ns=(1, 2))

        with mock.patch.object(snapshot.shutil, "copyfile", copy_while_a_run_writes):
            snapshot.save(self.workdir, self.snap)
        with open(os.path.join(self.snap, "dense", "pretrain", "model.keras")) as f:
            self.assertEqual(f.read(), "the run's newer bytes")

    def test_a_file_that_goes_during_the_save_asks_to_save_again(self):
        state = os.path.join(self.workdir, "lwm_0.1", "attack_state.npz")
        real_copy = snapshot.shutil.copyfile

        def copy_while_an_evaluation_ends(src, dst):
            if os.path.exists(state):
                os.remove(state)  # the evaluation finished after the file list was made
            real_copy(src, dst)

        with (
            mock.patch.object(snapshot.shutil, "copyfile", copy_while_an_evaluation_ends),
            self.assertRaisesRegex(snapshot.SnapshotError, "attack_state.npz went.*save again"),
        ):
            snapshot.save(self.workdir, self.snap)

    def test_bad_input(self):
        with self.assertRaisesRegex(snapshot.SnapshotError, "not a directory"):
            snapshot.save(os.path.join(self.workdir, "nothing"), self.snap)
        with self.assertRaisesRegex(snapshot.SnapshotError, "inside the workdir"):
            snapshot.save(self.workdir, os.path.join(self.workdir, "state"))
        empty = helpers.make_tempdir(self)
        with self.assertRaisesRegex(snapshot.SnapshotError, "holds no run"):
            snapshot.save(empty, self.snap)
        with self.assertRaisesRegex(snapshot.SnapshotError, "not a snapshot"):
            snapshot.restore(empty)
        _write(os.path.join(empty, snapshot.MANIFEST), "{}")
        with self.assertRaisesRegex(snapshot.SnapshotError, "Not a snapshot manifest"):
            snapshot.restore(empty)


class BinaryTest(tf.test.TestCase):
    def test_save_show_restore_and_one_line_errors(self):
        workdir = os.path.join(helpers.make_tempdir(self), "runs")
        _hand_made_workdir(workdir)
        snap = os.path.join(helpers.make_tempdir(self), "state")
        saved = helpers.run_module(
            "binaries.snapshot", "save", f"--workdir={workdir}", f"--snapshot={snap}"
        )
        self.assertEqual(saved.returncode, 0, saved.stderr[-2000:])
        self.assertIn("28 files", saved.stderr)
        target = os.path.join(helpers.make_tempdir(self), "restored")
        restored = helpers.run_module(
            "binaries.snapshot", "restore", f"--snapshot={snap}", f"--workdir={target}"
        )
        self.assertEqual(restored.returncode, 0, restored.stderr[-2000:])
        self.assertIn(f"Restored 28 of 28 files into {target}", restored.stderr)
        self.assertTrue(os.path.exists(os.path.join(target, "dense", "pretrain", "model.keras")))
        for args, message in (
            (("show",), "--snapshot"),
            (("save", f"--snapshot={snap}"), "save needs --workdir."),
            (("restore", f"--snapshot={workdir}"), "is not a snapshot"),
            (("copy", f"--snapshot={snap}"), "Give one action"),
        ):
            result = helpers.run_module("binaries.snapshot", *args)
            self.assertNotEqual(result.returncode, 0, args)
            self.assertIn(message, result.stderr)
            self.assertNotIn("Traceback", result.stderr)


class StudyAcrossMachinesTest(tf.test.TestCase):
    def test_a_restored_study_resumes_without_training_or_evaluating_again(self):
        # A tiny pipeline with a cascade attack (its examples feed the TF Lite
        # check), saved, restored on "another machine" (another directory),
        # and rerun: every network is found trained and evaluated, the
        # results are the same, and the dropped examples are not missed.
        settings = dict(presets.PRESETS["tiny"])
        settings.update(train_limit=256, test_limit=64, eval_attack="apgd-ce")
        first = os.path.join(helpers.make_tempdir(self), "runs")
        config = pipeline.PipelineConfig(
            workdir=first,
            keep_ratios=(0.1,),
            tflite_mode="int8",
            objective=objectives.config("trades", eps=0.1, steps=2, step_size=0.05),
            **settings,
        )
        results = pipeline.run(config)
        snap = os.path.join(helpers.make_tempdir(self), "state")
        manifest = snapshot.save(first, snap)
        self.assertFalse(any("tensorboard" in p or p.endswith(".npy") for p in manifest.files))
        # The evaluated pruned networks leave their checkpoints behind, but the
        # prune network the analysis reads.
        models = sorted(p for p in manifest.files if p.endswith("model.keras"))
        self.assertEqual(models, ["dense/pretrain/model.keras", "hydra_0.1/prune/model.keras"])
        second = os.path.join(helpers.make_tempdir(self), "elsewhere")
        snapshot.restore(snap, second)
        no_work = AssertionError("a restored network was trained or evaluated again")
        with (
            mock.patch.object(keras.Model, "fit", side_effect=no_work),
            mock.patch.object(pipeline, "_evaluate", side_effect=no_work),
        ):
            again = pipeline.run(dataclasses.replace(config, workdir=second))
        self.assertEqual(
            json.loads(json.dumps(again.to_json()["rows"])),
            json.loads(json.dumps(results.to_json()["rows"])),
        )
        self.assertTrue(os.path.exists(os.path.join(second, "results.md")))
        # A network restored without weights is reused only under its own training settings.
        with self.assertRaisesRegex(ValueError, "another configuration"):
            pipeline.run(dataclasses.replace(config, workdir=second, finetune_lr=0.5))


if __name__ == "__main__":
    tf.test.main()
