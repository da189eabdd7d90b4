"""The dataset registry: name -> `DatasetInfo`, and the checks every loader shares.

`DATASETS` is the table the binaries take their `--dataset` choices from
(`SUPPORTED_DATASETS`, its keys in order). Every example of every dataset is
an `(image, label)` pair: a float32 (H, W, C) image in [0, 1] (`to_float`;
for ImageNet, after its preprocessing to `image_shape`) and an int32 class
index.
"""

import dataclasses
import numbers

import tensorflow as tf

SPLITS = ("train", "test")


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
        validate_split(split)
        return self.num_train if split == "train" else self.num_test


DATASETS = {
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, 50000, 10000),
    "svhn_cropped": DatasetInfo("svhn_cropped", (32, 32, 3), 10, 73257, 26032),
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, 60000, 10000),
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, 60000, 10000),
    # "test" is ImageNet's validation split; image_shape is after preprocessing.
    "imagenet2012": DatasetInfo("imagenet2012", (224, 224, 3), 1000, 1281167, 50000),
}

SUPPORTED_DATASETS = tuple(DATASETS)


def validate_name(name):
    """Raises ValueError unless `name` is one of `SUPPORTED_DATASETS`."""
    if name not in DATASETS:
        raise ValueError(
            f"Unknown dataset. Supported datasets are: "
            f"{', '.join(SUPPORTED_DATASETS)}. Received: name={name!r}"
        )


def validate_split(split):
    """Raises ValueError unless `split` is one of `SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}. Received: split={split!r}")


def validate_positive_int(value, arg_name, allow_none=False):
    """`value` as an int; ValueError unless it is a positive integer (or None, if allowed)."""
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
    validate_name(name)
    return DATASETS[name]


def default_augment(name):
    """Whether training on `name` uses crop + flip augmentation by default.

    CIFAR-10 (padded crop) and ImageNet (random-resized crop) do: flipping
    digits (MNIST, SVHN) changes their meaning, and the small grayscale
    datasets are trained without augmentation.

    Args:
        name: One of `SUPPORTED_DATASETS`.

    Returns:
        True for `cifar10` and `imagenet2012`, False otherwise.

    Raises:
        ValueError: If `name` is not a supported dataset.
    """
    validate_name(name)
    return name in ("cifar10", "imagenet2012")


def to_float(image, label):
    """Maps a uint8 image to float32 in [0, 1] and the label to int32."""
    return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)
