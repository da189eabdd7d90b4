"""TF Lite verification with LiteRT, the `auto` choice of the mode, and `deploy`.

`verify` loads a file with the LiteRT interpreter (`ai-edge-litert`) in a
process of its own (`tflite_probe`, so a LiteRT crash cannot take the run
down) and measures what a user deploys against: clean accuracy, accuracy on
adversarial examples crafted on the Keras model (transfer), raw and gzipped
size, median latency at batch 1 and 32, and the memory the interpreter adds
after loading. It also records whether the default XNNPACK delegate prepared
the file and took every convolution and matrix multiplication.

`choose` implements `--tflite_mode=auto`: among the verified modes that run
on XNNPACK and keep accuracy (at most 1 point clean and 2 points robust below
the Keras model), the smallest file. Its reasons go to the log.

`deploy` converts (`tflite.convert`) and verifies one mode, or every mode for
`auto`, and writes the report. Each mode takes some seconds: the log has a
line as each starts and as each finishes, with the time it took.
"""

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging

from hydra_tf import data
from hydra_tf.export import tflite
from hydra_tf.export import tflite_probe
from hydra_tf.objectives import attacks

# How much accuracy `choose` lets a mode lose against the Keras model.
MAX_CLEAN_DROP = 0.01
MAX_ROBUST_DROP = 0.02
REPRESENTATIVE_EXAMPLES = 200
# Test examples each file is verified on, at most (the first of the test set).
VERIFY_EXAMPLES = 1000
# `auto` runs the file it picks this many more times, each in a new process.
STABILITY_RUNS = 2


def probe(path, inputs=(), output_dir=None, threads=2):
    """Runs `tflite_probe.py` on the file at `path` in a fresh process (LiteRT with `threads`).

    Returns:
      The probe's JSON dict (see `tflite_probe`), or, if LiteRT crashed the
      process, {"crashed": "<signal or exit code and stderr tail>"}.
    """
    command = [sys.executable, os.path.abspath(tflite_probe.__file__), path, f"--threads={threads}"]
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
        "sparse_tensors": len(tflite.sparse_tensors(content)),
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
        raise tflite.TFLiteConversionError(
            "No TF Lite mode runs on XNNPACK and keeps accuracy:\n" + "\n".join(reasons)
        )
    best = min(eligible, key=lambda n: (reports[n]["bytes"], reports[n]["gzip_bytes"]))
    reasons.append(f"auto chose {best}: the smallest eligible file.")
    return best, reasons


def verification_data(dataset, data_dir=None, test_limit=None, train_limit=None, seed=0):
    """What `deploy` needs from a dataset.

    Returns:
      (images, labels): the first min(test_limit, VERIFY_EXAMPLES) test
      examples; representative: REPRESENTATIVE_EXAMPLES training images drawn
      at random (with `seed`) from the first `train_limit` ones.
    """
    limit = min(test_limit or VERIFY_EXAMPLES, VERIFY_EXAMPLES)
    images, labels = data.arrays(data.load(dataset, "test", data_dir, limit)[0])
    train_ds, _ = data.load(dataset, "train", data_dir, train_limit)
    representative, _ = data.arrays(
        train_ds.shuffle(10_000, seed=seed).take(REPRESENTATIVE_EXAMPLES)
    )
    return images, labels, representative


def _summary(report):
    if report.get("crashed"):
        return f"{report['bytes']} bytes; {report['crashed']}"
    return (
        f"{report['bytes']} bytes ({report['gzip_bytes']} gzipped), clean "
        f"{report['clean_acc']:.4f}, robust {report['robust_acc']:.4f}, batch-1 latency "
        f"{report['latency_ms']['1']:.3f} ms; {report['xnnpack_note']}"
    )


def deploy(
    plain_model, directory, mode, images, labels, attack, representative_images, adversarial=None
):
    """Exports `plain_model` to TF Lite in `mode` (or every mode, for "auto") and verifies it.

    Args:
      plain_model: a model of built-in Keras layers.
      directory: where `<mode>.tflite` files and `tflite.json` go.
      mode: a name from `tflite.MODE_NAMES`, or "auto".
      images, labels: test examples to measure accuracy on.
      attack: the attack of the transfer examples: an `attacks.PGDConfig`
        run here, or the attack that made `adversarial`.
      representative_images: training images for int8 calibration.
      adversarial: adversarial examples of `images` found on the Keras model
        (for example by AutoAttack in the evaluation); None: PGD with `attack`.

    Returns:
      {"mode", "path", "modes": {name: report}, "keras_clean_acc",
      "keras_robust_acc", "reasons"}; also written to `<directory>/tflite.json`.
    """
    if mode not in tflite.MODE_NAMES + ("auto",):
        raise ValueError(f"Unknown --tflite_mode {mode!r}. Supported: {tflite.CHOICES}.")
    os.makedirs(directory, exist_ok=True)
    labels = np.asarray(labels)
    if adversarial is None:
        adversarial = transfer_examples(plain_model, images, labels, attack)
    adversarial = np.asarray(adversarial, np.float32)
    if adversarial.shape != np.shape(images):
        raise ValueError(
            f"adversarial has shape {adversarial.shape}; the images have {np.shape(images)}."
        )
    keras_clean = accuracy(plain_model.predict(images, verbose=0), labels)
    keras_robust = accuracy(plain_model.predict(adversarial, verbose=0), labels)
    candidates = tflite.MODES if mode == "auto" else (tflite.Mode.parse(mode),)
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = (os.path.join(tmp, "clean.npy"), os.path.join(tmp, "adversarial.npy"))
        np.save(inputs[0], np.asarray(images, np.float32))
        np.save(inputs[1], adversarial)
        for number, candidate in enumerate(candidates, 1):
            progress = f"TF Lite {candidate.name} ({number}/{len(candidates)})"
            logging.info("%s: converting, then verifying with LiteRT", progress)
            start = time.time()
            path = os.path.join(directory, f"{candidate.name}.tflite")
            with open(path, "wb") as f:
                f.write(tflite.convert(plain_model, candidate, representative_images))
            reports[candidate.name] = verify(path, labels, *inputs)
            logging.info(
                "%s: done in %.1fs: %s",
                progress,
                time.time() - start,
                _summary(reports[candidate.name]),
            )
        while mode == "auto":
            chosen, reasons = choose(reports, keras_clean, keras_robust)
            path = os.path.join(directory, f"{chosen}.tflite")
            logging.info(
                "TF Lite %s: running it %d more times, each in a new process",
                chosen,
                STABILITY_RUNS,
            )
            start = time.time()
            crash = next(
                (c for c in (probe(path).get("crashed") for _ in range(STABILITY_RUNS)) if c), None
            )
            if crash is None:
                logging.info(
                    "TF Lite %s: ran %d more times without a crash in %.1fs",
                    chosen,
                    STABILITY_RUNS,
                    time.time() - start,
                )
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
