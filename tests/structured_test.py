"""Tests for structured (channel) pruning: gates, builders, init, phases, physical removal."""

import dataclasses
import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf import export
from hydra_tf import objectives
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import presets
from hydra_tf.experiments import records
from hydra_tf.experiments import report
from hydra_tf.export import channels
from hydra_tf.export import costs
from hydra_tf.models import architectures
from hydra_tf.models import layers as score_layers
from hydra_tf.models import masks
from hydra_tf.models import scores
from hydra_tf.objectives import bounds
from hydra_tf.pruning import phases
from tests import helpers

SHAPES = {"cnn_small": (28, 28, 1), "cnn_large": (28, 28, 1), "vgg16_bn": (32, 32, 3)}


def _random_batch_norm(model, seed=0):
    """Gives every BatchNorm non-trivial statistics and affine parameters."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()]
            )


def _channel_network(arch, keep_ratio=0.5, shape=None, seed=1):
    keras.utils.set_random_seed(seed)
    shape = shape or SHAPES.get(arch, (32, 32, 3))
    network = architectures.build(arch, shape, 10, keep_ratio=keep_ratio, granularity="channel")
    _random_batch_norm(network)
    scores.scaled_init(network)
    return network, shape


class ChannelGateTest(tf.test.TestCase):
    def test_keeps_the_top_channels_and_zeroes_the_rest(self):
        gate = score_layers.ChannelGate("conv", keep_ratio=0.5)
        gate.build((None, 3, 3, 4))
        gate.score.assign([0.3, -0.9, 0.1, 0.5])
        x = tf.random.uniform([2, 3, 3, 4]) + 1.0
        y = gate(x).numpy()
        self.assertAllClose(y[..., [1, 3]], x.numpy()[..., [1, 3]])
        self.assertAllEqual(y[..., [0, 2]], np.zeros_like(y[..., [0, 2]]))

    def test_straight_through_gradient_to_the_scores(self):
        gate = score_layers.ChannelGate("conv", keep_ratio=0.5)
        gate.build((None, 2, 2, 3))
        gate.score.assign([0.5, -0.2, 0.1])
        x = tf.random.uniform([2, 2, 2, 3])
        upstream = tf.random.normal([2, 2, 2, 3])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(gate(x) * upstream)
        grad = tape.gradient(loss, gate.score).numpy()
        # d loss / d mask_c = sum(upstream * x) over the channel; times sign(score).
        expected = tf.reduce_sum(upstream * x, axis=[0, 1, 2]).numpy() * np.sign([0.5, -0.2, 0.1])
        self.assertAllClose(grad, expected, rtol=1e-5)
        self.assertNotAllClose(grad[2], 0.0)  # a dropped channel still gets a gradient

    def test_config_round_trip_and_bad_input(self):
        gate = score_layers.ChannelGate("fc1", keep_ratio=0.25, name="fc1_channels")
        clone = score_layers.ChannelGate.from_config(gate.get_config())
        self.assertEqual(
            (clone.source, clone.keep_ratio, clone.name), ("fc1", 0.25, "fc1_channels")
        )
        with self.assertRaisesRegex(ValueError, "source must name a layer"):
            score_layers.ChannelGate("")
        with self.assertRaisesRegex(ValueError, "keep_ratio"):
            score_layers.ChannelGate("conv", keep_ratio=0.0)
        with self.assertRaisesRegex(ValueError, "granularity"):
            architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.5, granularity="row")


class BuildersTest(parameterized.TestCase, tf.test.TestCase):
    @parameterized.parameters(
        ("cnn_small", ["conv1", "conv2", "fc1"]),
        ("cnn_large", ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]),
        ("cnn_verifiable", ["conv1", "conv2", "fc1"]),
    )
    def test_every_hidden_layer_is_gated_never_the_logits(self, arch, sources):
        network, _ = _channel_network(arch)
        gates = score_layers.channel_gates(network)
        self.assertEqual([g.source for g in gates], sources)
        self.assertEqual(score_layers.scored_layers(network), [])  # plain conv / dense layers
        self.assertEqual(score_layers.pruned_layers(network), gates)

    def test_residual_sums_keep_their_channels(self):
        network, _ = _channel_network("resnet18")
        gates = score_layers.channel_gates(network)
        self.assertLen(gates, 8)  # the first conv of each basic block
        self.assertTrue(all(g.source.endswith("_conv1") for g in gates))

    def test_scaled_init_follows_filter_l1_norms(self):
        network, _ = _channel_network("cnn_large", keep_ratio=0.25)
        for gate in score_layers.channel_gates(network):
            kernel = network.get_layer(gate.source).kernel.numpy()
            norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
            fan_in = kernel.size // kernel.shape[-1]
            self.assertAllClose(gate.score.numpy(), np.sqrt(6 / fan_in) * norms / norms.max())
            # So the initial mask is L1-norm filter pruning (Li et al., 2017).
            kept = np.flatnonzero(gate.hard_mask().numpy())
            top = np.argsort(-norms, kind="stable")[: masks.kept_count(norms.size, 0.25)]
            self.assertEqual(set(kept), set(top))


class PhasesTest(tf.test.TestCase):
    def test_prune_trains_scores_only_and_finetune_everything_else(self):
        keras.utils.set_random_seed(0)
        dense = architectures.build("cnn_small", (28, 28, 1), 10)
        pruned = phases.build_network(
            "prune", "cnn_small", (28, 28, 1), 10, 0.5, granularity="channel"
        )
        origin = phases.prepare(pruned, "prune", dense)
        self.assertEqual(origin, "scaled weight magnitude")
        trainable = {v.path for v in pruned.trainable_variables}
        self.assertEqual(trainable, {f"{g.name}/score" for g in score_layers.channel_gates(pruned)})
        self.assertAllEqual(pruned.get_layer("conv1").kernel, dense.get_layer("conv1").kernel)
        tuned = phases.build_network(
            "finetune", "cnn_small", (28, 28, 1), 10, 0.5, granularity="channel"
        )
        self.assertEqual(phases.prepare(tuned, "finetune", pruned), "source checkpoint")
        names = {v.path for v in tuned.trainable_variables}
        self.assertNotIn("conv1_channels/score", names)
        self.assertIn("conv1/kernel", names)
        self.assertIn("fc2/kernel", names)


class RemovalTest(parameterized.TestCase, tf.test.TestCase):
    @parameterized.parameters(
        ("cnn_large", 0.5), ("cnn_small", 0.25), ("vgg16_bn", 0.5), ("resnet18", 0.5)
    )
    def test_smaller_network_gives_the_same_logits(self, arch, keep_ratio):
        network, shape = _channel_network(arch, keep_ratio)
        plain = export.strip_scores(network)
        x = np.random.RandomState(2).rand(3, *shape).astype("float32")
        expected = network(x, training=False).numpy()
        self.assertAllClose(plain(x, training=False).numpy(), expected, atol=1e-5, rtol=1e-5)
        self.assertLess(plain.count_params(), 0.6 * network.count_params())
        self.assertEmpty(score_layers.channel_gates(plain))
        for gate in score_layers.channel_gates(network):
            kept = masks.kept_count(gate.score.shape[0], keep_ratio)
            self.assertEqual(plain.get_layer(gate.source).kernel.shape[-1], kept)
        # It saves and loads with built-in layers only.
        path = os.path.join(tempfile.mkdtemp(), "model.keras")
        plain.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertAllClose(loaded(x).numpy(), expected, atol=1e-5, rtol=1e-5)

    def test_mixed_precision_network_exports_in_float32(self):
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            network, shape = _channel_network("cnn_small", 0.5)
            plain = export.strip_scores(network)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        computing = [
            layer for layer in plain.layers if not isinstance(layer, keras.layers.InputLayer)
        ]
        self.assertEqual({layer.compute_dtype for layer in computing}, {"float32"})
        self.assertEqual(plain.inputs[0].dtype, "float32")
        x = np.random.RandomState(4).rand(3, *shape).astype("float32")
        self.assertAllClose(plain(x).numpy(), network(x).numpy(), atol=2e-2, rtol=2e-2)

    def test_interval_bounds_match_the_smaller_network(self):
        network, shape = _channel_network("cnn_large", 0.5)
        plain = export.strip_scores(network)
        x = np.random.RandomState(3).rand(2, *shape).astype("float32")
        box = bounds.IntervalBounds.from_linf(x, 0.01)
        gated = bounds.propagate_network(network, box)
        small = bounds.propagate_network(plain, box)
        self.assertAllClose(gated.lower, small.lower, atol=1e-5)
        self.assertAllClose(gated.upper, small.upper, atol=1e-5)

    def test_a_gate_before_a_residual_sum_is_refused_by_name(self):
        inputs = keras.Input((8, 8, 4))
        x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
        x = keras.layers.ReLU()(x)
        x = score_layers.ChannelGate("conv", keep_ratio=0.5, name="conv_channels")(x)
        x = keras.layers.Add(name="sum")([x, inputs])
        outputs = keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(x))
        model = keras.Model(inputs, outputs)
        with self.assertRaisesRegex(channels.ChannelRemovalError, "'conv_channels'.*'sum'"):
            export.strip_scores(model)

    def test_a_source_used_elsewhere_is_refused(self):
        inputs = keras.Input((8, 8, 2))
        conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
        gated = score_layers.ChannelGate("conv", keep_ratio=0.5, name="conv_channels")(
            keras.layers.ReLU()(conv)
        )
        both = keras.layers.Concatenate()([gated, conv])
        outputs = keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(both))
        with self.assertRaisesRegex(channels.ChannelRemovalError, "also used by"):
            export.strip_scores(keras.Model(inputs, outputs))


class CostsTest(tf.test.TestCase):
    def test_hand_counted(self):
        inputs = keras.Input((6, 6, 2))
        x = keras.layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False)(inputs)
        x = keras.layers.Flatten()(x)
        outputs = keras.layers.Dense(4)(x)
        model = keras.Model(inputs, outputs)
        model.layers[1].set_weights([np.zeros((3, 3, 2, 3), "float32")])
        counted = costs.costs(model)
        # conv: 3x3 output positions x 3*3*2*3 weights; dense: 27 x 4.
        self.assertEqual(counted.macs, 9 * 54 + 27 * 4)
        self.assertEqual(counted.params, 54 + 27 * 4 + 4)
        self.assertEqual(
            counted.nonzero_params,
            np.count_nonzero(model.layers[3].kernel) + np.count_nonzero(model.layers[3].bias),
        )

    def test_removing_half_the_channels_quarters_the_inner_work(self):
        keras.utils.set_random_seed(0)
        dense = architectures.build("cnn_large", (28, 28, 1), 10)
        network, _ = _channel_network("cnn_large", 0.5)
        full = costs.costs(export.strip_scores(dense)).macs
        half = costs.costs(export.strip_scores(network)).macs
        self.assertBetween(half / full, 0.24, 0.27)


class StructuredPipelineTest(tf.test.TestCase):
    def test_tiny_structured_pipeline(self):
        workdir = tempfile.mkdtemp()
        settings = dict(presets.PRESETS["tiny"])
        settings.update(train_limit=256, test_limit=32, eval_steps=3)
        config = pipeline.PipelineConfig(
            workdir=workdir,
            keep_ratios=(0.5,),
            granularity="channel",
            tflite_mode="float32",
            objective=objectives.config("pgd_at", eps=0.1, steps=2, step_size=0.05),
            **settings,
        )
        results = pipeline.run(config)
        names = [(r.method, r.keep_ratio) for r in results.rows]
        self.assertEqual(names, [("dense", 1.0), ("hydra", 0.5), ("lwm", 0.5)])
        self.assertTrue(os.path.isdir(os.path.join(workdir, "hydra_channels_0.5", "prune")))
        dense, hydra, lwm = results.rows
        for row in (hydra, lwm):
            self.assertBetween(row.params / dense.params, 0.2, 0.3)  # half of in and out
            self.assertBetween(row.macs / dense.macs, 0.2, 0.3)
            # The channels are gone, not zeroed: nearly every parameter left is non-zero.
            self.assertGreater(row.nonzero_params, 0.95 * row.params)
            self.assertIsNotNone(row.tflite.latency_ms)
            self.assertLess(row.tflite.bytes, 0.4 * dense.tflite.bytes)
        self.assertBetween(results.kept_overlap, 0.0, 1.0)
        self.assertEqual(pipeline.results_dir(config), os.path.join(workdir, "channels"))
        self.assertFalse(os.path.exists(os.path.join(workdir, "results.json")))
        with open(os.path.join(workdir, "channels", "results.md")) as f:
            table = f.read()
        self.assertIn("(plots/kept_magnitudes.png)", table)
        self.assertTrue(os.path.exists(os.path.join(workdir, "channels", "plots")))
        self.assertIn("50% pruned of channels", table)
        self.assertIn("L1-norm filter pruning", table)
        self.assertIn("| params (non-zero) | MMACs |", table)
        self.assertIn("Parameters of the exported (smaller) networks:", table)
        self.assertIn("of the channels HYDRA keeps are among the largest-L1-norm filters", table)


def _deployed_row(method, keep_ratio, robust, latency, params):
    tflite = records.TFLiteRow(
        requested="float32",
        path="model.tflite",
        mode="float32",
        bytes=4 * params,
        gzip_bytes=3 * params,
        clean_acc=0.8,
        robust_acc=robust,
        keras_clean_acc=0.8,
        keras_robust_acc=robust,
        latency_ms={"1": latency, "32": 20 * latency},
        load_mb=1.0,
        xnnpack=True,
        num_examples=100,
    )
    return records.Row(
        method=method,
        keep_ratio=keep_ratio,
        clean_acc=0.8,
        robust_acc=robust,
        num_examples=100,
        attack={"name": "autoattack", "eps": 0.1},
        sparsity=0.0,
        layer_sparsity={},
        keras_path="model.keras",
        saved_model_path="model_savedmodel",
        eval_seconds=1.0,
        params=params,
        nonzero_params=params if method == "dense" or keep_ratio > 0.2 else params // 100,
        macs=10 * params,
        tflite=tflite,
    )


def _results(granularity, rows, arch="cnn_large"):
    config = {"arch": arch, "dataset": "fashion_mnist", "granularity": granularity}
    return records.PipelineResults(config=config, rows=tuple(rows))


class DeploymentTest(tf.test.TestCase):
    def _runs(self):
        dense = _deployed_row("dense", 1.0, 0.40, 0.20, 1000)
        unstructured = _results(
            "weight",
            [
                dense,
                _deployed_row("hydra", 0.01, 0.30, 0.21, 1000),
                _deployed_row("lwm", 0.01, 0.2, 0.22, 1000),
            ],
        )
        structured = _results(
            "channel",
            [
                dense,
                _deployed_row("hydra", 0.5, 0.35, 0.05, 250),
                _deployed_row("lwm", 0.5, 0.33, 0.05, 250),
            ],
        )
        return unstructured, structured

    def test_points_and_the_trade_at_equal_latency(self):
        points = report.deployment_points(self._runs())
        self.assertEqual(
            [(p["group"], p["label"]) for p in points],
            [
                ("dense", "dense"),
                ("unstructured HYDRA", "0.01"),
                ("unstructured LWM", "0.01"),
                ("structured HYDRA", "0.5"),
                ("structured LWM", "0.5"),
            ],
        )
        lines = "\n".join(report.deployment_comparison(points, "AutoAttack"))
        self.assertIn(
            "| structured HYDRA | 0.5 | 250 (250) | 0.00 | 1,000 | 0.050 / 1.00 | 80.0 | 35.0 |",
            lines,
        )
        self.assertIn(
            "- structured keep 0.5: 0.050 ms, robust 35.0%; unstructured keep 0.01: 0.210 ms "
            "(4.2x slower), robust 30.0%.",
            lines,
        )

    def test_refuses_mixed_architectures_and_missing_files(self):
        unstructured, _ = self._runs()
        other = _results("channel", unstructured.rows, arch="vgg16_bn")
        with self.assertRaisesRegex(ValueError, "one architecture and dataset"):
            report.deployment_points([unstructured, other])
        bare = dataclasses.replace(unstructured.rows[1], tflite=None)
        with self.assertRaisesRegex(ValueError, "hydra keep 0.01 has no measured TF Lite file"):
            report.deployment_points([_results("weight", [unstructured.rows[0], bare])])

    def test_binary_writes_table_and_plot(self):
        directory = tempfile.mkdtemp()
        paths = []
        for index, results in enumerate(self._runs()):
            paths.append(os.path.join(directory, f"results{index}.json"))
            with open(paths[-1], "w") as f:
                json.dump(results.to_json(), f)
        out = os.path.join(directory, "deployment")
        done = helpers.run_module(
            "binaries.deployment", *[f"--results={p}" for p in paths], f"--output_dir={out}"
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        with open(os.path.join(out, "deployment.md")) as f:
            self.assertIn("(4.2x slower)", f.read())
        self.assertGreater(os.path.getsize(os.path.join(out, "robust_vs_latency.png")), 1000)
        missing = helpers.run_module(
            "binaries.deployment", f"--results={directory}/nope.json", f"--output_dir={out}"
        )
        self.assertEqual(missing.returncode, 1)
        self.assertIn("No results file at", missing.stderr.strip().splitlines()[-1])
