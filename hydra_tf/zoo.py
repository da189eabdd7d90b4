"""The model zoo: published HYDRA networks, each with its model card.

A zoo is a directory with one sub-directory per network:

  <name>/model.keras   the plain Keras network (masks folded into the
                       kernels), its zip deflated so that pruned kernels
                       take little room; `keras.saving.load_model` reads it
  <name>/model.tflite  its TF Lite file, in the format the run's `deploy`
                       chose and checked with LiteRT
  <name>/card.json     the model card (`ModelCard`)
  <name>/README.md     the same card, for people
  README.md            the index of every network (`write_index`)

`publish` adds a network of a pipeline or study run; `list_models`, `card`,
`load`, `tflite_path` and `evaluate` read the zoo back. The repository's
zoo is `DEFAULT_ROOT`.

A card holds two sets of figures. `evaluation` is what the study measured
(its attack or bounds, on its test examples). `check` is the clean accuracy
of the published file on the first `CHECK_EXAMPLES` test images, measured
when it was published; `evaluate` and the tests compare a loaded network
against it. A card may hold a third, `remeasured`: an attack run again on
the published file by `evaluate` and written by `record` (for cards whose
study did not keep each attack's figures), beside the study's, never over
them.
"""

import dataclasses
import datetime
import os
import re
import shutil
import tempfile
import zipfile

import numpy as np
from absl import logging

from hydra_tf import data
from hydra_tf import evaluation
from hydra_tf import files
from hydra_tf.evaluation import cascade
from hydra_tf.evaluation import smoothing
from hydra_tf.evaluation import verified
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import records
from hydra_tf.experiments import report
from hydra_tf.export import costs
from hydra_tf.export import tflite_verify

DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zoo")
CARD_FILE = "card.json"
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
CHECK_EXAMPLES = 500
# A published file may disagree with its study on this many examples of
# `CHECK_EXAMPLES` (float rounding between a network in memory and on disk).
CHECK_TOLERANCE = 1
FAMILIES = ("adversarial", "certified", "verified", "structured")
_VERIFY_ORDER = ("symbolic", "ibp", "crown_ibp", "crown")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_OPTIONAL_FIELDS = {"remeasured"}


class ZooError(ValueError):
    """A zoo request that cannot be served: unknown name, missing or broken file."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What a published network is, how it was made and what it measured.

    Attributes:
      name: the network's directory name in the zoo.
      family: one of `FAMILIES` (which table of the README it belongs to).
      dataset, arch: the data and the architecture it was trained on.
      input_shape: one image's shape; pixels are in [0, 1].
      num_classes: logits per image.
      objective: the robust objective's settings (as the run wrote them).
      method, granularity, keep_ratio: "hydra" (or "lwm"), "weight" or
        "channel", and the fraction of weights or channels kept per layer.
      sparsity: fraction of zero kernel entries in the published file.
      params, nonzero_params, macs: its costs (`export.costs`).
      seed: the run's seed.
      train_examples: training images used (None: the whole split).
      training: one dict per phase that made it, first to last (phase,
        epochs, learning_rate, optimizer, objective name).
      evaluation: the study's figures: num_examples, clean_acc, robust_acc
        (and robust_kind: "autoattack", "pgd", "verified" or "certified"),
        attack_acc, verified_accuracy, certified_accuracy, eps or radius.
      check: {"num_examples", "clean_acc"} of the published file (see the
        module docstring).
      tflite: the TF Lite file's mode and its accuracy under LiteRT: clean,
        and on adversarial examples found on the Keras network by `attack`
        (the study's evaluation attack; PGD for certified studies), with the
        Keras network's accuracy on the same examples (keras_clean_acc,
        keras_robust_acc). Older cards may lack `attack` and the Keras figures.
      files: bytes of each published file.
      study: where the study's results are, relative to the repository.
      command: the command that made the network.
      remeasured: None, or the published file attacked again (`record`):
        num_examples, clean_acc, robust_acc, attack, stages, warnings,
        verified_accuracy (if it was verified too), date and the command
        that measured it.
    """

    name: str
    family: str
    dataset: str
    arch: str
    input_shape: tuple
    num_classes: int
    objective: dict
    method: str
    granularity: str
    keep_ratio: float
    sparsity: float
    params: int
    nonzero_params: int
    macs: int
    seed: int
    train_examples: int | None
    training: tuple
    evaluation: dict
    check: dict
    tflite: dict
    files: dict
    study: str
    command: str
    remeasured: dict | None = None

    def to_json(self):
        values = dataclasses.asdict(self)
        values["input_shape"] = list(self.input_shape)
        values["training"] = list(self.training)
        if self.remeasured is None:
            values.pop("remeasured")
        return values

    @classmethod
    def from_json(cls, values):
        names = {field.name for field in dataclasses.fields(cls)}
        missing = sorted(names - set(values) - _OPTIONAL_FIELDS)
        if missing:
            raise ZooError(f"The model card lacks {', '.join(missing)}.")
        values = {key: values[key] for key in names if key in values}
        values["input_shape"] = tuple(values["input_shape"])
        values["training"] = tuple(values["training"])
        return cls(**values)


