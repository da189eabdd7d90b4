"""Tests for hydra_tf.data.imagenet: the streamed ImageNet pipeline, its preprocessing and layer.

TFDS is mocked (`tfds.testing.mock_data`, `MockPolicy.USE_CODE`): it makes
random JPEG images from the builder's feature spec, of varying sizes (each
side 5 to 49 pixels), and random labels in [0, 1000). It ignores
`shuffle_files`, the read config and split slices, so the file order and
the FILE sharding are checked through the arguments and options only.
"""

import os
import socket
import time
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl.testing import parameterized

from hydra_tf import data
from hydra_tf.data import imagenet
from hydra_tf.data import tfds_source
from tests import helpers

_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def _mock_tfds(num_examples=6):
    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    )


def _batches(pipeline):
    images, labels = zip(*pipeline.as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels)


class RegistryTest(tf.test.TestCase):
    def test_info(self):
        self.assertEqual(
            data.info("imagenet2012"),
            data.DatasetInfo("imagenet2012", (224, 224, 3), 1000, 1281167, 50000),
        )
        self.assertIn("imagenet2012", data.SUPPORTED_DATASETS)
        self.assertTrue(data.default_augment("imagenet2012"))
        self.assertEqual(tfds_source.tfds_split("imagenet2012", "test"), "validation")
        self.assertEqual(tfds_source.tfds_split("imagenet2012", "train"), "train")
        self.assertEqual(tfds_source.tfds_split("cifar10", "test"), "test")


class PipelineTest(tf.test.TestCase):
    def test_mock_images_vary_in_size(self):
        with _mock_tfds():
            encoded, _ = tfds_source.read(
                "imagenet2012",
                "train",
                None,
                None,
                False,
                decoders={"image": tfds.decode.SkipDecoding()},
            )
            shapes = {imagenet.decode(x).shape for x, _ in encoded}
        self.assertGreater(len(shapes), 1)

    def test_train_pipeline(self):
        with _mock_tfds(), mock.patch.object(tfds, "load", wraps=tfds.load) as load:
            pipeline, num_examples = data.load_pipeline(
                "imagenet2012", "train", 4, training=True, seed=1
            )
            batches = list(pipeline.as_numpy_iterator())
        self.assertEqual(num_examples, 6)
        self.assertEqual([x.shape for x, _ in batches], [(4, 224, 224, 3), (2, 224, 224, 3)])
        images, labels = (
            np.concatenate([x for x, _ in batches]),
            np.concatenate([y for _, y in batches]),
        )
        self.assertEqual(images.dtype, np.float32)
        self.assertAllInRange(images, 0.0, 1.0)
        self.assertGreater(images.max(), 0.5)  # Divided by 255 once.
        self.assertEqual(labels.dtype, np.int32)
        self.assertAllInRange(labels, 0, 999)
        kwargs = load.call_args.kwargs
        self.assertEqual(kwargs["split"], "train")
        self.assertTrue(kwargs["shuffle_files"])
        self.assertEqual(kwargs["read_config"].shuffle_seed, 1)
        self.assertFalse(kwargs["read_config"].try_autocache)
        self.assertEqual(
            pipeline.options().experimental_distribute.auto_shard_policy,
            tf.data.experimental.AutoShardPolicy.FILE,
        )

    def test_test_split_reads_validation(self):
        with _mock_tfds(), mock.patch.object(tfds, "load", wraps=tfds.load) as load:
            dataset, num_examples = data.load("imagenet2012", "test", limit=3)
            images, labels = helpers.collect(dataset)
            pipeline, _ = data.load_pipeline("imagenet2012", "test", 2, training=False)
            again, again_labels = _batches(pipeline)
        self.assertEqual(load.call_args_list[0].kwargs["split"], "validation[:3]")
        self.assertEqual(load.call_args_list[1].kwargs["split"], "validation")
        self.assertFalse(load.call_args_list[1].kwargs["shuffle_files"])
        self.assertEqual(num_examples, 3)
        self.assertEqual(images.shape, (3, 224, 224, 3))
        self.assertEqual(labels.dtype, np.int32)
        # Evaluation keeps the order and preprocesses deterministically.
        self.assertAllEqual(again_labels[:3], labels)
        self.assertAllClose(again[:3], images)
        self.assertEqual(
            pipeline.options().experimental_distribute.auto_shard_policy,
            tf.data.experimental.AutoShardPolicy.DATA,
        )

    def test_train_is_seeded_and_resumes(self):
        def passes(seed, count, skip_epochs=0):
            pipeline, _ = data.load_pipeline(
                "imagenet2012", "train", 6, training=True, seed=seed, skip_epochs=skip_epochs
            )
            return [_batches(pipeline) for _ in range(count)]

        with _mock_tfds():
            fresh = passes(seed=3, count=3)
            same = passes(seed=3, count=1)
            other = passes(seed=4, count=1)
            (resumed,) = passes(seed=3, count=1, skip_epochs=2)
        self.assertAllEqual(same[0][0], fresh[0][0])
        self.assertAllEqual(same[0][1], fresh[0][1])
        self.assertNotAllClose(other[0][0], fresh[0][0])
        self.assertNotAllClose(fresh[1][0], fresh[0][0])  # A new pass, new crops.
        self.assertAllEqual(resumed[1], fresh[2][1])
        self.assertAllEqual(resumed[0], fresh[2][0])


