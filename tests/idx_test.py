"""Tests for hydra_tf.data.idx: IDX parsing, and loading MNIST / Fashion-MNIST from IDX files."""

import gzip
import os
import struct
from unittest import mock

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl.testing import parameterized

from hydra_tf import data
from hydra_tf.data import idx
from tests import helpers

_NUM_TINY = 5
_TINY_SIZE = 4


def _idx_bytes(magic, array, dims=None):
    """Serialises `array` (uint8) as IDX with `magic`; `dims` overrides shape."""
    dims = array.shape if dims is None else dims
    header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    return header + np.asarray(array, np.uint8).tobytes()


def _write_gz(path, content):
    with gzip.open(path, "wb") as f:
        f.write(content)


def _tiny_arrays(offset=0):
    """5 distinct 4x4 uint8 images covering 0..255, and labels 0..4 (+offset)."""
    images = (np.arange(_NUM_TINY * _TINY_SIZE * _TINY_SIZE) * 3 + offset) % 256
    images = images.astype(np.uint8).reshape(_NUM_TINY, _TINY_SIZE, _TINY_SIZE)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = ((np.arange(_NUM_TINY) + offset) % 10).astype(np.uint8)
    return images, labels


def _write_tiny_idx_dir(directory, train_offset=0, test_offset=1):
    """Writes the four IDX files; returns {split: (images, labels)}."""
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for split, offset in (("train", train_offset), ("test", test_offset)):
        images, labels = _tiny_arrays(offset)
        images_file, labels_file = idx.IDX_FILES[split]
        _write_gz(
            os.path.join(directory, images_file),
            _idx_bytes(idx.IDX_IMAGES_MAGIC, images),
        )
        _write_gz(
            os.path.join(directory, labels_file),
            _idx_bytes(idx.IDX_LABELS_MAGIC, labels),
        )
        arrays[split] = (images, labels)
    return arrays


