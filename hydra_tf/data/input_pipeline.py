"""The `tf.data` input pipeline: shuffle, augment (crop + flip), batch, prefetch."""

import tensorflow as tf
from absl import logging

from hydra_tf.data import datasets


def _random_crop_and_flip(image, seed):
    """Pads by 4 zero pixels, crops back to the image size and maybe flips.

    Args:
        image: A (H, W, C) image.
        seed: An int64 scalar; the augmentation is a function of it.

    Returns:
        The augmented image, same shape and dtype as `image`.
    """
    crop_seed = tf.stack([seed, tf.constant(0, tf.int64)])
    flip_seed = tf.stack([seed, tf.constant(1, tf.int64)])
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
            a resumed run sees the data an uninterrupted run would. Each
            skipped pass shuffles (without augmenting or batching) once.

    Returns:
        The batched, prefetched `tf.data.Dataset`.

    Raises:
        ValueError: If `batch_size` or `shuffle_buffer` is not a positive int.
    """
    batch_size = datasets.validate_positive_int(batch_size, "batch_size")
    shuffle_buffer = datasets.validate_positive_int(shuffle_buffer, "shuffle_buffer")
    # With a seed, parallel maps must keep their order to stay reproducible.
    deterministic = True if seed is not None else None
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if augment:
            # One random int64 per example seeds stateless ops, so results do
            # not depend on how the parallel map schedules its calls.
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            dataset = tf.data.Dataset.zip((dataset, seeds))
        # Each pass draws the next shuffle (and augmentation seeds) from the
        # datasets' seed generators: passing over them advances those.
        for _ in range(int(skip_epochs)):
            dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)
        if augment:
            dataset = dataset.map(
                lambda example, s: (_random_crop_and_flip(example[0], s), example[1]),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=deterministic,
            )
    elif augment:
        logging.debug("augment=True is ignored when training=False.")
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    # In-memory data has no files to split between workers: under
    # multi-worker training each worker takes its share of the examples.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
