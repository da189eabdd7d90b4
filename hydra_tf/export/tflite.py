"""TF Lite export for edge devices: convert, verify, and pick the smallest mode.

A pruned network is deployed from its plain export (`export.strip_scores`:
masks folded into the kernels). `convert` turns it into a TF Lite flatbuffer
in one of eight modes: a weight format (float32, float16, dynamic-range int8,
full int8 calibrated on training images) with or without TF Lite's sparse
weight encoding. Only builtin ops are allowed; a model that would need Flex
(TensorFlow) ops fails with `TFLiteConversionError`.

`verify` loads a file with the LiteRT interpreter (`ai-edge-litert`) and
measures what a user deploys against: clean accuracy, accuracy on adversarial
examples crafted on the Keras model (transfer), raw and gzipped size, median
latency at batch 1 and 32, and the memory the interpreter adds after loading.
It also records whether the default XNNPACK delegate prepared the file and
took every convolution and matrix multiplication.

`choose` implements `--tflite_mode=auto`: among the verified modes that run
on XNNPACK and keep accuracy (at most 1 point clean and 2 points robust below
the Keras model), the smallest file. Its reasons go to the log.

Measured facts behind the design (TF 2.21, ai-edge-litert 2.3.0, XNNPACK,
2 threads, a 99%-pruned cnn_small):
- XNNPACK densifies sparse-encoded convolution weights at load, but does not
  take FULLY_CONNECTED ops with sparse weights; those ran on the builtin
  kernels, and in float16 they gave wrong outputs (11% accuracy) and crashed
  the process in 3 of 12 runs. `tflite_graph.edge_graph` therefore turns a
  Flatten + Dense head into convolutions; after that every op of every mode but one ran on
  XNNPACK and float16_sparse ran 12 of 12 times.
- Sparse dynamic-range int8 fails to prepare on XNNPACK (about 30x slower at
  batch 1 on the reference kernels).
- The converter stores sparse fully connected weights in blocks of 4 (float)
  or 16 (int8) entries, which unstructured masks fill with one weight each;
  convolution weights are stored entry by entry.
- Weights are densified at load, so the sparse encoding buys file size, not
  latency or memory.
"""

import dataclasses
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
from absl import logging
from ai_edge_litert import schema_py_generated as schema

from hydra_tf import data
from hydra_tf.export import tflite_graph
from hydra_tf.export import tflite_probe
from hydra_tf.objectives import attacks

WEIGHT_FORMATS = ("float32", "float16", "dynamic_int8", "int8")
# How much accuracy `choose` lets a mode lose against the Keras model.
MAX_CLEAN_DROP = 0.01
MAX_ROBUST_DROP = 0.02
REPRESENTATIVE_EXAMPLES = 200
# Test examples each file is verified on, at most (the first of the test set).
VERIFY_EXAMPLES = 1000
# `auto` runs the file it picks this many more times, each in a new process.
STABILITY_RUNS = 2


class TFLiteConversionError(ValueError):
    """The model cannot become a builtin-ops TF Lite file in the asked mode."""


@dataclasses.dataclass(frozen=True)
class Mode:
    """A TF Lite export mode: weight format and sparse encoding."""

    weights: str
    sparse: bool = False

    def __post_init__(self):
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(
                f"Unknown TF Lite weight format {self.weights!r}. Supported: {WEIGHT_FORMATS}."
            )

    @property
    def name(self):
        return f"{self.weights}_sparse" if self.sparse else self.weights

    @classmethod
    def parse(cls, name):
        weights, sparse = (
            (name[: -len("_sparse")], True) if name.endswith("_sparse") else (name, False)
        )
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"Unknown TF Lite mode {name!r}. Supported: {MODE_NAMES}.")
        return cls(weights, sparse)


MODES = tuple(Mode(w, s) for w in WEIGHT_FORMATS for s in (False, True))
MODE_NAMES = tuple(m.name for m in MODES)
# What binaries and the pipeline accept: a mode, "auto", or "none" (no export).
CHOICES = MODE_NAMES + ("auto", "none")


