"""Datasets from TensorFlow Datasets (TFDS), with a fast offline failure.

The prepared data is tried first, with no network involved. If TFDS has
neither the prepared data nor a way to download it, `DatasetUnavailableError`
explains how to get it. Without a network TFDS' downloader retries for
minutes before it fails, so its download hosts are probed first (a TCP
connection, `_PROBE_TIMEOUT` seconds).
"""

import socket
import urllib.parse

import tensorflow as tf
from absl import logging

from hydra_tf.data import datasets
from hydra_tf.data import idx

# Seconds to wait for a TCP connection to a download host.
_PROBE_TIMEOUT = 3.0


def _unavailable_message(name, split, data_dir, error, unreachable=()):
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


def load(name, split, data_dir, limit, download):
    """One split of `name` from TFDS: (dataset, num_examples).

    Args:
        name: One of `datasets.SUPPORTED_DATASETS`.
        split: "train" or "test".
        data_dir: The TFDS data directory (None: the TFDS default).
        limit: None, or the number of first examples to keep.
        download: Whether TFDS may download the data.

    Raises:
        DatasetUnavailableError: If TFDS cannot provide the data.
    """
    # Imported lazily: TFDS is slow to import and not needed for IDX files.
    import tensorflow_datasets as tfds

    kwargs = {"split": split, "data_dir": data_dir, "as_supervised": True, "with_info": True}
    try:
        # Prepared data first: no network involved.
        dataset, tfds_info = tfds.load(name, download=False, **kwargs)
    except Exception as local_error:  # TFDS raises many types (assert, IO, ...).
        if not download:
            message = _unavailable_message(name, split, data_dir, local_error)
            raise datasets.DatasetUnavailableError(message) from local_error
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
    dataset = dataset.map(datasets.to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset, num_examples
