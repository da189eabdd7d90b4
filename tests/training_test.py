"""Tests for hydra_tf.training: resume after a kill, NaN handling, bad input."""

import os
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import objectives
from hydra_tf import phases
from hydra_tf import training


def _config(workdir, **overrides):
    values = {
        "workdir": workdir,
        "train_limit": 256,
        "test_limit": 64,
        "batch_size": 64,
        "epochs": 3,
        "learning_rate": 0.05,
        "objective": objectives.ObjectiveConfig(name="natural"),
    }
    values.update(overrides)
    return training.TrainConfig(**values)


class _Killed(Exception):
    pass


class _NaNAfter(objectives.Natural):
    """Natural loss that turns NaN after `calls` training steps."""

    def __init__(self, calls):
        super().__init__()
        self.calls = calls
        self.count = tf.Variable(0)

    def loss(self, model, x, y, perturbed):
        value, logits = super().loss(model, x, y, perturbed)
        self.count.assign_add(1)
        return tf.where(self.count > self.calls, tf.constant(np.nan), value), logits


class TrainTest(tf.test.TestCase, parameterized.TestCase):
    def test_killed_run_resumes_from_last_epoch(self):
        workdir = tempfile.mkdtemp()
        config = _config(workdir)
        original = training._LogProgress.on_epoch_end
        epochs_run = []

        def kill_after_second_epoch(callback, epoch, logs=None):
            original(callback, epoch, logs)
            epochs_run.append(epoch)
            if epoch == 1:
                raise _Killed()

        with (
            self.assertRaises(_Killed),
            mock.patch.object(training._LogProgress, "on_epoch_end", kill_after_second_epoch),
        ):
            training.train(config, verbose=0)
        self.assertFalse(os.path.exists(os.path.join(workdir, "model.keras")))

        with mock.patch.object(training._LogProgress, "on_epoch_begin") as begin:
            result = training.train(config, verbose=0)
        self.assertTrue(result.resumed)
        self.assertEqual([call.args[0] for call in begin.call_args_list], [2])  # only epoch 3 ran
        self.assertEqual(result.history["epoch"], [0.0, 1.0, 2.0])
        self.assertTrue(os.path.exists(result.model_path))
        self.assertFalse(os.path.exists(os.path.join(workdir, "backup")))

        again = training.train(config, verbose=0)  # finished: skipped
        self.assertEqual(again.seconds, 0.0)
        self.assertEqual(again.history["epoch"], [0.0, 1.0, 2.0])

    def test_nan_loss_stops_and_keeps_last_good_state(self):
        workdir = tempfile.mkdtemp()
        config = _config(workdir)
        steps_per_epoch = 4  # 256 examples / batch 64
        with (
            mock.patch.object(
                training.objectives, "make", lambda _: _NaNAfter(steps_per_epoch + 1)
            ),
            self.assertRaisesRegex(training.NonFiniteLossError, "epoch 2, batch 2.*backup"),
        ):
            training.train(config, verbose=0)
        self.assertFalse(os.path.exists(os.path.join(workdir, "model.keras")))
        self.assertTrue(os.path.isdir(os.path.join(workdir, "backup")))
        # Rerunning (here with a sane loss) resumes from the last good epoch.
        result = training.train(config, verbose=0)
        self.assertTrue(result.resumed)
        network = training.load_network(result.model_path)
        for variable in network.weights:
            self.assertTrue(np.all(np.isfinite(variable.numpy())), variable.path)
        self.assertEqual(result.history["epoch"], [0.0, 1.0, 2.0])

    def test_workdir_with_other_config_is_refused(self):
        workdir = tempfile.mkdtemp()
        training.train(_config(workdir, epochs=1), verbose=0)
        with self.assertRaisesRegex(ValueError, "another configuration"):
            training.train(_config(workdir, epochs=2), verbose=0)

    def test_checkpoint_of_another_architecture(self):
        source = training.train(_config(tempfile.mkdtemp(), epochs=1, arch="cnn_large"), verbose=0)
        workdir = tempfile.mkdtemp()
        with self.assertRaisesRegex(phases.CheckpointMismatchError, "cnn_large"):
            training.train(
                _config(
                    workdir, phase="prune", keep_ratio=0.1, source_checkpoint=source.model_path
                ),
                verbose=0,
            )
        self.assertFalse(os.path.exists(os.path.join(workdir, "model.keras")))

    def test_missing_checkpoint(self):
        with self.assertRaisesRegex(FileNotFoundError, "Checkpoint not found"):
            training.train(
                _config(
                    tempfile.mkdtemp(),
                    phase="finetune",
                    keep_ratio=0.1,
                    source_checkpoint="/nonexistent/model.keras",
                ),
                verbose=0,
            )

    @parameterized.parameters(
        ({"dataset": "imagenet21k"}, "Unknown dataset|dataset"),
        ({"phase": "prune", "keep_ratio": 0.1}, "source_checkpoint"),
        ({"phase": "prune", "keep_ratio": 0.0, "source_checkpoint": "x"}, "keep_ratio"),
        ({"keep_ratio": 0.5}, "dense"),
        ({"phase": "prune", "keep_ratio": 1.0, "source_checkpoint": "x"}, "train nothing"),
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "lamb"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
        ({"score_init": "ones"}, "score init"),
    )
    def test_bad_config(self, overrides, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            _config("/tmp/unused", **overrides)

    def test_config_json_round_trip(self):
        config = _config("/tmp/x", objective=objectives.ObjectiveConfig(name="trades", eps=0.2))
        self.assertEqual(training.TrainConfig.from_json(config.to_json()), config)


if __name__ == "__main__":
    tf.test.main()
