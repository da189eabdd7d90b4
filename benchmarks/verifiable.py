"""Benchmarks verifiable training and verified accuracy (IBP, CROWN-IBP, CROWN, symbolic).

Prints, per architecture (28x28x1 inputs, 10 classes, synthetic images held in
memory so the input pipeline never limits a step):

- the images/s of one full training step (loss, gradient, Adam update) of the
  natural, `ibp`, `crown_ibp` (and, asked for, `mixtrain`) objectives at
  the benchmark batch (256, the reference's), dense, during the eps ramp
  (CROWN-IBP then runs both its CROWN and its IBP pass; after the ramp it is
  an IBP step; mixtrain bounds 5 examples of every batch);
- the images/s of verified accuracy by each bound (`evaluation.verified`);
- the peak resident memory of the process.

The reference PyTorch CROWN-IBP code on this 2-core machine, `cifar_model`
(our `cnn_verifiable`) at batch 256: natural 16,600, IBP 8,600, CROWN-IBP 880
images/s (../shared/FACTS.md).

Usage:
  python -m benchmarks.verifiable                      # cnn_verifiable
  python -m benchmarks.verifiable --arch=cnn_large --verify_methods=ibp,crown_ibp
  python -m benchmarks.verifiable --objectives=mixtrain --verify_methods=symbolic
  python -m benchmarks.verifiable --json
"""

import json
import resource
import time

from absl import app
from absl import flags
from absl import logging

import benchmarks

_ARCH = flags.DEFINE_multi_enum(
    "arch", ["cnn_verifiable"], ["cnn_verifiable", "cnn_large", "cnn_small"], "Architectures."
)
_BATCH = flags.DEFINE_integer("batch", 256, "Training batch size.", lower_bound=1)
_OBJECTIVES = flags.DEFINE_list(
    "objectives", ["natural", "ibp", "crown_ibp"], "Training objectives to time."
)
_VERIFY = flags.DEFINE_list(
    "verify_methods", ["ibp", "crown_ibp", "crown"], "Verified-accuracy bounds to time."
)
_VERIFY_IMAGES = flags.DEFINE_integer(
    "verify_images",
    512,
    "Images per verified-accuracy timing (crown, symbolic: a quarter).",
    lower_bound=1,
)
# crown_ibp_fused: crown_ibp with loss fusion (one CROWN row per example).
_KNOWN_OBJECTIVES = ("natural", "ibp", "crown_ibp", "crown_ibp_fused", "mixtrain")
_KNOWN_METHODS = ("ibp", "crown_ibp", "crown", "symbolic")
flags.register_validator(
    "objectives",
    lambda names: set(names) <= set(_KNOWN_OBJECTIVES),
    message=f"--objectives must be some of {', '.join(_KNOWN_OBJECTIVES)}.",
)
flags.register_validator(
    "verify_methods",
    lambda names: set(names) <= set(_KNOWN_METHODS),
    message=f"--verify_methods must be some of {', '.join(_KNOWN_METHODS)}.",
)
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed training steps.", lower_bound=1)
_JIT = flags.DEFINE_boolean("jit_compile", False, "Compile the training step with XLA.")
_JSON = flags.DEFINE_boolean("json", False, "Print one JSON object per line.")

SHAPE = (28, 28, 1)
CLASSES = 10
EPS = 0.1


def _train_step_rate(arch, name, batch):
    import keras
    import numpy as np
    import tensorflow as tf

    from hydra_tf import objectives
    from hydra_tf.models import architectures
    from hydra_tf.training import trainer as trainer_lib

    keras.utils.set_random_seed(0)
    network = architectures.build(arch, SHAPE, CLASSES)
    # A long ramp: every timed step is early in it (beta near 1, so the CROWN
    # pass of crown_ibp runs). mixtrain adds its symbolic term to every batch
    # (5 examples), the most a step of it costs.
    fused = name == "crown_ibp_fused"
    config = objectives.config(
        "crown_ibp" if fused else name,
        eps=EPS,
        ramp_epochs=1.0,
        probability=1.0,
        loss_fusion=fused,
    )
    model = trainer_lib.RobustTrainer(
        network, objectives.make(config, steps_per_epoch=1_000_000), seed=0
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=_JIT.value)
    model.optimizer.build(model.trainable_variables)
    rng = np.random.RandomState(0)
    images = rng.rand(batch, *SHAPE).astype(np.float32)
    labels = rng.randint(0, CLASSES, batch)
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2))
    model.make_train_function()
    step = lambda: float(model.train_function(iterator)["loss"])
    for _ in range(2):
        step()
    return batch / benchmarks.median_seconds(step, _REPEATS.value)


def _verify_rate(arch, method, images):
    import keras
    import numpy as np

    from hydra_tf.evaluation import verified
    from hydra_tf.models import architectures

    keras.utils.set_random_seed(0)
    network = architectures.build(arch, SHAPE, CLASSES)
    rng = np.random.RandomState(1)
    x = rng.rand(images, *SHAPE).astype(np.float32)
    y = rng.randint(0, CLASSES, images)
    batch = {"crown": 32, "symbolic": verified.SYMBOLIC_BATCH}.get(method, 256)
    # Trace once on a batch, then time the whole set.
    verified.verify(network, x[:batch], y[:batch], EPS, methods=(method,), batch_size=batch)
    start = time.perf_counter()
    verified.verify(network, x, y, EPS, methods=(method,), batch_size=batch)
    return images / (time.perf_counter() - start)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = []
    for arch in _ARCH.value:
        for name in _OBJECTIVES.value:
            rate = _train_step_rate(arch, name, _BATCH.value)
            rows.append({"arch": arch, "what": f"train_step/{name}", "images_per_sec": rate})
        for method in _VERIFY.value:
            slow = method in ("crown", "symbolic")
            images = max(_VERIFY_IMAGES.value // 4, 1) if slow else _VERIFY_IMAGES.value
            rate = _verify_rate(arch, method, images)
            rows.append({"arch": arch, "what": f"verify/{method}", "images_per_sec": rate})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if _JSON.value:
        for row in rows:
            print(json.dumps({**row, "batch": _BATCH.value, "peak_rss_mb": peak_mb}))
        return
    print(f"batch {_BATCH.value}, {SHAPE}, eps {EPS}, XLA {_JIT.value}; peak RSS {peak_mb:.0f} MB")
    print(f"{'arch':<16} {'what':<24} {'images/s':>10}")
    for row in rows:
        print(f"{row['arch']:<16} {row['what']:<24} {row['images_per_sec']:>10.0f}")


if __name__ == "__main__":
    app.run(main)
