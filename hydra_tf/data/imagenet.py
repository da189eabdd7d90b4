"""ImageNet (TFDS `imagenet2012`): streamed from TFDS, with the standard ResNet preprocessing.

ImageNet is too large to hold in memory, and its images vary in size, so it
is never cached: examples stream from TFDS' TFRecord files as JPEG bytes,
are shuffled as bytes, and are decoded and preprocessed one by one before
batching:

- training: a random-resized crop (`CROP_SCALE` of the area, `CROP_RATIO`
  aspect ratio) resized to `IMAGE_SIZE`, and a random horizontal flip, both a
  function of one seed per example (`preprocess_train`);
- evaluation: the shorter side resized to `RESIZE_SIZE`, then a central
  `IMAGE_SIZE` crop (`preprocess_eval`).

Images come out as float32 in [0, 1], like every other dataset here: attacks
and bounds work in [0, 1] pixel space. The mean / std normalisation belongs
inside the model: prepend `normalization()` to it.

TFDS prepares ImageNet from the two archives of `tfds_source.MANUAL_DOWNLOADS`
placed in `<data_dir>/downloads/manual` (`tfds_source.manual_dir`); nothing is
downloaded. The project's "test" split is TFDS' "validation" split.
"""

import keras
import tensorflow as tf

from hydra_tf.data import datasets
from hydra_tf.data import input_pipeline
from hydra_tf.data import tfds_source

NAME = "imagenet2012"

# Side of the square images the model sees.
IMAGE_SIZE = 224
# Evaluation: the shorter side is resized to this before the central crop.
RESIZE_SIZE = 256
# Training: the random crop covers this fraction of the image area ...
CROP_SCALE = (0.08, 1.0)
# ... with a width / height ratio in this range.
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Attempts at a crop inside those ranges before the whole image is used.
_CROP_ATTEMPTS = 10

# Per-channel (RGB) mean and standard deviation of ImageNet on [0, 1] pixels.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Files interleaved at once, and examples taken from one before the next.
# One at a time mixes the classes, which TFDS stores in runs, the most.
_INTERLEAVE_CYCLE = 16
_INTERLEAVE_BLOCK = 1


def normalization(name="imagenet_normalization"):
    """A layer computing `(x - MEAN) / STD` per channel on [0, 1] RGB images.

    Prepend it to an ImageNet model (the data stays in [0, 1], where attacks
    and bounds work). It is a plain `keras.layers.Normalization`, whose
    constants are in its config, so it survives `.keras` save / load.

    Args:
        name: The layer's name.

    Returns:
        A `keras.layers.Normalization` over the last (channel) axis.
    """
    return keras.layers.Normalization(
        axis=-1, mean=list(MEAN), variance=[s * s for s in STD], name=name
    )


