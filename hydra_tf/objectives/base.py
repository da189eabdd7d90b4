"""The objective interface, benign training, and the KL divergence TRADES and smoothing share.

An objective has two steps, so that the (expensive, gradient-free for the
weights) attack runs outside the training tape:

- `perturb(model, x, y)` builds the inputs the loss needs (e.g. adversarial
  examples), with the model in inference mode;
- `loss(model, x, y, perturbed)` runs the model in training mode and returns
  `(loss, logits)`, where `loss` is already scaled for `tf.distribute` (it is
  built from Keras `Loss` objects, which divide by the number of replicas), and
  `logits` are what the accuracy metric is measured on.

Each objective class names its config class (`Config`, a frozen dataclass
whose `name` field is the registry key) and builds itself from it
(`from_config`); `certified` says whether its networks are evaluated by
certification (randomized smoothing) rather than by an attack, `verified`
whether their robustness is also proved by bounds (IBP, CROWN-IBP), and
`scheduled` whether `from_config` takes the run's `steps_per_epoch` (for a
schedule over training steps, read with `distribute.current_step()`).
Objectives may list extra Keras metrics in `metrics`, shown beside the loss.
"""

import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class NaturalConfig:
    """Benign training: no settings."""

    name: str = dataclasses.field(default="natural", init=False)


class Natural:
    """Plain (benign) cross-entropy training."""

    name = "natural"
    Config = NaturalConfig
    certified = False
    # Networks of a verifiable objective are evaluated by verified accuracy too.
    verified = False
    # Objectives whose settings follow the training step take `steps_per_epoch`.
    scheduled = False

    def __init__(self):
        self._ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @classmethod
    def from_config(cls, config):
        del config
        return cls()

    def perturb(self, model, x, y):
        del model, y
        return x

    def loss(self, model, x, y, perturbed):
        del x
        logits = model(perturbed, training=True)
        return self._ce(y, logits), logits


class LogitKLDivergence(keras.losses.Loss):
    """KL(softmax(y_true) || softmax(y_pred)) computed from two sets of logits.

    Both distributions come from `log_softmax`, with no clipping.
    `keras.losses.KLDivergence` clips probabilities to [1e-7, 1]: on exactly
    the examples an attack breaks hardest (the perturbed prediction puts almost
    no mass on the clean class) the clipped loss saturates and its gradient
    vanishes, so TRADES would stop learning from them. As a Keras `Loss` it is
    averaged over the batch and scaled for `tf.distribute` like the other
    losses, and computed in float32 under mixed precision.
    """

    def __init__(self, name="logit_kl_divergence", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        log_p = tf.nn.log_softmax(y_true)
        log_q = tf.nn.log_softmax(y_pred)
        return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


class Consistency(Natural):
    """CE(clean) + beta * KL(p(clean) || p(perturbed)): TRADES and smoothing."""

    def __init__(self, beta):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"{self.name} beta must be >= 0. Received: beta={beta}")
        self.beta = float(beta)
        self._kl = LogitKLDivergence()

    def loss(self, model, x, y, perturbed):
        # Two forward passes, not one on the concatenation, so that BatchNorm
        # normalises clean and perturbed batches separately (as TRADES does).
        clean = model(x, training=True)
        other = model(perturbed, training=True)
        return self._ce(y, clean) + self.beta * self._kl(clean, other), clean
