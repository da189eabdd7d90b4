"""Benchmarks what structured (channel) pruning buys on the device: TF Lite latency.

For each architecture it builds the dense network, an unstructured-pruned one
(weight granularity, --unstructured_keep of each kernel kept, masks from
the weight magnitude) and channel-pruned ones (each of --keep_ratios of every
layer's channels kept, chosen by filter L1 norm), exports each as the plain
Keras model (`export.strip_scores`: dropped channels physically removed),
converts it to a float32 TF Lite file and runs it with LiteRT (--threads, 2
by default; XNNPACK) in processes of its own. Weights are random: latency does not
depend on their values, only on the shapes (and, for sparse files, on the
zeros, which TF Lite densifies at load).

Prints, per network: parameters (and non-zero ones), multiply-adds per image,
file size, median latency at batch 1 and 32 (the median over --probes
processes of each process' median), and the speed-up over dense. At 2
threads a sub-0.1 ms network's per-process median is bimodal (measured: the
half-channel cnn_large ran 0.044-0.055 ms in some processes and 0.114-0.128
ms in others, slower than its steady 0.10 ms on one thread): the thread
pool's wake-ups dominate such short runs, so more probes give a steadier
median, and --threads=1 a steady figure.

Usage:
  python -m benchmarks.structured                        # cnn_large, vgg16_bn at keep 0.5
  python -m benchmarks.structured --arch=cnn_large --keep_ratios=0.5,0.25 --json
"""

import json
import os
import tempfile

from absl import app
from absl import flags
from absl import logging

_ARCH = flags.DEFINE_multi_enum(
    "arch",
    ["cnn_large", "vgg16_bn"],
    ["cnn_small", "cnn_large", "cnn_verifiable", "vgg16_bn", "resnet18"],
    "Architectures.",
)
_KEEP = flags.DEFINE_list("keep_ratios", ["0.5"], "Fractions of each layer's channels kept.")
_UNSTRUCTURED = flags.DEFINE_float(
    "unstructured_keep", 0.01, "Fraction of each kernel the unstructured network keeps."
)
_THREADS = flags.DEFINE_integer("threads", 2, "LiteRT threads.", lower_bound=1)
_PROBES = flags.DEFINE_integer(
    "probes",
    5,
    "Times each file is measured, each in a fresh process; the median is reported "
    "(sub-millisecond latencies vary by tens of percent from one process to the next).",
    lower_bound=1,
)
_JSON = flags.DEFINE_boolean("json", False, "Print one JSON object per line.")


def _ratios_valid(values):
    try:
        return all(0.0 < float(v) <= 1.0 for v in values)
    except ValueError:
        return False


flags.register_validator(
    "keep_ratios", _ratios_valid, message="--keep_ratios must be numbers in (0, 1]."
)
flags.register_validator(
    "unstructured_keep",
    lambda v: 0.0 < v <= 1.0,
    message="--unstructured_keep must be in (0, 1].",
)

# The input each architecture is studied with: Fashion-MNIST for the small
# networks, CIFAR-10's shape for VGG and ResNet.
SHAPES = {
    "cnn_small": (28, 28, 1),
    "cnn_large": (28, 28, 1),
    "cnn_verifiable": (28, 28, 1),
    "vgg16_bn": (32, 32, 3),
    "resnet18": (32, 32, 3),
}
CLASSES = 10


def _networks(arch, keep_ratios, unstructured_keep):
    """(name, plain model) of the dense, unstructured and structured networks."""
    import keras

    from hydra_tf import export
    from hydra_tf.models import architectures
    from hydra_tf.models import scores
    from hydra_tf.pruning import phases

    keras.utils.set_random_seed(0)
    dense = architectures.build(arch, SHAPES[arch], CLASSES)
    yield "dense", export.strip_scores(dense)
    for name, granularity, ratio in [("unstructured", "weight", unstructured_keep)] + [
        ("channels", "channel", float(k)) for k in keep_ratios
    ]:
        pruned = architectures.build(
            arch, SHAPES[arch], CLASSES, keep_ratio=ratio, granularity=granularity
        )
        phases.transfer_weights(dense, pruned)
        scores.scaled_init(pruned)
        yield f"{name} {ratio:g}", export.strip_scores(pruned)


def _measure(plain, directory, name):
    import numpy as np

    from hydra_tf.export import costs
    from hydra_tf.export import tflite
    from hydra_tf.export import tflite_verify

    content = tflite.convert(plain, tflite.Mode("float32"))
    path = os.path.join(directory, name.replace(" ", "_") + ".tflite")
    with open(path, "wb") as f:
        f.write(content)
    probes = []
    for _ in range(_PROBES.value):
        probed = tflite_verify.probe(path, threads=_THREADS.value)
        if "crashed" in probed:
            raise RuntimeError(f"{name}: {probed['crashed']}")
        probes.append(probed)
    latency = {
        batch: float(np.median([p["latency_ms"][batch] for p in probes])) for batch in ("1", "32")
    }
    cost = costs.costs(plain)
    return {
        "params": cost.params,
        "nonzero_params": cost.nonzero_params,
        "macs": cost.macs,
        "bytes": len(content),
        "latency_ms_1": latency["1"],
        "latency_ms_32": latency["32"],
        "xnnpack": probed["xnnpack"]["note"],
    }


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for arch in _ARCH.value:
            base = None
            for name, plain in _networks(arch, _KEEP.value, _UNSTRUCTURED.value):
                row = {"arch": arch, "network": name, **_measure(plain, directory, name)}
                base = base or row
                row["speedup_1"] = base["latency_ms_1"] / row["latency_ms_1"]
                row["speedup_32"] = base["latency_ms_32"] / row["latency_ms_32"]
                rows.append(row)
    if _JSON.value:
        for row in rows:
            print(json.dumps(row))
        return
    print(
        f"TF Lite float32, LiteRT {_THREADS.value} thread(s), XNNPACK; latency: median ms "
        f"over {_PROBES.value} processes"
    )
    header = (
        f"{'arch':<10} {'network':<18} {'params':>10} {'nonzero':>10} {'MMACs':>8} "
        f"{'MB':>6} {'batch 1':>8} {'x':>5} {'batch 32':>9} {'x':>5}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['arch']:<10} {r['network']:<18} {r['params']:>10,} {r['nonzero_params']:>10,} "
            f"{r['macs'] / 1e6:>8.1f} {r['bytes'] / 2**20:>6.2f} {r['latency_ms_1']:>8.3f} "
            f"{r['speedup_1']:>5.2f} {r['latency_ms_32']:>9.2f} {r['speedup_32']:>5.2f}"
        )


if __name__ == "__main__":
    app.run(main)
