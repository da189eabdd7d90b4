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
import json
import os
import time

import keras
import numpy as np
from absl import logging

from hydra_tf import data
from hydra_tf import distribute
from hydra_tf import evaluation
from hydra_tf import export
from hydra_tf import files
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.evaluation import smoothing
from hydra_tf.experiments import plots
from hydra_tf.experiments import report
from hydra_tf.export import tflite
from hydra_tf.models import layers as score_layers
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
    train_limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 128
    pretrain_epochs: int = 10
    prune_epochs: int = 5
    finetune_epochs: int = 5
    optimizer: str = "sgd"
    pretrain_lr: float = 0.1
    prune_lr: float = 0.1
    finetune_lr: float = 0.01
    weight_decay: float = 1e-4
    weight_decay_mode: str = "coupled"
    prune_bn: str = "train"
    eval_steps: int = evaluation.DEFAULT_STEPS
    eval_restarts: int = evaluation.DEFAULT_RESTARTS
    eval_eps: float | None = None
    # Smoothing objectives are evaluated by certification (Cohen et al.):
    # the table's robust accuracy is the certified accuracy at this L2 radius.
    certify_radius: float = 0.5
    certify_n0: int = 100
    certify_n: int = 10_000
    certify_alpha: float = 0.001
    certify_limit: int | None = 500
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
        data.info(self.dataset)
        if self.tflite_mode not in tflite.CHOICES:
            raise ValueError(
                f"Unknown tflite_mode {self.tflite_mode!r}. Supported: {tflite.CHOICES}."
            )

    @property
    def attack(self):
        eps = getattr(self.objective, "eps", None) if self.eval_eps is None else self.eval_eps
        if eps is None:
            raise ValueError(
                f"Objective {self.objective.name!r} has no attack radius: set eval_eps for the "
                "attack (the TF Lite robust-accuracy check uses it)."
            )
        return attacks.PGDConfig(eps=eps, steps=self.eval_steps, restarts=self.eval_restarts)

    @property
    def certifies(self):
        """Whether models are certified (smoothing) rather than attacked."""
        return objectives.certified(self.objective)

    @property
    def metric(self):
        """What a row's robust_acc holds: "certified" (smoothing) or "robust" (PGD)."""
        return "certified" if self.certifies else "robust"

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


# Sizes for the three presets; the dataset, arch and eps come from the flags.
PRESETS = {
    # Seconds: for tests and a first look.
    "tiny": {
        "train_limit": 512,
        "test_limit": 128,
        "batch_size": 64,
        "pretrain_epochs": 1,
        "prune_epochs": 1,
        "finetune_epochs": 1,
        "eval_steps": 10,
        "eval_restarts": 1,
        "certify_n": 200,
        "certify_limit": 32,
    },
    # The default: under 15 minutes on a 2-core CPU.
    "small": {
        "train_limit": 10000,
        "test_limit": 500,
        "batch_size": 128,
        "pretrain_epochs": 4,
        "prune_epochs": 1,
        "finetune_epochs": 1,
        "certify_n": 1000,
        "certify_limit": 200,
    },
    # The paper's schedule (needs a GPU): 100 / 20 / 20 epochs, full data.
    "paper": {
        "train_limit": None,
        "test_limit": None,
        "batch_size": 128,
        "pretrain_epochs": 100,
        "prune_epochs": 20,
        "finetune_epochs": 20,
    },
}


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
    "sync_batch_norm",
    "seed",
)


