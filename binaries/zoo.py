"""The model zoo: lists, shows, evaluates and publishes HYDRA networks.

  python -m binaries.zoo list
  python -m binaries.zoo show NAME
  python -m binaries.zoo evaluate NAME [--limit=500] [--attack=autoattack] [--verify=ibp]
      [--record]
  python -m binaries.zoo publish NAME --run_dir=RUN --variant=hydra_0.01 \
      --family=verified --study=results/verified/cnn_verifiable --command="python -m ..."

`list` logs one line per network; `show` its model card. `evaluate` measures
the network again on the first --limit test images: clean accuracy of the
Keras file and of the TF Lite file (LiteRT), with --attack its robust
accuracy (at the card's eps unless --eval_eps is given), with --verify its
verified accuracy, with --certify_n (smoothed networks) its certified
accuracy at the card's radius; it logs the card's figures beside them (and
writes them to --output) and ends with an error if the clean accuracy on the
card's check images is not the card's. With --record (and --attack) it
writes the new robust accuracy, after each attack of a cascade, into the
card beside the study's figures (`zoo.record`).
`publish` adds network --variant of a pipeline run (one seed's workdir of a
study) to the zoo. --zoo picks another zoo directory than the repository's.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging

from binaries import common
from hydra_tf import files
from hydra_tf import zoo
from hydra_tf.evaluation import verified
from hydra_tf.objectives import attacks

_ACTIONS = ("list", "show", "evaluate", "publish")
_ZOO = flags.DEFINE_string("zoo", None, "The zoo directory (default: the repository's zoo/).")
_LIMIT = flags.DEFINE_integer(
    "limit", zoo.CHECK_EXAMPLES, "evaluate: the first N test images.", lower_bound=1
)
_VERIFY = flags.DEFINE_multi_enum(
    "verify", [], verified.METHODS, "evaluate: verified accuracy by these bounds (repeat)."
)
_OUTPUT = flags.DEFINE_string("output", None, "evaluate: also write the JSON here.")
_RECORD = flags.DEFINE_boolean(
    "record", False, "evaluate: write the attack's figures into the card (needs --attack)."
)
_RUN_DIR = flags.DEFINE_string("run_dir", None, "publish: the pipeline run's workdir.")
_VARIANT = flags.DEFINE_string("variant", None, "publish: the network, e.g. hydra_0.01.")
_FAMILY = flags.DEFINE_enum("family", None, zoo.FAMILIES, "publish: the network's family.")
_STUDY = flags.DEFINE_string("study", None, "publish: the study's results directory.")
_COMMAND = flags.DEFINE_string("command", None, "publish: the command that made the network.")


def _list():
    cards = zoo.list_models(_ZOO.value)
    if not cards:
        logging.info("The zoo at %s is empty.", _ZOO.value or zoo.DEFAULT_ROOT)
    for c in cards:
        logging.info(
            f"{c.name}: {c.arch} on {c.dataset}, {c.family}, keep {c.keep_ratio:g} of "
            f"{c.granularity}s, clean {100 * c.evaluation['clean_acc']:.1f}%, "
            f"{c.evaluation['robust_kind']} {100 * c.evaluation['robust_acc']:.1f}%"
        )


def _show(name):
    logging.info("%s", json.dumps(zoo.card(name, _ZOO.value).to_json(), indent=2, sort_keys=True))


def _evaluate(name):
    model_card = zoo.card(name, _ZOO.value)
    eps = common.EVAL_EPS.value
    if eps is None:
        eps = model_card.evaluation.get("eps")
    attack = None
    if _RECORD.value and not common.ATTACK.value:
        raise ValueError("--record needs --attack: it records an attack's figures.")
    if common.ATTACK.value:
        if eps is None:
            raise ValueError(f"{name}'s card has no L-inf eps; pass --eval_eps.")
        attack = attacks.make(common.ATTACK.value, eps)
    report = zoo.evaluate(
        name,
        _ZOO.value,
        limit=_LIMIT.value,
        attack=attack,
        verify=tuple(dict.fromkeys(_VERIFY.value)),
        data_dir=common.DATA_DIR.value,
        eps=eps,
        # --certify_n (binaries.common): noise samples per image, smoothed networks only.
        certify_n=common.CERTIFY_N.value,
    )
    report["card"] = {"evaluation": model_card.evaluation, "check": model_card.check}
    if _OUTPUT.value:
        files.write_json(_OUTPUT.value, report)
        logging.info("Wrote %s", _OUTPUT.value)
    logging.info("Evaluation:\n%s", json.dumps(report, indent=2, sort_keys=True))
    expected = report.get("card_clean_acc")
    if expected is not None and not zoo.same_accuracy(
        report["clean_acc"], expected, report["num_examples"]
    ):
        raise ValueError(
            f"{name}: clean accuracy {report['clean_acc']:.4f} on the card's "
            f"{report['num_examples']} check images, the card says {expected:.4f}."
        )
    if _RECORD.value:
        command = " ".join(["python -m binaries.zoo", *sys.argv[1:]])
        zoo.record(name, report, command, _ZOO.value)


def _publish(name):
    required = {"--run_dir": _RUN_DIR, "--variant": _VARIANT, "--family": _FAMILY}
    required.update({"--study": _STUDY, "--command": _COMMAND})
    missing = [flag for flag, holder in required.items() if holder.value is None]
    if missing:
        raise ValueError(f"publish needs {', '.join(missing)}.")
    zoo.publish(
        _RUN_DIR.value,
        _VARIANT.value,
        name,
        _FAMILY.value,
        _STUDY.value,
        _COMMAND.value,
        root=_ZOO.value,
        data_dir=common.DATA_DIR.value,
    )


def main(argv):
    args = argv[1:]
    if not args or args[0] not in _ACTIONS:
        raise app.UsageError(f"Give an action: one of {', '.join(_ACTIONS)} (got {args[:1]}).")
    action, rest = args[0], args[1:]
    if action == "list":
        if rest:
            raise app.UsageError(f"list takes no name (got {rest}).")
        common.run_or_exit(_list)
        return
    if len(rest) != 1:
        raise app.UsageError(f"{action} takes one network name (got {rest}).")
    handler = {"show": _show, "evaluate": _evaluate, "publish": _publish}[action]
    common.run_or_exit(handler, rest[0])


if __name__ == "__main__":
    app.run(main)
