"""Tests for hydra_tf.export.tflite: conversion, LiteRT verification and the auto mode."""

import functools
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from hydra_tf import export
from hydra_tf.export import tflite
from hydra_tf.export import tflite_graph
from hydra_tf.models import masks
from hydra_tf.objectives import attacks
from tests import helpers


@functools.cache
def _pruned(keep_ratio):
    """The naturally trained cnn_small with its smallest weights zeroed (per layer)."""
    model = helpers.natural_cnn_small()
    plain = export.strip_scores(model)
    for kernel in export.kernels(plain):
        mask = masks.topk_mask(tf.abs(kernel), keep_ratio)
        kernel.assign(kernel * tf.cast(mask, kernel.dtype))
    return plain


def _write(content, directory, name):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def _litert_logits(path, images):
    """Logits of a file computed by LiteRT in the probe process."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "images.npy")
        np.save(inputs, images)
        report = tflite.probe(path, (inputs,), tmp)
        return report, np.load(os.path.join(tmp, "images.logits.npy"))


class ModeTest(tf.test.TestCase):
    def test_names_round_trip(self):
        self.assertLen(tflite.MODES, 8)
        for mode in tflite.MODES:
            self.assertEqual(tflite.Mode.parse(mode.name), mode)
        self.assertEqual(tflite.Mode.parse("int8_sparse"), tflite.Mode("int8", True))

    def test_unknown_mode_is_a_clear_error(self):
        with self.assertRaisesRegex(ValueError, "Unknown TF Lite mode 'int4'"):
            tflite.Mode.parse("int4")


class ConvertTest(tf.test.TestCase):
    def test_float32_matches_keras_logits(self):
        plain = _pruned(0.1)
        images, _ = helpers.fashion_arrays("test", 200)
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("float32", "float32_sparse"):
                path = _write(tflite.convert(plain, tflite.Mode.parse(mode)), tmp, "m.tflite")
                report, logits = _litert_logits(path, images)
                self.assertNotIn("crashed", report)
                self.assertAllClose(logits, plain.predict(images, verbose=0), atol=1e-4, rtol=0)

    def test_int8_agrees_with_keras_on_real_images(self):
        plain = _pruned(0.1)
        train, _ = helpers.fashion_arrays("train", tflite.REPRESENTATIVE_EXAMPLES)
        images, _ = helpers.fashion_arrays("test", 500)
        with tempfile.TemporaryDirectory() as tmp:
            content = tflite.convert(plain, tflite.Mode("int8"), train)
            _, logits = _litert_logits(_write(content, tmp, "int8.tflite"), images)
        agree = np.mean(np.argmax(logits, -1) == np.argmax(plain.predict(images, verbose=0), -1))
        self.assertGreaterEqual(agree, 0.98)

    def test_int8_without_calibration_images_is_refused(self):
        with self.assertRaisesRegex(tflite.TFLiteConversionError, "representative images"):
            tflite.convert(_pruned(0.1), tflite.Mode("int8"))

    def test_sparse_encoding_is_sparse_in_the_flatbuffer(self):
        plain = _pruned(0.05)
        dense = tflite.convert(plain, tflite.Mode("float32"))
        sparse = tflite.convert(plain, tflite.Mode("float32", sparse=True))
        self.assertEmpty(tflite.sparse_tensors(dense))
        found = tflite.sparse_tensors(sparse)
        # Every conv and dense kernel is stored sparse, in well under half
        # the bytes of its dense buffer.
        self.assertLen(found, len(export.kernels(plain)))
        for tensor in found:
            self.assertLess(tensor["stored_bytes"], tensor["dense_bytes"] / 2, tensor)
        self.assertLess(len(sparse), len(dense) / 5)

    def test_flex_ops_are_refused_by_name(self):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Lambda(keras.ops.erfinv)(inputs))
        with self.assertRaisesRegex(tflite.TFLiteConversionError, r"\['Erfinv'\].*Flex"):
            tflite.convert(model, tflite.Mode("float32"))

    def test_edge_graph_computes_the_same_function_with_a_conv_head(self):
        plain = _pruned(0.1)
        edge = tflite_graph.edge_graph(plain)
        self.assertFalse(any(isinstance(layer, keras.layers.Dense) for layer in edge.layers))
        images, _ = helpers.fashion_arrays("test", 64)
        self.assertAllClose(
            edge.predict(images, verbose=0), plain.predict(images, verbose=0), atol=1e-5
        )

    def test_edge_graph_keeps_heads_it_cannot_convert(self):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3)(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(5)(x))
        edge = tflite_graph.edge_graph(model)
        self.assertIs(edge, model)
        inputs = keras.Input((8, 8, 3))
        flat = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inputs))
        two_heads = keras.layers.Add()([keras.layers.Dense(5)(flat), keras.layers.Dense(5)(flat)])
        model = keras.Model(inputs, two_heads)
        edge = tflite_graph.edge_graph(model)
        self.assertTrue(any(isinstance(layer, keras.layers.Dense) for layer in edge.layers))
        x = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
        self.assertAllClose(edge.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)

    def test_every_op_runs_on_xnnpack(self):
        with tempfile.TemporaryDirectory() as tmp:
            mode = tflite.Mode("float32", sparse=True)
            path = _write(tflite.convert(_pruned(0.1), mode), tmp, "m.tflite")
            report = tflite.probe(path)
        self.assertTrue(report["xnnpack"]["runs"])
        # No op is left outside XNNPACK (Keras' Flatten would leave SHAPE,
        # STRIDED_SLICE and PACK; a Dense head with sparse weights, its
        # FULLY_CONNECTED ops).
        self.assertEqual(report["xnnpack"]["not_delegated"], [])
        self.assertGreater(report["latency_ms"]["32"], report["latency_ms"]["1"])
        self.assertGreater(report["load_mb"], 0)


def _report(size, clean=0.8, robust=0.5, xnnpack=True, crashed=None):
    return {
        "bytes": size,
        "gzip_bytes": size // 2,
        "xnnpack": xnnpack,
        "xnnpack_note": "runs on XNNPACK" if xnnpack else "XNNPACK failed to prepare it",
        "clean_acc": None if crashed else clean,
        "robust_acc": None if crashed else robust,
        "latency_ms": None if crashed else {"1": 0.1, "32": 1.0},
        "crashed": crashed,
    }


class ChooseTest(tf.test.TestCase):
    def test_smallest_eligible_file_wins(self):
        reports = {
            "float32": _report(1000),
            "int8": _report(300),
            "int8_sparse": _report(100, xnnpack=False),  # falls off XNNPACK
            "dynamic_int8": _report(200, clean=0.785),  # loses 1.5 points clean
            "float32_sparse": _report(150, robust=0.47),  # loses 3 points robust
            "float16": _report(120, crashed="LiteRT ended the process with signal 11"),
        }
        chosen, reasons = tflite.choose(reports, keras_clean=0.8, keras_robust=0.5)
        self.assertEqual(chosen, "int8")
        self.assertLen(reasons, len(reports) + 1)
        text = "\n".join(reasons)
        self.assertIn("int8_sparse: 100 bytes", text)
        self.assertIn("excluded: XNNPACK failed to prepare it", text)
        self.assertIn("excluded: clean accuracy 0.7850", text)
        self.assertIn("excluded: robust accuracy 0.4700", text)
        self.assertIn("excluded: LiteRT crashed on it", text)

    def test_nothing_eligible_is_an_error(self):
        with self.assertRaisesRegex(tflite.TFLiteConversionError, "No TF Lite mode"):
            tflite.choose({"int8": _report(10, xnnpack=False)}, 0.8, 0.5)


class ProbeTest(tf.test.TestCase):
    def test_a_file_litert_cannot_run_is_reported_not_raised(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = _write(b"not a flatbuffer" * 10, tmp, "bad.tflite")
            report = tflite.probe(path)
        self.assertIn("LiteRT ended the process with exit code", report["crashed"])


class DeployTest(tf.test.TestCase):
    def test_auto_picks_a_verified_file_on_xnnpack(self):
        plain = _pruned(0.01)
        images, labels = helpers.fashion_arrays("test", 200)
        train, _ = helpers.fashion_arrays("train", 100)
        attack = attacks.PGDConfig(eps=0.1, steps=5)
        with tempfile.TemporaryDirectory() as tmp:
            result = tflite.deploy(plain, tmp, "auto", images, labels, attack, train)
            self.assertTrue(os.path.exists(os.path.join(tmp, "tflite.json")))
            chosen = result["modes"][result["mode"]]
            again = tflite.probe(result["path"])
        self.assertEqual(set(result["modes"]), set(tflite.MODE_NAMES))
        # A mode that fails to prepare on XNNPACK exists for this model, and
        # auto did not pick it; the file it picked runs every conv and matmul
        # on XNNPACK when loaded again.
        self.assertIn("failed to prepare", result["modes"]["dynamic_int8_sparse"]["xnnpack_note"])
        self.assertTrue(chosen["xnnpack"])
        self.assertTrue(again["xnnpack"]["runs"], again)
        self.assertGreaterEqual(chosen["clean_acc"], result["keras_clean_acc"] - 0.01)
        self.assertGreaterEqual(chosen["robust_acc"], result["keras_robust_acc"] - 0.02)
        eligible = [line.split(":")[0] for line in result["reasons"] if line.endswith("eligible")]
        self.assertIn(result["mode"], eligible)
        self.assertLessEqual(chosen["bytes"], min(result["modes"][n]["bytes"] for n in eligible))
        # The transfer examples are real attacks: they hurt the Keras model.
        self.assertLess(result["keras_robust_acc"], result["keras_clean_acc"])


if __name__ == "__main__":
    tf.test.main()
