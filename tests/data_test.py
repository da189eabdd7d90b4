"""Tests for hydra_tf.data: IDX parsing, data sources, TFDS and pipelines."""

import gzip
import os
import socket
import struct
import tempfile
import time
from unittest import mock

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl.testing import parameterized

from hydra_tf import data

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
        images_file, labels_file = data.IDX_FILES[split]
        _write_gz(
            os.path.join(directory, images_file),
            _idx_bytes(data.IDX_IMAGES_MAGIC, images),
        )
        _write_gz(
            os.path.join(directory, labels_file),
            _idx_bytes(data.IDX_LABELS_MAGIC, labels),
        )
        arrays[split] = (images, labels)
    return arrays


def _make_tempdir(test_case):
    """A fresh temporary directory removed after the test.

    `self.create_tempdir()` needs parsed absl flags, which pytest does not do.
    """
    tmp = tempfile.TemporaryDirectory()
    test_case.addCleanup(tmp.cleanup)
    return tmp.name


def _collect(dataset):
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.stack(images), np.array(labels)


class IdxTest(tf.test.TestCase, parameterized.TestCase):
    def test_read_idx_exact_values(self):
        tmp = _make_tempdir(self)
        images, labels = _tiny_arrays()
        path = os.path.join(tmp, "images.gz")
        _write_gz(path, _idx_bytes(data.IDX_IMAGES_MAGIC, images))
        self.assertAllEqual(data.read_idx(path, data.IDX_IMAGES_MAGIC), images)
        path = os.path.join(tmp, "labels.gz")
        _write_gz(path, _idx_bytes(data.IDX_LABELS_MAGIC, labels))
        self.assertAllEqual(data.read_idx(path, data.IDX_LABELS_MAGIC), labels)

    @parameterized.parameters("train", "test")
    def test_load_from_data_dir(self, split):
        tmp = _make_tempdir(self)
        expected_images, expected_labels = _write_tiny_idx_dir(tmp)[split]
        dataset, num_examples = data.load("mnist", split, data_dir=tmp)
        self.assertEqual(num_examples, _NUM_TINY)
        self.assertEqual(dataset.element_spec[0].shape, (4, 4, 1))
        self.assertEqual(dataset.element_spec[0].dtype, tf.float32)
        self.assertEqual(dataset.element_spec[1].dtype, tf.int32)
        images, labels = _collect(dataset)
        self.assertEqual(images.shape, (_NUM_TINY, 4, 4, 1))
        self.assertAllClose(images[..., 0], expected_images.astype(np.float32) / 255.0, atol=0)
        self.assertEqual(images.min(), 0.0)
        self.assertEqual(images.max(), 1.0)
        self.assertAllEqual(labels, expected_labels)

    def test_load_from_data_dir_subdirectory(self):
        tmp = _make_tempdir(self)
        _, expected_labels = _write_tiny_idx_dir(os.path.join(tmp, "mnist"))["train"]
        dataset, num_examples = data.load("mnist", "train", data_dir=tmp)
        self.assertEqual(num_examples, _NUM_TINY)
        self.assertAllEqual(_collect(dataset)[1], expected_labels)

    def test_data_dir_takes_precedence_over_debian_dir(self):
        debian = _make_tempdir(self)
        _write_tiny_idx_dir(debian, train_offset=7)
        tmp = _make_tempdir(self)
        _, expected_labels = _write_tiny_idx_dir(tmp, train_offset=2)["train"]
        with mock.patch.object(data, "DEBIAN_FASHION_MNIST_DIR", debian):
            dataset, _ = data.load("fashion_mnist", "train", data_dir=tmp)
            self.assertAllEqual(_collect(dataset)[1], expected_labels)
            # Without data_dir, the Debian directory is used.
            dataset, _ = data.load("fashion_mnist", "train")
            self.assertAllEqual(_collect(dataset)[1], _tiny_arrays(7)[1])

    def test_incomplete_data_dir_falls_back_to_tfds(self):
        tmp = _make_tempdir(self)
        _write_tiny_idx_dir(tmp)
        os.remove(os.path.join(tmp, data.IDX_FILES["test"][1]))
        with (
            mock.patch.object(tfds, "load", side_effect=AssertionError("no data")),
            self.assertRaises(data.DatasetUnavailableError),
        ):
            data.load("mnist", "train", data_dir=tmp)

    def test_limit(self):
        tmp = _make_tempdir(self)
        _, expected_labels = _write_tiny_idx_dir(tmp)["train"]
        dataset, num_examples = data.load("mnist", "train", data_dir=tmp, limit=3)
        self.assertEqual(num_examples, 3)
        self.assertAllEqual(_collect(dataset)[1], expected_labels[:3])
        # A limit above the split size uses the whole split.
        dataset, num_examples = data.load("mnist", "train", data_dir=tmp, limit=99)
        self.assertEqual(num_examples, _NUM_TINY)
        self.assertLen(list(dataset), _NUM_TINY)

    @parameterized.parameters(0, -1, 2.5, "3", True)
    def test_bad_limit(self, limit):
        with self.assertRaisesRegex(ValueError, "limit"):
            data.load("mnist", "train", limit=limit)

    @parameterized.named_parameters(
        ("images_with_labels_magic", 0, data.IDX_LABELS_MAGIC),
        ("labels_with_images_magic", 1, data.IDX_IMAGES_MAGIC),
    )
    def test_wrong_magic(self, file_index, wrong_magic):
        tmp = _make_tempdir(self)
        _write_tiny_idx_dir(tmp)
        images, labels = _tiny_arrays()
        array = (images, labels)[file_index]
        _write_gz(
            os.path.join(tmp, data.IDX_FILES["train"][file_index]),
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
        tmp = _make_tempdir(self)
        path = os.path.join(tmp, "images.gz")
        _write_gz(path, corrupt(_idx_bytes(data.IDX_IMAGES_MAGIC, _tiny_arrays()[0])))
        with self.assertRaisesRegex(ValueError, message):
            data.read_idx(path, data.IDX_IMAGES_MAGIC)

    def test_truncated_gzip_stream(self):
        tmp = _make_tempdir(self)
        path = os.path.join(tmp, "images.gz")
        _write_gz(path, _idx_bytes(data.IDX_IMAGES_MAGIC, _tiny_arrays()[0]))
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[: len(content) // 2])
        with self.assertRaisesRegex(ValueError, "decompress"):
            data.read_idx(path, data.IDX_IMAGES_MAGIC)

    def test_images_labels_count_mismatch(self):
        tmp = _make_tempdir(self)
        _write_tiny_idx_dir(tmp)
        _write_gz(
            os.path.join(tmp, data.IDX_FILES["train"][1]),
            _idx_bytes(data.IDX_LABELS_MAGIC, np.zeros(_NUM_TINY - 1, np.uint8)),
        )
        with self.assertRaisesRegex(ValueError, "5 images, 4 labels"):
            data.load("mnist", "train", data_dir=tmp)


class DebianFashionMnistTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        if not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR):
            self.skipTest(
                f"{data.DEBIAN_FASHION_MNIST_DIR} does not exist "
                "(apt-get install dataset-fashion-mnist)"
            )

    def test_real_fashion_mnist(self):
        dataset, num_examples = data.load("fashion_mnist", "test", limit=100)
        self.assertEqual(num_examples, 100)
        images, labels = _collect(dataset)
        self.assertEqual(images.shape, (100, 28, 28, 1))
        self.assertEqual(images.dtype, np.float32)
        self.assertAllInRange(images, 0.0, 1.0)
        self.assertGreater(images.max(), 0.5)  # Not all black.
        self.assertAllInRange(labels, 0, 9)
        self.assertGreater(len(set(labels.tolist())), 5)

        dataset, num_examples = data.load("fashion_mnist", "test")
        self.assertEqual(num_examples, 10000)
        self.assertEqual(int(dataset.cardinality()), 10000)


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
        images, labels = _collect(dataset)
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
        missing = os.path.join(_make_tempdir(self), "missing")
        with (
            mock.patch.object(data, "DEBIAN_FASHION_MNIST_DIR", missing),
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
        missing = os.path.join(_make_tempdir(self), "missing")
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
        missing = os.path.join(_make_tempdir(self), "missing")
        with (
            mock.patch.object(data, "_can_connect", return_value=True),
            mock.patch.object(tfds, "load", side_effect=AssertionError("offline")) as load,
            self.assertRaises(data.DatasetUnavailableError),
        ):
            data.load("mnist", "test", data_dir=missing)
        self.assertEqual([c.kwargs["download"] for c in load.call_args_list], [False, True])


class ValidationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("imagenet", "CIFAR10", None)
    def test_unknown_dataset(self, name):
        for function in (
            lambda: data.load(name, "train"),
            lambda: data.info(name),
            lambda: data.default_augment(name),
        ):
            with self.assertRaisesRegex(ValueError, "cifar10, svhn_cropped, mnist, fashion_mnist"):
                function()

    @parameterized.parameters("validation", "TEST", "train[:10]", None)
    def test_bad_split(self, split):
        with self.assertRaisesRegex(ValueError, "train, test.*split="):
            data.load("mnist", split)

    @parameterized.parameters(0, -3, 1.5, None)
    def test_bad_batch_size(self, batch_size):
        dataset = tf.data.Dataset.range(4)
        with self.assertRaisesRegex(ValueError, f"batch_size={batch_size}"):
            data.make_pipeline(dataset, batch_size, training=False)

    def test_info(self):
        cifar = data.info("cifar10")
        self.assertEqual(cifar, data.DatasetInfo("cifar10", (32, 32, 3), 10, 50000, 10000))
        self.assertEqual(data.info("svhn_cropped").num_examples("test"), 26032)
        self.assertEqual(data.info("fashion_mnist").image_shape, (28, 28, 1))
        with self.assertRaises(AttributeError):  # Frozen.
            cifar.num_train = 1
        self.assertCountEqual(
            data.SUPPORTED_DATASETS,
            ["cifar10", "svhn_cropped", "mnist", "fashion_mnist"],
        )

    def test_default_augment(self):
        self.assertTrue(data.default_augment("cifar10"))
        for name in ("svhn_cropped", "mnist", "fashion_mnist"):
            self.assertFalse(data.default_augment(name))


def _random_images(count=8, shape=(8, 8, 3)):
    rng = np.random.default_rng(0)
    images = rng.uniform(0.01, 1.0, size=(count,) + shape).astype(np.float32)
    labels = np.arange(count, dtype=np.int32)
    return images, labels


class PipelineTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (False, False, [4, 4, 2]), (True, False, [4, 4, 2]), (True, True, [4, 4])
    )
    def test_batch_shapes(self, training, drop_remainder, sizes):
        images, labels = _random_images(count=10)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        pipeline = data.make_pipeline(
            dataset, 4, training=training, seed=1, drop_remainder=drop_remainder
        )
        batches = list(pipeline.as_numpy_iterator())
        self.assertEqual([len(b[1]) for b in batches], sizes)
        for batch_images, _ in batches:
            self.assertEqual(batch_images.shape[1:], (8, 8, 3))

    def test_eval_keeps_order_and_values(self):
        images, labels = _random_images()
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        pipeline = data.make_pipeline(dataset, 3, training=False, augment=True)
        out_images, out_labels = (np.concatenate(x) for x in zip(*pipeline.as_numpy_iterator()))
        self.assertAllEqual(out_labels, labels)
        self.assertAllEqual(out_images, images)  # No augmentation in eval.

    def test_augment(self):
        images, labels = _random_images()
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        pipeline = data.make_pipeline(dataset, 8, training=True, augment=True, seed=5)
        (out_images, out_labels), *_ = list(pipeline.as_numpy_iterator())
        self.assertEqual(out_images.shape, images.shape)
        self.assertEqual(out_images.dtype, np.float32)
        self.assertAllInRange(out_images, 0.0, 1.0)
        changed = [
            not np.array_equal(image, images[label]) for image, label in zip(out_images, out_labels)
        ]
        self.assertTrue(any(changed))
        # Zero padding shows up as black borders in some crops.
        self.assertTrue(np.any(out_images == 0.0))
        # The same seed reproduces the same augmentation.
        again = data.make_pipeline(dataset, 8, training=True, augment=True, seed=5)
        (again_images, again_labels), *_ = list(again.as_numpy_iterator())
        self.assertAllEqual(again_labels, out_labels)
        self.assertAllEqual(again_images, out_images)

    def test_augment_is_crop_and_flip(self):
        # Every augmented image must be a shifted (and maybe mirrored) copy.
        images, labels = _random_images(count=6, shape=(6, 6, 1))
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        pipeline = data.make_pipeline(dataset, 6, training=True, augment=True, seed=2)
        (out_images, out_labels), *_ = list(pipeline.as_numpy_iterator())
        for image, label in zip(out_images, out_labels):
            padded = np.pad(images[label], [[4, 4], [4, 4], [0, 0]])
            candidates = [
                crop
                for dy in range(9)
                for dx in range(9)
                for crop in (
                    padded[dy : dy + 6, dx : dx + 6],
                    padded[dy : dy + 6, dx : dx + 6][:, ::-1],
                )
            ]
            self.assertTrue(any(np.array_equal(image, c) for c in candidates))

    def test_shuffle_is_seeded_and_reshuffles(self):
        dataset = tf.data.Dataset.range(100)

        def order(pipeline):
            return np.concatenate(list(pipeline.as_numpy_iterator())).tolist()

        first = data.make_pipeline(dataset, 10, training=True, seed=42)
        second = data.make_pipeline(dataset, 10, training=True, seed=42)
        epoch1 = order(first)
        self.assertEqual(epoch1, order(second))
        self.assertNotEqual(epoch1, list(range(100)))
        self.assertCountEqual(epoch1, range(100))
        self.assertNotEqual(epoch1, order(first))  # Reshuffled next epoch.
        other_seed = data.make_pipeline(dataset, 10, training=True, seed=43)
        self.assertNotEqual(epoch1, order(other_seed))
        evaluation = data.make_pipeline(dataset, 10, training=False, seed=42)
        self.assertEqual(order(evaluation), list(range(100)))


if __name__ == "__main__":
    tf.test.main()