class IdxTest(tf.test.TestCase, parameterized.TestCase):
    def test_read_idx_exact_values(self):
        tmp = helpers.make_tempdir(self)
        images, labels = _tiny_arrays()
        path = os.path.join(tmp, "images.gz")
        _write_gz(path, _idx_bytes(idx.IDX_IMAGES_MAGIC, images))
        self.assertAllEqual(idx.read_idx(path, idx.IDX_IMAGES_MAGIC), images)
        path = os.path.join(tmp, "labels.gz")
        _write_gz(path, _idx_bytes(idx.IDX_LABELS_MAGIC, labels))
        self.assertAllEqual(idx.read_idx(path, idx.IDX_LABELS_MAGIC), labels)

    @parameterized.parameters("train", "test")
    def test_load_from_data_dir(self, split):
        tmp = helpers.make_tempdir(self)
        expected_images, expected_labels = _write_tiny_idx_dir(tmp)[split]
        dataset, num_examples = data.load("mnist", split, data_dir=tmp)
        self.assertEqual(num_examples, _NUM_TINY)
        self.assertEqual(dataset.element_spec[0].shape, (4, 4, 1))
        self.assertEqual(dataset.element_spec[0].dtype, tf.float32)
        self.assertEqual(dataset.element_spec[1].dtype, tf.int32)
        images, labels = helpers.collect(dataset)
        self.assertEqual(images.shape, (_NUM_TINY, 4, 4, 1))
        self.assertAllClose(images[..., 0], expected_images.astype(np.float32) / 255.0, atol=0)
        self.assertEqual(images.min(), 0.0)
        self.assertEqual(images.max(), 1.0)
        self.assertAllEqual(labels, expected_labels)

    def test_load_from_data_dir_subdirectory(self):
        tmp = helpers.make_tempdir(self)
        _, expected_labels = _write_tiny_idx_dir(os.path.join(tmp, "mnist"))["train"]
        dataset, num_examples = data.load("mnist", "train", data_dir=tmp)
        self.assertEqual(num_examples, _NUM_TINY)
        self.assertAllEqual(helpers.collect(dataset)[1], expected_labels)

    def test_data_dir_takes_precedence_over_debian_dir(self):
        debian = helpers.make_tempdir(self)
        _write_tiny_idx_dir(debian, train_offset=7)
        tmp = helpers.make_tempdir(self)
        _, expected_labels = _write_tiny_idx_dir(tmp, train_offset=2)["train"]
        with mock.patch.object(idx, "DEBIAN_FASHION_MNIST_DIR", debian):
            dataset, _ = data.load("fashion_mnist", "train", data_dir=tmp)
            self.assertAllEqual(helpers.collect(dataset)[1], expected_labels)
            # Without data_dir, the Debian directory is used.
            dataset, _ = data.load("fashion_mnist", "train")
            self.assertAllEqual(helpers.collect(dataset)[1], _tiny_arrays(7)[1])

    def test_incomplete_data_dir_falls_back_to_tfds(self):
        tmp = helpers.make_tempdir(self)
        _write_tiny_idx_dir(tmp)
        os.remove(os.path.join(tmp, idx.IDX_FILES["test"][1]))
        with (
            mock.patch.object(tfds, "load", side_effect=AssertionError("no data")),
            self.assertRaises(data.DatasetUnavailableError),
        ):
            data.load("mnist", "train", data_dir=tmp)

    def test_limit(self):
        tmp = helpers.make_tempdir(self)
        _, expected_labels = _write_tiny_idx_dir(tmp)["train"]
        dataset, num_examples = data.load("mnist", "train", data_dir=tmp, limit=3)
        self.assertEqual(num_examples, 3)
        self.assertAllEqual(helpers.collect(dataset)[1], expected_labels[:3])
        # A limit above the split size uses the whole split.
        dataset, num_examples = data.load("mnist", "train", data_dir=tmp, limit=99)
        self.assertEqual(num_examples, _NUM_TINY)
        self.assertLen(list(dataset), _NUM_TINY)

    @parameterized.parameters(0, -1, 2.5, "3", True)
    def test_bad_limit(self, limit):
        with self.assertRaisesRegex(ValueError, "limit"):
            data.load("mnist", "train", limit=limit)

    @parameterized.named_parameters(
        ("images_with_labels_magic", 0, idx.IDX_LABELS_MAGIC),
        ("labels_with_images_magic", 1, idx.IDX_IMAGES_MAGIC),
    )
    def test_wrong_magic(self, file_index, wrong_magic):
        tmp = helpers.make_tempdir(self)
        _write_tiny_idx_dir(tmp)
        images, labels = _tiny_arrays()
        array = (images, labels)[file_index]
        _write_gz(
            os.path.join(tmp, idx.IDX_FILES["train"][file_index]),
            _idx_bytes(wrong_magic, array),
        )
        with self.assertRaisesRegex(ValueError, f"magic.*{wrong_magic}"):
            data.load("mnist", "train", data_dir=tmp)

    @parameterized.named_parameters(
        ("missing_pixels", lambda b: b[:-1], "truncated"),
        ("trailing_bytes", lambda b: b + b"\0", "trailing"),
        ("inside_header", lambda b: b[:10], "header"),
        ("no_header", lambda b: b[:2], "too short"),
    )
    def test_bad_size(self, corrupt, message):
        tmp = helpers.make_tempdir(self)
        path = os.path.join(tmp, "images.gz")
        _write_gz(path, corrupt(_idx_bytes(idx.IDX_IMAGES_MAGIC, _tiny_arrays()[0])))
        with self.assertRaisesRegex(ValueError, message):
            idx.read_idx(path, idx.IDX_IMAGES_MAGIC)

    def test_truncated_gzip_stream(self):
        tmp = helpers.make_tempdir(self)
        path = os.path.join(tmp, "images.gz")
        _write_gz(path, _idx_bytes(idx.IDX_IMAGES_MAGIC, _tiny_arrays()[0]))
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[: len(content) // 2])
        with self.assertRaisesRegex(ValueError, "decompress"):
            idx.read_idx(path, idx.IDX_IMAGES_MAGIC)

    def test_images_labels_count_mismatch(self):
        tmp = helpers.make_tempdir(self)
        _write_tiny_idx_dir(tmp)
        _write_gz(
            os.path.join(tmp, idx.IDX_FILES["train"][1]),
            _idx_bytes(idx.IDX_LABELS_MAGIC, np.zeros(_NUM_TINY - 1, np.uint8)),
        )
        with self.assertRaisesRegex(ValueError, "5 images, 4 labels"):
            data.load("mnist", "train", data_dir=tmp)


class DebianFashionMnistTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        if not os.path.isdir(idx.DEBIAN_FASHION_MNIST_DIR):
            self.skipTest(
                f"{idx.DEBIAN_FASHION_MNIST_DIR} does not exist "
                "(apt-get install dataset-fashion-mnist)"
            )

    def test_real_fashion_mnist(self):
        dataset, num_examples = data.load("fashion_mnist", "test", limit=100)
        self.assertEqual(num_examples, 100)
        images, labels = helpers.collect(dataset)
        self.assertEqual(images.shape, (100, 28, 28, 1))
        self.assertEqual(images.dtype, np.float32)
        self.assertAllInRange(images, 0.0, 1.0)
        self.assertGreater(images.max(), 0.5)  # Not all black.
        self.assertAllInRange(labels, 0, 9)
        self.assertGreater(len(set(labels.tolist())), 5)

        dataset, num_examples = data.load("fashion_mnist", "test")
        self.assertEqual(num_examples, 10000)
        self.assertEqual(int(dataset.cardinality()), 10000)


if __name__ == "__main__":
    tf.test.main()
