"""Runs a TF Lite file with LiteRT in a process of its own and measures it.

`hydra_tf.export.tflite_verify` calls this as a script, for two reasons:
LiteRT can crash the process on some files (sparse float16 files segfault
now and then with ai-edge-litert 2.3.0), and the memory figure must not
include TensorFlow.
So it imports only numpy and `ai-edge-litert`, never TensorFlow:

  python hydra_tf/export/tflite_probe.py model.tflite [--inputs=a.npy,b.npy]
      [--output_dir=DIR] [--threads=2]

It prints one JSON object:
  xnnpack        {"prepares", "runs", "not_delegated", "note"}: whether the
                 default XNNPACK delegate prepared the file and took every
                 convolution and matrix multiplication;
  latency_ms     median latency at batch 1 and 32;
  load_mb        resident memory added by loading the file and running one
                 batch-1 inference; peak_rss_mb: the process' peak;
and, for each of --inputs, writes the logits to <output_dir>/<name>.logits.npy.
Files XNNPACK cannot prepare are run on the reference kernels.
"""

import argparse
import json
import os
import time

import numpy as np
from ai_edge_litert import interpreter as litert

BATCH_SIZES = (1, 32)
# Ops that carry the arithmetic; if XNNPACK leaves one to the reference
# kernels, the file "falls off" the delegate.
HEAVY_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")


def _status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def interpreter(path, xnnpack=True, threads=2):
    """A LiteRT interpreter of the file at `path`, with or without XNNPACK."""
    options = {}
    if not xnnpack:
        options["experimental_op_resolver_type"] = (
            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    return litert.Interpreter(model_path=path, num_threads=threads, **options)


def delegation(runtime):
    """Which ops of an allocated interpreter XNNPACK took and which it left.

    The interpreter lists the file's ops followed by one DELEGATE node per
    delegated partition; an op belongs to a partition when it lies between
    the partition's input and output tensors.

    Returns:
      {"delegated": [op names], "not_delegated": [op names]}.
    """
    ops = runtime._get_ops_details()
    plain = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op for op in plain for t in op["outputs"]}
    delegated = set()
    for partition in (op for op in ops if op["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in partition["inputs"]}
        pending = [int(t) for t in partition["outputs"]]
        while pending:
            tensor = pending.pop()
            op = producer.get(tensor)
            if tensor in boundary or op is None or op["index"] in delegated:
                continue
            delegated.add(op["index"])
            pending.extend(int(t) for t in op["inputs"] if t >= 0)
    return {
        "delegated": [op["op_name"] for op in plain if op["index"] in delegated],
        "not_delegated": [op["op_name"] for op in plain if op["index"] not in delegated],
    }


def _resize(runtime, index, shape):
    runtime.resize_tensor_input(index, shape)
    runtime.allocate_tensors()


def _median_ms(runtime, index, shape, dtype, budget_seconds=1.0, max_runs=200):
    _resize(runtime, index, shape)
    runtime.set_tensor(index, np.random.default_rng(0).random(shape).astype(dtype))
    for _ in range(3):
        runtime.invoke()
    times = []
    deadline = time.perf_counter() + budget_seconds
    while len(times) < 10 or (len(times) < max_runs and time.perf_counter() < deadline):
        start = time.perf_counter()
        runtime.invoke()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def predict(runtime, images, batch_size=32):
    """Logits of `images` (N, H, W, C), batch by batch."""
    detail = runtime.get_input_details()[0]
    output = runtime.get_output_details()[0]["index"]
    outputs, allocated = [], None
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], detail["dtype"])
        if batch.shape != allocated:
            _resize(runtime, detail["index"], batch.shape)
            allocated = batch.shape
        runtime.set_tensor(detail["index"], batch)
        runtime.invoke()
        outputs.append(runtime.get_tensor(output).copy())
    return np.concatenate(outputs)


def probe(path, inputs=(), output_dir=None, threads=2):
    """Loads, checks and measures the file at `path`; see the module docstring."""
    before = _status_mb("VmRSS")
    runtime = interpreter(path, threads=threads)
    detail = runtime.get_input_details()[0]
    shape = [1] + [int(d) for d in detail["shape"][1:]]
    try:
        _resize(runtime, detail["index"], shape)
    except RuntimeError as error:
        note = f"XNNPACK failed to prepare it ({str(error).splitlines()[0]})"
        status = {"prepares": False, "runs": False, "not_delegated": [], "note": note}
        runtime = interpreter(path, xnnpack=False, threads=threads)
    else:
        left = delegation(runtime)["not_delegated"]
        heavy = sorted({op for op in left if op in HEAVY_OPS})
        note = f"XNNPACK left {heavy} to the reference kernels" if heavy else "runs on XNNPACK"
        status = {"prepares": True, "runs": not heavy, "not_delegated": left, "note": note}
    result = {"xnnpack": status, "latency_ms": {}}
    result["latency_ms"]["1"] = _median_ms(runtime, detail["index"], shape, detail["dtype"])
    result["load_mb"] = _status_mb("VmHWM") - before
    for batch in BATCH_SIZES[1:]:
        result["latency_ms"][str(batch)] = _median_ms(
            runtime, detail["index"], [batch] + shape[1:], detail["dtype"]
        )
    result["peak_rss_mb"] = _status_mb("VmHWM")
    for name in inputs:
        logits = predict(runtime, np.load(name))
        stem = os.path.splitext(os.path.basename(name))[0]
        np.save(os.path.join(output_dir, f"{stem}.logits.npy"), logits)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--inputs", default="", help="Comma-separated .npy image arrays.")
    parser.add_argument("--output_dir", default=None, help="Where the logits go.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    inputs = [name for name in args.inputs.split(",") if name]
    if inputs and not args.output_dir:
        parser.error("--inputs needs --output_dir")
    print(json.dumps(probe(args.path, inputs, args.output_dir, args.threads)))


if __name__ == "__main__":
    main()
