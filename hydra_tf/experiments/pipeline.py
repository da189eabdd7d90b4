"""The main job: pretrain -> HYDRA prune -> finetune, and the LWM baseline.

For each keep ratio k the pipeline derives two pruned networks from one robust
dense network:

- HYDRA: prune (scores trained on the robust objective, from the scaled weight
  magnitude) then finetune the surviving weights;
- LWM: finetune straight from the magnitude mask (least weight magnitude).

Every network is evaluated (clean + PGD) and exported (plain `.keras` +
SavedModel). Results go to `<workdir>/results.json` and `<workdir>/results.md`.
Each stage lives in its own sub-directory and is skipped when already done, so
a killed pipeline resumes where it stopped.
"""

import dataclasses
import functools
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from hydra_tf import data
from hydra_tf import distribute
from hydra_tf import evaluation
from hydra_tf import export
from hydra_tf import files
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.evaluation import smoothing
from hydra_tf.evaluation import verified as verified_lib
from hydra_tf.experiments import analysis
from hydra_tf.experiments import records
from hydra_tf.experiments import report
from hydra_tf.export import costs
from hydra_tf.export import tflite
from hydra_tf.export import tflite_verify
from hydra_tf.models import architectures
from hydra_tf.models import masks
from hydra_tf.objectives import attacks


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of a pipeline run (presets in `PRESETS`)."""

    workdir: str
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    arch: str = "cnn_small"
    objective: object = dataclasses.field(
        default_factory=lambda: objectives.TradesConfig(eps=0.1, steps=10, step_size=0.025)
    )
    keep_ratios: tuple = (0.1, 0.05, 0.01)
    # "weight" (unstructured) or "channel" (structured: keep_ratios of each
    # layer's channels; LWM becomes L1-norm filter pruning).
    granularity: str = "weight"
    train_limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 128
    pretrain_epochs: int = 10
    prune_epochs: int = 5
    finetune_epochs: int = 5
    # LWM's finetuning gets HYDRA's whole training budget after pretraining
    # (prune_epochs + finetune_epochs), in stages named lwm_equal_<ratio>.
    lwm_equal_budget: bool = False
    # TRADES / PGD-AT: where the finetune phase's attack starts, one of
    # `objectives.adversarial.STARTS`; None: the objective's own start, as in
    # pretrain and prune. Left out ("default"), it is the vertex for TRADES and
    # PGD-AT (`adversarial.FINETUNE_START`). A config holds None whenever the finetune
    # starts where the objective does, so a run written before the default
    # changed (null: the objective's start) reads back as what it ran.
    # Written as finetune_trades_start before PGD-AT took it (`from_json`).
    finetune_attack_start: str | None = "default"
    optimizer: str = "sgd"
    pretrain_lr: float = 0.1
    prune_lr: float = 0.1
    finetune_lr: float = 0.01
    weight_decay: float = 1e-4
    weight_decay_mode: str = "coupled"
    prune_bn: str = "train"
    # The evaluation attack, a name of `attacks.REGISTRY`: standard AutoAttack
    # by default; "pgd" (quick) uses eval_steps and eval_restarts.
    eval_attack: str = "autoattack"
    eval_steps: int = evaluation.DEFAULT_STEPS
    eval_restarts: int = evaluation.DEFAULT_RESTARTS
    eval_eps: float | None = None
    # Also PGD (eval_steps, eval_restarts) beside a cascade such as AutoAttack:
    # each row's pgd_acc.
    also_pgd: bool = False
    # Smoothing objectives are evaluated by certification (Cohen et al.):
    # the table's robust accuracy is the certified accuracy at this L2 radius.
    certify_radius: float = 0.5
    certify_n0: int = 100
    certify_n: int = 10_000
    certify_alpha: float = 0.001
    certify_limit: int | None = 500
    # Verifiable objectives (ibp, crown_ibp) are also evaluated by verified
    # accuracy: the table reports the first method's (IBP, as the reference
    # does), the rows keep every method's. Full CROWN (one backward pass per
    # neuron) runs on the first `crown_limit` test examples only.
    verify_methods: tuple = ("ibp", "crown_ibp", "crown")
    crown_limit: int | None = 100
    # TF Lite export of every network: a mode of `tflite.MODE_NAMES`, "auto"
    # (the smallest file that runs on XNNPACK and keeps accuracy) or "none".
    tflite_mode: str = "auto"
    # BatchNorm statistics over all replicas' examples (tf.distribute).
    sync_batch_norm: bool = False
    seed: int = 0

    def __post_init__(self):
        if not self.keep_ratios:
            raise ValueError("keep_ratios must name at least one ratio.")
        for ratio in self.keep_ratios:
            masks.validate_keep_ratio(ratio)
        architectures.validate_granularity(self.granularity)
        data.info(self.dataset)
        if self.eval_attack not in attacks.REGISTRY:
            raise ValueError(
                f"Unknown eval_attack {self.eval_attack!r}. "
                f"Supported: {', '.join(attacks.ATTACKS)}."
            )
        unknown = [m for m in self.verify_methods if m not in verified_lib.METHODS]
        if unknown or not self.verify_methods:
            raise ValueError(
                f"verify_methods must name some of {verified_lib.METHODS}. "
                f"Received: {self.verify_methods}"
            )
        finetune = self.finetune_attack_start
        if finetune == "default":
            finetune = getattr(
                objectives.adversarial.finetune_objective(self.objective), "start", None
            )
        if finetune is not None:
            if not isinstance(self.objective, objectives.PGDATConfig):
                raise ValueError(
                    "finetune_attack_start needs the trades or pgd_at objective, not "
                    f"{self.objective.name!r}."
                )
            if finetune not in objectives.adversarial.STARTS:
                raise ValueError(
                    f"Unknown finetune_attack_start {finetune!r}. "
                    f"Supported: {', '.join(objectives.adversarial.STARTS)}."
                )
            if finetune == self.objective.start:
                finetune = None
        object.__setattr__(self, "finetune_attack_start", finetune)
        if self.tflite_mode not in tflite.CHOICES:
            raise ValueError(
                f"Unknown tflite_mode {self.tflite_mode!r}. Supported: {tflite.CHOICES}."
            )

    @property
    def attack(self):
        if self.eval_attack == "pgd" or self.certifies:
            # Certified objectives use PGD only for the TF Lite transfer check.
            return self.pgd_attack
        return attacks.make(self.eval_attack, self._attack_eps)

    @property
    def pgd_attack(self):
        """PGD with `eval_steps` and `eval_restarts`: the quick attack, and `also_pgd`'s."""
        return attacks.PGDConfig(
            eps=self._attack_eps, steps=self.eval_steps, restarts=self.eval_restarts
        )

    @property
    def _attack_eps(self):
        eps = getattr(self.objective, "eps", None) if self.eval_eps is None else self.eval_eps
        if eps is None:
            raise ValueError(
                f"Objective {self.objective.name!r} has no attack radius: set eval_eps for the "
                "attack (the TF Lite robust-accuracy check uses it)."
            )
        return eps

    def finetune_epochs_of(self, method):
        """Finetune epochs of "hydra" or "lwm" (LWM's equal budget: prune + finetune)."""
        if method == "lwm" and self.lwm_equal_budget:
            return self.prune_epochs + self.finetune_epochs
        return self.finetune_epochs

    @property
    def certifies(self):
        """Whether models are certified (smoothing) rather than attacked."""
        return objectives.certified(self.objective)

    @property
    def verifies(self):
        """Whether models are evaluated by verified accuracy (ibp, crown_ibp objectives)."""
        return objectives.verified(self.objective)

    @property
    def metric(self):
        """What a row's robust_acc holds: "certified" (smoothing), "verified" or "robust"."""
        if self.certifies:
            return "certified"
        return "verified" if self.verifies else "robust"

    @property
    def smoothing(self):
        return smoothing.SmoothingConfig(
            sigma=self.objective.sigma,
            n0=self.certify_n0,
            n=self.certify_n,
            alpha=self.certify_alpha,
            seed=self.seed,
        )

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values):
        """The config a run wrote (`pipeline_config.json`; a study's `config.pipeline`).

        Settings added since the file was written take their defaults; settings
        since removed are ignored.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values = dict(values)
        if "finetune_trades_start" in values:  # its name until PGD-AT took it
            values.setdefault("finetune_attack_start", values.pop("finetune_trades_start"))
        # Written before the setting existed: the finetune started where the
        # objective does (not today's default).
        values.setdefault("finetune_attack_start", None)
        values = {key: value for key, value in values.items() if key in fields}
        values["objective"] = objectives.from_json(values["objective"])
        for key in ("keep_ratios", "verify_methods"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


# Fields every phase run of the pipeline takes from the pipeline's config.
_SHARED_FIELDS = (
    "arch",
    "dataset",
    "data_dir",
    "train_limit",
    "test_limit",
    "objective",
    "batch_size",
    "optimizer",
    "weight_decay",
    "weight_decay_mode",
    "prune_bn",
    "granularity",
    "sync_batch_norm",
    "seed",
)


def phase_objective(objective, phase, finetune_attack_start=None):
    """The objective config a phase of the pipeline trains with.

    An eps ramp (verifiable objectives) belongs to pretraining: prune and
    finetune start from a network trained at the full radius and train at it
    from their first step, as the reference does. `finetune_attack_start`
    (TRADES, PGD-AT) replaces the attack's start in the finetune phase.
    """
    if phase != "pretrain" and hasattr(objective, "at_full_eps"):
        return objective.at_full_eps()
    if phase == "finetune" and finetune_attack_start is not None:
        return dataclasses.replace(objective, start=finetune_attack_start)
    return objective


def stage_name(config, method, keep_ratio):
    """The directory of one pruned network of the pipeline: hydra_0.1, lwm_channels_0.5, ...

    Structured runs have their own names, so that both granularities can
    share one workdir (and its dense pretraining); so have equal-budget LWM
    runs (lwm_equal_0.1).
    """
    unit = "" if config.granularity == "weight" else f"{config.granularity}s_"
    if method == "lwm" and config.lwm_equal_budget:
        method = "lwm_equal"
    return f"{method}_{unit}{keep_ratio:g}"


def results_dir(config):
    """Where a run writes results.json, results.md and plots/.

    The workdir, or for a structured run its `channels/` directory, so that one
    workdir can hold an unstructured and a structured run (and share their
    dense network).
    """
    if config.granularity == "weight":
        return config.workdir
    return files.make_dir(os.path.join(config.workdir, f"{config.granularity}s"))


def _train_config(config, phase, workdir, keep_ratio=1.0, source=None, epochs=1, lr=0.1):
    shared = {name: getattr(config, name) for name in _SHARED_FIELDS}
    shared["objective"] = phase_objective(config.objective, phase, config.finetune_attack_start)
    if phase == "pretrain":
        # A dense network either way: the pretraining run serves both granularities.
        shared["granularity"] = "weight"
    return training.TrainConfig(
        workdir=workdir,
        phase=phase,
        keep_ratio=keep_ratio,
        source_checkpoint=source,
        epochs=epochs,
        learning_rate=lr,
        **shared,
    )


def _finetune_config(config, finetune_dir, method, keep_ratio, source):
    """The finetune phase of network `method` at `keep_ratio`, from checkpoint `source`."""
    return _train_config(
        config,
        "finetune",
        finetune_dir,
        keep_ratio,
        source,
        config.finetune_epochs_of(method),
        config.finetune_lr,
    )


def _runs_pgd_beside(config):
    """Whether each network is also attacked by PGD (`also_pgd`, beside another attack)."""
    return (
        config.also_pgd
        and not config.certifies
        and not isinstance(config.attack, attacks.PGDConfig)
    )


def networks(config):
    """(stage name, method, keep ratio, directory of its last phase) of each network, in order.

    The pipeline's order: the dense network, then per keep ratio HYDRA and LWM.
    """
    yield "dense", "dense", 1.0, os.path.join(config.workdir, "dense", "pretrain")
    for ratio in config.keep_ratios:
        for method in ("hydra", "lwm"):
            name = stage_name(config, method, ratio)
            yield name, method, ratio, os.path.join(config.workdir, name, "finetune")


def settled(config, name, finetune, strategy=None):
    """Whether network `name` is done without its weights: a snapshot
    (`snapshot`) keeps an evaluated network's results and not its phases'
    checkpoints. Its finetune ran with `finetune` (a `training.TrainConfig`;
    the run's config.json must say so), its model.keras is gone, and its
    evaluation and TF Lite row are cached under today's settings. Only in a
    single process: workers of a multi-worker run must train together.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    if os.path.exists(os.path.join(finetune.workdir, training.MODEL_FILE)):
        return False  # trained: the usual path (skips training, reads the caches)
    config_path = os.path.join(finetune.workdir, training.CONFIG_FILE)
    if not os.path.exists(config_path):
        return False
    if not training.same_config(files.read_json(config_path), finetune):
        return False  # another run's: train() says so
    if cached_evaluation(config, name) is None:
        return False
    return config.tflite_mode == "none" or _tflite_row_cached(
        config, os.path.join(config.workdir, name)
    )


def cached_evaluation(config, name):
    """The `records.Evaluation` of network `name` cached under today's settings, else None."""
    cached = _read_cache(os.path.join(config.workdir, name, "eval.json"), evaluation_key(config))
    return None if cached is None else records.Evaluation.from_json(cached)


def evaluation_key(config):
    """What a row's numbers depend on besides the network: the cache key of `eval.json`.

    The attack (or the certification settings) and the test examples. A cached
    evaluation is reused only under the same key; a rerun with, for example,
    another `eval_steps` evaluates again.
    """
    key = {"dataset": config.dataset, "test_limit": config.test_limit}
    if config.certifies:
        key["certify"] = {
            **config.smoothing.to_json(),
            "radius": config.certify_radius,
            "limit": config.certify_limit,
        }
    else:
        key["attack"] = config.attack.to_json()
        if _runs_pgd_beside(config):
            key["pgd"] = config.pgd_attack.to_json()
    if config.verifies:
        key["verify"] = {
            "methods": list(config.verify_methods),
            "eps": config.attack.eps,
            "crown_limit": config.crown_limit,
        }
    return json.loads(json.dumps(key))


def _read_cache(path, key):
    """The cached dict at `path` if it was written under `key`, else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        cached = json.load(f)
    if cached.get("eval_key") != key:
        logging.info("%s was evaluated with other settings; evaluating again.", path)
        return None
    return cached


def evaluate_and_export(config, model_path, out_dir, name):
    """Exports a trained network and evaluates the export; cached in `eval.json`.

    The exported plain model (masks folded into its kernels) is what gets
    evaluated: it is the model users deploy, it computes the same function as
    the score network (tests/export_test.py), and it needs no mask work. The
    cache is keyed by `evaluation_key(config)`.

    Returns:
      (a `records.Evaluation`, its `records.TFLiteRow` or None if
      `config.tflite_mode` is "none").
    """
    cache = os.path.join(out_dir, "eval.json")
    key = evaluation_key(config)
    cached = _read_cache(cache, key)
    # The examples serve only the TF Lite check: a restored snapshot
    # (`snapshot`) keeps its row and not the examples.
    if (
        cached is not None
        and _needs_examples(config)
        and not os.path.exists(os.path.join(out_dir, ADVERSARIAL_FILE))
        and not _tflite_row_cached(config, out_dir)
    ):
        logging.info("%s has no %s; evaluating again.", out_dir, ADVERSARIAL_FILE)
        cached = None
    if cached is None:
        evaluated = dataclasses.replace(_evaluate(config, model_path, out_dir, name), eval_key=key)
        files.write_json(cache, evaluated.to_json())
        # Finished: eval.json and the examples keep what the attack found.
        state = os.path.join(out_dir, ATTACK_STATE_FILE)
        if os.path.exists(state):
            os.remove(state)
    else:
        evaluated = records.Evaluation.from_json(cached)
    deployed = None
    if config.tflite_mode != "none":
        keras_path = os.path.join(config.workdir, evaluated.keras_path)
        deployed = _deploy(config, keras_path, out_dir, name)
    return evaluated, deployed


# The evaluation's adversarial examples (AutoAttack and the other cascade
# attacks), which the TF Lite verification transfers to each file.
ADVERSARIAL_FILE = "adversarial.npy"
# The resumable state of a cascade evaluation.
ATTACK_STATE_FILE = "attack_state.npz"


def _needs_examples(config):
    """Whether the TF Lite check transfers the evaluation's examples (not PGD's own)."""
    return config.tflite_mode != "none" and not isinstance(config.attack, attacks.PGDConfig)


def _tflite_row_path(out_dir):
    return os.path.join(out_dir, "tflite", "row.json")


def _tflite_key(config):
    """The cache key of a network's TF Lite row: its evaluation's and the mode."""
    return {**evaluation_key(config), "tflite_mode": config.tflite_mode}


def _tflite_row_cached(config, out_dir):
    """Whether a network's TF Lite row is cached under today's settings."""
    return _read_cache(_tflite_row_path(out_dir), _tflite_key(config)) is not None


def _deploy(config, keras_path, out_dir, name):
    """TF Lite export and verification of one network: its `records.TFLiteRow`.

    Cached in `<out_dir>/tflite/row.json` for the configured mode and
    evaluation settings (its robust accuracy uses the table's attack).
    """
    directory = os.path.join(out_dir, "tflite")
    cache = _tflite_row_path(out_dir)
    key = _tflite_key(config)
    cached = _read_cache(cache, key)
    if cached is not None:
        return records.TFLiteRow.from_json(cached)
    plain = keras.saving.load_model(keras_path, safe_mode=True)
    images, labels, representative = tflite_verify.verification_data(
        config.dataset, config.data_dir, config.test_limit, config.train_limit, config.seed
    )
    adversarial = None
    if _needs_examples(config):
        adversarial = np.load(os.path.join(out_dir, ADVERSARIAL_FILE))[: len(images)]
    result = tflite_verify.deploy(
        plain,
        directory,
        config.tflite_mode,
        images,
        labels,
        config.attack,
        representative,
        adversarial=adversarial,
    )
    chosen = result["modes"][result["mode"]]
    fp32_bytes = None
    if name == "dense":
        fp32 = result["modes"].get("float32")
        fp32_bytes = fp32["bytes"] if fp32 else len(tflite.convert(plain, tflite.Mode("float32")))
    deployed = records.TFLiteRow(
        requested=config.tflite_mode,
        path=os.path.relpath(result["path"], config.workdir),
        mode=result["mode"],
        bytes=chosen["bytes"],
        gzip_bytes=chosen["gzip_bytes"],
        clean_acc=chosen["clean_acc"],
        robust_acc=chosen["robust_acc"],
        keras_clean_acc=result["keras_clean_acc"],
        keras_robust_acc=result["keras_robust_acc"],
        latency_ms=chosen["latency_ms"],
        load_mb=chosen["load_mb"],
        xnnpack=chosen["xnnpack"],
        num_examples=result["num_examples"],
        modes={
            mode: records.TFLiteModeRow.from_json(measured)
            for mode, measured in result["modes"].items()
        },
        fp32_bytes=fp32_bytes,
    )
    files.write_json(cache, {**deployed.to_json(), "eval_key": key})
    return deployed


def _evaluate(config, model_path, out_dir, name):
    network = files.load_network(model_path)
    keras_path, saved_model_path, plain = export.export(network, out_dir, name)
    test_ds, _ = data.load(config.dataset, "test", config.data_dir, config.test_limit)
    start = time.time()
    resumed = 0.0  # what the killed runs this evaluation resumes spent
    if config.certifies:
        measured = _certify(config, plain, test_ds)
    else:
        state = os.path.join(out_dir, ATTACK_STATE_FILE)
        result = evaluation.evaluate(
            plain,
            data.make_pipeline(test_ds, config.batch_size, training=False),
            config.attack,
            state_path=state,
        )
        # A cascade's seconds include the runs it resumed.
        resumed = max(0.0, result.seconds - (time.time() - start))
        measured = {
            "clean_acc": result.clean_acc,
            "robust_acc": result.robust_acc,
            "num_examples": result.num_examples,
            "attack": result.attack,
        }
        if result.stages:
            measured["stages"] = [stage.to_json() for stage in result.stages]
        if result.adversarial is not None:
            np.save(os.path.join(out_dir, ADVERSARIAL_FILE), result.adversarial)
        if _runs_pgd_beside(config):
            measured["pgd_acc"] = evaluation.evaluate(
                plain,
                data.make_pipeline(test_ds, config.batch_size, training=False),
                config.pgd_attack,
            ).robust_acc
        if config.verifies:
            measured.update(_verify(config, plain, test_ds, result))
    cost = costs.costs(plain)
    evaluated = records.Evaluation(
        **measured,
        params=cost.params,
        nonzero_params=cost.nonzero_params,
        macs=cost.macs,
        sparsity=masks.sparsity(export.kernels(plain)),
        layer_sparsity=export.layer_sparsity(plain),
        keras_path=os.path.relpath(keras_path, config.workdir),
        saved_model_path=os.path.relpath(saved_model_path, config.workdir),
        eval_seconds=time.time() - start + resumed,
    )
    attack = report.attack_name(evaluated.attack)
    if config.certifies:
        measured_text = f"certified {evaluated.robust_acc:.4f}"
    elif config.verifies:
        method = report.VERIFY_NAMES[config.verify_methods[0]]
        measured_text = (
            f"{method}-verified {evaluated.robust_acc:.4f}, {attack} robust "
            f"{evaluated.attack_acc:.4f}"
        )
    else:
        measured_text = f"{attack} robust {evaluated.robust_acc:.4f}"
    logging.info(
        "%s: clean %.4f, %s, sparsity %.4f",
        name,
        evaluated.clean_acc,
        measured_text,
        evaluated.sparsity,
    )
    return evaluated


UnsoundVerificationError = verified_lib.UnsoundVerificationError


def _verify(config, network, test_ds, attacked):
    """Verified accuracy of `network`: the `records.Evaluation` fields it measures.

    The table's robust accuracy becomes the verified accuracy of the first
    method; the attack's stays in `attack_acc`. With the attack's examples
    (AutoAttack), every verified point is checked against them: one that the
    attack broke means an unsound bound, and stops the pipeline.
    """
    images, labels = data.arrays(test_ds)
    eps = config.attack.eps
    accuracy, examples = verified_lib.verified_accuracy(
        network,
        images,
        labels,
        eps,
        methods=config.verify_methods,
        crown_limit=config.crown_limit,
        adversarial=attacked.adversarial,
    )
    logging.info(
        "verified accuracy at eps %g: %s",
        eps,
        ", ".join(f"{m} {100 * a:.1f}% of {examples[m]}" for m, a in accuracy.items()),
    )
    return {
        "robust_acc": accuracy[config.verify_methods[0]],
        "attack_acc": attacked.robust_acc,
        "verified_accuracy": accuracy,
        "verified_examples": examples,
    }


def _certify(config, network, test_ds):
    """Certified accuracy of the smoothed `network`: the `records.Evaluation` fields it measures."""
    meta = data.info(config.dataset)
    certified_examples = smoothing.certify_dataset(
        network, test_ds, meta.num_classes, config.smoothing, limit=config.certify_limit
    )
    radii = sorted(set(smoothing.REPORT_RADII) | {config.certify_radius})
    certified = smoothing.certified_accuracy(certified_examples, radii)
    # Clean accuracy of the base network on the same examples.
    images = np.stack([x for x, _ in test_ds.take(len(certified_examples)).as_numpy_iterator()])
    labels = np.array([r["label"] for r in certified_examples])
    predicted = np.argmax(network.predict(images, verbose=0), axis=-1)
    return {
        "clean_acc": float(np.mean(predicted == labels)),
        # The table's robust accuracy is the certified accuracy at the pipeline's radius.
        "robust_acc": certified[config.certify_radius],
        "certified_accuracy": {f"{r:g}": acc for r, acc in certified.items()},
        "num_examples": len(certified_examples),
        "attack": {
            "name": "certify_l2",
            "radius": config.certify_radius,
            **config.smoothing.to_json(),
        },
        "seconds_per_example": float(np.mean([r["seconds"] for r in certified_examples])),
    }


def run(config, strategy=None, jit_compile=False, train_only=False):
    """Runs (or resumes) the whole pipeline; returns its `records.PipelineResults`.

    Training runs under `strategy` (default: the current one). Under
    multi-worker training only the chief evaluates, exports and writes the
    results (on one device); the other workers train and return no rows.
    With `train_only` every network is trained and none evaluated (no rows,
    no results files): the same call without it later evaluates them.
    """
    start = time.time()
    chief = distribute.is_chief(strategy)
    files.make_dir(config.workdir)
    if chief:
        files.write_json(os.path.join(config.workdir, "pipeline_config.json"), config.to_json())
    stage = lambda *parts: os.path.join(config.workdir, *parts)
    train = lambda train_config: training.train(
        train_config, strategy=strategy, jit_compile=jit_compile
    )

    def evaluated(model_path, name, method, keep_ratio):
        if not chief or train_only:
            return None
        measured, deployed = evaluate_and_export(config, model_path, stage(name), name)
        return records.Row.of(measured, method, keep_ratio, deployed)

    dense = train(
        _train_config(
            config,
            "pretrain",
            stage("dense", "pretrain"),
            epochs=config.pretrain_epochs,
            lr=config.pretrain_lr,
        )
    )
    rows = [evaluated(dense.model_path, "dense", "dense", 1.0)]
    for name, method, ratio, finetune_dir in list(networks(config))[1:]:
        source = dense.model_path  # LWM's magnitude mask comes from the dense network
        prune = None
        if method == "hydra":
            prune = _train_config(
                config,
                "prune",
                stage(name, "prune"),
                ratio,
                dense.model_path,
                config.prune_epochs,
                config.prune_lr,
            )
            source = os.path.join(prune.workdir, training.MODEL_FILE)

        finetune = functools.partial(_finetune_config, config, finetune_dir, method, ratio)
        if settled(config, name, finetune(source), strategy):
            rows.append(evaluated(None, name, method, ratio))
            continue
        if prune is not None:
            source = train(prune).model_path  # a worker's own copy under multi-worker
        tuned = train(finetune(source))
        rows.append(evaluated(tuned.model_path, name, method, ratio))
    if train_only:
        logging.info("Pipeline: every network is trained; evaluate with the same command.")
        return records.PipelineResults(config=config.to_json(), rows=())
    if not chief:
        logging.info("Worker finished training; the chief writes the results.")
        return records.PipelineResults(config=config.to_json(), rows=())
    report.check_comparable(rows)
    smallest = min(config.keep_ratios)
    hydra_model = stage(stage_name(config, "hydra", smallest), "prune", training.MODEL_FILE)
    kept = analysis.kept_weights(dense.model_path, hydra_model, smallest)
    out = results_dir(config)
    figures = analysis.figures(out, rows, kept, smallest, metric=config.metric)
    results = records.PipelineResults(
        config=config.to_json(),
        rows=tuple(rows),
        kept_overlap=kept["overlap"],
        figures=figures,
        seconds=time.time() - start,
    )
    files.write_json(os.path.join(out, "results.json"), results.to_json())
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(report.results_markdown(results))
    logging.info("Pipeline finished in %.1fs; results in %s", results.seconds, out)
    return results
