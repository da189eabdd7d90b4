"""Tests for hydra_tf.prune / strip / set_phase on models we did not build."""

import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import hydra_tf
from hydra_tf import export
from hydra_tf import objectives
from hydra_tf.export import channels
from hydra_tf.export import costs
from hydra_tf.export import tflite
from hydra_tf.export import tflite_verify
from hydra_tf.models import kinds
from hydra_tf.models import layers as score_layers
from hydra_tf.models import masks
from hydra_tf.objectives import attacks
from hydra_tf.objectives import bounds
from hydra_tf.pruning import wrapping
from hydra_tf.training import trainer as trainer_lib
from tests import helpers


def _randomize_batch_norm(model, seed=0):
    rng = np.random.RandomState(seed)
    for layer in score_layers.walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()]
            )


def _images(shape, n=4, seed=0):
    return np.random.RandomState(seed).uniform(0, 1, (n, *shape)).astype("float32")


def _box(shape):
    return bounds.IntervalBounds.from_linf(tf.zeros((1, *shape)), 0.1)


def _residual_model():
    """conv-BN-relu6, depthwise (no bias), a residual add, global pooling, logits."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    y = keras.layers.Conv2D(16, 1, name="expand")(x)
    y = keras.layers.BatchNormalization(name="expand_bn")(y)
    y = keras.layers.ReLU(6.0, name="expand_relu")(y)
    y = keras.layers.ZeroPadding2D(1, name="pad")(y)
    y = keras.layers.DepthwiseConv2D(3, use_bias=False, name="depthwise")(y)
    y = keras.layers.BatchNormalization(name="depthwise_bn")(y)
    y = keras.layers.ReLU(6.0, name="depthwise_relu")(y)
    y = keras.layers.Conv2D(8, 1, name="project")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(16, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(5, name="logits")(x)
    model = keras.Model(inputs, outputs, name="residual")
    _randomize_batch_norm(model)
    return model


def _conv1d_model():
    return keras.Sequential(
        [
            keras.Input((20, 2)),
            keras.layers.Conv1D(6, 3, strides=2, padding="same", activation="relu", name="c1"),
            keras.layers.Conv1D(4, 3, name="c2"),
            keras.layers.ReLU(name="r2"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="signal",
    )


def _nested_shared_model():
    """A Sequential block inside a functional model, and one Dense layer used twice."""
    block = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, activation="relu", name="inner")], name="block"
    )
    shared = keras.layers.Dense(8, activation="relu", name="shared")
    inputs = keras.Input((8,))
    x = shared(inputs)
    x = block(x)
    x = shared(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs, name="nested")


class PruneWeightsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("residual", _residual_model, (12, 12, 3)),
        ("conv1d", _conv1d_model, (20, 2)),
        ("nested_shared", _nested_shared_model, (8,)),
    )
    def test_every_layer_scored_and_same_function_at_full_keep(self, build, shape):
        model = build()
        pruned = hydra_tf.prune(model, keep_ratio=1.0)
        plain = [layer for layer in score_layers.walk(model) if kinds.is_prunable(layer)]
        scored = score_layers.scored_layers(pruned)
        self.assertEqual([layer.name for layer in scored], [layer.name for layer in plain])
        self.assertEqual(pruned.name, model.name)
        x = _images(shape)
        self.assertAllClose(pruned(x), model(x), atol=1e-5)

    def test_shared_layer_stays_shared(self):
        pruned = hydra_tf.prune(_nested_shared_model(), keep_ratio=0.5)
        shared = [layer for layer in pruned.layers if layer.name == "shared"]
        self.assertLen(shared, 1)
        self.assertIsInstance(shared[0], hydra_tf.ScoredDense)
        self.assertLen(shared[0]._inbound_nodes, 2)

    def test_scores_start_from_weight_magnitude(self):
        model = _residual_model()
        pruned = hydra_tf.prune(model, keep_ratio=0.3)
        for layer in score_layers.scored_layers(pruned):
            kernel = model.get_layer(layer.name).kernel.numpy()
            self.assertAllClose(layer.kernel, kernel)
            # The mask is LWM's: the top 30% of |w| of the layer.
            expected = masks.hard_topk(tf.constant(kernel), 0.3)
            self.assertAllEqual(layer.hard_mask(), expected)
        self.assertIsInstance(pruned.get_layer("depthwise"), hydra_tf.ScoredDepthwiseConv2D)

    def test_layers_selects_by_name_or_function(self):
        model = _residual_model()
        by_name = hydra_tf.prune(model, 0.5, layers=["expand", "project"])
        self.assertEqual(
            [layer.name for layer in score_layers.scored_layers(by_name)], ["expand", "project"]
        )
        first_last = {"stem", "logits"}
        by_function = hydra_tf.prune(model, 0.5, layers=lambda layer: layer.name not in first_last)
        names = {layer.name for layer in score_layers.scored_layers(by_function)}
        self.assertEqual(names, {"expand", "depthwise", "project", "fc"})
        with self.assertRaisesRegex(ValueError, "'nope'"):
            hydra_tf.prune(model, 0.5, layers=["expand", "nope"])

    @parameterized.named_parameters(
        ("residual", _residual_model, (12, 12, 3)),
        ("conv1d", _conv1d_model, (20, 2)),
        ("nested_shared", _nested_shared_model, (8,)),
    )
    def test_strip_gives_plain_layers_and_the_same_outputs(self, build, shape):
        pruned = hydra_tf.prune(build(), keep_ratio=0.2)
        plain = hydra_tf.strip(pruned)
        x = _images(shape)
        self.assertAllClose(plain(x), pruned(x), atol=1e-5)
        self.assertEmpty(score_layers.mask_layers(plain))
        path = os.path.join(helpers.make_tempdir(self), "plain.keras")
        plain.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        self.assertAllClose(loaded(x), pruned(x), atol=1e-5)
        self.assertGreater(masks.sparsity(export.kernels(plain)), 0.7)


class PruneChannelsTest(tf.test.TestCase):
    def test_gates_where_channels_can_go_and_never_on_logits_or_sums(self):
        pruned = hydra_tf.prune(_residual_model(), keep_ratio=0.5, granularity="channel")
        sources = {gate.source: gate for gate in score_layers.channel_gates(pruned)}
        # expand's gate follows its chain through the depthwise convolution;
        # stem and project feed the residual sum, logits are the output.
        self.assertEqual(set(sources), {"expand", "fc"})
        self.assertEqual(
            sources["expand"]._inbound_nodes[0].input_tensors[0]._keras_history.operation.name,
            "depthwise_relu",
        )

    def test_strip_removes_channels_and_keeps_the_logits(self):
        pruned = hydra_tf.prune(_residual_model(), keep_ratio=0.25, granularity="channel")
        plain = hydra_tf.strip(pruned)
        x = _images((12, 12, 3))
        self.assertAllClose(plain(x), pruned(x), atol=1e-5)
        self.assertEqual(plain.get_layer("expand").filters, 4)
        self.assertEqual(tuple(plain.get_layer("depthwise").kernel.shape), (3, 3, 4, 1))
        self.assertEqual(tuple(plain.get_layer("project").kernel.shape), (1, 1, 4, 8))
        self.assertEqual(plain.get_layer("fc").units, 4)
        self.assertEqual(plain.output.shape[-1], 5)

    def test_sequential_channels(self):
        model = _conv1d_model()
        pruned = hydra_tf.prune(model, keep_ratio=0.5, granularity="channel")
        self.assertEqual({g.source for g in score_layers.channel_gates(pruned)}, {"c1", "c2"})
        plain = hydra_tf.strip(pruned)
        x = _images((20, 2))
        self.assertAllClose(plain(x), pruned(x), atol=1e-5)
        self.assertLess(costs.costs(plain).macs, costs.costs(model).macs / 2)

    def test_batch_norm_after_a_gate_is_refused(self):
        inputs = keras.Input((6, 6, 2))
        x = keras.layers.Conv2D(4, 3, name="a")(inputs)
        gated = hydra_tf.ChannelGate("a", keep_ratio=0.5, name="a_channels")(x)
        x = keras.layers.BatchNormalization(name="bn")(gated)
        x = keras.layers.Conv2D(3, 3, name="b")(x)
        model = keras.Model(inputs, keras.layers.Flatten()(x))
        with self.assertRaisesRegex(channels.ChannelRemovalError, "'bn'"):
            channels.plan(model)


class RefusalTest(tf.test.TestCase):
    def test_subclassed_model(self):
        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.dense = keras.layers.Dense(2)

            def call(self, x):
                return self.dense(x)

        net = Net()
        net(np.zeros((1, 3), "float32"))
        with self.assertRaisesRegex(wrapping.UnwrappableModelError, "not a built functional"):
            hydra_tf.prune(net, 0.5)

    def test_dilated_convolution_named(self):
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(2, 3, dilation_rate=2, name="dilated"),
                keras.layers.Flatten(),
                keras.layers.Dense(2, name="logits"),
            ]
        )
        with self.assertRaisesRegex(wrapping.UnwrappableModelError, "'dilated'.*dilation_rate"):
            hydra_tf.prune(model, 0.5)
        # Left out, the rest prunes.
        pruned = hydra_tf.prune(model, 0.5, layers=["logits"])
        self.assertLen(score_layers.scored_layers(pruned), 1)

    def test_softmax_output(self):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        with self.assertRaisesRegex(wrapping.UnwrappableModelError, "softmax.*logits"):
            hydra_tf.prune(model, 0.5)

    def test_custom_layer_hiding_a_dense(self):
        class Block(keras.layers.Layer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.inner = keras.layers.Dense(3, name="hidden_dense")

            def call(self, x):
                return self.inner(x)

        inputs = keras.Input((4,))
        model = keras.Model(inputs, Block(name="block")(inputs))
        with self.assertRaisesRegex(wrapping.UnwrappableModelError, "'block'.*hidden_dense"):
            hydra_tf.prune(model, 0.5)

    def test_already_pruned_and_bad_arguments(self):
        pruned = hydra_tf.prune(_conv1d_model(), 0.5)
        with self.assertRaisesRegex(wrapping.UnwrappableModelError, "already has score layers"):
            hydra_tf.prune(pruned, 0.5)
        with self.assertRaisesRegex(ValueError, "keep_ratio"):
            hydra_tf.prune(_conv1d_model(), 1.5)
        with self.assertRaisesRegex(ValueError, "granularity"):
            hydra_tf.prune(_conv1d_model(), 0.5, granularity="block")

    def test_bounds_refuse_relu6_and_dilation(self):
        # A ReLU6 is not max(x, 0): bounding it as one would be unsound.
        self.assertIsNone(kinds.kind(keras.layers.ReLU(6.0)))
        self.assertIsNone(kinds.kind(keras.layers.ReLU(negative_slope=0.1)))
        self.assertEqual(kinds.kind(keras.layers.ReLU()), "relu")
        model = _residual_model()
        with self.assertRaisesRegex(bounds.UnsupportedLayerError, "stem_relu"):
            bounds.propagate_network(model, _box((12, 12, 3)))
        dilated = keras.Sequential(
            [keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, dilation_rate=2, name="d")]
        )
        with self.assertRaisesRegex(bounds.UnsupportedLayerError, "dilation_rate"):
            bounds.propagate_network(dilated, _box((8, 8, 1)))


class VerifiableTest(tf.test.TestCase, parameterized.TestCase):
    """Bounds and verifiable objectives on a pruned Sequential model."""

    def _sequential(self):
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(4, 3, strides=2, name="c"),
                keras.layers.ReLU(name="r"),
                keras.layers.Flatten(name="f"),
                keras.layers.Dense(8, name="d"),
                keras.layers.ReLU(name="r2"),
                keras.layers.Dense(3, name="logits"),
            ],
            name="seq",
        )

    @parameterized.parameters("crown_ibp", "full")
    def test_crown_on_sequential_equals_functional(self, mode):
        # A Sequential model does not list its input layer; the backward walk
        # must still reach it.
        model = hydra_tf.prune(self._sequential(), 0.5)
        functional = keras.Model(model.inputs[0], model.outputs[0], name="seq")
        x = tf.constant(_images((8, 8, 1), n=3))
        box = bounds.IntervalBounds.from_linf(x, 0.05)
        spec = bounds.margin_specification(tf.constant([0, 1, 2]), 3)
        got = bounds.backward_bounds(model, box, spec, mode=mode)
        expected = bounds.backward_bounds(functional, box, spec, mode=mode)
        for a, b in zip(got, expected):
            self.assertAllClose(a, b)
        # And they hold: the margins of sampled points stay above the lower bound.
        points = x + tf.random.stateless_uniform((200, *x.shape), (1, 2), -0.05, 0.05)
        points = tf.clip_by_value(points, 0.0, 1.0)
        logits = tf.stack([model(points[i]) for i in range(200)])
        margins = tf.einsum("bsc,nbc->nbs", spec, logits)
        self.assertAllGreaterEqual(margins - got[0][None], -1e-5)

    @parameterized.parameters("ibp", "crown_ibp", "mixtrain")
    def test_verifiable_objective_trains_a_pruned_sequential(self, name):
        pruned = hydra_tf.prune(self._sequential(), 0.5, granularity="channel")
        hydra_tf.set_phase(pruned, "prune")
        config = objectives.config(name, eps=0.1, warmup_epochs=0, ramp_epochs=1, samples=2)
        trainer = trainer_lib.RobustTrainer(pruned, objectives.make(config, steps_per_epoch=2))
        trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
        scores = [gate.score.numpy() for gate in score_layers.channel_gates(pruned)]
        history = trainer.fit(
            _images((8, 8, 1), n=8), np.arange(8) % 3, batch_size=4, epochs=1, verbose=0
        )
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        moved = [
            np.any(gate.score.numpy() != s)
            for gate, s in zip(score_layers.channel_gates(pruned), scores)
        ]
        self.assertTrue(any(moved))


class PhasesTest(tf.test.TestCase):
    def _fit(self, network, objective, steps=2):
        trainer = trainer_lib.RobustTrainer(network, objective)
        trainer.compile(optimizer=keras.optimizers.SGD(0.5))
        x = _images((12, 12, 3), n=8)
        y = np.arange(8) % 5
        trainer.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=steps, verbose=0)

    def test_prune_trains_scores_only_then_finetune_weights_only(self):
        pruned = hydra_tf.prune(_residual_model(), keep_ratio=0.3)
        hydra_tf.set_phase(pruned, "prune")
        layers = score_layers.scored_layers(pruned)
        kernels = [layer.kernel.numpy() for layer in layers]
        scores_before = [layer.score.numpy() for layer in layers]
        self._fit(pruned, objectives.Natural())
        for layer, kernel, score in zip(layers, kernels, scores_before):
            self.assertAllEqual(layer.kernel, kernel)
        self.assertTrue(any(np.any(l.score.numpy() != s) for l, s in zip(layers, scores_before)))

        hydra_tf.set_phase(pruned, "finetune")
        masks_before = [layer.hard_mask().numpy() for layer in layers]
        for layer, mask in zip(layers, masks_before):
            self.assertAllEqual(layer.kernel.numpy() * (1 - mask), np.zeros_like(mask))
        kernels = [layer.kernel.numpy() for layer in layers]
        self._fit(pruned, objectives.Trades(attacks.PGDConfig(eps=0.05, steps=2)))
        for layer, mask in zip(layers, masks_before):
            self.assertAllEqual(layer.hard_mask(), mask)
        self.assertTrue(any(np.any(l.kernel.numpy() != k) for l, k in zip(layers, kernels)))


class ApplicationsTest(tf.test.TestCase, parameterized.TestCase):
    """keras.applications networks (random weights, small inputs): prune, train, strip, convert."""

    @parameterized.named_parameters(
        ("mobilenet_v2_weight", "MobileNetV2", "weight"),
        ("mobilenet_v2_channel", "MobileNetV2", "channel"),
        ("resnet50_channel", "ResNet50", "channel"),
        ("efficientnet_b0_weight", "EfficientNetB0", "weight"),
    )
    def test_prune_strip_same_logits(self, name, granularity):
        kwargs = {"alpha": 0.35} if name == "MobileNetV2" else {}
        model = getattr(keras.applications, name)(
            input_shape=(32, 32, 3),
            weights=None,
            classes=10,
            classifier_activation=None,
            **kwargs,
        )
        _randomize_batch_norm(model)
        pruned = hydra_tf.prune(model, keep_ratio=0.5, granularity=granularity)
        self.assertNotEmpty(score_layers.mask_layers(pruned))
        x = _images((32, 32, 3), n=2)
        plain = hydra_tf.strip(pruned)
        self.assertAllClose(plain(x), pruned(x), rtol=1e-4, atol=1e-4)
        if granularity == "channel":
            self.assertLess(plain.count_params(), model.count_params())


class DeploymentTest(tf.test.TestCase):
    def test_robust_prune_step_then_tflite_on_a_user_model(self):
        # The residual model has what MobileNetV2 has (ReLU6, depthwise,
        # padding, a residual sum) at a size a test can train and convert.
        pruned = hydra_tf.prune(_residual_model(), keep_ratio=0.1)
        hydra_tf.set_phase(pruned, "prune")
        attack = attacks.PGDConfig(eps=8 / 255, steps=2)
        trainer = trainer_lib.RobustTrainer(pruned, objectives.Trades(attack))
        trainer.compile(optimizer=keras.optimizers.SGD(0.1))
        x = _images((12, 12, 3), n=4)
        history = trainer.fit(x, np.arange(4), batch_size=4, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        plain = hydra_tf.strip(pruned)
        directory = helpers.make_tempdir(self)
        path = os.path.join(directory, "residual.tflite")
        with open(path, "wb") as f:
            f.write(tflite.convert(plain, tflite.Mode("float32")))
        np.save(os.path.join(directory, "x.npy"), x)
        report = tflite_verify.probe(path, (os.path.join(directory, "x.npy"),), directory)
        self.assertNotIn("crashed", report)
        logits = np.load(os.path.join(directory, "x.logits.npy"))
        self.assertAllClose(logits, plain(x), atol=1e-4)


if __name__ == "__main__":
    tf.test.main()
