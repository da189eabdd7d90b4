"""Tests for results/adversarial/first_layer.py: the live filters of a pruned first layer."""

import importlib.util
import json
import os
import tempfile

import keras
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

    def test_a_study_table_ranks_square_s_points_by_the_lowest_threshold(self):
        # A study workdir of plain networks whose first layer is one 1 x 1 filter,
        # weight 1: a threshold on every pixel at -bias. The pruned networks' Square
        # points fall as the threshold rises to eps and past it; the dense network
        # and a network evaluated with PGD alone are left out of the correlation.
        workdir = tempfile.mkdtemp()

        def stage(seed, name, phase, threshold, stages):
            directory = os.path.join(workdir, f"seed{seed}", name)
            os.makedirs(os.path.join(directory, phase))
            network = keras.Sequential(
                [
                    keras.Input((4, 4, 1)),
                    keras.layers.Conv2D(1, 1, activation="relu"),
                    keras.layers.Flatten(),
                    keras.layers.Dense(2),
                ]
            )
            network.layers[0].set_weights([np.ones((1, 1, 1, 1)), np.array([-threshold])])
            network.save(os.path.join(directory, phase, "model.keras"))
            with open(os.path.join(directory, "eval.json"), "w") as f:
                json.dump({"stages": stages}, f)

        def autoattack(before, after):
            return [
                {"attack": "fab-t", "robust_acc": before},
                {"attack": "square", "robust_acc": after},
            ]

        stage(0, "dense", "pretrain", 0.02, autoattack(0.7, 0.69))
        stage(0, "hydra_0.01", "finetune", 0.05, autoattack(0.6, 0.5))
        stage(0, "hydra_0.1", "finetune", 0.09, autoattack(0.7, 0.67))
        stage(1, "hydra_0.01", "finetune", 0.2, autoattack(0.6, 0.595))
        stage(1, "lwm_equal_0.01", "finetune", 0.01, [{"attack": "pgd", "robust_acc": 0.5}])
        rows = first_layer.study_rows(workdir, 0.1)
        self.assertEqual(
            [(r["seed"], r["stage"], r["within"], r["lowest"]) for r in rows],
            [
                ("seed0", "dense", 1, 0.02),
                ("seed0", "hydra_0.01", 1, 0.05),
                ("seed0", "hydra_0.1", 1, 0.09),
                ("seed1", "hydra_0.01", 0, None),
            ],
        )
        self.assertEqual([r["square"] for r in rows], [1.0, 10.0, 3.0, 0.5])
        table = first_layer.study_table(rows, 0.1)
        self.assertIn("| seed0 | hydra_0.01 | 1 | 1 | 0.0500 | 10.00 |", table)
        self.assertIn("| seed1 | hydra_0.01 | 1 | 0 | none | 0.50 |", table)
        self.assertIn("over the 3 pruned networks: 1.00", table)
        # With no threshold below eps anywhere there is nothing to rank by: said, not nan.
        flat = [dict(r, lowest=None) for r in rows]
        table = first_layer.study_table(flat, 0.1)
        self.assertNotIn("nan", table)
        self.assertIn("the same lowest switch-on below eps (none)", table)
        with self.assertRaisesRegex(ValueError, "No network evaluated with AutoAttack"):
            first_layer.study_rows(os.path.join(workdir, "seed1"), 0.1)


if __name__ == "__main__":
    tf.test.main()
