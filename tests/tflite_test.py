"""Tests for hydra_tf.export.tflite: the modes and the conversion (and the graph it converts)."""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from hydra_tf import export
from hydra_tf.export import tflite
from hydra_tf.export import tflite_graph
from hydra_tf.export import tflite_verify
from tests import helpers


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
        report = tflite_verify.probe(path, (inputs,), tmp)
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
        plain = helpers.pruned_plain_cnn_small(0.1)
        images, _ = helpers.fashion_arrays("test", 200)
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("float32", "float32_sparse"):
                path = _write(tflite.convert(plain, tflite.Mode.parse(mode)), tmp, "m.tflite")
                report, logits = _litert_logits(path, images)
                self.assertNotIn("crashed", report)
                self.assertAllClose(logits, plain.predict(images, verbose=0), atol=1e-4, rtol=0)

    def test_int8_agrees_with_keras_on_real_images(self):
        plain = helpers.pruned_plain_cnn_small(0.1)
        train, _ = helpers.fashion_arrays("train", tflite_verify.REPRESENTATIVE_EXAMPLES)
        images, _ = helpers.fashion_arrays("test", 500)
        with tempfile.TemporaryDirectory() as tmp:
            content = tflite.convert(plain, tflite.Mode("int8"), train)
            _, logits = _litert_logits(_write(content, tmp, "int8.tflite"), images)
        agree = np.mean(np.argmax(logits, -1) == np.argmax(plain.predict(images, verbose=0), -1))
        self.assertGreaterEqual(agree, 0.98)

    def test_int8_without_calibration_images_is_refused(self):
        with self.assertRaisesRegex(tflite.TFLiteConversionError, "representative images"):
            tflite.convert(helpers.pruned_plain_cnn_small(0.1), tflite.Mode("int8"))

    def test_sparse_encoding_is_sparse_in_the_flatbuffer(self):
        plain = helpers.pruned_plain_cnn_small(0.05)
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
        plain = helpers.pruned_plain_cnn_small(0.1)
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
            path = _write(
                tflite.convert(helpers.pruned_plain_cnn_small(0.1), mode), tmp, "m.tflite"
            )
            report = tflite_verify.probe(path)
        self.assertTrue(report["xnnpack"]["runs"])
        # No op is left outside XNNPACK (Keras' Flatten would leave SHAPE,
        # STRIDED_SLICE and PACK; a Dense head with sparse weights, its
        # FULLY_CONNECTED ops).
        self.assertEqual(report["xnnpack"]["not_delegated"], [])
        self.assertGreater(report["latency_ms"]["32"], report["latency_ms"]["1"])
        self.assertGreater(report["load_mb"], 0)


if __name__ == "__main__":
    tf.test.main()
