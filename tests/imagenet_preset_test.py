"""Tests for the ImageNet setting: the `imagenet` preset, the resnet50 architecture."""

import keras
import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from binaries import pipeline as pipeline_binary
from hydra_tf import data
from hydra_tf import objectives
from hydra_tf.models import architectures
from hydra_tf.models import layers as score_layers
from hydra_tf.models import masks
from hydra_tf.pruning import phases


def _config(*argv):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", *argv])
        try:
            return pipeline_binary.config_from_flags()
        finally:
            flags.FLAGS.unparse_flags()


class PresetTest(tf.test.TestCase):
    def test_imagenet_preset_is_the_papers_setting(self):
        config = _config("--preset=imagenet")
        self.assertEqual(config.dataset, "imagenet2012")
        self.assertEqual(config.arch, "resnet50")
        self.assertEqual(config.objective, objectives.FreeATConfig(eps=4 / 255, replays=4))
        self.assertEqual(
            (config.batch_size, config.optimizer, config.pretrain_lr, config.weight_decay),
            (256, "sgd", 0.1, 1e-4),
        )
        self.assertEqual((config.test_limit, config.eval_attack), (5000, "autoattack"))
        # 90 epochs of gradient computations are ceil(90 / 4) = 23 passes.
        self.assertEqual(objectives.data_epochs(config.objective, config.pretrain_epochs), 23)

    def test_flags_override_the_preset(self):
        config = _config(
            "--preset=imagenet",
            "--eps=0.01",
            "--free_replays=2",
            "--batch_size=64",
            "--arch=resnet18",
        )
        self.assertEqual(config.objective, objectives.FreeATConfig(eps=0.01, replays=2))
        self.assertEqual((config.batch_size, config.arch), (64, "resnet18"))
        self.assertEqual(config.dataset, "imagenet2012")
        config = _config("--preset=imagenet", "--objective=trades", "--dataset=cifar10")
        self.assertEqual(config.objective.name, "trades")
        self.assertEqual(config.dataset, "cifar10")

    def test_size_presets_keep_the_flags_dataset_and_objective(self):
        config = _config("--preset=tiny")
        self.assertEqual((config.dataset, config.arch), ("fashion_mnist", "cnn_small"))
        self.assertEqual(config.objective.name, "trades")


class MockDataTest(tf.test.TestCase):
    def test_mock_data_replaces_tfds_datasets(self):
        with flagsaver.flagsaver():
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["pipeline", "--mock_data=3"])
            try:
                with pipeline_binary._mock_data():
                    dataset, count = data.load("imagenet2012", "test", None, 3)
                    images = [image for image, _ in dataset]
            finally:
                flags.FLAGS.unparse_flags()
        self.assertEqual(count, 3)
        self.assertEqual([tuple(image.shape) for image in images], [(224, 224, 3)] * 3)


class ResNet50Test(tf.test.TestCase):
    def test_plain_and_pruned_share_names_and_normalise_inside(self):
        plain = architectures.build("resnet50", (32, 32, 3), 10)
        self.assertEqual(plain.name, "resnet50")
        norm = plain.get_layer("imagenet_normalization")
        self.assertIsInstance(norm, keras.layers.Normalization)
        pruned = architectures.build("resnet50", (32, 32, 3), 10, keep_ratio=0.1)
        scored = score_layers.scored_layers(pruned)
        self.assertLen(scored, 54)  # 53 convolutions and the classifier
        # The prune phase loads the dense network by name and starts from its magnitudes.
        phases.prepare(pruned, "prune", source=plain)
        x = np.random.RandomState(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
        layer = pruned.get_layer("conv1_conv")
        self.assertAllClose(layer.kernel, plain.get_layer("conv1_conv").kernel)
        # Its mask is the magnitude mask (LWM's) until the scores train.
        self.assertAllEqual(layer.hard_mask(), masks.hard_topk(layer.kernel, 0.1))
        self.assertEqual(pruned(x).shape, (2, 10))
        channels = architectures.build(
            "resnet50", (32, 32, 3), 10, keep_ratio=0.5, granularity="channel"
        )
        self.assertLen(score_layers.channel_gates(channels), 33)


if __name__ == "__main__":
    tf.test.main()
