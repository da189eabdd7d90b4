"""Shared test fixtures: small real data and a naturally trained model."""

import functools
import os
import subprocess
import sys
import tempfile
from unittest import mock

import keras
import numpy as np

from hydra_tf import data
from hydra_tf import export
from hydra_tf import training
from hydra_tf.models import architectures
from hydra_tf.models import masks


@functools.cache
def mirrored_cpus():
    """The process's one MirroredStrategy over the two logical CPUs of conftest.py.

    Separate MirroredStrategy objects in one process reuse collective instance
    keys and can pair up each other's all-reduces, so every test shares this one.
    """
    import tensorflow as tf

    devices = tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def make_tempdir(test_case):
    """A fresh temporary directory removed after the test.

    `self.create_tempdir()` needs parsed absl flags, which pytest does not do.
    """
    tmp = tempfile.TemporaryDirectory()
    test_case.addCleanup(tmp.cleanup)
    return tmp.name


def collect(dataset):
    """(images, labels) numpy arrays of an unbatched (image, label) dataset."""
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.stack(images), np.array(labels)


@functools.cache
def fashion_arrays(split, limit):
    """(images, labels) numpy arrays of real Fashion-MNIST."""
    ds, _ = data.load("fashion_mnist", split, limit=limit)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.stack(images), np.array(labels)


@functools.cache
def natural_cnn_small():
    """A cnn_small trained naturally (no defence) on 3000 real examples."""
    keras.utils.set_random_seed(0)
    x, y = fashion_arrays("train", 3000)
    model = architectures.build("cnn_small", (28, 28, 1), 10)
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    return model


@functools.cache
def pruned_plain_cnn_small(keep_ratio):
    """`natural_cnn_small` as a plain model with its smallest weights zeroed (per layer)."""
    import tensorflow as tf

    plain = export.strip_scores(natural_cnn_small())
    for kernel in export.kernels(plain):
        mask = masks.topk_mask(tf.abs(kernel), keep_ratio)
        kernel.assign(kernel * tf.cast(mask, kernel.dtype))
    return plain


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args):
    """Runs `python -m <module> args...` from the repository root; returns the result."""
    env = dict(os.environ, PYTHONPATH=_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        check=False,
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


class Killed(Exception):
    """Stands for a training process killed between epochs."""


def train_killed_after_first_epoch(test, config):
    """Runs `training.train(config)`, killed (`Killed`) once its first epoch has ended."""
    original = training._LogProgress.on_epoch_end

    def kill(callback, epoch, logs=None):
        original(callback, epoch, logs)
        raise Killed()

    with (
        test.assertRaises(Killed),
        mock.patch.object(training._LogProgress, "on_epoch_end", kill),
    ):
        training.train(config, verbose=0)
