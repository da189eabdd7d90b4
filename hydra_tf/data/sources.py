"""Where a dataset comes from: local IDX files when there are any, else TFDS."""

import numpy as np

from hydra_tf.data import datasets
from hydra_tf.data import idx
from hydra_tf.data import tfds_source


def load(name, split, data_dir=None, limit=None, *, download=True):
    """Loads one split of a dataset as unbatched (image, label) examples.

    MNIST and Fashion-MNIST are read from local IDX gzip files when available
    (in `data_dir`, `data_dir/<name>/`, or for Fashion-MNIST
    `idx.DEBIAN_FASHION_MNIST_DIR`); everything else goes through TFDS.

    Args:
        name: One of `SUPPORTED_DATASETS`.
        split: "train" or "test".
        data_dir: Directory with IDX files and/or the TFDS data directory.
            None uses the TFDS default.
        limit: If given, a positive int: only the first `limit` examples are
            used (all of them if the split is smaller).
        download: Passed to `tfds.load`: whether TFDS may download the data.

    Returns:
        A pair `(dataset, num_examples)`: a `tf.data.Dataset` of float32
        images of shape (H, W, C) in [0, 1] and int32 labels, and the number
        of examples it yields.

    Raises:
        ValueError: For an unknown dataset, a bad split or a bad limit, or
            malformed IDX files.
        DatasetUnavailableError: If TFDS cannot provide the data.
    """
    datasets.validate_name(name)
    datasets.validate_split(split)
    limit = datasets.validate_positive_int(limit, "limit", allow_none=True)
    idx_dir = idx.find_dir(name, data_dir)
    if idx_dir is not None:
        return idx.load(name, split, idx_dir, limit)
    return tfds_source.load(name, split, data_dir, limit, download)


def arrays(dataset):
    """(images, labels) numpy arrays of an unbatched (image, label) dataset, in one pass."""
    pairs = list(dataset.as_numpy_iterator())
    return np.stack([x for x, _ in pairs]), np.array([y for _, y in pairs])
