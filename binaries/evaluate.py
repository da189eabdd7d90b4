"""Evaluates a trained network: clean accuracy and L-inf robust accuracy, as JSON.

Example:
  python -m binaries.evaluate --checkpoint=runs/finetune/model.keras \
      --eps=0.1 --output=runs/finetune/eval.json

The attack is standard AutoAttack by default (--attack=autoattack: APGD-CE,
APGD-T, FAB-T, Square, each on the points the earlier ones left robust, with
the robust accuracy after each); --attack=pgd is PGD with --steps and
--restarts. A killed AutoAttack evaluation resumes from --state (default:
<output>.state.npz). The network runs in inference mode. The JSON holds
clean_acc, robust_acc, the attack settings, the number of examples and the
measured kernel sparsity. The radius is --eval_eps, or --eps without it.

--verify=ibp,crown_ibp,crown adds verified accuracy at that radius by each bound
(IBP, CROWN-IBP, full CROWN on the first --crown_limit examples), checked
against the attack's examples when it has them (AutoAttack): a verified point
the attack breaks stops the evaluation with an error.
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
from hydra_tf.evaluation import verified
from hydra_tf.models import masks
from hydra_tf.objectives import attacks

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "model.keras to evaluate.", required=True)
_STEPS = flags.DEFINE_integer(
    "steps",
    evaluation.DEFAULT_STEPS,
    "PGD steps of the evaluation attack (--attack=pgd).",
    lower_bound=0,
)
_RESTARTS = flags.DEFINE_integer(
    "restarts", evaluation.DEFAULT_RESTARTS, "PGD random restarts.", lower_bound=1
)
_STEP_SIZE = flags.DEFINE_float("step_size", None, "PGD step size (default 2.5 * eps / steps).")
_VERIFY = flags.DEFINE_multi_enum(
    "verify", [], verified.METHODS, "Also verified accuracy by these bounds (repeat the flag)."
)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON (default: print it).")
_STATE = flags.DEFINE_string(
    "state", None, "Resumable attack state (default: <output>.state.npz; none without --output)."
)


def attack():
    """The evaluation attack the flags describe."""
    name = common.ATTACK.value or "autoattack"
    if name == "pgd":
        return attacks.PGDConfig(
            eps=common.eval_eps(),
            steps=_STEPS.value,
            restarts=_RESTARTS.value,
            step_size=_STEP_SIZE.value,
        )
    return attacks.make(name, common.eval_eps())


def _evaluate():
    strategy = common.strategy()
    with strategy.scope():
        network = files.load_network(_CHECKPOINT.value)
    test_ds, _ = data.load(
        common.DATASET.value, "test", common.DATA_DIR.value, common.TEST_LIMIT.value
    )
    state = _STATE.value or (_OUTPUT.value + ".state.npz" if _OUTPUT.value else None)
    result = evaluation.evaluate(
        network,
        data.make_pipeline(test_ds, common.BATCH_SIZE.value, training=False),
        attack(),
        strategy=strategy,
        state_path=state,
    )
    if not distribute.is_chief(strategy):
        return
    report = result.to_json()
    report["checkpoint"] = os.path.abspath(_CHECKPOINT.value)
    report["sparsity"] = masks.sparsity(export.kernels(export.strip_scores(network)))
    if _VERIFY.value:
        images, labels = data.arrays(test_ds)
        accuracy, examples = verified.verified_accuracy(
            network,
            images,
            labels,
            common.eval_eps(),
            methods=tuple(dict.fromkeys(_VERIFY.value)),
            crown_limit=common.CROWN_LIMIT.value,
            adversarial=result.adversarial,
        )
        report["verified_accuracy"] = accuracy
        report["verified_examples"] = examples
    text = json.dumps(report, indent=2, sort_keys=True)
    if _OUTPUT.value:
        files.write_json(_OUTPUT.value, report)
        logging.info("Wrote %s", _OUTPUT.value)
    logging.info("Evaluation:\n%s", text)


if __name__ == "__main__":
    app.run(common.main_without_args(_evaluate))
