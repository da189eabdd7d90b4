"""Tests for hydra_tf.data: the dataset registry (datasets.py), the argument checks, the names."""

import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import data
from hydra_tf.data import datasets
from hydra_tf.data import idx
from hydra_tf.data import imagenet
from hydra_tf.data import input_pipeline
from hydra_tf.data import sources


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
            ["cifar10", "svhn_cropped", "mnist", "fashion_mnist", "imagenet2012"],
        )

    def test_default_augment(self):
        self.assertTrue(data.default_augment("cifar10"))
        for name in ("svhn_cropped", "mnist", "fashion_mnist"):
            self.assertFalse(data.default_augment(name))

    def test_package_names_are_the_modules(self):
        self.assertIs(data.DATASETS, datasets.DATASETS)
        self.assertEqual(data.SUPPORTED_DATASETS, tuple(datasets.DATASETS))
        self.assertIs(data.load, sources.load)
        self.assertIs(data.load_pipeline, sources.load_pipeline)
        self.assertIs(data.imagenet_normalization, imagenet.normalization)
        self.assertIs(data.make_pipeline, input_pipeline.make_pipeline)
        self.assertIs(data.read_idx, idx.read_idx)
        self.assertIs(data.DatasetUnavailableError, datasets.DatasetUnavailableError)
        self.assertEqual(data.DEBIAN_FASHION_MNIST_DIR, idx.DEBIAN_FASHION_MNIST_DIR)


if __name__ == "__main__":
    tf.test.main()