class PreprocessingTest(tf.test.TestCase):
    def test_eval_crop_is_central(self):
        # The shorter side is already 256: no resizing, only the central crop.
        image = np.random.default_rng(0).integers(0, 256, (256, 400, 3), dtype=np.uint8)
        out = imagenet.preprocess_eval(tf.constant(image)).numpy()
        self.assertEqual(out.dtype, np.float32)
        self.assertAllClose(out, image[16:240, 88:312] / 255.0, atol=1e-5)

    def test_eval_crop_of_a_marked_centre(self):
        # A 300x400 image, black but for a white square around its centre
        # (150, 200): resized to 256x341, cropped at (16, 58) to 224x224.
        image = np.zeros((300, 400, 3), np.uint8)
        image[140:160, 190:210] = 255
        out = imagenet.preprocess_eval(tf.constant(image)).numpy()
        self.assertEqual(out.shape, (224, 224, 3))
        self.assertAllInRange(out, 0.0, 1.0)
        weight = out[..., 0]
        rows, cols = np.indices(weight.shape)
        centre = [np.sum(rows * weight) / weight.sum(), np.sum(cols * weight) / weight.sum()]
        self.assertAllClose(centre, [111.5, 111.5], atol=0.5)
        # The square is 20 * 256 / 300 ~ 17 pixels wide after resizing.
        self.assertAllClose(weight.sum(), (20 * 256 / 300) ** 2, rtol=0.05)
        self.assertAllEqual(imagenet.preprocess_eval(tf.constant(image)).numpy(), out)

    def test_random_resized_crop_is_seeded(self):
        image = tf.constant(
            np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
        )

        def crop(seed):
            return imagenet.preprocess_train(image, tf.constant(seed, tf.int64)).numpy()

        first = crop(7)
        self.assertEqual(first.shape, (224, 224, 3))
        self.assertEqual(first.dtype, np.float32)
        self.assertAllInRange(first, 0.0, 1.0)
        self.assertAllEqual(crop(7), first)
        self.assertNotAllClose(crop(8), first)
        # A constant image stays constant: crops stay inside the image.
        flat = imagenet.preprocess_train(tf.fill([50, 70, 3], tf.constant(51, tf.uint8)), 0)
        self.assertAllClose(flat, tf.fill([224, 224, 3], 0.2))


class ManualDownloadTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ("train", (), _MANUAL_FILES, True),
        ("test", ("ILSVRC2012_img_val.tar",), ("ILSVRC2012_img_train.tar",), True),
        ("test", (), _MANUAL_FILES, False),
    )
    def test_missing_manual_download(self, split, present, missing, download):
        data_dir = helpers.make_tempdir(self)
        manual = os.path.join(data_dir, "downloads", "manual")
        os.makedirs(manual)
        for name in present:
            open(os.path.join(manual, name), "w").close()
        start = time.time()
        with (
            mock.patch.object(socket, "create_connection", side_effect=OSError("offline")) as net,
            mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as prepare,
            self.assertRaises(data.DatasetUnavailableError) as cm,
        ):
            data.load("imagenet2012", split, data_dir=data_dir, download=download)
        self.assertLess(time.time() - start, 30)
        net.assert_not_called()
        prepare.assert_not_called()
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertIn(manual, message)
        for name in _MANUAL_FILES:
            self.assertIn(name, message)
        if download:
            self.assertIn(f"missing: {', '.join(missing)}", message)

    def test_manual_dir_is_passed_to_tfds(self):
        data_dir = helpers.make_tempdir(self)
        manual = tfds_source.manual_dir(data_dir)
        self.assertEqual(manual, os.path.join(data_dir, "downloads", "manual"))
        os.makedirs(manual)
        for name in _MANUAL_FILES:
            open(os.path.join(manual, name), "w").close()
        with (
            mock.patch.object(tfds, "load", side_effect=AssertionError("not prepared")) as load,
            self.assertRaisesRegex(data.DatasetUnavailableError, "not prepared"),
        ):
            data.load("imagenet2012", "train", data_dir=data_dir)
        offline, prepare = load.call_args_list
        self.assertFalse(offline.kwargs["download"])
        self.assertTrue(prepare.kwargs["download"])
        config = prepare.kwargs["download_and_prepare_kwargs"]["download_config"]
        self.assertEqual(os.fspath(config.manual_dir), manual)


class NormalizationTest(tf.test.TestCase):
    def test_normalizes_and_round_trips(self):
        model = keras.Sequential([keras.Input((2, 3, 3)), data.imagenet_normalization()])
        x = np.random.default_rng(2).uniform(0.0, 1.0, (4, 2, 3, 3)).astype(np.float32)
        expected = (x - np.array(imagenet.MEAN)) / np.array(imagenet.STD)
        self.assertAllClose(model(x), expected, atol=1e-5)
        # Hand-computed: a mid-grey pixel.
        grey = model(np.full((1, 2, 3, 3), 0.5, np.float32)).numpy()[0, 0, 0]
        self.assertAllClose(grey, [0.0655, 0.1964, 0.4178], atol=1e-4)
        path = os.path.join(helpers.make_tempdir(self), "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        self.assertIsInstance(loaded.layers[0], keras.layers.Normalization)
        self.assertAllClose(loaded(x), model(x))


if __name__ == "__main__":
    tf.test.main()
