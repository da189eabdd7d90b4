"""Tests for hydra_tf.training: resume after a kill, NaN handling, bad input."""

import os
import re
import shutil
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import files
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.pruning import phases
from hydra_tf.training import trainer
from tests import helpers


def _config(workdir, **overrides):
    values = {
        "workdir": workdir,
        "train_limit": 256,
        "test_limit": 64,
        "batch_size": 64,
        "epochs": 3,
        "learning_rate": 0.05,
        "objective": objectives.config("natural"),
    }
    values.update(overrides)
    return training.TrainConfig(**values)


class _Killed(Exception):
    pass


class _BadAfter(objectives.Natural):
    """Natural loss that turns bad after `calls` training steps.

    kind "nan": the loss becomes NaN. kind "collapse": a penalty drives every
    fc1 bias to -inf, so every fc1 unit dies and the network outputs the
    constant fc2 bias: a collapse without any NaN, as a too-high learning rate
    can cause.
    """

    def __init__(self, calls, kind):
        super().__init__()
        self.calls = calls
        self.kind = kind
        self.count = tf.Variable(0)

    def loss(self, model, x, y, perturbed):
        value, logits = super().loss(model, x, y, perturbed)
        self.count.assign_add(1)
        if self.kind == "nan":
            bad = tf.constant(np.nan)
        else:
            bad = value + 1e4 * tf.reduce_sum(model.get_layer("fc1").bias)
        return tf.where(self.count > self.calls, bad, value), logits


class _ZeroData(objectives.Natural):
    """A loss whose gradient is exactly zero: only weight decay moves weights."""

    def loss(self, model, x, y, perturbed):
        logits = model(perturbed, training=True)
        return 0.0 * tf.reduce_sum(logits), logits


def _heavy_ball_decay(steps, lr, wd, momentum):
    """w_T / w_0 for SGD with momentum on the gradient wd * w, in closed form.

    v_{t+1} = m v_t - lr wd w_t, w_{t+1} = w_t + v_{t+1}: w_t = c1 l1^t + c2 l2^t
    with l1, l2 the roots of l^2 - (1 + m - lr wd) l + m = 0 and w_1 = (1 - lr wd) w_0.
    """
    b = 1.0 + momentum - lr * wd
    root = np.sqrt(b * b - 4.0 * momentum)
    l1, l2 = (b + root) / 2.0, (b - root) / 2.0
    w1 = 1.0 - lr * wd
    return ((w1 - l2) * l1**steps - (w1 - l1) * l2**steps) / (l1 - l2)


