"""Tests for hydra_tf.data.tfds_source: TFDS loading, and the fast failure offline."""

import os
import socket
import time
from unittest import mock

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl.testing import parameterized

from hydra_tf import data
from hydra_tf.data import idx
from hydra_tf.data import tfds_source
from tests import helpers


class TfdsTest(tf.test.TestCase, parameterized.TestCase):
    # MockPolicy.USE_CODE generates random examples from the builder's feature
    # spec in the installed TFDS code, so it needs neither downloaded data nor
    # metadata files nor network access. (AUTO also works offline here, but
    # may try to read metadata; USE_CODE does not depend on that.)
    @parameterized.parameters(
        ("cifar10", (32, 32, 3)),
        ("svhn_cropped", (32, 32, 3)),
        ("mnist", (28, 28, 1)),
    )
    def test_mock_tfds(self, name, shape):
        with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
            dataset, num_examples = data.load(name, "train")
            limited, num_limited = data.load(name, "test", limit=4)
        self.assertEqual(num_examples, 6)
        self.assertEqual(num_limited, 4)
        self.assertLen(list(limited), 4)
        images, labels = helpers.collect(dataset)
        self.assertEqual(images.shape, (6,) + shape)
        self.assertEqual(images.dtype, np.float32)
        self.assertEqual(labels.dtype, np.int32)
        self.assertAllInRange(images, 0.0, 1.0)
        self.assertGreater(images.max(), 0.5)  # Really divided by 255 once.
        self.assertAllInRange(labels, 0, 9)

    @parameterized.parameters(
        ("fashion_mnist", "apt-get install dataset-fashion-mnist"),
        ("fashion_mnist", "--data_dir"),
        ("cifar10", "internet"),
        ("svhn_cropped", "internet"),
        ("mnist", "--data_dir"),
    )
    def test_tfds_failure(self, name, hint):
        original = AssertionError("could not find data")
        missing = os.path.join(helpers.make_tempdir(self), "missing")
        with (
            mock.patch.object(idx, "DEBIAN_FASHION_MNIST_DIR", missing),
            mock.patch.object(tfds, "load", side_effect=original) as load,
            self.assertRaisesRegex(data.DatasetUnavailableError, hint) as cm,
        ):
            data.load(name, "test")
        self.assertIsInstance(cm.exception, RuntimeError)
        self.assertIs(cm.exception.__cause__, original)
        self.assertIn("internet", str(cm.exception))
        self.assertEqual(load.call_args.args, (name,))
        self.assertEqual(load.call_args.kwargs["split"], "test")
        self.assertTrue(load.call_args.kwargs["as_supervised"])

    def test_no_network_fails_within_seconds(self):
        # TFDS' own downloader retries for minutes without a network; the
        # download hosts are probed first instead.
        missing = os.path.join(helpers.make_tempdir(self), "missing")
        original = AssertionError("not prepared")
        start = time.time()
        with (
            mock.patch.object(socket, "create_connection", side_effect=OSError("unreachable")),
            mock.patch.object(tfds, "load", side_effect=original) as load,
            self.assertRaisesRegex(data.DatasetUnavailableError, "cannot be reached") as cm,
        ):
            data.load("mnist", "test", data_dir=missing)
        self.assertLess(time.time() - start, 30)
        self.assertIn("--data_dir", str(cm.exception))
        # Only the offline attempt ran; TFDS never started a download.
        self.assertEqual([c.kwargs["download"] for c in load.call_args_list], [False])

    def test_reachable_host_lets_tfds_download(self):
        missing = os.path.join(helpers.make_tempdir(self), "missing")
        with (
            mock.patch.object(tfds_source, "_can_connect", return_value=True),
            mock.patch.object(tfds, "load", side_effect=AssertionError("offline")) as load,
            self.assertRaises(data.DatasetUnavailableError),
        ):
            data.load("mnist", "test", data_dir=missing)
        self.assertEqual([c.kwargs["download"] for c in load.call_args_list], [False, True])


if __name__ == "__main__":
    tf.test.main()
