"""Where a dataset comes from: local IDX files when there are any, else TFDS.

`load` gives one split as unbatched examples; `load_pipeline` gives the
batched input pipeline of a named dataset, and is the way to train on
ImageNet, which is streamed and preprocessed by `imagenet`.
"""

import numpy as np

from hydra_tf.data import datasets
from hydra_tf.data import idx
from hydra_tf.data import imagenet
from hydra_tf.data import input_pipeline
from hydra_tf.data import tfds_source


def load(name, split, data_dir=None, limit=None, *, download=True):
    """Loads one split of a dataset as unbatched (image, label) examples.

    MNIST and Fashion-MNIST are read from local IDX gzip files when available
    (in `data_dir`, `data_dir/<name>/`, or for Fashion-MNIST
    `idx.DEBIAN_FASHION_MNIST_DIR`); everything else goes through TFDS.
    ImageNet (`imagenet2012`) is streamed from TFDS, never held in memory,
    with the evaluation preprocessing (`imagenet.load`) whatever the split:
    to train on it use `load_pipeline`.

    Args:
        name: One of `SUPPORTED_DATASETS`.
        split: "train" or "test".
        data_dir: Directory with IDX files and/or the TFDS data directory
            (for ImageNet, with the manual download in
            `<data_dir>/downloads/manual`). None uses the TFDS default.
        limit: If given, a positive int: only the first `limit` examples are
            used (all of them if the split is smaller).
        download: Passed to `tfds.load`: whether TFDS may download (for
            ImageNet: prepare) the data.

    Returns:
        A pair `(dataset, num_examples)`: a `tf.data.Dataset` of float32
        images of shape `info(name).image_shape` in [0, 1] and int32 labels,
        and the number of examples it yields.

    Raises:
        ValueError: For an unknown dataset, a bad split or a bad limit, or
            malformed IDX files.
        DatasetUnavailableError: If TFDS cannot provide the data.
    """
    datasets.validate_name(name)
    datasets.validate_split(split)
    limit = datasets.validate_positive_int(limit, "limit", allow_none=True)
    if name == imagenet.NAME:
        return imagenet.load(split, data_dir, limit, download=download)
    idx_dir = idx.find_dir(name, data_dir)
    if idx_dir is not None:
        return idx.load(name, split, idx_dir, limit)
    return tfds_source.load(name, split, data_dir, limit, download)


def load_pipeline(
    name,
    split,
    batch_size,
    training,
    data_dir=None,
    limit=None,
    *,
    augment=None,
    seed=None,
    drop_remainder=False,
    skip_epochs=0,
    download=True,
):
    """The batched input pipeline of one split of a named dataset.

    For ImageNet it is `imagenet.make_pipeline` (streamed from TFDS, files
    shuffled, per-example random-resized crop and flip, FILE auto-sharding);
    for every other dataset `make_pipeline(load(...))`, with the same
    arguments and results.

    Args:
        name: One of `SUPPORTED_DATASETS`.
        split: "train" or "test".
        batch_size: Positive batch size.
        training: Whether to shuffle and augment (see `make_pipeline`).
        data_dir: As for `load`.
        limit: As for `load`.
        augment: Whether to augment when `training`; None means
            `default_augment(name)`.
        seed: Optional int making the shuffle and augmentation reproducible.
        drop_remainder: Whether to drop the last, smaller batch.
        skip_epochs: (training) The number of passes already made, for a
            resumed run (see `make_pipeline`).
        download: As for `load`.

    Returns:
        A pair `(dataset, num_examples)`: the batched, prefetched
        `tf.data.Dataset` of float32 (batch, *info(name).image_shape) images
        in [0, 1] and int32 labels, and the number of examples in one pass.

    Raises:
        ValueError: For an unknown dataset or a bad argument.
        DatasetUnavailableError: If the data cannot be obtained.
    """
    datasets.validate_name(name)
    if augment is None:
        augment = datasets.default_augment(name)
    if name == imagenet.NAME:
        return imagenet.make_pipeline(
            split,
            batch_size,
            training,
            data_dir,
            limit,
            augment=augment,
            seed=seed,
            drop_remainder=drop_remainder,
            skip_epochs=skip_epochs,
            download=download,
        )
    dataset, num_examples = load(name, split, data_dir, limit, download=download)
    pipeline = input_pipeline.make_pipeline(
        dataset,
        batch_size,
        training,
        augment=augment,
        seed=seed,
        drop_remainder=drop_remainder,
        skip_epochs=skip_epochs,
    )
    return pipeline, num_examples


def arrays(dataset):
    """(images, labels) numpy arrays of an unbatched (image, label) dataset, in one pass."""
    pairs = list(dataset.as_numpy_iterator())
    return np.stack([x for x, _ in pairs]), np.array([y for _, y in pairs])
