"""Tests for hydra_tf.evaluation."""

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

    def test_empty_dataset_raises(self):
        empty = tf.data.Dataset.from_tensor_slices(
            (np.zeros((0, 28, 28, 1), np.float32), np.zeros((0,), np.int64))
        ).batch(4)
        with self.assertRaisesRegex(ValueError, "empty"):
            evaluation.evaluate(helpers.natural_cnn_small(), empty, attacks.PGDConfig(eps=0.1))


if __name__ == "__main__":
    tf.test.main()
