"""Benchmarks randomized-smoothing certification: seconds per certified image.

Certifies a few images with `hydra_tf.evaluation.smoothing` (n0 + n noisy forward passes
each) on an untrained network of the given architecture (the cost does not
depend on the weights) and prints the median seconds per image for each
sample batch size, after a warm-up image that includes tracing.

Usage:
  python -m benchmarks.certify                       # cnn_small, n=10000
  python -m benchmarks.certify --arch=cnn_large --sample_batch=1000,2500
"""

import statistics
import time

from absl import app
from absl import flags

_ARCH = flags.DEFINE_enum("arch", "cnn_small", ["cnn_small", "cnn_large"], "Architecture.")
_N = flags.DEFINE_integer("n", 10_000, "Estimation samples per image.", lower_bound=1)
_N0 = flags.DEFINE_integer("n0", 100, "Selection samples per image.", lower_bound=1)
_IMAGES = flags.DEFINE_integer("images", 5, "Timed images.", lower_bound=1)
_SAMPLE_BATCH = flags.DEFINE_list(
    "sample_batch", ["1000", "2500", "5000"], "Noisy copies per network call."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import keras
    import numpy as np

    from hydra_tf.evaluation import smoothing
    from hydra_tf.models import architectures

    keras.utils.set_random_seed(0)
    network = architectures.build(_ARCH.value, (28, 28, 1), 10)
    images = np.random.RandomState(0).rand(_IMAGES.value + 1, 28, 28, 1).astype(np.float32)
    print(f"{_ARCH.value}: certification with n0={_N0.value}, n={_N.value}")
    for batch in (int(b) for b in _SAMPLE_BATCH.value):
        config = smoothing.SmoothingConfig(n0=_N0.value, n=_N.value, batch=batch)
        smoother = smoothing.Smoother(network, 10, config)
        smoother.certify(images[0])  # warm-up: tracing
        times = []
        for index, image in enumerate(images[1:], start=1):
            start = time.perf_counter()
            smoother.certify(image, example=index)
            times.append(time.perf_counter() - start)
        print(f"  sample batch {batch:>5}: {statistics.median(times):.3f} s per image (median)")


if __name__ == "__main__":
    app.run(main)
