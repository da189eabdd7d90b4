"""Tests for hydra_tf.evaluation."""

import keras
import numpy as np
import tensorflow as tf

from hydra_tf import evaluation
from hydra_tf.objectives import attacks
from tests import helpers


def _dataset(limit):
    x, y = helpers.fashion_arrays("test", limit)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(50), x, y


class EvaluateTest(tf.test.TestCase):
    def test_clean_accuracy_matches_keras_predict(self):
        model = helpers.natural_cnn_small()
        ds, x, y = _dataset(150)
        result = evaluation.evaluate(model, ds, attacks.PGDConfig(eps=0.0, steps=1))
        expected = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
        self.assertAlmostEqual(result.clean_acc, expected)
        self.assertAlmostEqual(result.robust_acc, result.clean_acc)
        self.assertEqual(result.num_examples, 150)

    def test_robust_below_clean_and_near_zero_at_large_eps(self):
        model = helpers.natural_cnn_small()
        ds, _, _ = _dataset(150)
        result = evaluation.evaluate(model, ds, attacks.PGDConfig(eps=0.3, steps=20, restarts=2))
        self.assertLess(result.robust_acc, 0.05)
        self.assertGreater(result.clean_acc, 0.6)
        self.assertEqual(result.attack["restarts"], 2)

    def test_default_attack_is_strong(self):
        attack = evaluation.default_attack(0.1)
        self.assertGreaterEqual(attack.steps, 50)
        self.assertGreaterEqual(attack.restarts, 2)

    def test_cascade_flags_gradient_masking_only_where_square_breaks_more(self):
        natural = helpers.natural_cnn_small()
        # Input quantisation: a zero input gradient (as in square_test).
        quantise = keras.layers.Lambda(lambda x: tf.round(x * 8.0) / 8.0 + 0.0 * x)
        masked = keras.Sequential([keras.Input((28, 28, 1)), quantise, natural])

        ds, _, _ = _dataset(100)
        cascade = attacks.Cascade(
            "apgd+square",
            (attacks.make("apgd-ce", 0.2, steps=10), attacks.make("square", 0.2, queries=300)),
        )
        flagged = evaluation.evaluate(masked, ds, cascade)
        apgd, square = flagged.stages
        self.assertGreater(apgd.robust_acc, 0.5 * flagged.clean_acc)
        self.assertLess(square.robust_acc, apgd.robust_acc - 0.2)
        (warning,) = flagged.warnings
        self.assertIn(f"square broke {100 * (apgd.robust_acc - square.robust_acc):.2f}%", warning)
        self.assertEqual(flagged.to_json()["warnings"], [warning])
        # APGD alone drives the undefended network to 0: Square finds nothing left.
        clear = evaluation.evaluate(natural, ds, cascade)
        self.assertEqual(clear.stages[0].robust_acc, 0.0)
        self.assertEqual(clear.warnings, ())
        self.assertNotIn("warnings", clear.to_json())

    def test_empty_dataset_raises(self):
        empty = tf.data.Dataset.from_tensor_slices(
            (np.zeros((0, 28, 28, 1), np.float32), np.zeros((0,), np.int64))
        ).batch(4)
        with self.assertRaisesRegex(ValueError, "empty"):
            evaluation.evaluate(helpers.natural_cnn_small(), empty, attacks.PGDConfig(eps=0.1))


if __name__ == "__main__":
    tf.test.main()
