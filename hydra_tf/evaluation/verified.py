"""Verified accuracy: the fraction of test points whose L-inf robustness is proved.

A point is verified at radius eps when it is classified correctly and every
margin z_y - z_j (j != y) has a positive lower bound over the whole eps-ball
clipped to [0, 1] (`objectives.bounds`). The bounds:

- "ibp": interval bound propagation, with the margin folded into the last
  dense layer;
- "crown_ibp": CROWN from the output with IBP bounds for the intermediate
  ReLUs (what CROWN-IBP trains with);
- "crown": full CROWN, every intermediate bound by CROWN too (evaluation
  only: one backward pass per neuron);
- "symbolic": symbolic intervals (ReluVal / Neurify, MixTrain's analysis),
  intersected with IBP, so never looser than "ibp"; it keeps equations in
  every input pixel per neuron (about 53 MB per example for cnn_verifiable),
  so it runs in batches of at most `SYMBOLIC_BATCH`.

The network runs in inference mode (BatchNormalization as its affine map) and
the bounds in float32.
"""

import dataclasses
import weakref

import numpy as np
import tensorflow as tf

from hydra_tf.models import precision
from hydra_tf.objectives import bounds

METHODS = ("ibp", "crown_ibp", "crown", "symbolic")
# Examples per symbolic-interval batch (memory: batch x input size x layer size).
SYMBOLIC_BATCH = 16
# Methods verified in batches of their own (slow or memory-hungry): (batch, uses crown_limit).
_SEPARATE = {"crown": (32, True), "symbolic": (SYMBOLIC_BATCH, False)}


@dataclasses.dataclass
class VerifiedResult:
    """Per-example outcomes: `clean` (correct) and `verified[method]` (proved robust)."""

    clean: np.ndarray
    verified: dict

    def accuracy(self):
        """{"clean": ..., method: verified accuracy} as floats."""
        values = {"clean": float(self.clean.mean())}
        values.update({method: float(flags.mean()) for method, flags in self.verified.items()})
        return values


def _lower_bounds(network, x, y, eps, method, num_classes):
    box = bounds.IntervalBounds.from_linf(x, eps)
    spec = bounds.margin_specification(y, num_classes)
    if method == "ibp":
        return bounds.specification_bounds(network, box, spec).lower
    if method == "symbolic":
        return bounds.symbolic_specification_bounds(network, box, spec).lower
    mode = "crown_ibp" if method == "crown_ibp" else "full"
    lower, _ = bounds.backward_bounds(network, box, spec, mode=mode, upper=False)
    return lower


# Compiled bound functions per network and method, reused across calls (and
# radii: eps is an argument), so that verifying many batches or radii traces once.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled(network, method):
    functions = _COMPILED.setdefault(network, {})
    if method not in functions:
        num_classes = int(network.outputs[0].shape[-1])
        functions[method] = tf.function(
            lambda x, y, eps: _lower_bounds(network, x, y, eps, method, num_classes),
            reduce_retracing=True,
        )
    return functions[method]


def verify(network, images, labels, eps, methods=("ibp", "crown_ibp"), batch_size=256):
    """Which examples each bound proves robust at L-inf radius `eps`.

    Args:
      network: a functional Keras model mapping images in [0, 1] to logits.
      images, labels: numpy arrays of the examples.
      eps: the L-inf radius.
      methods: names from `METHODS`.
      batch_size: examples per bound computation ("crown" is slow: keep small).

    Returns:
      A `VerifiedResult`.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown verification methods {unknown}. Supported: {METHODS}.")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0. Received: eps={eps}")
    # A mixed-precision network gets a fresh float32 copy (its weights now).
    network = precision.as_float32(network)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    compiled = {method: _compiled(network, method) for method in methods}
    eps_tensor = tf.constant(eps, tf.float32)
    clean, verified = [], {method: [] for method in methods}
    for start in range(0, len(labels), batch_size):
        x = tf.constant(images[start : start + batch_size])
        y = tf.constant(labels[start : start + batch_size])
        correct = tf.equal(tf.argmax(network(x, training=False), axis=-1), y).numpy()
        clean.append(correct)
        for method in methods:
            proved = bounds.verified(compiled[method](x, y, eps_tensor)).numpy()
            verified[method].append(np.logical_and(proved, correct))
    return VerifiedResult(
        clean=np.concatenate(clean),
        verified={method: np.concatenate(flags) for method, flags in verified.items()},
    )


class UnsoundVerificationError(RuntimeError):
    """A point proved robust was broken by an attack: a bound is wrong."""


def verified_accuracy(
    network, images, labels, eps, methods=METHODS, crown_limit=100, adversarial=None
):
    """Verified accuracy by each bound, checked against an attack's examples.

    Args:
      network, images, labels, eps: as for `verify`.
      methods: names from `METHODS`.
      crown_limit: full CROWN (one backward pass per neuron) runs on the first
        `crown_limit` examples only (None: all; 0: skipped); symbolic
        intervals run on all, in batches of `SYMBOLIC_BATCH`.
      adversarial: optional adversarial examples of `images` (an attack's
        output at the same eps): a point any bound verifies must not be
        misclassified on its example.

    Returns:
      ({method: verified accuracy}, {method: examples measured}).

    Raises:
      UnsoundVerificationError: a verified point the attack broke.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    fast = [m for m in methods if m not in _SEPARATE]
    flags = dict(verify(network, images, labels, eps, methods=fast).verified) if fast else {}
    for method in (m for m in methods if m in _SEPARATE):
        batch, limited = _SEPARATE[method]
        limit = len(labels)
        if limited and crown_limit is not None:
            limit = min(crown_limit, limit)
        if limit == 0:
            continue
        result = verify(
            network, images[:limit], labels[:limit], eps, methods=(method,), batch_size=batch
        )
        flags[method] = result.verified[method]
    if adversarial is not None:
        network32 = precision.as_float32(network)
        predicted = np.argmax(network32.predict(np.asarray(adversarial), verbose=0), axis=-1)
        broken = predicted != labels
        for method, proved in flags.items():
            both = np.flatnonzero(proved & broken[: len(proved)])
            if len(both):
                raise UnsoundVerificationError(
                    f"{method} proved {len(both)} test point(s) robust at eps {eps:g} that the "
                    f"attack broke (first: example {both[0]}): the bound is unsound."
                )
    accuracy = {method: float(np.mean(proved)) for method, proved in flags.items()}
    examples = {method: len(proved) for method, proved in flags.items()}
    return accuracy, examples
