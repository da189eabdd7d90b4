"""Image classification datasets as `tf.data` pipelines.

Four datasets are supported: `cifar10`, `svhn_cropped`, `mnist` and
`fashion_mnist`. Every example is an `(image, label)` pair with the image a
float32 tensor of shape (H, W, C) in [0, 1] (the uint8 pixels divided by 255,
no further normalisation) and the label an int32 class index.

Where the data comes from:

* `mnist` and `fashion_mnist` can be read offline from the four standard IDX
  gzip files (`train-images-idx3-ubyte.gz`, ...). They are looked for in
  `data_dir`, then in `data_dir/<name>/`, then (Fashion-MNIST only) in
  `DEBIAN_FASHION_MNIST_DIR`, where Debian's `dataset-fashion-mnist` package
  installs them.
* Otherwise the data is loaded with TensorFlow Datasets (TFDS). If TFDS has
  neither the prepared data nor a way to download it, `DatasetUnavailableError`
  explains how to get it.

`load` returns an unbatched dataset; `make_pipeline` shuffles, augments,
batches and prefetches it for training or evaluation.
"""

import dataclasses
import gzip
import numbers
import os
import socket
import struct
import urllib.parse
import zlib

import numpy as np
import tensorflow as tf
from absl import logging

# Directory where Debian's `dataset-fashion-mnist` package installs the
# Fashion-MNIST IDX files. A module constant so tests can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte)
# and the number of dimensions (3 for images, 1 for labels).
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

SPLITS = ("train", "test")

# File names of the IDX files, per split: (images, labels).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Datasets that can be read from IDX files instead of TFDS.
_IDX_DATASETS = ("mnist", "fashion_mnist")


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither available locally nor downloadable."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a supported dataset.

    Attributes:
        name: The dataset name, as accepted by `load`.
        image_shape: Shape (H, W, C) of one image.
        num_classes: Number of classes; labels are in [0, num_classes).
        num_train: Number of examples in the "train" split.
        num_test: Number of examples in the "test" split.
    """

    name: str
    image_shape: tuple
    num_classes: int
    num_train: int
    num_test: int

    def num_examples(self, split):
        """Returns the number of examples of `split` ("train" or "test")."""
        _validate_split(split)
        return self.num_train if split == "train" else self.num_test


_INFOS = {
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, 50000, 10000),
    "svhn_cropped": DatasetInfo("svhn_cropped", (32, 32, 3), 10, 73257, 26032),
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, 60000, 10000),
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, 60000, 10000),
}

SUPPORTED_DATASETS = tuple(_INFOS)


def _validate_name(name):
    if name not in _INFOS:
        raise ValueError(
            f"Unknown dataset. Supported datasets are: "
            f"{', '.join(SUPPORTED_DATASETS)}. Received: name={name!r}"
        )


def _validate_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}. Received: split={split!r}")


def _validate_positive_int(value, arg_name, allow_none=False):
    if value is None and allow_none:
        return None
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_int or value <= 0:
        raise ValueError(
            f"{arg_name} must be a positive integer"
            f"{' or None' if allow_none else ''}. Received: {arg_name}={value!r}"
        )
    return int(value)


def info(name):
    """Returns the static `DatasetInfo` of a supported dataset (no loading).

    Args:
        name: One of `SUPPORTED_DATASETS`.

    Returns:
        The `DatasetInfo` for `name`.

    Raises:
        ValueError: If `name` is not a supported dataset.
    """
    _validate_name(name)
    return _INFOS[name]


def default_augment(name):
    """Whether training on `name` uses crop + flip augmentation by default.

    Only CIFAR-10 does: flipping digits (MNIST, SVHN) changes their meaning,
    and the small grayscale datasets are trained without augmentation.

    Args:
        name: One of `SUPPORTED_DATASETS`.

    Returns:
        True for `cifar10`, False otherwise.

    Raises:
        ValueError: If `name` is not a supported dataset.
    """
    _validate_name(name)
    return name == "cifar10"


def read_idx(path, expected_magic):
    """Reads one gzip-compressed IDX file of unsigned bytes into a numpy array.

    The IDX format is a 4-byte big-endian magic number (whose last byte is the
    number of dimensions), one big-endian uint32 per dimension, then the data.

    Args:
        path: Path to the `.gz` file.
        expected_magic: `IDX_IMAGES_MAGIC` (2051) or `IDX_LABELS_MAGIC` (2049).

    Returns:
        A uint8 array of the shape given in the header, e.g. (N, H, W) for
        images and (N,) for labels.

    Raises:
        ValueError: If the file is not valid gzip, has a different magic
            number, or its size does not match the header.
    """
    try:
        with gzip.open(path, "rb") as f:
            content = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(
            f"Could not decompress IDX file (truncated or not gzip). "
            f"Received: path={path!r} ({type(e).__name__}: {e})"
        ) from e
    if len(content) < 4:
        raise ValueError(
            f"IDX file is too short to hold a header ({len(content)} bytes). "
            f"Received: path={path!r}"
        )
    (magic,) = struct.unpack(">I", content[:4])
    if magic != expected_magic:
        raise ValueError(
            f"Bad IDX magic number in {path!r}: expected {expected_magic}, received magic={magic}"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise ValueError(
            f"IDX file is truncated inside its header: {len(content)} bytes, "
            f"the header needs {header_size}. Received: path={path!r}"
        )
    shape = struct.unpack(f">{ndim}I", content[4:header_size])
    expected_size = header_size + int(np.prod(shape, dtype=np.int64))
    if len(content) != expected_size:
        raise ValueError(
            f"IDX file size does not match its header dims {shape}: expected "
            f"{expected_size} bytes, received {len(content)} bytes "
            f"({'truncated' if len(content) < expected_size else 'trailing data'})"
            f". Received: path={path!r}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def _has_idx_files(directory):
    """Whether `directory` holds all four IDX files."""
    return all(
        os.path.isfile(os.path.join(directory, filename))
        for filenames in IDX_FILES.values()
        for filename in filenames
    )


def _find_idx_dir(name, data_dir):
    """Returns the directory to read `name`'s IDX files from, or None."""
    if name not in _IDX_DATASETS:
        return None
    candidates = []
    if data_dir is not None:
        candidates += [data_dir, os.path.join(data_dir, name)]
    if name == "fashion_mnist":
        candidates.append(DEBIAN_FASHION_MNIST_DIR)
    for directory in candidates:
        if os.path.isdir(directory) and _has_idx_files(directory):
            return directory
    return None


