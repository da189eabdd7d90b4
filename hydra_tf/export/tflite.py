"""TF Lite export for edge devices: the eight modes and the converter.

A pruned network is deployed from its plain export (`export.strip_scores`:
masks folded into the kernels). `convert` turns it into a TF Lite flatbuffer
in one of eight modes: a weight format (float32, float16, dynamic-range int8,
full int8 calibrated on training images) with or without TF Lite's sparse
weight encoding. Only builtin ops are allowed; a model that would need Flex
(TensorFlow) ops fails with `TFLiteConversionError`. `sparse_tensors` lists
what a file stores sparse-encoded.

`tflite_verify` checks the files with LiteRT and picks the mode
(`--tflite_mode=auto`); `tflite_graph` rewrites the graph for XNNPACK.

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
import os
import re
import tempfile

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema

from hydra_tf.export import tflite_graph

WEIGHT_FORMATS = ("float32", "float16", "dynamic_int8", "int8")


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