def _converter(saved_model_path, mode, representative_images):
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_path)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    optimizations = []
    if mode.weights != "float32":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if mode.sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if mode.weights == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode.weights == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise TFLiteConversionError("Full int8 needs representative images for calibration.")
        images = np.asarray(representative_images, np.float32)
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        # Every op in int8; the interface stays float32 like the Keras model.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter


def convert(plain_model, mode, representative_images=None):
    """Converts a plain Keras model to TF Lite bytes in `mode` (a `Mode`).

    Args:
      plain_model: a model of built-in Keras layers (`export.strip_scores`).
      mode: a `Mode`.
      representative_images: training images (N, H, W, C) in [0, 1] to
        calibrate full int8; ignored by the other modes.

    Raises:
      TFLiteConversionError: if the model needs ops outside the TF Lite
        builtins (Flex ops are not allowed) or the conversion fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        saved_model_path = os.path.join(tmp, "saved_model")
        tflite_graph.edge_graph(plain_model).export(saved_model_path, verbose=False)
        converter = _converter(saved_model_path, mode, representative_images)
        try:
            return converter.convert()
        except Exception as error:  # The converter raises several error types.
            text = str(error)
            missing = sorted(
                set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
            )
            if missing:
                raise TFLiteConversionError(
                    f"{plain_model.name!r} needs TensorFlow ops without a TF Lite builtin: "
                    f"{missing}. Flex (TensorFlow) ops are not allowed on the edge runtime; "
                    "replace the layers that use them."
                ) from error
            first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
            raise TFLiteConversionError(
                f"TF Lite conversion of {plain_model.name!r} in mode {mode.name} failed: {first}"
            ) from error


def sparse_tensors(content):
    """The sparse-encoded tensors of a TF Lite file.

    Returns:
      A list of {"name", "shape", "stored_bytes", "dense_bytes"}: the bytes the
      tensor's buffer holds and what a dense buffer of its shape would hold.
    """
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    itemsize = {
        schema.TensorType.FLOAT32: 4,
        schema.TensorType.FLOAT16: 2,
        schema.TensorType.INT8: 1,
    }
    found = []
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if tensor.sparsity is None:
                continue
            data = model.buffers[tensor.buffer].data
            stored = 0 if data is None else len(data)
            if stored == 0 and model.buffers[tensor.buffer].size:
                stored = int(model.buffers[tensor.buffer].size)
            found.append(
                {
                    "name": tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name,
                    "shape": [int(d) for d in tensor.shape],
                    "stored_bytes": stored,
                    "dense_bytes": int(np.prod(tensor.shape)) * itemsize.get(tensor.type, 4),
                }
            )
    return found


def probe(path, inputs=(), output_dir=None):
    """Runs `tflite_probe.py` on the file at `path` in a fresh process.

    Returns:
      The probe's JSON dict (see `tflite_probe`), or, if LiteRT crashed the
      process, {"crashed": "<signal or exit code and stderr tail>"}.
    """
    command = [sys.executable, os.path.abspath(tflite_probe.__file__), path]
    if inputs:
        command += ["--inputs=" + ",".join(inputs), f"--output_dir={output_dir}"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        how = (
            f"signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        )
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        return {"crashed": f"LiteRT ended the process with {how} {tail[0]}".strip()}
    return json.loads(done.stdout.strip().splitlines()[-1])


def transfer_examples(plain_model, images, labels, attack, batch_size=128):
    """PGD adversarial examples crafted on the Keras model, to attack TF Lite files."""

    @tf.function(reduce_retracing=True)
    def craft(x, y):
        return attacks.pgd(plain_model, x, y, attack)

    crafted = [
        craft(
            tf.constant(images[i : i + batch_size]),
            tf.constant(labels[i : i + batch_size], tf.int64),
        ).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(crafted)


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def verify(path, labels, clean_inputs, adversarial_inputs):
    """Verifies one TF Lite file with LiteRT, in a process of its own.

    Args:
      path: the `.tflite` file.
      labels: the test labels.
      clean_inputs, adversarial_inputs: `.npy` files of the clean test images
        and of their transfer adversarial examples.

    Returns:
      A dict: "bytes", "gzip_bytes", "sparse_tensors" (how many tensors are
      sparse-encoded), "xnnpack" (prepared and took every heavy op),
      "xnnpack_note", "clean_acc", "robust_acc" (on the transfer examples),
      "latency_ms" ({"1": ms, "32": ms}), "load_mb", "peak_rss_mb". If LiteRT
      crashed, "crashed" says how and the accuracy and timing keys are None.
    """
    with open(path, "rb") as f:
        content = f.read()
    report = {
        "bytes": len(content),
        "gzip_bytes": len(gzip.compress(content, mtime=0)),
        "sparse_tensors": len(sparse_tensors(content)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        measured = probe(path, (clean_inputs, adversarial_inputs), tmp)
        if "crashed" not in measured:
            logits = [
                np.load(os.path.join(tmp, f"{_stem(name)}.logits.npy"))
                for name in (clean_inputs, adversarial_inputs)
            ]
    if "crashed" in measured:
        report.update(
            crashed=measured["crashed"],
            xnnpack=False,
            xnnpack_note=measured["crashed"],
            clean_acc=None,
            robust_acc=None,
            latency_ms=None,
            load_mb=None,
            peak_rss_mb=None,
        )
        return report
    report.update(
        xnnpack=measured["xnnpack"]["runs"],
        xnnpack_note=measured["xnnpack"]["note"],
        not_delegated=measured["xnnpack"]["not_delegated"],
        clean_acc=accuracy(logits[0], labels),
        robust_acc=accuracy(logits[1], labels),
        latency_ms=measured["latency_ms"],
        load_mb=measured["load_mb"],
        peak_rss_mb=measured["peak_rss_mb"],
    )
    return report


def choose(reports, keras_clean, keras_robust):
    """`--tflite_mode=auto`: the smallest verified file that runs on XNNPACK and keeps accuracy.

    Args:
      reports: {mode name: `verify` report}.
      keras_clean, keras_robust: the Keras model's accuracy on the same clean
        and transfer examples.

    Returns:
      (mode name, reasons): reasons has one line per mode, for the log.
    """
    eligible, reasons = [], []
    for name, report in reports.items():
        if report.get("crashed"):
            why = "excluded: LiteRT crashed on it"
        elif not report["xnnpack"]:
            why = f"excluded: {report['xnnpack_note']}"
        elif report["clean_acc"] < keras_clean - MAX_CLEAN_DROP:
            why = f"excluded: clean accuracy {report['clean_acc']:.4f} vs Keras {keras_clean:.4f}"
        elif report["robust_acc"] < keras_robust - MAX_ROBUST_DROP:
            why = (
                f"excluded: robust accuracy {report['robust_acc']:.4f} vs Keras {keras_robust:.4f}"
            )
        else:
            why = "eligible"
            eligible.append(name)
        reasons.append(f"{name}: {_summary(report)}: {why}")
    if not eligible:
        raise TFLiteConversionError(
            "No TF Lite mode runs on XNNPACK and keeps accuracy:\n" + "\n".join(reasons)
        )
    best = min(eligible, key=lambda n: (reports[n]["bytes"], reports[n]["gzip_bytes"]))
    reasons.append(f"auto chose {best}: the smallest eligible file.")
    return best, reasons


def _arrays(dataset):
    pairs = list(dataset.as_numpy_iterator())
    return np.stack([x for x, _ in pairs]), np.array([y for _, y in pairs])


def verification_data(dataset, data_dir=None, test_limit=None, train_limit=None, seed=0):
    """What `deploy` needs from a dataset.

    Returns:
      (images, labels): the first min(test_limit, VERIFY_EXAMPLES) test
      examples; representative: REPRESENTATIVE_EXAMPLES training images drawn
      at random (with `seed`) from the first `train_limit` ones.
    """
    limit = min(test_limit or VERIFY_EXAMPLES, VERIFY_EXAMPLES)
    images, labels = _arrays(data.load(dataset, "test", data_dir, limit)[0])
    train_ds, _ = data.load(dataset, "train", data_dir, train_limit)
    representative, _ = _arrays(train_ds.shuffle(10_000, seed=seed).take(REPRESENTATIVE_EXAMPLES))
    return images, labels, representative


def _summary(report):
    if report.get("crashed"):
        return f"{report['bytes']} bytes; {report['crashed']}"
    return (
        f"{report['bytes']} bytes ({report['gzip_bytes']} gzipped), clean "
        f"{report['clean_acc']:.4f}, robust {report['robust_acc']:.4f}, batch-1 latency "
        f"{report['latency_ms']['1']:.3f} ms; {report['xnnpack_note']}"
    )


def deploy(plain_model, directory, mode, images, labels, attack, representative_images):
    """Exports `plain_model` to TF Lite in `mode` (or every mode, for "auto") and verifies it.

    Args:
      plain_model: a model of built-in Keras layers.
      directory: where `<mode>.tflite` files and `tflite.json` go.
      mode: a name from `MODE_NAMES`, or "auto".
      images, labels: test examples to measure accuracy on.
      attack: `attacks.PGDConfig` of the transfer examples.
      representative_images: training images for int8 calibration.

    Returns:
      {"mode", "path", "modes": {name: report}, "keras_clean_acc",
      "keras_robust_acc", "reasons"}; also written to `<directory>/tflite.json`.
    """
    if mode not in MODE_NAMES + ("auto",):
        raise ValueError(f"Unknown --tflite_mode {mode!r}. Supported: {CHOICES}.")
    os.makedirs(directory, exist_ok=True)
    labels = np.asarray(labels)
    adversarial = transfer_examples(plain_model, images, labels, attack)
    keras_clean = accuracy(plain_model.predict(images, verbose=0), labels)
    keras_robust = accuracy(plain_model.predict(adversarial, verbose=0), labels)
    candidates = MODES if mode == "auto" else (Mode.parse(mode),)
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = (os.path.join(tmp, "clean.npy"), os.path.join(tmp, "adversarial.npy"))
        np.save(inputs[0], np.asarray(images, np.float32))
        np.save(inputs[1], adversarial)
        for candidate in candidates:
            path = os.path.join(directory, f"{candidate.name}.tflite")
            with open(path, "wb") as f:
                f.write(convert(plain_model, candidate, representative_images))
            reports[candidate.name] = verify(path, labels, *inputs)
            logging.info("TF Lite %s: %s", candidate.name, _summary(reports[candidate.name]))
        while mode == "auto":
            chosen, reasons = choose(reports, keras_clean, keras_robust)
            path = os.path.join(directory, f"{chosen}.tflite")
            crash = next(
                (c for c in (probe(path).get("crashed") for _ in range(STABILITY_RUNS)) if c), None
            )
            if crash is None:
                break
            logging.warning("TF Lite %s crashed when run again: %s", chosen, crash)
            reports[chosen]["crashed"] = crash
    if mode != "auto":
        chosen, reasons = mode, [f"{mode} was asked for: {_summary(reports[mode])}."]
        if not reports[mode]["xnnpack"]:
            logging.warning(
                "TF Lite %s does not run on XNNPACK: %s", mode, reports[mode]["xnnpack_note"]
            )
    for line in reasons:
        logging.info("TF Lite: %s", line)
    result = {
        "mode": chosen,
        "path": os.path.join(directory, f"{chosen}.tflite"),
        "modes": reports,
        "keras_clean_acc": keras_clean,
        "keras_robust_acc": keras_robust,
        "num_examples": len(labels),
        "attack": attack.to_json(),
        "reasons": reasons,
    }
    with open(os.path.join(directory, "tflite.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