def _root(root):
    return DEFAULT_ROOT if root is None else root


def _check_name(name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ZooError(
            f"Invalid zoo name {name!r}: use lower-case letters, digits, '_', '.' and '-'."
        )


def list_models(root=None):
    """The cards of every network in the zoo at `root`, sorted by name."""
    root = _root(root)
    if not os.path.isdir(root):
        return []
    cards = []
    for entry in sorted(os.listdir(root)):
        if os.path.exists(os.path.join(root, entry, CARD_FILE)):
            cards.append(card(entry, root))
    return cards


def names(root=None):
    """The names of the networks in the zoo at `root`."""
    return [c.name for c in list_models(root)]


def _directory(name, root):
    _check_name(name)
    directory = os.path.join(_root(root), name)
    if not os.path.exists(os.path.join(directory, CARD_FILE)):
        available = ", ".join(names(root)) or "none"
        raise ZooError(
            f"No network named {name!r} in the zoo at {_root(root)} (it has: {available})."
        )
    return directory


def card(name, root=None):
    """The `ModelCard` of network `name`."""
    path = os.path.join(_directory(name, root), CARD_FILE)
    try:
        return ModelCard.from_json(files.read_json(path))
    except (ValueError, TypeError) as error:
        raise ZooError(f"Cannot read the model card {path}: {error}") from error


def load(name, root=None):
    """The published Keras network `name` (plain layers, logits out, inputs in [0, 1])."""
    path = os.path.join(_directory(name, root), KERAS_FILE)
    try:
        return files.load_network(path)
    except (FileNotFoundError, ValueError) as error:
        raise ZooError(str(error)) from error


def tflite_path(name, root=None):
    """The path of the published TF Lite file of network `name`."""
    path = os.path.join(_directory(name, root), TFLITE_FILE)
    if not os.path.exists(path):
        raise ZooError(f"{name} has no TF Lite file ({path} is missing).")
    return path


def test_arrays(dataset, limit, data_dir=None):
    """(images, labels) of the first `limit` test examples of `dataset`."""
    test_ds, _ = data.load(dataset, "test", data_dir, limit)
    return data.arrays(test_ds)


def clean_accuracy(network, images, labels, batch_size=250):
    """Clean accuracy of a Keras `network` (inference mode) on numpy arrays."""
    return tflite_verify.accuracy(network.predict(images, batch_size=batch_size, verbose=0), labels)


def same_accuracy(measured, expected, num_examples):
    """Whether two accuracies on `num_examples` differ by at most `CHECK_TOLERANCE` examples."""
    return abs(measured - expected) * num_examples <= CHECK_TOLERANCE + 1e-6


def tflite_clean_accuracy(path, images, labels):
    """Clean accuracy of the TF Lite file at `path` under LiteRT (in a process of its own)."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "images.npy")
        np.save(inputs, images.astype(np.float32))
        measured = tflite_verify.probe(path, (inputs,), tmp)
        if "crashed" in measured:
            raise ZooError(f"{path}: {measured['crashed']}")
        logits = np.load(os.path.join(tmp, "images.logits.npy"))
    return tflite_verify.accuracy(logits, labels)


def evaluate(
    name,
    root=None,
    limit=CHECK_EXAMPLES,
    attack=None,
    verify=(),
    data_dir=None,
    eps=None,
    certify_n=None,
):
    """Measures network `name` again, beside its card.

    Args:
      name: a network of the zoo.
      root: the zoo (default `DEFAULT_ROOT`).
      limit: how many of the first test images to use.
      attack: None (clean accuracy only) or an attack for
        `evaluation.evaluate` (`attacks.make("autoattack", eps)`, a
        `PGDConfig`, ...).
      verify: verification methods (`verified.METHODS`).
      data_dir: where the dataset is (see `data.load`).
      eps: the L-inf radius to verify at (default: the card's).
      certify_n: (certified networks) certify the smoothed classifier with
        this many noise samples per image, at the card's sigma, n0, alpha
        and radius.

    Returns:
      A dict: name, num_examples, clean_acc, tflite_clean_acc, and with an
      attack robust_acc, attack, the robust accuracy after each attack of a
      cascade (stages) and the checks it failed (warnings, as in
      `evaluation.EvalResult`); with `verify`, verified_accuracy; with
      `certify_n`, certified_accuracy ({radius: accuracy}). When `limit` is
      the card's check size, card_clean_acc is the card's figure.
    """
    model_card = card(name, root)
    network = load(name, root)
    test_ds, _ = data.load(model_card.dataset, "test", data_dir, limit)
    images, labels = data.arrays(test_ds)
    measured = {
        "name": name,
        "num_examples": len(labels),
        "clean_acc": clean_accuracy(network, images, labels),
        "tflite_clean_acc": tflite_clean_accuracy(tflite_path(name, root), images, labels),
    }
    if len(labels) == model_card.check["num_examples"]:
        measured["card_clean_acc"] = model_card.check["clean_acc"]
    adversarial = None
    if attack is not None:
        result = evaluation.evaluate(
            network, data.make_pipeline(test_ds, 250, training=False), attack
        )
        measured["robust_acc"] = result.robust_acc
        measured["attack"] = result.attack
        if result.stages:
            measured["stages"] = [stage.to_json() for stage in result.stages]
        if result.warnings:
            measured["warnings"] = list(result.warnings)
        adversarial = result.adversarial
    if verify:
        eps = model_card.evaluation.get("eps") if eps is None else eps
        if eps is None:
            raise ZooError(f"{name}'s card has no L-inf eps to verify at.")
        accuracy, _ = verified.verified_accuracy(
            network, images, labels, eps, methods=tuple(verify), adversarial=adversarial
        )
        measured["verified_accuracy"] = accuracy
    if certify_n is not None:
        measured["certified_accuracy"] = _certify(model_card, network, test_ds, certify_n)
    return measured


def record(name, measured, command, root=None, date=None):
    """Writes an `evaluate` report with an attack into `name`'s card as `remeasured`.

    For cards whose study did not keep the robust accuracy after each attack:
    the published file attacked again gives them, beside the study's figures
    (which stay). The card's README is written again with a line for them.

    Args:
      name: a network of the zoo.
      measured: what `evaluate` returned for it, with an attack.
      command: the command that measured it.
      root: the zoo (default `DEFAULT_ROOT`).
      date: the day it was measured (default today, ISO format).

    Returns:
      The new `ModelCard`.

    Raises:
      ZooError: the report is another network's, has no attack, or its clean
        accuracy is not the card's on the same images (not the published file).
    """
    directory = _directory(name, root)
    model_card = card(name, root)
    if measured.get("name") != name:
        raise ZooError(f"The report is {measured.get('name')!r}'s, not {name!r}'s.")
    if "robust_acc" not in measured or "attack" not in measured:
        raise ZooError(f"The report of {name} has no attack to record (evaluate it with one).")
    count = measured["num_examples"]
    for figures in (model_card.check, model_card.evaluation):
        if figures["num_examples"] == count and not same_accuracy(
            measured["clean_acc"], figures["clean_acc"], count
        ):
            raise ZooError(
                f"{name}: clean accuracy {measured['clean_acc']:.4f} on the first {count} "
                f"test images, its card says {figures['clean_acc']:.4f}; not recording it."
            )
    remeasured = {
        "num_examples": count,
        "clean_acc": measured["clean_acc"],
        "robust_acc": measured["robust_acc"],
        "attack": measured["attack"],
        "stages": measured.get("stages", []),
        "warnings": measured.get("warnings", []),
        **({"verified_accuracy": v} if (v := measured.get("verified_accuracy")) else {}),
        "date": date or datetime.date.today().isoformat(),
        "command": command,
    }
    model_card = dataclasses.replace(model_card, remeasured=remeasured)
    _write_card(directory, model_card)
    logging.info("Recorded the new measurement in %s", os.path.join(directory, CARD_FILE))
    return model_card


def _write_card(directory, model_card):
    files.write_json(os.path.join(directory, CARD_FILE), model_card.to_json())
    with open(os.path.join(directory, "README.md"), "w") as f:
        f.write(card_markdown(model_card))


def _certify(model_card, network, test_ds, n):
    """{radius: certified accuracy} of the smoothed `network` at the card's settings."""
    figures = model_card.evaluation
    if figures["robust_kind"] != "certified":
        raise ZooError(f"{model_card.name} is not a smoothed (certified) network.")
    config = smoothing.SmoothingConfig(
        sigma=figures["sigma"],
        n0=figures.get("n0") or 100,
        n=n,
        alpha=figures.get("alpha") or 0.001,
    )
    examples = smoothing.certify_dataset(network, test_ds, model_card.num_classes, config)
    accuracy = smoothing.certified_accuracy(examples, (figures["radius"],))
    return {f"{radius:g}": value for radius, value in accuracy.items()}


def _deflated_copy(source, destination):
    """Copies a `.keras` zip with its members deflated (Keras stores them uncompressed).

    The members get a fixed date, so publishing the same network twice
    writes the same bytes.
    """
    deflated = zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED, compresslevel=9)
    with zipfile.ZipFile(source) as zin, deflated as zout:
        for info in zin.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(member, zin.read(info.filename), compresslevel=9)


def _training_chain(phase_dir):
    """The phases that made the network of `phase_dir`, first to last, from their configs."""
    chain, configs = [], []
    directory = phase_dir
    while directory is not None:
        path = os.path.join(directory, "config.json")
        if not os.path.exists(path):
            break
        config = files.read_json(path)
        configs.append(config)
        objective = config.get("objective") or {}
        step = {
            "phase": config.get("phase"),
            "epochs": config.get("epochs"),
            "learning_rate": config.get("learning_rate"),
            "optimizer": config.get("optimizer"),
            "objective": objective.get("name"),
            "keep_ratio": config.get("keep_ratio"),
        }
        if "start" in objective:  # where an adversarial objective's attack started
            step["start"] = objective["start"]
        chain.append(step)
        source = config.get("source_checkpoint")
        directory = os.path.dirname(_run_time_path(source, directory, config)) if source else None
    return tuple(reversed(chain)), configs[0]


def _run_time_path(path, phase_dir, config):
    """`path`, as a phase recorded it, where it is now.

    A phase records its `workdir` and its source as given when it ran: relative to
    the directory it ran from (the pipeline's default `runs/pipeline`), or absolute
    before the run was moved. `phase_dir`, where the phase is now, and the recorded
    workdir share their last components; the parts before those are where the run
    was and where it is, and a source under the first is looked up under the second.
    """
    recorded = config.get("workdir")
    if not recorded:
        return path
    here = os.path.abspath(phase_dir).split(os.sep)
    there = os.path.normpath(recorded).split(os.sep)
    shared = 0
    while shared < min(len(here), len(there)) and here[-1 - shared] == there[-1 - shared]:
        shared += 1
    was = os.sep.join(there[: len(there) - shared])  # "" for a run recorded relative
    now = os.sep.join(here[: len(here) - shared])
    path = os.path.normpath(path)
    if os.path.isabs(path) != os.path.isabs(recorded):
        return path
    if not was:
        moved = os.path.join(now, path)
    elif path.startswith(was + os.sep):
        moved = now + path[len(was) :]
    else:
        return path
    return moved if os.path.exists(os.path.dirname(moved)) else path


def _evaluation_figures(evaluated):
    """The study's figures of one network (`records.Evaluation`), for its card."""
    attack = evaluated.attack or {}
    figures = {
        "num_examples": evaluated.num_examples,
        "clean_acc": evaluated.clean_acc,
        "robust_acc": evaluated.robust_acc,
    }
    if evaluated.certified_accuracy is not None:
        figures.update(
            robust_kind="certified",
            radius=attack.get("radius"),
            sigma=attack.get("sigma"),
            n0=attack.get("n0"),
            n=attack.get("n"),
            alpha=attack.get("alpha"),
            certified_accuracy=evaluated.certified_accuracy,
        )
        return figures
    figures["eps"] = report.attack_eps(attack)
    if evaluated.verified_accuracy is not None:
        figures.update(
            robust_kind="verified",
            verified_accuracy=evaluated.verified_accuracy,
            verified_examples=evaluated.verified_examples,
            attack_acc=evaluated.attack_acc,
            attack=attack.get("name", "pgd"),
        )
    else:
        figures.update(robust_kind=attack.get("name", "pgd"), attack=attack.get("name", "pgd"))
    if evaluated.stages:
        figures["stages"] = evaluated.stages
    return figures


def publish(run_dir, variant, name, family, study, command, root=None, data_dir=None):
    """Adds network `variant` of a pipeline run to the zoo as `name` (replacing one of that name).

    Args:
      run_dir: a pipeline run's workdir (one seed of a study), with
        `<variant>/eval.json`, `<variant>/<variant>.keras`,
        `<variant>/tflite/row.json` and the variant's phase directories.
      variant: e.g. "hydra_0.01" or "hydra_channels_0.5".
      name: the zoo name.
      family: one of `FAMILIES`.
      study: where the study's results are (relative to the repository).
      command: the command that made the network.
      root: the zoo (default `DEFAULT_ROOT`).
      data_dir: where the dataset is (see `data.load`).

    Returns:
      The new `ModelCard`.

    Raises:
      ZooError: a missing file, or a published network whose clean accuracy
        differs from the study's on the same test images (not the network
        the study measured).
    """
    _check_name(name)
    if family not in FAMILIES:
        raise ZooError(f"Unknown family {family!r}; choose one of {', '.join(FAMILIES)}.")
    variant_dir = os.path.join(run_dir, variant)
    needed = {
        "evaluation": os.path.join(variant_dir, "eval.json"),
        "network": os.path.join(variant_dir, f"{variant}.keras"),
        "TF Lite report": os.path.join(variant_dir, "tflite", "row.json"),
    }
    for what, path in needed.items():
        if not os.path.exists(path):
            raise ZooError(f"Cannot publish {variant_dir}: its {what} ({path}) is missing.")
    evaluated = records.Evaluation.from_json(files.read_json(needed["evaluation"]))
    deployed = records.TFLiteRow.from_json(files.read_json(needed["TF Lite report"]))
    tflite_source = os.path.join(run_dir, deployed.path)
    last_phase = "finetune" if os.path.isdir(os.path.join(variant_dir, "finetune")) else "pretrain"
    training, config = _training_chain(os.path.join(variant_dir, last_phase))
    # The study's objective (a phase's may differ: verifiable finetuning runs at full eps).
    pipeline_config = os.path.join(run_dir, "pipeline_config.json")
    transfer_attack = None
    if os.path.exists(pipeline_config):
        run_config = files.read_json(pipeline_config)
        objective = run_config.get("objective", config["objective"])
        # The attack whose examples (found on the Keras network) the TF Lite check transferred.
        try:
            transfer_attack = pipeline.PipelineConfig.from_json(run_config).attack.to_json()
        except (KeyError, TypeError, ValueError) as error:
            raise ZooError(f"Cannot read the run's config {pipeline_config}: {error}") from error
    else:
        objective = config["objective"]
    root = _root(root)
    files.make_dir(root, "zoo root")
    staging = tempfile.mkdtemp(prefix=f".{name}.", dir=root)
    try:
        _deflated_copy(needed["network"], os.path.join(staging, KERAS_FILE))
        shutil.copyfile(tflite_source, os.path.join(staging, TFLITE_FILE))
        network = files.load_network(os.path.join(staging, KERAS_FILE))
        meta = data.info(config["dataset"])
        # The study's test images (certified studies use fewer than the check's)
        # and at least the check's.
        images, labels = test_arrays(
            config["dataset"], max(evaluated.num_examples, CHECK_EXAMPLES), data_dir
        )
        correct = np.argmax(network.predict(images, batch_size=250, verbose=0), axis=-1) == labels
        _check_same_network(correct[: evaluated.num_examples], evaluated, variant_dir)
        check_count = min(CHECK_EXAMPLES, len(labels))
        cost = costs.costs(network)
        model_card = ModelCard(
            name=name,
            family=family,
            dataset=config["dataset"],
            arch=config["arch"],
            input_shape=tuple(int(d) for d in network.input_shape[1:]),
            num_classes=meta.num_classes,
            objective=objective,
            method=variant.split("_")[0],
            granularity=config.get("granularity", "weight"),
            keep_ratio=config["keep_ratio"],
            sparsity=evaluated.sparsity,
            params=cost.params,
            nonzero_params=cost.nonzero_params,
            macs=cost.macs,
            seed=config["seed"],
            train_examples=config.get("train_limit"),
            training=training,
            evaluation=_evaluation_figures(evaluated),
            check={"num_examples": check_count, "clean_acc": float(np.mean(correct[:check_count]))},
            tflite={
                "mode": deployed.mode,
                "clean_acc": deployed.clean_acc,
                "robust_acc": deployed.robust_acc,
                "keras_clean_acc": deployed.keras_clean_acc,
                "keras_robust_acc": deployed.keras_robust_acc,
                "attack": transfer_attack,
                "num_examples": deployed.num_examples,
                "latency_ms": deployed.latency_ms,
            },
            files={
                KERAS_FILE: os.path.getsize(os.path.join(staging, KERAS_FILE)),
                TFLITE_FILE: os.path.getsize(os.path.join(staging, TFLITE_FILE)),
            },
            study=study,
            command=command,
        )
        _write_card(staging, model_card)
        os.chmod(staging, 0o755)
        destination = os.path.join(root, name)
        if os.path.exists(destination):
            shutil.rmtree(destination)
        os.replace(staging, destination)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    write_index(root)
    logging.info("Published %s to %s", name, os.path.join(root, name))
    return model_card


def _check_same_network(correct, evaluated, variant_dir):
    """Refuses a file whose clean accuracy is not the study's on the study's own test images.

    `correct`: whether the file classifies each of those images right.
    """
    measured = float(np.mean(correct))
    if not same_accuracy(measured, evaluated.clean_acc, len(correct)):
        raise ZooError(
            f"{variant_dir}: the network's clean accuracy on the first {len(correct)} test images "
            f"is {measured:.4f}, the study measured {evaluated.clean_acc:.4f}; not publishing a "
            "network that is not the one the study evaluated."
        )


def _verify_rank(method):
    return (_VERIFY_ORDER.index(method) if method in _VERIFY_ORDER else len(_VERIFY_ORDER), method)


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f}"