class WeightDecayTest(tf.test.TestCase, parameterized.TestCase):
    """Coupled (PyTorch-style) vs decoupled (Keras) weight decay, closed form."""

    def _decay(self, mode, strategy=None, policy="float32"):
        steps, lr, wd = 1000, 0.1, 1e-4
        config = _config(
            "/tmp/unused",
            learning_rate=lr,
            momentum=0.9,
            weight_decay=wd,
            weight_decay_mode=mode,
            schedule="constant",
        )
        strategy = strategy or tf.distribute.get_strategy()
        keras.mixed_precision.set_global_policy(policy)
        try:
            with strategy.scope():
                keras.utils.set_random_seed(0)
                network = keras.Sequential(
                    [keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
                )
                start = network.layers[-1].kernel.numpy().copy()
                model = trainer.RobustTrainer(network, _ZeroData(), l2=training.coupled_l2(config))
                model.compile(optimizer=training.make_optimizer(config, steps))
            x = np.ones((2 * steps, 2, 2, 1), np.float32)
            y = np.zeros(2 * steps, np.int64)
            model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
            return network.layers[-1].kernel.numpy() / start
        finally:
            keras.mixed_precision.set_global_policy("float32")

    def test_coupled_is_the_default(self):
        self.assertEqual(_config("/tmp/x").weight_decay_mode, "coupled")

    def test_coupled_matches_heavy_ball_closed_form(self):
        expected = _heavy_ball_decay(1000, 0.1, 1e-4, 0.9)
        self.assertAllClose(self._decay("coupled"), np.full((4, 3), expected), rtol=1e-4)
        # About 10x the decoupled shrinkage: exp(-0.1) against exp(-0.01).
        self.assertLess(expected, 0.91)

    def test_decoupled_matches_keras_closed_form(self):
        expected = (1.0 - 0.1 * 1e-4) ** 1000
        self.assertAllClose(self._decay("decoupled"), np.full((4, 3), expected), rtol=1e-4)

    def test_coupled_under_two_replicas(self):
        strategy = helpers.mirrored_cpus()
        expected = _heavy_ball_decay(1000, 0.1, 1e-4, 0.9)
        self.assertAllClose(self._decay("coupled", strategy), np.full((4, 3), expected), rtol=1e-4)

    def test_coupled_under_mixed_precision(self):
        expected = _heavy_ball_decay(1000, 0.1, 1e-4, 0.9)
        decay = self._decay("coupled", policy="mixed_float16")
        self.assertAllClose(decay, np.full((4, 3), expected), rtol=1e-4)


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

        # The resumed run trained exactly as an uninterrupted one: the same
        # state, and the same data order in its last epoch.
        straight = training.train(_config(tempfile.mkdtemp()), verbose=0)
        self.assertAllClose(result.history["loss"], straight.history["loss"], rtol=1e-6)
        expected = keras.saving.load_model(straight.model_path).get_weights()
        for got, want in zip(keras.saving.load_model(result.model_path).get_weights(), expected):
            self.assertAllClose(got, want, atol=1e-6)

    def test_run_without_its_backup_starts_again_with_a_clean_history(self):
        # A killed run whose backup is gone (a snapshot saved without it) trains
        # from epoch 0; the epochs it logged before are not appended to.
        workdir = tempfile.mkdtemp()
        config = _config(workdir, epochs=2)
        helpers.train_killed_after_first_epoch(self, config)
        history_path = os.path.join(workdir, "history.csv")
        self.assertEqual(files.read_history(history_path)["epoch"], [0])
        shutil.rmtree(os.path.join(workdir, "backup"))
        result = training.train(config, verbose=0)
        self.assertFalse(result.resumed)
        self.assertEqual(result.history["epoch"], [0.0, 1.0])
        self.assertEqual(files.read_history(history_path)["epoch"], [0, 1])

    def _stopped(self, kind, error, pattern, **overrides):
        """Trains until `_BadAfter` (after one epoch) stops the run; returns its config."""
        config = _config(tempfile.mkdtemp(), **overrides)
        steps_per_epoch = config.train_limit // config.batch_size
        with (
            mock.patch.object(
                training.objectives,
                "make",
                lambda *_, **__: _BadAfter(steps_per_epoch + 1, kind),
            ),
            self.assertRaisesRegex(error, pattern),
        ):
            training.train(config, verbose=0)
        self.assertFalse(os.path.exists(os.path.join(config.workdir, "model.keras")))
        self.assertTrue(os.path.isdir(os.path.join(config.workdir, "backup")))
        return config

    def test_collapse_stops_and_keeps_last_good_state(self):
        config = self._stopped(
            "collapse",
            training.CollapsedRunError,
            "collapsed at epoch 2.*backup",
            train_limit=1024,
            test_limit=256,
        )
        # Only the good epoch is in the history.
        history = files.read_history(os.path.join(config.workdir, "history.csv"))
        self.assertEqual(history["epoch"], [0])

    def test_run_starting_at_chance_is_not_stopped(self):
        # From the first step on the network is dead: it never classified
        # well in this run, so there is nothing it fell from; and this run is
        # too short (8 steps) to say it never takes off.
        workdir = tempfile.mkdtemp()
        with mock.patch.object(
            training.objectives, "make", lambda *_, **__: _BadAfter(0, "collapse")
        ):
            result = training.train(_config(workdir, epochs=2), verbose=0)
            self.assertLessEqual(result.history["val_accuracy"][-1], 0.2)
            # Nor is a finetune from such a network (an LWM mask that kills
            # it), however long: only a run from scratch can fail to take off.
            with mock.patch.object(training, "_STUCK_STEPS", 8):
                finetune = training.train(
                    _config(
                        tempfile.mkdtemp(),
                        phase="finetune",
                        keep_ratio=0.5,
                        source_checkpoint=result.model_path,
                    ),
                    verbose=0,
                )
        self.assertEqual(finetune.history["epoch"], [0.0, 1.0, 2.0])
        self.assertLessEqual(finetune.history["val_accuracy"][-1], 0.2)

    def test_input_independent_needs_two_equal_rows(self):
        row = np.array([[1.0, -2.0, 3.0]], np.float32)
        self.assertTrue(training._input_independent(np.repeat(row, 4, axis=0)))
        self.assertFalse(training._input_independent(row))  # one image shows nothing
        varied = np.repeat(row, 4, axis=0)
        varied[2, 1] += 1e-3
        self.assertFalse(training._input_independent(varied))

    def test_start_whose_output_ignores_the_input_is_logged(self):
        # A finetune from a network whose fc1 units are all dead (every image
        # gives fc2's bias) is warned about at its start; one from the live
        # network is not.
        dense = training.train(_config(tempfile.mkdtemp(), epochs=1), verbose=0)
        network = files.load_network(dense.model_path)
        fc1 = network.get_layer("fc1")
        fc1.bias.assign(np.full(fc1.bias.shape, -1e4, np.float32))
        dead_path = os.path.join(tempfile.mkdtemp(), "dead.keras")
        network.save(dead_path)

        def warnings_of(source):
            config = _config(
                tempfile.mkdtemp(),
                phase="finetune",
                keep_ratio=0.5,
                epochs=1,
                source_checkpoint=source,
            )
            with mock.patch.object(training.logging, "warning") as warning:
                training.train(config, verbose=0)
            return [call.args[0] % call.args[1:] for call in warning.call_args_list]

        pattern = "finetune.* output is the same for all 64 test images"
        self.assertTrue(any(re.search(pattern, m) for m in warnings_of(dead_path)))
        self.assertFalse(any("output is the same" in m for m in warnings_of(dense.model_path)))

    def test_run_from_scratch_that_never_takes_off_stops(self):
        # Dead from the first step and still dead once the (here lowered)
        # epoch and step counts are reached: the run stops with a clear error.
        workdir = tempfile.mkdtemp()
        with (
            mock.patch.object(
                training.objectives, "make", lambda *_, **__: _BadAfter(0, "collapse")
            ),
            mock.patch.object(training, "_STUCK_STEPS", 8),
            self.assertRaisesRegex(
                training.CollapsedRunError, "never took off: after epoch 2 \\(8 steps\\)"
            ),
        ):
            training.train(_config(workdir, epochs=3), verbose=0)
        self.assertFalse(os.path.exists(os.path.join(workdir, "model.keras")))
        history = files.read_history(os.path.join(workdir, "history.csv"))
        self.assertEqual(history["epoch"], [0])

    def test_workdir_that_is_a_file(self):
        path = os.path.join(tempfile.mkdtemp(), "file")
        with open(path, "w") as f:
            f.write("x")
        with self.assertRaisesRegex(ValueError, "--workdir=.* is a file, not a directory"):
            training.train(_config(path), verbose=0)
        with self.assertRaisesRegex(ValueError, "Cannot create --workdir"):
            training.train(_config(os.path.join(path, "run")), verbose=0)

    def test_nan_loss_stops_and_keeps_last_good_state(self):
        config = self._stopped("nan", training.NonFiniteLossError, "epoch 2, batch 2.*backup")
        # Rerunning (here with a sane loss) resumes from the last good epoch.
        result = training.train(config, verbose=0)
        self.assertTrue(result.resumed)
        network = files.load_network(result.model_path)
        for variable in network.weights:
            self.assertTrue(np.all(np.isfinite(variable.numpy())), variable.path)
        self.assertEqual(result.history["epoch"], [0.0, 1.0, 2.0])

    def test_workdir_with_other_config_is_refused(self):
        workdir = tempfile.mkdtemp()
        training.train(_config(workdir, epochs=1), verbose=0)
        with self.assertRaisesRegex(ValueError, "another configuration"):
            training.train(_config(workdir, epochs=2), verbose=0)

    def test_moved_tree_of_runs_is_the_same_run(self):
        root = tempfile.mkdtemp()
        old = lambda *parts: os.path.join(root, "old", *parts)
        new = lambda *parts: os.path.join(root, "new", *parts)
        training.train(_config(old("dense"), epochs=1), verbose=0)
        prune = {"phase": "prune", "keep_ratio": 0.1, "epochs": 1}
        training.train(
            _config(old("prune"), source_checkpoint=old("dense", "model.keras"), **prune),
            verbose=0,
        )
        shutil.copytree(old(), new())
        # Moved together, the prune phase and its source are the same run: finished.
        result = training.train(
            _config(new("prune"), source_checkpoint=new("dense", "model.keras"), **prune),
            verbose=0,
        )
        self.assertTrue(result.resumed)
        self.assertEqual(result.model_path, new("prune", "model.keras"))
        # The moved run pointed at another source (the old tree's) is another run.
        with self.assertRaisesRegex(ValueError, "another configuration"):
            training.train(
                _config(new("prune"), source_checkpoint=old("dense", "model.keras"), **prune),
                verbose=0,
            )

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
        ({"weight_decay_mode": "adamw"}, "weight_decay_mode"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"prune_bn": "off"}, "prune_bn"),
    )
    def test_bad_config(self, overrides, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            _config("/tmp/unused", **overrides)

    def test_config_json_round_trip(self):
        config = _config("/tmp/x", objective=objectives.config("trades", eps=0.2))
        self.assertEqual(training.TrainConfig.from_json(config.to_json()), config)


if __name__ == "__main__":
    tf.test.main()
