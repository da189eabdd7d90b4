"""Tests for tf.distribute: strategies, chief, per-replica randomness, mixed precision.

The multi-device runs go through `tests/distributed_runner.py` in processes of
their own: MirroredStrategy over two logical CPU devices (which must be set up
before TensorFlow starts), and a two-process MultiWorkerMirroredStrategy
cluster on loopback. Each trains pretrain, prune and finetune for a few steps
and must match one-device training.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from hydra_tf import distribute
from hydra_tf import objectives
from hydra_tf.models import architectures
from hydra_tf.models import layers as score_layers
from hydra_tf.training import trainer as trainer_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUNNER = os.path.join(_ROOT, "tests", "distributed_runner.py")
_PHASES = ("pretrain", "prune", "finetune")


def _start(work, name, *flags, env=None, process_index=""):
    out = os.path.join(work, f"{name}_out{process_index}")
    command = [
        sys.executable,
        _RUNNER,
        f"--workdir={os.path.join(work, name)}",
        f"--out={out}",
        *flags,
    ]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, out


def _finish(process, allow_failure=False):
    _, stderr = process.communicate(timeout=600)
    if not allow_failure and process.returncode != 0:
        raise AssertionError(f"runner failed ({process.returncode}):\n{stderr[-4000:]}")
    return process.returncode, stderr


def _weights(out, phase):
    with np.load(os.path.join(out, f"weights_{phase}.npz")) as values:
        return {name: values[name] for name in values.files}


def _report(out):
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class MultiDeviceTest(tf.test.TestCase):
    """Two-replica training against one-device training, phase by phase."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.work = tempfile.mkdtemp()
        process, cls.single = _start(cls.work, "single")
        _finish(process)

    def _assert_matches_single(self, out):
        self.assertEqual(_report(out)["eval"], _report(self.single)["eval"])
        # Same noise chunks on any number of replicas: the same counts, exactly.
        self.assertEqual(_report(out)["counts"], _report(self.single)["counts"])
        self.assertEqual(sum(_report(out)["counts"]), 250)
        self.assertEqual(_report(out)["certify"], _report(self.single)["certify"])
        for phase in _PHASES:
            expected, actual = _weights(self.single, phase), _weights(out, phase)
            self.assertEqual(sorted(expected), sorted(actual))
            for name in expected:
                self.assertAllClose(actual[name], expected[name], atol=1e-5, rtol=0, msg=name)

    def test_mirrored_two_cpus_matches_one_device(self):
        process, out = _start(self.work, "mirrored", "--strategy=mirrored", "--cpu_replicas=2")
        _finish(process)
        report = _report(out)
        self.assertEqual(report["replicas"], 2)
        self._assert_matches_single(out)
        # Replicas draw different numbers; replica 0 draws what one device does.
        first, second = report["draws"]
        self.assertNotAllClose(first, second)
        self.assertAllClose(first, _report(self.single)["draws"][0])
        print("seconds per step, one device:", _report(self.single)["seconds_per_step"])
        print("seconds per step, two CPU replicas:", report["seconds_per_step"])

    def _cluster(self, name, *flags, allow_failure=False):
        """Runs a two-worker cluster on loopback; returns [(exit code, stderr, out)]."""
        ports = [_free_port(), _free_port()]
        cluster = {"worker": [f"localhost:{port}" for port in ports]}
        processes = []
        for index in range(2):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            processes.append(
                _start(
                    self.work,
                    name,
                    "--strategy=multi_worker",
                    *flags,
                    env={"TF_CONFIG": json.dumps(config)},
                    process_index=str(index),
                )
            )
        return [(*_finish(p, allow_failure), out) for p, out in processes]

    def test_multi_worker_two_processes_match_one_device(self):
        chief_out = self._cluster("multi_worker")[0][2]
        self.assertEqual(_report(chief_out)["replicas"], 2)
        self._assert_matches_single(chief_out)
        # Only the chief wrote the run's files; the other worker kept its own.
        run = os.path.join(self.work, "multi_worker", "pretrain")
        self.assertTrue(os.path.exists(os.path.join(run, "model.keras")))
        self.assertTrue(os.path.exists(os.path.join(run, "workers", "worker_1", "model.keras")))

    def test_killed_multi_worker_run_resumes(self):
        flags = ("--phases=pretrain", "--epochs=3")
        for code, stderr, _ in self._cluster(
            "mw_killed", *flags, "--kill_after_epoch=1", allow_failure=True
        ):
            self.assertNotEqual(code, 0)
            self.assertIn("killed after epoch 1", stderr)
        run = os.path.join(self.work, "mw_killed", "pretrain")
        self.assertFalse(os.path.exists(os.path.join(run, "model.keras")))
        chief_out = self._cluster("mw_killed", *flags)[0][2]
        self.assertTrue(_report(chief_out)["resumed"]["pretrain"])
        with open(os.path.join(run, "history.csv")) as f:
            epochs = [line.split(",")[0] for line in f.read().splitlines()[1:]]
        self.assertEqual(epochs, ["0", "1", "2"])

    def test_killed_mirrored_run_resumes(self):
        flags = ("--strategy=mirrored", "--cpu_replicas=2", "--phases=pretrain", "--epochs=3")
        process, out = _start(self.work, "killed", *flags, "--kill_after_epoch=1")
        code, stderr = _finish(process, allow_failure=True)
        self.assertNotEqual(code, 0)
        self.assertIn("killed after epoch 1", stderr)
        run = os.path.join(self.work, "killed", "pretrain")
        self.assertFalse(os.path.exists(os.path.join(run, "model.keras")))
        self.assertTrue(os.path.isdir(os.path.join(run, "backup")))
        process, out = _start(self.work, "killed", *flags)
        _finish(process)
        self.assertTrue(_report(out)["resumed"]["pretrain"])
        with open(os.path.join(run, "history.csv")) as f:
            epochs = [line.split(",")[0] for line in f.read().splitlines()[1:]]
        self.assertEqual(epochs, ["0", "1", "2"])