def _verified_text(accuracy, examples=None, num_examples=None):
    """Verified % by each method, strongest bound last; "(of N)" where a method
    was run on fewer than `num_examples` examples."""
    examples = examples or {}
    return ", ".join(
        f"{method} {_percent(accuracy[method])}%"
        + (
            f" (of {examples[method]})"
            if examples.get(method, num_examples) != num_examples
            else ""
        )
        for method in sorted(accuracy, key=_verify_rank)
    )


def _robust_text(figures):
    kind = figures["robust_kind"]
    if kind == "certified":
        return f"certified {_percent(figures['robust_acc'])}% at L2 radius {figures['radius']:g}"
    if kind == "verified":
        examples = figures.get("verified_examples") or {}
        verified = _verified_text(figures["verified_accuracy"], examples, figures["num_examples"])
        return (
            f"verified at L-inf eps {figures['eps']:g}: {verified}; "
            f"{figures['attack']} {_percent(figures['attack_acc'])}%"
        )
    return f"{kind} {_percent(figures['robust_acc'])}% at L-inf eps {figures['eps']:g}"


def _stages_text(figures):
    """Robust % after each attack of the card's cascade, and AutoAttack's Square check."""
    stages = figures.get("stages")
    if not stages:
        return None
    text = " -> ".join(
        f"{report.attack_name({'name': s['attack']})} {_percent(s['robust_acc'])}%" for s in stages
    )
    warning = cascade.masking_warning(stages)
    if warning:
        return f"{text}; **check failed**: {warning}"
    return f"{text}; AutoAttack's Square check passed"


