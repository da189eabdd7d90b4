"""Tests for hydra_tf.data.input_pipeline: batching, shuffling and augmentation."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import data


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

    def test_skip_epochs_continues_with_the_next_pass(self):
        images, labels = _random_images(16)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))

        def passes(pipeline, count):
            return [[batch for batch in pipeline.as_numpy_iterator()] for _ in range(count)]

        fresh = passes(data.make_pipeline(dataset, 4, True, augment=True, seed=5), 3)
        resumed = data.make_pipeline(dataset, 4, True, augment=True, seed=5, skip_epochs=2)
        (third,) = passes(resumed, 1)
        for (x, y), (x_fresh, y_fresh) in zip(third, fresh[2]):
            self.assertAllEqual(y, y_fresh)  # the order
            self.assertAllEqual(x, x_fresh)  # the crops and flips
        self.assertNotAllEqual(
            np.concatenate([y for _, y in fresh[2]]), np.concatenate([y for _, y in fresh[0]])
        )


if __name__ == "__main__":
    tf.test.main()