def decode(encoded):
    """Decodes JPEG (or PNG) bytes into a uint8 (H, W, 3) RGB image."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _resize_to_unit(image, size):
    """`image` resized to `size` (bilinear, antialiased), as float32 in [0, 1]."""
    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def preprocess_train(image, seed):
    """Random-resized crop to `IMAGE_SIZE` and random horizontal flip.

    The crop covers a fraction in `CROP_SCALE` of the image area with an
    aspect ratio in `CROP_RATIO`; if `_CROP_ATTEMPTS` draws all fall outside
    the image, the whole image is used.

    Args:
        image: A uint8 (H, W, 3) image of any size.
        seed: An int64 scalar; the result is a function of it and `image`.

    Returns:
        A float32 (IMAGE_SIZE, IMAGE_SIZE, 3) image in [0, 1].
    """
    # The whole image as the "object" with min_object_covered=0: any crop
    # inside the area and ratio ranges qualifies.
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=whole,
        seed=input_pipeline.op_seed(seed, 0),
        min_object_covered=0.0,
        aspect_ratio_range=CROP_RATIO,
        area_range=CROP_SCALE,
        max_attempts=_CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    resized = _resize_to_unit(crop, [IMAGE_SIZE, IMAGE_SIZE])
    return tf.image.stateless_random_flip_left_right(resized, input_pipeline.op_seed(seed, 1))


def preprocess_eval(image):
    """Resizes the shorter side to `RESIZE_SIZE`, then crops the central `IMAGE_SIZE` square.

    Args:
        image: A uint8 (H, W, 3) image of any size.

    Returns:
        A float32 (IMAGE_SIZE, IMAGE_SIZE, 3) image in [0, 1].
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = RESIZE_SIZE / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    resized = _resize_to_unit(image, new_shape)
    top, left = tf.unstack((new_shape - IMAGE_SIZE) // 2)
    return tf.image.crop_to_bounding_box(resized, top, left, IMAGE_SIZE, IMAGE_SIZE)


def _read(split, data_dir, limit, download, shuffle_files=False, seed=None):
    """The split's (JPEG bytes, int32 label) examples from TFDS: (dataset, num_examples)."""
    # Imported lazily, like tfds_source: TFDS is slow to import.
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(
        shuffle_seed=seed,
        interleave_cycle_length=_INTERLEAVE_CYCLE,
        interleave_block_length=_INTERLEAVE_BLOCK,
        # Never materialise ImageNet, not even a small `limit` of it.
        try_autocache=False,
        # The pipeline prefetches at its end.
        skip_prefetch=True,
    )
    dataset, num_examples = tfds_source.read(
        NAME,
        split,
        data_dir,
        limit,
        download,
        shuffle_files=shuffle_files,
        read_config=read_config,
        # Keep the JPEG bytes: shuffle buffers hold ~110 KB per example
        # rather than ~500 KB decoded, and decoding runs in our parallel map.
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    return dataset.map(lambda image, label: (image, tf.cast(label, tf.int32))), num_examples


def _eval_example(encoded, label):
    return preprocess_eval(decode(encoded)), label


def load(split, data_dir=None, limit=None, download=True):
    """One split of ImageNet, streamed and evaluation-preprocessed: (dataset, num_examples).

    What `data.load("imagenet2012", ...)` returns. Every split, "train"
    included, gets the deterministic evaluation preprocessing and keeps
    TFDS' file order: use this for evaluation, certification or a fixed
    sample; train with `make_pipeline` (or `data.load_pipeline`).

    Args:
        split: "train" or "test" (TFDS' "validation").
        data_dir: The TFDS data directory (None: the TFDS default).
        limit: None, or the number of first examples to keep.
        download: Whether TFDS may prepare the data from the manual download.

    Returns:
        An unbatched `tf.data.Dataset` of float32 (224, 224, 3) images in
        [0, 1] and int32 labels in [0, 1000), and its number of examples.

    Raises:
        DatasetUnavailableError: If the data is neither prepared nor in the
            manual download directory.
    """
    datasets.validate_split(split)
    limit = datasets.validate_positive_int(limit, "limit", allow_none=True)
    dataset, num_examples = _read(split, data_dir, limit, download)
    dataset = dataset.map(_eval_example, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset, num_examples


def make_pipeline(
    split,
    batch_size,
    training,
    data_dir=None,
    limit=None,
    augment=True,
    seed=None,
    shuffle_buffer=10000,
    drop_remainder=False,
    skip_epochs=0,
    download=True,
):
    """The batched ImageNet input pipeline, streamed from TFDS: (dataset, num_examples).

    Training reads TFDS' files in a shuffled order (`shuffle_files`),
    interleaved, shuffles the examples (as JPEG bytes) and decodes and
    preprocesses them in a parallel map; evaluation keeps the order. Either
    way nothing is cached.

    Args:
        split: "train" or "test" (TFDS' "validation").
        batch_size: Positive batch size.
        training: If True, files and examples are shuffled anew each pass and
            `preprocess_train` is applied when `augment` is set. If False,
            order is kept and `preprocess_eval` is applied.
        data_dir: The TFDS data directory (None: the TFDS default).
        limit: None, or the number of first examples to keep (the same
            ones every pass).
        augment: (training) Random-resized crop and flip; if False, training
            examples get the evaluation preprocessing.
        seed: Optional int making the file order, shuffle and augmentation
            reproducible (each pass still differs from the previous one).
            Multi-worker training should set it.
        shuffle_buffer: Positive example shuffle buffer size; the buffer
            holds JPEG bytes, ~110 KB per example.
        drop_remainder: Whether to drop the last, smaller batch.
        skip_epochs: (training) The number of passes already made, as in
            `input_pipeline.make_pipeline`.
        download: Whether TFDS may prepare the data from the manual download.

    Returns:
        The batched, prefetched `tf.data.Dataset` of float32
        (batch, 224, 224, 3) images in [0, 1] and int32 labels, and the
        number of examples in one pass. For training its auto-shard policy
        is FILE.

    Raises:
        ValueError: If `split`, `batch_size`, `limit` or `shuffle_buffer` is
            invalid.
        DatasetUnavailableError: If the data is neither prepared nor in the
            manual download directory.
    """
    datasets.validate_split(split)
    batch_size = datasets.validate_positive_int(batch_size, "batch_size")
    limit = datasets.validate_positive_int(limit, "limit", allow_none=True)
    shuffle_buffer = datasets.validate_positive_int(shuffle_buffer, "shuffle_buffer")
    dataset, num_examples = _read(
        split, data_dir, limit, download, shuffle_files=training, seed=seed
    )
    if not training:
        dataset = dataset.map(_eval_example, num_parallel_calls=tf.data.AUTOTUNE)
        # Evaluation splits by examples: every worker reads every file and
        # keeps its share, which works for any number of files and workers.
        policy = tf.data.experimental.AutoShardPolicy.DATA
        return input_pipeline.batch_and_prefetch(
            dataset, batch_size, drop_remainder, policy
        ), num_examples
    if augment:

        def augment_fn(example, example_seed):
            encoded, label = example
            return preprocess_train(decode(encoded), example_seed), label

        dataset = input_pipeline.shuffle_and_augment(
            dataset, augment_fn, seed, shuffle_buffer, skip_epochs
        )
    else:
        dataset = input_pipeline.shuffle_and_augment(
            dataset, None, seed, shuffle_buffer, skip_epochs
        )
        dataset = dataset.map(
            _eval_example,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True if seed is not None else None,
        )
    # FILE: ImageNet's training split is 1024 TFRecord files, so each worker
    # reads its own files instead of every worker reading all ~140 GB to keep
    # 1/N of the examples (DATA). It needs at least as many files as workers
    # (a small `limit` may span a single file).
    policy = tf.data.experimental.AutoShardPolicy.FILE
    return input_pipeline.batch_and_prefetch(
        dataset, batch_size, drop_remainder, policy
    ), num_examples