def _remeasured_text(figures):
    """The published file attacked again (`record`), with each attack's figure."""
    text = (
        f"{figures['date']}, the published file on the first {figures['num_examples']} test "
        f"images: clean {_percent(figures['clean_acc'])}%, {_percent(figures['robust_acc'])}% "
        f"under {report.describe_attack(figures['attack'])}"
    )
    if figures.get("verified_accuracy"):
        text += "; verified " + _verified_text(figures["verified_accuracy"])
    stages = _stages_text(figures)
    return f"{text}; after each attack: {stages}" if stages else text


def _pruned_text(model_card):
    unit = "channels" if model_card.granularity == "channel" else "weights"
    return f"{100 * (1 - model_card.keep_ratio):g}% of {unit} pruned"


def _tflite_text(measured):
    """The TF Lite file's accuracy (and the Keras network's on the same examples, if recorded)."""

    def figure(key):
        keras_figure = measured.get(f"keras_{key}")
        beside = "" if keras_figure is None else f" (Keras network {_percent(keras_figure)}%)"
        return f"{_percent(measured[key])}%{beside}"

    attack = measured.get("attack")
    examples = (
        "transferred adversarial examples"
        if attack is None  # Cards published before the attack was recorded.
        else f"adversarial examples found on the Keras network by {report.describe_attack(attack)}"
    )
    return (
        f"clean {figure('clean_acc')}; {figure('robust_acc')} on {examples}; "
        f"first {measured['num_examples']} test images"
    )


