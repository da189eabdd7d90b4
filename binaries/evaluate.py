"""Evaluates a trained network: clean accuracy and L-inf PGD accuracy, as JSON.

Example:
  python -m binaries.evaluate --checkpoint=runs/finetune/model.keras \
      --eps=0.1 --steps=50 --restarts=2 --output=runs/finetune/eval.json

The network runs in inference mode. The JSON holds clean_acc, robust_acc, the
attack settings, the number of examples and the measured kernel sparsity.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from binaries import common
from hydra_tf import data
from hydra_tf import distribute
from hydra_tf import evaluation
from hydra_tf import export
from hydra_tf import files
from hydra_tf.models import masks
from hydra_tf.objectives import attacks

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "model.keras to evaluate.", required=True)
_STEPS = flags.DEFINE_integer(
    "steps",
    evaluation.DEFAULT_STEPS,
    "PGD steps of the evaluation attack.",
    lower_bound=0,
)
_RESTARTS = flags.DEFINE_integer(
    "restarts", evaluation.DEFAULT_RESTARTS, "PGD random restarts.", lower_bound=1
)
_STEP_SIZE = flags.DEFINE_float("step_size", None, "PGD step size (default 2.5 * eps / steps).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON (default: print it).")


def _evaluate():
    strategy = common.strategy()
    with strategy.scope():
        network = files.load_network(_CHECKPOINT.value)
    test_ds, _ = data.load(
        common.DATASET.value, "test", common.DATA_DIR.value, common.TEST_LIMIT.value
    )
    attack = attacks.PGDConfig(
        eps=common.EPS.value,
        steps=_STEPS.value,
        restarts=_RESTARTS.value,
        step_size=_STEP_SIZE.value,
    )
    result = evaluation.evaluate(
        network,
        data.make_pipeline(test_ds, common.BATCH_SIZE.value, training=False),
        attack,
        strategy=strategy,
    )
    if not distribute.is_chief(strategy):
        return
    report = result.to_json()
    report["checkpoint"] = os.path.abspath(_CHECKPOINT.value)
    report["sparsity"] = masks.sparsity(export.kernels(export.strip_scores(network)))
    text = json.dumps(report, indent=2, sort_keys=True)
    if _OUTPUT.value:
        files.write_json(_OUTPUT.value, report)
        logging.info("Wrote %s", _OUTPUT.value)
    logging.info("Evaluation:\n%s", text)


if __name__ == "__main__":
    app.run(common.main_without_args(_evaluate))
