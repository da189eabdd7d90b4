"""The `tf.data` input pipeline: shuffle, augment (crop + flip), batch, prefetch.

`make_pipeline` serves the datasets `load` returns whole. Its two halves,
`shuffle_and_augment` and `batch_and_prefetch`, also serve the streamed
ImageNet pipeline (`imagenet.make_pipeline`), so both share one seeding and
resuming scheme.
"""

import tensorflow as tf
from absl import logging

from hydra_tf.data import datasets


def op_seed(seed, index):
    """The seed of the `index`-th stateless random op drawn from one int64 example seed."""
    return tf.stack([seed, tf.constant(index, tf.int64)])


def _random_crop_and_flip(image, seed):
    """Pads by 4 zero pixels, crops back to the image size and maybe flips.

    Args:
        image: A (H, W, C) image.
        seed: An int64 scalar; the augmentation is a function of it.

    Returns:
        The augmented image, same shape and dtype as `image`.
    """
    crop_seed = op_seed(seed, 0)
    flip_seed = op_seed(seed, 1)
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    cropped = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
    cropped.set_shape(image.shape)
    return tf.image.stateless_random_flip_left_right(cropped, flip_seed)


def make_pipeline(
    dataset,
    batch_size,
    training,
    augment=False,
    seed=None,
    shuffle_buffer=10000,
    drop_remainder=False,
    skip_epochs=0,
):
    """Shuffles, augments, batches and prefetches (image, label) examples.

    Args:
        dataset: Unbatched `tf.data.Dataset` of (image, label), e.g. from
            `load`.
        batch_size: Positive batch size.
        training: If True, examples are shuffled (anew each iteration) and
            augmented when `augment` is set. If False, order is kept and no
            augmentation is applied.
        augment: Random crop with 4-pixel zero padding plus random horizontal
            flip, per example; only used when `training`. See
            `default_augment`.
        seed: Optional int making the shuffle and augmentation reproducible
            (each iteration still differs from the previous one).
        shuffle_buffer: Positive shuffle buffer size.
        drop_remainder: Whether to drop the last, smaller batch.
        skip_epochs: (training) the number of passes already made: the
            first pass of the returned dataset has the order and
            augmentation that pass `skip_epochs + 1` of a fresh one has, so
            a resumed run sees the data an uninterrupted run would. A
            skipped pass is only started (see `shuffle_and_augment`).

    Returns:
        The batched, prefetched `tf.data.Dataset`.

    Raises:
        ValueError: If `batch_size` or `shuffle_buffer` is not a positive int.
    """
    batch_size = datasets.validate_positive_int(batch_size, "batch_size")
    shuffle_buffer = datasets.validate_positive_int(shuffle_buffer, "shuffle_buffer")
    if training:
        augment_fn = None
        if augment:

            def augment_fn(example, example_seed):
                return _random_crop_and_flip(example[0], example_seed), example[1]

        dataset = shuffle_and_augment(dataset, augment_fn, seed, shuffle_buffer, skip_epochs)
    elif augment:
        logging.debug("augment=True is ignored when training=False.")
    # In-memory data has no files to split between workers: under
    # multi-worker training each worker takes its share of the examples.
    return batch_and_prefetch(
        dataset, batch_size, drop_remainder, tf.data.experimental.AutoShardPolicy.DATA
    )


def shuffle_and_augment(dataset, augment_fn, seed, shuffle_buffer, skip_epochs=0):
    """Shuffles anew each pass and maps `augment_fn` with a fresh seed per example.

    Args:
        dataset: Unbatched `tf.data.Dataset`.
        augment_fn: None, or a function `(example, seed) -> example` where
            `seed` is an int64 scalar the augmentation must be a function of
            (use `op_seed` to seed stateless random ops with it).
        seed: Optional int making the shuffle and augmentation reproducible
            (each pass still differs from the previous one).
        shuffle_buffer: Positive shuffle buffer size.
        skip_epochs: The number of passes already made: the first pass of the
            returned dataset has the order and augmentation that pass
            `skip_epochs + 1` of a fresh one has.

    Returns:
        The shuffled (and augmented) `tf.data.Dataset`.
    """
    # With a seed, parallel maps must keep their order to stay reproducible.
    deterministic = True if seed is not None else None
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if augment_fn is not None:
        # One random int64 per example seeds stateless ops, so results do
        # not depend on how the parallel map schedules its calls.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip((dataset, seeds))
    # Each pass draws the next shuffle (and augmentation seeds) from the
    # datasets' seed generators, when its iterator starts: starting a pass
    # (one element, before any augmentation) advances them all, without
    # reading the whole pass (which for ImageNet is a read of ~150 GB).
    for _ in range(int(skip_epochs)):
        for _ in dataset.take(1):
            pass
    if augment_fn is not None:
        dataset = dataset.map(
            augment_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
        )
    return dataset


def batch_and_prefetch(dataset, batch_size, drop_remainder, auto_shard_policy):
    """Batches, sets the multi-worker `auto_shard_policy` and prefetches.

    Args:
        dataset: Unbatched `tf.data.Dataset`.
        batch_size: Positive batch size.
        drop_remainder: Whether to drop the last, smaller batch.
        auto_shard_policy: A `tf.data.experimental.AutoShardPolicy`: how
            multi-worker training splits the dataset between workers.

    Returns:
        The batched, prefetched `tf.data.Dataset`.
    """
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = auto_shard_policy
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
