"""Certifies a trained network as a randomized-smoothing classifier (L2).

Example:
  python -m binaries.certify --checkpoint=runs/finetune/model.keras \
      --sigma=0.25 --test_limit=100 --output_dir=runs/finetune/certify

For each test example it runs Cohen et al.'s CERTIFY (n0 selection samples, n
estimation samples, one-sided Clopper-Pearson bound at level alpha) and writes
to --output_dir:
  certify.json   settings, per-example records (label, prediction, radius,
                 p_lower, correct, seconds) and certified accuracy per radius
  certify.md     the certified-accuracy table

With --strategy (e.g. mirrored over several GPUs), each example's noisy
copies are split between the replicas; the counts, and so the results, are
those of one device. Only the chief writes.
"""

import os

from absl import app
from absl import flags
from absl import logging

from binaries import common
from hydra_tf import data
from hydra_tf import distribute
from hydra_tf import files
from hydra_tf.evaluation import smoothing

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "model.keras to certify.", required=True)
_N0 = flags.DEFINE_integer("n0", 100, "Noise samples to select the class.", lower_bound=1)
_N = flags.DEFINE_integer("n", 10_000, "Noise samples to bound its probability.", lower_bound=1)
_ALPHA = flags.DEFINE_float("alpha", 0.001, "Failure probability of each certificate.")
_SAMPLE_BATCH = flags.DEFINE_integer(
    "sample_batch", 1000, "Noisy copies per network call.", lower_bound=1
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the results.", required=True)


def _certify():
    strategy = common.strategy()
    with strategy.scope():
        network = files.load_network(_CHECKPOINT.value)
    meta = data.info(common.DATASET.value)
    test_ds, count = data.load(
        common.DATASET.value, "test", common.DATA_DIR.value, common.TEST_LIMIT.value
    )
    config = smoothing.SmoothingConfig(
        sigma=common.SIGMA.value,
        n0=_N0.value,
        n=_N.value,
        alpha=_ALPHA.value,
        batch=_SAMPLE_BATCH.value,
        seed=common.SEED.value,
    )
    logging.info("Certifying %d examples with %s", count, config)
    records = smoothing.certify_dataset(
        network, test_ds, meta.num_classes, config, strategy=strategy
    )
    if not distribute.is_chief(strategy):
        return
    report = smoothing.report(records, config, checkpoint=os.path.abspath(_CHECKPOINT.value))
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    files.write_json(os.path.join(_OUTPUT_DIR.value, "certify.json"), report)
    with open(os.path.join(_OUTPUT_DIR.value, "certify.md"), "w") as f:
        f.write(smoothing.report_markdown(report))
    logging.info("Certified accuracy: %s", report["certified_accuracy"])


if __name__ == "__main__":
    app.run(common.main_without_args(_certify))
