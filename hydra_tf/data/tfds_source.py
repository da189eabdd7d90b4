"""Datasets from TensorFlow Datasets (TFDS), with a fast offline failure.

The prepared data is tried first, with no network involved. If TFDS has
neither the prepared data nor a way to download it, `DatasetUnavailableError`
explains how to get it. Without a network TFDS' downloader retries for
minutes before it fails, so its download hosts are probed first (a TCP
connection, `_PROBE_TIMEOUT` seconds).

Datasets in `MANUAL_DOWNLOADS` (ImageNet) are never downloaded: TFDS prepares
them from archives the user puts in `manual_dir(data_dir)`, and their absence
is reported before TFDS is asked to prepare anything. `TFDS_SPLITS` maps the
project's "test" split to the split TFDS calls it for each dataset.
"""

import os
import socket
import urllib.parse

import tensorflow as tf
from absl import logging

from hydra_tf.data import datasets
from hydra_tf.data import idx

# Seconds to wait for a TCP connection to a download host.
_PROBE_TIMEOUT = 3.0

# The TFDS split of each project split, where the names differ: ImageNet's
# labelled held-out split is "validation" (its TFDS "test" has no labels).
TFDS_SPLITS = {"imagenet2012": {"test": "validation"}}

# Datasets TFDS prepares from manually downloaded archives, and the archives
# it needs in the manual directory (`manual_dir`).
MANUAL_DOWNLOADS = {
    "imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
}

# Where the archives of `MANUAL_DOWNLOADS` come from.
_MANUAL_SOURCES = {"imagenet2012": "https://image-net.org/download-images"}


def tfds_split(name, split):
    """The TFDS split name of the project's `split` ("train" or "test") of `name`."""
    return TFDS_SPLITS.get(name, {}).get(split, split)


def manual_dir(data_dir):
    """The directory TFDS prepares manually downloaded datasets from.

    It is TFDS' default, `<data_dir>/downloads/manual`, with `data_dir`
    None meaning the TFDS default data directory.
    """
    import tensorflow_datasets as tfds

    return os.path.join(data_dir or tfds.core.constants.DATA_DIR, "downloads", "manual")


def _manual_message(name, split, data_dir, missing):
    directory = manual_dir(data_dir)
    return (
        f"Dataset {name!r} ({split} split) is not prepared in data_dir={data_dir!r} and its "
        f"manual download is missing: put {' and '.join(MANUAL_DOWNLOADS[name])} (from "
        f"{_MANUAL_SOURCES[name]}) in {directory} (missing: {', '.join(missing)}), then run "
        "again with the same --data_dir so TFDS prepares it once (no internet needed)."
    )


def _unavailable_message(name, split, data_dir, error, unreachable=()):
    if name in MANUAL_DOWNLOADS:
        return (
            f"Dataset {name!r} ({split} split) is not available: TFDS could not load it "
            f"({type(error).__name__}: {error}). With download=True it is prepared from "
            f"{' and '.join(MANUAL_DOWNLOADS[name])} in {manual_dir(data_dir)}."
        ).replace("\n", " ")
    hints = []
    if name == "fashion_mnist":
        hints.append(
            "install the Debian package with `apt-get install "
            f"dataset-fashion-mnist` (it puts the IDX files in "
            f"{idx.DEBIAN_FASHION_MNIST_DIR})"
        )
    if name in idx.IDX_DATASETS:
        hints.append(
            "pass --data_dir pointing at a directory with the IDX files "
            + ", ".join(f for files in idx.IDX_FILES.values() for f in files)
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


def _missing_manual_files(name, data_dir):
    directory = manual_dir(data_dir)
    return [f for f in MANUAL_DOWNLOADS[name] if not os.path.isfile(os.path.join(directory, f))]


def read(name, split, data_dir, limit, download, **load_kwargs):
    """One split of `name` from TFDS as TFDS gives it: (dataset, num_examples).

    The examples are TFDS' supervised `(image, label)` pairs, not yet
    converted (`load` converts them).

    Args:
        name: One of `datasets.SUPPORTED_DATASETS`.
        split: "train" or "test" (read from `tfds_split(name, split)`).
        data_dir: The TFDS data directory (None: the TFDS default).
        limit: None, or the number of first examples to keep.
        download: Whether TFDS may download the data (for `MANUAL_DOWNLOADS`:
            prepare it from the archives in `manual_dir(data_dir)`).
        **load_kwargs: More `tfds.load` arguments (`shuffle_files`,
            `read_config`, `decoders`).

    Raises:
        DatasetUnavailableError: If TFDS cannot provide the data.
    """
    # Imported lazily: TFDS is slow to import and not needed for IDX files.
    import tensorflow_datasets as tfds

    # A slice of the split, rather than only `take`, so that a read with
    # shuffled files draws from the same examples every pass. Mocked TFDS
    # ignores the slice, hence the `take` below as well.
    source_split = tfds_split(name, split)
    if limit is not None:
        source_split = f"{source_split}[:{limit}]"
    kwargs = {
        "split": source_split,
        "data_dir": data_dir,
        "as_supervised": True,
        "with_info": True,
        **load_kwargs,
    }
    try:
        # Prepared data first: no network involved.
        dataset, tfds_info = tfds.load(name, download=False, **kwargs)
    except Exception as local_error:  # TFDS raises many types (assert, IO, ...).
        if not download:
            message = _unavailable_message(name, split, data_dir, local_error)
            raise datasets.DatasetUnavailableError(message) from local_error
        if name in MANUAL_DOWNLOADS:
            # Nothing to download: TFDS prepares the data from the archives in
            # the manual directory, which must be checked here, because TFDS
            # would otherwise fail only after setting up the whole build.
            missing = _missing_manual_files(name, data_dir)
            if missing:
                message = _manual_message(name, split, data_dir, missing)
                raise datasets.DatasetUnavailableError(message) from local_error
            config = tfds.download.DownloadConfig(manual_dir=manual_dir(data_dir))
            kwargs["download_and_prepare_kwargs"] = {"download_config": config}
        else:
            unreachable = _unreachable_download_hosts(tfds, name, data_dir)
            if unreachable:
                message = _unavailable_message(name, split, data_dir, local_error, unreachable)
                raise datasets.DatasetUnavailableError(message) from local_error
        try:
            dataset, tfds_info = tfds.load(name, download=True, **kwargs)
        except Exception as e:  # TFDS raises many types (assert, IO, network, ...).
            message = _unavailable_message(name, split, data_dir, e)
            raise datasets.DatasetUnavailableError(message) from e
    if limit is not None:
        dataset = dataset.take(limit)
    num_examples = int(dataset.cardinality())
    if num_examples < 0:  # Unknown cardinality: ask the metadata, else count.
        try:
            num_examples = tfds_info.splits[tfds_split(name, split)].num_examples
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
    return dataset, num_examples


def load(name, split, data_dir, limit, download):
    """One split of `name` from TFDS: (dataset, num_examples).

    Args:
        name: One of `datasets.SUPPORTED_DATASETS`.
        split: "train" or "test".
        data_dir: The TFDS data directory (None: the TFDS default).
        limit: None, or the number of first examples to keep.
        download: Whether TFDS may download the data.

    Returns:
        The examples as float32 images in [0, 1] and int32 labels, and their
        number.

    Raises:
        DatasetUnavailableError: If TFDS cannot provide the data.
    """
    dataset, num_examples = read(name, split, data_dir, limit, download)
    dataset = dataset.map(datasets.to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset, num_examples