def _train_config(config, phase, workdir, keep_ratio=1.0, source=None, epochs=1, lr=0.1):
    return training.TrainConfig(
        workdir=workdir,
        phase=phase,
        keep_ratio=keep_ratio,
        source_checkpoint=source,
        epochs=epochs,
        learning_rate=lr,
        **{name: getattr(config, name) for name in _SHARED_FIELDS},
    )


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
    """
    cache = os.path.join(out_dir, "eval.json")
    key = evaluation_key(config)
    row = _read_cache(cache, key)
    if row is None:
        row = {**_evaluate(config, model_path, out_dir, name), "eval_key": key}
        files.write_json(cache, row)
    if config.tflite_mode != "none":
        row.update(_deploy(config, os.path.join(config.workdir, row["keras_path"]), out_dir, name))
    return row


# What each row keeps of every TF Lite mode's report.
_MODE_KEYS = (
    "bytes",
    "gzip_bytes",
    "xnnpack",
    "xnnpack_note",
    "clean_acc",
    "robust_acc",
    "latency_ms",
    "load_mb",
    "crashed",
)


def _deploy(config, keras_path, out_dir, name):
    """TF Lite export and verification of one network: the row's `tflite_*` fields.

    Cached in `<out_dir>/tflite/row.json` for the configured mode and
    evaluation settings (its robust accuracy uses the table's attack).
    """
    directory = os.path.join(out_dir, "tflite")
    cache = os.path.join(directory, "row.json")
    key = {**evaluation_key(config), "tflite_mode": config.tflite_mode}
    fields = _read_cache(cache, key)
    if fields is not None:
        return {k: v for k, v in fields.items() if k != "eval_key"}
    plain = keras.saving.load_model(keras_path, safe_mode=True)
    images, labels, representative = tflite.verification_data(
        config.dataset, config.data_dir, config.test_limit, config.train_limit, config.seed
    )
    result = tflite.deploy(
        plain, directory, config.tflite_mode, images, labels, config.attack, representative
    )
    chosen = result["modes"][result["mode"]]
    fields = {
        "tflite_requested": config.tflite_mode,
        "tflite_path": os.path.relpath(result["path"], config.workdir),
        "tflite_mode": result["mode"],
        "tflite_bytes": chosen["bytes"],
        "tflite_gzip_bytes": chosen["gzip_bytes"],
        "tflite_clean_acc": chosen["clean_acc"],
        "tflite_robust_acc": chosen["robust_acc"],
        "tflite_keras_clean_acc": result["keras_clean_acc"],
        "tflite_keras_robust_acc": result["keras_robust_acc"],
        "tflite_latency_ms": chosen["latency_ms"],
        "tflite_load_mb": chosen["load_mb"],
        "tflite_xnnpack": chosen["xnnpack"],
        "tflite_num_examples": result["num_examples"],
        "tflite_modes": {
            mode: {key: report.get(key) for key in _MODE_KEYS}
            for mode, report in result["modes"].items()
        },
    }
    if name == "dense":
        fp32 = result["modes"].get("float32")
        fields["tflite_fp32_bytes"] = (
            fp32["bytes"] if fp32 else len(tflite.convert(plain, tflite.Mode("float32")))
        )
    files.write_json(cache, {**fields, "eval_key": key})
    return fields


def _evaluate(config, model_path, out_dir, name):
    network = files.load_network(model_path)
    keras_path, saved_model_path, plain = export.export(network, out_dir, name)
    test_ds, _ = data.load(config.dataset, "test", config.data_dir, config.test_limit)
    start = time.time()
    if config.certifies:
        row = _certify_row(config, plain, test_ds)
    else:
        result = evaluation.evaluate(
            plain,
            data.make_pipeline(test_ds, config.batch_size, training=False),
            config.attack,
        )
        row = {
            "clean_acc": result.clean_acc,
            "robust_acc": result.robust_acc,
            "num_examples": result.num_examples,
            "attack": result.attack,
        }
    row.update(
        {
            "sparsity": masks.sparsity(export.kernels(plain)),
            "layer_sparsity": export.layer_sparsity(plain),
            "keras_path": os.path.relpath(keras_path, config.workdir),
            "saved_model_path": os.path.relpath(saved_model_path, config.workdir),
            "eval_seconds": time.time() - start,
        }
    )
    logging.info(
        "%s: clean %.4f, %s %.4f, sparsity %.4f",
        name,
        row["clean_acc"],
        "certified" if config.certifies else f"PGD-{config.attack.steps} robust",
        row["robust_acc"],
        row["sparsity"],
    )
    return row


def _certify_row(config, network, test_ds):
    """Certified accuracy of the smoothed `network` (the row's robust_acc)."""
    meta = data.info(config.dataset)
    records = smoothing.certify_dataset(
        network, test_ds, meta.num_classes, config.smoothing, limit=config.certify_limit
    )
    radii = sorted(set(smoothing.REPORT_RADII) | {config.certify_radius})
    certified = smoothing.certified_accuracy(records, radii)
    # Clean accuracy of the base network on the same examples.
    images = np.stack([x for x, _ in test_ds.take(len(records)).as_numpy_iterator()])
    labels = np.array([r["label"] for r in records])
    predicted = np.argmax(network.predict(images, verbose=0), axis=-1)
    return {
        "clean_acc": float(np.mean(predicted == labels)),
        "robust_acc": certified[config.certify_radius],
        "certified_accuracy": {f"{r:g}": acc for r, acc in certified.items()},
        "num_examples": len(records),
        "attack": {
            "name": "certify_l2",
            "radius": config.certify_radius,
            **config.smoothing.to_json(),
        },
        "seconds_per_example": float(np.mean([r["seconds"] for r in records])),
    }


def run(config, strategy=None, jit_compile=False):
    """Runs (or resumes) the whole pipeline; returns the results dict.

    Training runs under `strategy` (default: the current one). Under
    multi-worker training only the chief evaluates, exports and writes the
    results (on one device); the other workers train and return no rows.
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

    def evaluated(model_path, name):
        if not chief:
            return None
        return evaluate_and_export(config, model_path, stage(name), name)

    dense = train(
        _train_config(
            config,
            "pretrain",
            stage("dense", "pretrain"),
            epochs=config.pretrain_epochs,
            lr=config.pretrain_lr,
        )
    )
    rows = [{"method": "dense", "keep_ratio": 1.0, "row": evaluated(dense.model_path, "dense")}]
    for ratio in config.keep_ratios:
        tag = f"{ratio:g}"
        pruned = train(
            _train_config(
                config,
                "prune",
                stage(f"hydra_{tag}", "prune"),
                ratio,
                dense.model_path,
                config.prune_epochs,
                config.prune_lr,
            )
        )
        for method, source in (("hydra", pruned.model_path), ("lwm", dense.model_path)):
            tuned = train(
                _train_config(
                    config,
                    "finetune",
                    stage(f"{method}_{tag}", "finetune"),
                    ratio,
                    source,
                    config.finetune_epochs,
                    config.finetune_lr,
                )
            )
            name = f"{method}_{tag}"
            rows.append(
                {"method": method, "keep_ratio": ratio, "row": evaluated(tuned.model_path, name)}
            )
    if not chief:
        logging.info("Worker finished training; the chief writes the results.")
        return {"config": config.to_json(), "rows": []}
    rows = [{"method": r["method"], "keep_ratio": r["keep_ratio"], **r["row"]} for r in rows]
    check_comparable(rows)
    results = {"config": config.to_json(), "rows": rows}
    smallest = min(config.keep_ratios)
    hydra_model = stage(f"hydra_{smallest:g}", "prune", training.MODEL_FILE)
    kept = kept_weights(dense.model_path, hydra_model, smallest)
    results["kept_overlap"] = kept["overlap"]
    results["figures"] = figures(config.workdir, rows, kept, smallest, metric=config.metric)
    results["seconds"] = time.time() - start
    files.write_json(stage("results.json"), results)
    with open(stage("results.md"), "w") as f:
        f.write(results_markdown(results))
    logging.info("Pipeline finished in %.1fs; results in %s", results["seconds"], config.workdir)
    return results


def kept_weights(dense_path, hydra_path, keep_ratio):
    """Which pretrained weights HYDRA and LWM keep at `keep_ratio`.

    Args:
      dense_path: the pretrained dense network (`model.keras`).
      hydra_path: a HYDRA network of that keep ratio (prune or finetune).
      keep_ratio: the keep ratio of `hydra_path`.

    Returns:
      A dict with "magnitudes" (pretrained |w| / max |w| of its layer, all
      prunable layers concatenated), "hydra" and "lwm" (boolean kept masks like
      "magnitudes"), and "overlap" (fraction of HYDRA's kept weights that LWM
      keeps too).
    """
    dense = files.load_network(dense_path)
    hydra = files.load_network(hydra_path)
    magnitudes, hydra_kept, lwm_kept = [], [], []
    for layer in score_layers.scored_layers(hydra):
        kernel = np.abs(dense.get_layer(layer.name).kernel.numpy())
        magnitudes.append((kernel / kernel.max()).ravel())
        hydra_kept.append(layer.mask().numpy().ravel() > 0)
        # LWM keeps the top-k weight magnitudes: the same mask function on |w|.
        lwm_kept.append(masks.topk_mask(kernel, keep_ratio).numpy().ravel() > 0)
    hydra_kept = np.concatenate(hydra_kept)
    lwm_kept = np.concatenate(lwm_kept)
    return {
        "magnitudes": np.concatenate(magnitudes),
        "hydra": hydra_kept,
        "lwm": lwm_kept,
        "overlap": float(np.sum(hydra_kept & lwm_kept) / np.sum(hydra_kept)),
    }


def figures(workdir, rows, kept, keep_ratio, title="", metric="robust"):
    """Writes the PNG figures under `<workdir>/plots`; returns their relative paths.

    Args:
      workdir: the run's directory.
      rows: the results rows (each method and keep ratio).
      kept: `kept_weights(...)` of the HYDRA network at `keep_ratio`.
      keep_ratio: the keep ratio `kept` describes.
      title: prefix of the figure titles.
      metric: "robust" (PGD) or "certified" (smoothing), for the labels.
    """
    out = os.path.join(workdir, "plots")
    os.makedirs(out, exist_ok=True)
    paths = {
        "robust_vs_pruning": plots.robust_vs_pruning(
            rows, os.path.join(out, "robust_vs_pruning.png"), title, metric
        ),
        "kept_magnitudes": plots.kept_magnitude_histogram(
            kept["magnitudes"],
            {"lwm": kept["lwm"], "hydra": kept["hydra"]},
            os.path.join(out, "kept_magnitudes.png"),
            f"{title} keep {keep_ratio:g}: pretrained magnitude of kept weights".strip(),
        ),
        "layer_sparsity": plots.layer_sparsity(rows, os.path.join(out, "layer_sparsity.png")),
    }
    return {name: os.path.relpath(path, workdir) for name, path in paths.items()}


def check_comparable(rows):
    """Raises ValueError unless every row was evaluated the same way.

    One table must not mix, say, PGD-10 and PGD-50 numbers, or different test
    sets: each row's attack (or certification) and number of examples must
    agree.
    """
    first = rows[0]
    for row in rows[1:]:
        for field in ("attack", "num_examples"):
            if row.get(field) != first.get(field):
                raise ValueError(
                    f"Rows evaluated differently cannot share a table: {row['method']} keep "
                    f"{row['keep_ratio']:g} has {field} {row.get(field)}, {first['method']} has "
                    f"{first.get(field)}."
                )


def results_markdown(results):
    """The results as a Markdown table shaped like the paper's Table 1."""
    config = results["config"]
    rows = results["rows"]
    check_comparable(rows)
    ratios = report.keep_ratios(rows)
    attack = rows[0]["attack"]
    objective = config["objective"]
    if attack.get("name") == "certify_l2":
        caption = (
            f"Objective {objective['name']} (sigma {objective['sigma']:g}); certified "
            f"accuracy of the smoothed classifier at L2 radius {attack['radius']:g} "
            f"(n0 {attack['n0']}, n {attack['n']}, alpha {attack['alpha']:g}), on "
            f"{rows[0]['num_examples']} test examples. Cells: certified % (clean % of the "
            "base network)."
        )
    else:
        caption = (
            f"Objective {objective['name']} (eps {objective['eps']:g}); "
            f"robust accuracy under L-inf PGD-{attack['steps']} with {attack['restarts']} "
            f"restart(s) at eps {attack['eps']:g}, on {rows[0]['num_examples']} test "
            "examples. Cells: robust % (clean %)."
        )
    lines = [f"# HYDRA vs LWM: {config['arch']} on {config['dataset']}", "", caption, ""]
    lines += report.method_table(
        rows,
        cell=lambda r: f"{100 * r['robust_acc']:.1f} ({100 * r['clean_acc']:.1f})",
        ratio_label=lambda k: f"{(1 - k) * 100:g}% pruned",
        delta_label="HYDRA - LWM (robust)",
    )
    lines += ["", "Measured sparsity of the exported kernels:", ""]
    for r in rows:
        lines.append(f"- {r['method']} keep {r['keep_ratio']:g}: {100 * r['sparsity']:.2f}% zeros")
    if "kept_overlap" in results:
        smallest = min(ratios)
        lines += [
            "",
            (
                f"At keep {smallest:g}, {100 * results['kept_overlap']:.1f}% of the weights HYDRA "
                "keeps are among the largest-magnitude weights LWM keeps; the rest are smaller "
                "weights that LWM prunes."
            ),
        ]
    for name, path in results.get("figures", {}).items():
        lines += ["", f"![{name}]({path})"]
    lines += deployment_markdown(rows)
    if "seconds" in results:
        lines += ["", f"Total time: {results['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def deployment_markdown(rows):
    """The TF Lite table of the results (empty if nothing was exported)."""
    deployed = [r for r in rows if "tflite_mode" in r]
    if not deployed:
        return []
    dense = next((r for r in rows if "tflite_fp32_bytes" in r), None)
    percent = lambda v: "-" if v is None else f"{100 * v:.1f}"
    lines = [
        "",
        "## Deployment (TF Lite)",
        "",
        (
            f"Each network's TF Lite file, verified with LiteRT on {deployed[0]['tflite_num_examples']} "
            "test images. Robust accuracy: adversarial examples crafted on the Keras model (the "
            "table's attack) transferred to the file; Keras' accuracy on the same examples in "
            "parentheses. Latency: median at batch 1 / 32, 2 threads."
        ),
        "",
        "| model | mode | bytes | gzip bytes | dense fp32 / this | latency ms | clean % | robust % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in deployed:
        ratio = f"{dense['tflite_fp32_bytes'] / r['tflite_bytes']:.1f}x" if dense else "-"
        gz_ratio = f"{dense['tflite_fp32_bytes'] / r['tflite_gzip_bytes']:.1f}x" if dense else "-"
        latency = r["tflite_latency_ms"]
        timing = "-" if latency is None else f"{latency['1']:.3f} / {latency['32']:.2f}"
        name = "dense" if r["method"] == "dense" else f"{r['method']} {r['keep_ratio']:g}"
        lines.append(
            f"| {name} | {r['tflite_mode']} | {r['tflite_bytes']} | {r['tflite_gzip_bytes']} | "
            f"{ratio} (gzip {gz_ratio}) | {timing} | {percent(r['tflite_clean_acc'])} "
            f"({percent(r['tflite_keras_clean_acc'])}) | {percent(r['tflite_robust_acc'])} "
            f"({percent(r['tflite_keras_robust_acc'])}) |"
        )
    if dense:
        lines += ["", f"Dense fp32 file: {dense['tflite_fp32_bytes']} bytes."]
    most_pruned = min(
        (r for r in deployed if r["method"] == "hydra" and len(r.get("tflite_modes", {})) > 1),
        key=lambda r: r["keep_ratio"],
        default=None,
    )
    if most_pruned:
        lines += [
            "",
            f"Every mode of hydra {most_pruned['keep_ratio']:g} (what `auto` chose from):",
            "",
            "| mode | bytes | gzip bytes | XNNPACK | latency ms | load MB | clean % | robust % |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for mode, m in most_pruned["tflite_modes"].items():
            timing = (
                "-"
                if not m["latency_ms"]
                else (f"{m['latency_ms']['1']:.3f} / {m['latency_ms']['32']:.2f}")
            )
            load = "-" if m["load_mb"] is None else f"{m['load_mb']:.1f}"
            xnnpack = "yes" if m["xnnpack"] else f"no: {m['xnnpack_note']}"
            lines.append(
                f"| {mode} | {m['bytes']} | {m['gzip_bytes']} | {xnnpack} | {timing} | {load} | "
                f"{percent(m['clean_acc'])} | {percent(m['robust_acc'])} |"
            )
    return lines