def _read_idx_split(directory, split):
    """Reads one split from IDX files: uint8 (N, H, W, 1) and int32 (N,)."""
    images_file, labels_file = IDX_FILES[split]
    images = read_idx(os.path.join(directory, images_file), IDX_IMAGES_MAGIC)
    labels = read_idx(os.path.join(directory, labels_file), IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"IDX images and labels disagree on the number of examples in "
            f"{directory!r} ({split} split): {images.shape[0]} images, "
            f"{labels.shape[0]} labels"
        )
    return images[..., np.newaxis], labels.astype(np.int32)


def _to_float(image, label):
    """Maps a uint8 image to float32 in [0, 1] and the label to int32."""
    return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)


def _load_idx(name, split, directory, limit):
    images, labels = _read_idx_split(directory, split)
    expected_shape = _INFOS[name].image_shape
    if images.shape[1:] != expected_shape:
        logging.warning(
            "IDX images in %s have shape %s, expected %s for %s.",
            directory,
            images.shape[1:],
            expected_shape,
            name,
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    num_examples = images.shape[0]
    logging.info(
        "Read %d %s examples of %s from IDX files in %s.",
        num_examples,
        split,
        name,
        directory,
    )
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset, num_examples


def _unavailable_message(name, split, data_dir, error, unreachable=()):
    hints = []
    if name == "fashion_mnist":
        hints.append(
            "install the Debian package with `apt-get install "
            f"dataset-fashion-mnist` (it puts the IDX files in "
            f"{DEBIAN_FASHION_MNIST_DIR})"
        )
    if name in _IDX_DATASETS:
        hints.append(
            "pass --data_dir pointing at a directory with the IDX files "
            + ", ".join(f for files in IDX_FILES.values() for f in files)
        )
    hints.append(
        "run once with internet so TFDS can download it into data_dir "
        f"(data_dir={data_dir!r}; None means the TFDS default)"
    )
    if unreachable:
        reason = (
            "TFDS has not prepared it and its download hosts "
            f"({', '.join(unreachable)}) cannot be reached from this machine"
        )
    else:
        reason = f"TFDS could not load it ({type(error).__name__}: {error})"
    return (
        f"Dataset {name!r} ({split} split) is not available: {reason}. To get the data, "
        + "; or ".join(hints)
        + "."
    )


# Seconds to wait for a TCP connection to a download host.
_PROBE_TIMEOUT = 3.0


def _can_connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def _unreachable_download_hosts(tfds, name, data_dir):
    """The hosts TFDS would download `name` from, if none of them answers.

    Without a network TFDS' downloader retries for minutes before it fails;
    a TCP probe of its hosts fails within seconds. Returns [] when a host
    answers or the hosts are unknown (then TFDS is left to try).
    """
    try:
        urls = list(tfds.builder(name, data_dir=data_dir).url_infos or {})
    except Exception:  # noqa: BLE001 - any failure here just skips the probe.
        return []
    hosts = {}
    for url in urls:
        parsed = urllib.parse.urlparse(url)
        if parsed.hostname:
            hosts.setdefault(
                parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
            )
    if not hosts or any(_can_connect(host, port) for host, port in list(hosts.items())[:3]):
        return []
    return sorted(hosts)


def _load_tfds(name, split, data_dir, limit, download):
    # Imported lazily: TFDS is slow to import and not needed for IDX files.
    import tensorflow_datasets as tfds

    kwargs = {"split": split, "data_dir": data_dir, "as_supervised": True, "with_info": True}
    try:
        # Prepared data first: no network involved.
        dataset, tfds_info = tfds.load(name, download=False, **kwargs)
    except Exception as local_error:  # TFDS raises many types (assert, IO, ...).
        if not download:
            message = _unavailable_message(name, split, data_dir, local_error)
            raise DatasetUnavailableError(message) from local_error
        unreachable = _unreachable_download_hosts(tfds, name, data_dir)
        if unreachable:
            message = _unavailable_message(name, split, data_dir, local_error, unreachable)
            raise DatasetUnavailableError(message) from local_error
        try:
            dataset, tfds_info = tfds.load(name, download=True, **kwargs)
        except Exception as e:  # TFDS raises many types (assert, IO, network, ...).
            raise DatasetUnavailableError(_unavailable_message(name, split, data_dir, e)) from e
    if limit is not None:
        dataset = dataset.take(limit)
    num_examples = int(dataset.cardinality())
    if num_examples < 0:  # Unknown cardinality: ask the metadata, else count.
        try:
            num_examples = tfds_info.splits[split].num_examples
            if limit is not None:
                num_examples = min(num_examples, limit)
        except (KeyError, AttributeError):
            logging.warning("Counting the examples of %s/%s.", name, split)
            num_examples = int(dataset.reduce(0, lambda count, _: count + 1))
    logging.info(
        "Loaded %d %s examples of %s from TFDS (data_dir=%s).",
        num_examples,
        split,
        name,
        data_dir,
    )
    dataset = dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset, num_examples


def load(name, split, data_dir=None, limit=None, *, download=True):
    """Loads one split of a dataset as unbatched (image, label) examples.

    MNIST and Fashion-MNIST are read from local IDX gzip files when available
    (in `data_dir`, `data_dir/<name>/`, or for Fashion-MNIST
    `DEBIAN_FASHION_MNIST_DIR`); everything else goes through TFDS.

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
    _validate_name(name)
    _validate_split(split)
    limit = _validate_positive_int(limit, "limit", allow_none=True)
    idx_dir = _find_idx_dir(name, data_dir)
    if idx_dir is not None:
        return _load_idx(name, split, idx_dir, limit)
    return _load_tfds(name, split, data_dir, limit, download)


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

    Returns:
        The batched, prefetched `tf.data.Dataset`.

    Raises:
        ValueError: If `batch_size` or `shuffle_buffer` is not a positive int.
    """
    batch_size = _validate_positive_int(batch_size, "batch_size")
    shuffle_buffer = _validate_positive_int(shuffle_buffer, "shuffle_buffer")
    # With a seed, parallel maps must keep their order to stay reproducible.
    deterministic = True if seed is not None else None
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if augment:
            # One random int64 per example seeds stateless ops, so results do
            # not depend on how the parallel map schedules its calls.
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            dataset = tf.data.Dataset.zip((dataset, seeds)).map(
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
