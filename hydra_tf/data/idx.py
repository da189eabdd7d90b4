"""MNIST and Fashion-MNIST offline: the four standard IDX gzip files.

The files (`train-images-idx3-ubyte.gz`, ...) are looked for in `data_dir`,
then in `data_dir/<name>/`, then (Fashion-MNIST only) in
`DEBIAN_FASHION_MNIST_DIR`, where Debian's `dataset-fashion-mnist` package
installs them.
"""

import gzip
import os
import struct
import zlib

import numpy as np
import tensorflow as tf
from absl import logging

from hydra_tf.data import datasets

# Directory where Debian's `dataset-fashion-mnist` package installs the
# Fashion-MNIST IDX files. A module constant so tests can point it elsewhere
# (patch it here, in `hydra_tf.data.idx`: this module reads it).
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte)
# and the number of dimensions (3 for images, 1 for labels).
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

# File names of the IDX files, per split: (images, labels).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Datasets that can be read from IDX files instead of TFDS.
IDX_DATASETS = ("mnist", "fashion_mnist")


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


def find_dir(name, data_dir):
    """Returns the directory to read `name`'s IDX files from, or None."""
    if name not in IDX_DATASETS:
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


def load(name, split, directory, limit):
    """One split of `name` from the IDX files in `directory`: (dataset, num_examples).

    Args:
        name: "mnist" or "fashion_mnist".
        split: "train" or "test".
        directory: a directory holding the four IDX files (`find_dir`).
        limit: None, or the number of first examples to keep.
    """
    images, labels = _read_idx_split(directory, split)
    expected_shape = datasets.DATASETS[name].image_shape
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
    dataset = dataset.map(datasets.to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset, num_examples
