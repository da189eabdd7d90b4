"""Tests for results/adversarial/first_layer.py: the live filters of a pruned first layer."""

import importlib.util
import os

import numpy as np
import tensorflow as tf

from hydra_tf.models import architectures

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location(
    "first_layer", os.path.join(_ROOT, "results", "adversarial", "first_layer.py")
)
first_layer = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(first_layer)


class FirstLayerTest(tf.test.TestCase):
    def test_each_live_filter_and_the_radius_that_switches_it_on(self):
        # cnn_small at 99%: conv1 (4 x 4 x 1 x 32 = 512 weights) keeps 5, the top
        # scores: channel 0 one weight 4 (bias -0.3: on above 0.075), channel 1 two
        # weights 2 and -1 (bias -0.5: 0.25), channel 2 one weight -1 (never on),
        # channel 4 one weight 0.5 (bias -2: it would need 4, outside [0, 1]). Channel
        # 3's weight has the sixth score: masked, so channel 3 is not listed; nor is
        # any other weight (0.3, score 0).
        network = architectures.build("cnn_small", (28, 28, 1), 10, keep_ratio=0.01)
        layer = first_layer.first_layer(network)
        self.assertEqual(layer.name, "conv1")
        kernel = np.full((4, 4, 1, 32), 0.3, np.float32)
        score = np.zeros_like(kernel)
        live = {(0, 0, 0): 4.0, (0, 1, 1): 2.0, (1, 1, 1): -1.0, (0, 0, 2): -1.0}
        live.update({(3, 3, 4): 0.5})
        for (i, j, c), w in live.items():
            kernel[i, j, 0, c], score[i, j, 0, c] = w, 1.0
        kernel[2, 2, 0, 3], score[2, 2, 0, 3] = 1.0, 0.5
        bias = np.zeros(32, np.float32)
        bias[:5] = [-0.3, -0.5, -0.1, 0.2, -2.0]
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
        layer.score.assign(score)
        rows = {r["channel"]: r for r in first_layer.filters(layer)}
        self.assertEqual(sorted(rows), [0, 1, 2, 4])
        self.assertEqual([rows[c]["live"] for c in (0, 1, 2, 4)], [1, 2, 1, 1])
        self.assertAlmostEqual(rows[0]["switch_on"], 0.075)
        self.assertAlmostEqual(rows[1]["switch_on"], 0.25)
        self.assertIsNone(rows[2]["switch_on"])
        self.assertAlmostEqual(rows[4]["switch_on"], 4.0)
        self.assertEqual([rows[c]["can_be_on"] for c in (0, 1, 2, 4)], [True, True, False, False])
        # A bias >= 0 is on at zero.
        layer.score.assign(np.where(kernel == 1.0, 2.0, score))
        self.assertEqual(
            next(r for r in first_layer.filters(layer) if r["channel"] == 3)["switch_on"], 0.0
        )


if __name__ == "__main__":
    tf.test.main()
