"""Image classification datasets as `tf.data` pipelines.

Five datasets are supported: `cifar10`, `svhn_cropped`, `mnist`,
`fashion_mnist` and `imagenet2012`. Every example is an `(image, label)` pair
with the image a float32 tensor of shape (H, W, C) in [0, 1] (the uint8 pixels
divided by 255, no further normalisation) and the label an int32 class index.

- `datasets`: the registry (`DATASETS`: name -> `DatasetInfo`; the binaries'
  `--dataset` choices are its keys, `SUPPORTED_DATASETS`) and the checks;
- `idx`: `mnist` and `fashion_mnist` read offline from the four standard IDX
  gzip files (`train-images-idx3-ubyte.gz`, ...), looked for in `data_dir`,
  then in `data_dir/<name>/`, then (Fashion-MNIST only) in
  `DEBIAN_FASHION_MNIST_DIR`, where Debian's `dataset-fashion-mnist` package
  installs them;
- `tfds_source`: everything else, from TensorFlow Datasets (TFDS). If TFDS has
  neither the prepared data nor a way to download it,
  `DatasetUnavailableError` explains how to get it;
- `imagenet`: ImageNet, streamed from TFDS (prepared from a manual download
  in `<data_dir>/downloads/manual`) and preprocessed per example to 224x224
  (random-resized crop + flip for training, resize + central crop for
  evaluation); `imagenet_normalization()` is the mean / std layer to put in
  front of an ImageNet model;
- `sources`: `load`, which picks the source, `load_pipeline`, the batched
  pipeline of a named dataset (the way to train on ImageNet), and `arrays`,
  a loaded split as numpy arrays;
- `input_pipeline`: `make_pipeline`, which shuffles, augments, batches and
  prefetches what `load` returns, for training or evaluation.

The names below are re-exported from those modules. A module constant is
read where it is defined: a test that points `DEBIAN_FASHION_MNIST_DIR`
elsewhere patches `hydra_tf.data.idx`.
"""

from hydra_tf.data.datasets import DATASETS
from hydra_tf.data.datasets import SPLITS
from hydra_tf.data.datasets import SUPPORTED_DATASETS
from hydra_tf.data.datasets import DatasetInfo
from hydra_tf.data.datasets import DatasetUnavailableError
from hydra_tf.data.datasets import default_augment
from hydra_tf.data.datasets import info
from hydra_tf.data.idx import DEBIAN_FASHION_MNIST_DIR
from hydra_tf.data.idx import IDX_FILES
from hydra_tf.data.idx import IDX_IMAGES_MAGIC
from hydra_tf.data.idx import IDX_LABELS_MAGIC
from hydra_tf.data.idx import read_idx
from hydra_tf.data.imagenet import normalization as imagenet_normalization
from hydra_tf.data.input_pipeline import make_pipeline
from hydra_tf.data.sources import arrays
from hydra_tf.data.sources import load
from hydra_tf.data.sources import load_pipeline

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "IDX_FILES",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "SPLITS",
    "SUPPORTED_DATASETS",
    "DatasetInfo",
    "DatasetUnavailableError",
    "arrays",
    "default_augment",
    "imagenet_normalization",
    "info",
    "load",
    "load_pipeline",
    "make_pipeline",
    "read_idx",
]