class StrategyTest(tf.test.TestCase):
    def test_unknown_strategy(self):
        with self.assertRaisesRegex(distribute.StrategyError, "Unknown strategy 'horovod'"):
            distribute.make_strategy("horovod")

    def test_multi_worker_needs_tf_config(self):
        with (
            mock.patch.dict(os.environ, {"TF_CONFIG": ""}),
            self.assertRaisesRegex(distribute.StrategyError, "needs TF_CONFIG"),
        ):
            distribute.make_strategy("multi_worker")

    def test_more_gpus_than_the_machine_has(self):
        with self.assertRaisesRegex(distribute.StrategyError, "--num_gpus=64"):
            distribute.make_strategy("mirrored", num_gpus=64)

    def test_one_device_process_is_the_chief(self):
        self.assertTrue(distribute.is_chief())
        self.assertEqual(distribute.worker_dir("/w"), "/w")

    def test_task_from_tf_config(self):
        config = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
        with mock.patch.dict(os.environ, {"TF_CONFIG": json.dumps(config)}):
            self.assertEqual(distribute.task(), ("worker", 1))


class RandomnessTest(tf.test.TestCase):
    def test_step_numbers_are_reproducible_and_change_with_the_step(self):
        def draw(seed, step):
            with distribute.step_randomness(seed, tf.constant(step, tf.int64)):
                return distribute.uniform([8], 0.0, 1.0).numpy(), distribute.normal([8]).numpy()

        first = draw(0, 1)
        self.assertAllEqual(first[0], draw(0, 1)[0])
        self.assertAllEqual(first[1], draw(0, 1)[1])
        self.assertNotAllClose(first[0], draw(0, 2)[0])
        self.assertNotAllClose(first[0], draw(1, 1)[0])
        # Two call sites in one step draw different numbers.
        self.assertNotAllClose(first[0], first[1])

    def test_salt_gives_each_loop_iteration_its_own_numbers(self):
        @tf.function
        def draws(salted):
            def body(i, rows):
                row = distribute.uniform([4], 0.0, 1.0, salt=i if salted else None)
                return i + 1, rows.write(i, row)

            with distribute.step_randomness(0, tf.constant(3, tf.int64)):
                rows = tf.TensorArray(tf.float32, size=3)
                _, rows = tf.while_loop(lambda i, _: i < 3, body, (tf.constant(0), rows))
                return rows.stack()

        # Traced once, an unsalted call site repeats its numbers in every iteration.
        unsalted = draws(False).numpy()
        self.assertAllEqual(unsalted[0], unsalted[1])
        salted = draws(True).numpy()
        self.assertNotAllClose(salted[0], salted[1])
        self.assertNotAllClose(salted[1], salted[2])
        self.assertAllEqual(salted, draws(True).numpy())  # and still reproducible


class MixedPrecisionTest(tf.test.TestCase):
    def test_scores_masks_and_logits_stay_float32(self):
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            network = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.1)
            layer = score_layers.pruned_layers(network)[0]
            self.assertEqual(layer.kernel.dtype, "float32")
            self.assertEqual(layer.score.dtype, "float32")
            self.assertEqual(layer.hard_mask().dtype, tf.float32)
            x = np.random.default_rng(0).random((32, 28, 28, 1)).astype(np.float32)
            y = np.arange(32) % 10
            trainer = trainer_lib.RobustTrainer(
                network, objectives.make(objectives.config("natural"))
            )
            trainer.compile(optimizer=keras.optimizers.SGD(0.01))
            history = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0)
            self.assertTrue(np.isfinite(history.history["loss"][0]))
            self.assertEqual(network(x[:2]).dtype, tf.float32)
            self.assertEqual(layer.score.dtype, "float32")
        finally:
            keras.mixed_precision.set_global_policy("float32")


if __name__ == "__main__":
    tf.test.main()