def card_markdown(model_card):
    """The model card as Markdown."""
    c = model_card
    figures = c.evaluation
    phases = "; ".join(
        f"{step['phase']} {step['epochs']} epochs (lr {step['learning_rate']:g}, "
        f"{step['optimizer']}, {step['objective']}"
        + (f", {step['start']} start)" if step.get("start") else ")")
        for step in c.training
    )
    objective = ", ".join(f"{key} {value}" for key, value in sorted(c.objective.items()))
    train = "all" if c.train_examples is None else str(c.train_examples)
    lines = [
        f"# {c.name}",
        "",
        (
            f"{c.method.upper()} `{c.arch}` on {c.dataset}, {_pruned_text(c)} "
            + (
                f"(the channels are removed: {c.params:,} parameters left), "
                if c.granularity == "channel"
                else f"(sparsity of the kernels {100 * c.sparsity:.1f}%), "
            )
            + f"{c.family} family."
        ),
        "",
        "| | |",
        "|---|---|",
        f"| data | {c.dataset}, {train} training images, input {c.input_shape} in [0, 1] |",
        f"| objective | {objective} |",
        f"| training | {phases} |",
        f"| seed | {c.seed} |",
        (
            f"| clean accuracy | {_percent(figures['clean_acc'])}% "
            f"(first {figures['num_examples']} test images) |"
        ),
        f"| robustness | {_robust_text(figures)} |",
        *([f"| after each attack | {stages} |"] if (stages := _stages_text(figures)) else []),
        *([f"| measured again | {_remeasured_text(c.remeasured)} |"] if c.remeasured else []),
        f"| TF Lite ({c.tflite['mode']}, LiteRT) | {_tflite_text(c.tflite)} |",
        f"| parameters | {c.params:,} ({c.nonzero_params:,} nonzero), {c.macs:,} multiply-adds |",
        (
            f"| files | {KERAS_FILE} {c.files[KERAS_FILE]:,} bytes, "
            f"{TFLITE_FILE} {c.files[TFLITE_FILE]:,} bytes |"
        ),
        (
            f"| check | clean {_percent(c.check['clean_acc'])}% on the first "
            f"{c.check['num_examples']} test images, measured on the published file |"
        ),
        f"| study | [{c.study}](../../{c.study}) |",
        "",
        "Made by:",
        "",
        "```bash",
        c.command,
        "```",
        "",
        *(
            ["Measured again by:", "", "```bash", c.remeasured["command"], "```", ""]
            if c.remeasured
            else []
        ),
        "Use it:",
        "",
        "```python",
        "from hydra_tf import zoo",
        f'network = zoo.load("{c.name}")  # or zoo.tflite_path("{c.name}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def write_index(root=None):
    """Writes `<root>/README.md`: one row per network."""
    root = _root(root)
    cards = list_models(root)
    lines = [
        "# Published networks",
        "",
        (
            "HYDRA networks of the studies in `results/`, as plain Keras and TF Lite files. "
            "List, load and evaluate them with `hydra_tf.zoo` or `python -m binaries.zoo`; "
            "each directory's README is its model card. Clean and robust accuracy are the "
            "studies' figures, in %."
        ),
        "",
        "| name | family | arch | pruned | clean | robustness | .keras | .tflite |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        lines.append(
            f"| [{c.name}]({c.name}/README.md) | {c.family} | {c.arch} | {_pruned_text(c)} | "
            f"{_percent(c.evaluation['clean_acc'])} | {_robust_text(c.evaluation)} | "
            f"{c.files[KERAS_FILE] / 1024:.0f} KB | {c.files[TFLITE_FILE] / 1024:.0f} KB |"
        )
    lines.append("")
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write("\n".join(lines))
