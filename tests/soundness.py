"""Shared fixtures of the bound soundness tests: random small networks and sampled boxes.

Random small networks of every layer kind (strides 1 and 2, same and valid
padding, inference-mode BatchNorm with moved statistics and negative gammas,
a residual Add, max / average / global pooling) on inputs in (0, 1) with an
eps large enough that the [0, 1] clipping of the box is active, and
`SAMPLES` points of each example's box (half of them vertices) to check
bounds against.
"""

import keras
import numpy as np

SHAPE = (7, 7, 2)
CLASSES = 4
BATCH = 3
SAMPLES = 10_000
EPS = 0.15
TOLERANCE = 1e-5


def _dense(x):
    x = keras.layers.Flatten()(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Dense(12)(x)))
    return keras.layers.ReLU()(keras.layers.Dense(8)(x))


def _conv(x):
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.ReLU()(keras.layers.Conv2D(6, 3, strides=2, padding="valid")(x))  # 3x3
    x = keras.layers.ReLU()(keras.layers.Conv2D(4, 2, strides=2, padding="same")(x))  # 2x2
    return keras.layers.ReLU()(keras.layers.Dense(8)(keras.layers.Flatten()(x)))


def _residual(x):
    x = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, strides=2, padding="same")(x))  # 4x4
    y = keras.layers.Conv2D(4, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    x = keras.layers.ReLU()(keras.layers.Add()([y, x]))
    x = keras.layers.AveragePooling2D(2, padding="same")(x)
    return keras.layers.Flatten()(x)


def _pools(x):
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.MaxPooling2D(2, padding="same")(x)  # 4x4, a padded edge
    x = keras.layers.ReLU()(keras.layers.Conv2D(5, 2, padding="valid")(x))  # 3x3
    x = keras.layers.MaxPooling2D(2, strides=1)(x)  # 2x2, overlapping windows
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.ReLU()(keras.layers.Dense(6)(x))


# Network bodies by name; the network adds the final dense layer.
BODIES = {"dense": _dense, "conv": _conv, "residual": _residual, "pools": _pools}


def network(name, seed):
    """A random network of body `name` with random biases and BatchNorm statistics."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(BODIES[name](inputs)), name=name)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:  # Keras starts biases at zero
            layer.bias.assign(rng.normal(scale=0.3, size=layer.bias.shape))
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            gamma = rng.normal(size=size)
            gamma[0] = -abs(gamma[0])  # at least one negative scale
            layer.gamma.assign(gamma)
            layer.beta.assign(rng.normal(size=size))
            layer.moving_mean.assign(rng.normal(scale=0.5, size=size))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, size=size))
    return model


def samples(box, rng):
    """SAMPLES points of each example's box: half vertices, half uniform. (batch * n, ...)."""
    lower = np.asarray(box.lower)[:, None]
    upper = np.asarray(box.upper)[:, None]
    shape = (lower.shape[0], SAMPLES) + lower.shape[2:]
    vertices = rng.random(shape) < 0.5
    mix = np.where(vertices, 1.0, rng.random(shape))
    mix[:, SAMPLES // 2 :] = rng.random((shape[0], SAMPLES - SAMPLES // 2) + shape[2:])
    points = lower + mix * (upper - lower)
    return points.reshape((-1,) + shape[2:]).astype(np.float32)


def layer_values(model, points):
    """{layer name: its outputs at `points` (batch * n, ...) as (batch, n, ...)}, every layer."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs[0], [layer.output for layer in layers])
    outputs = probe.predict(points, batch_size=4096, verbose=0)
    batch = points.shape[0] // SAMPLES
    return {
        layer.name: values.reshape((batch, SAMPLES) + values.shape[1:])
        for layer, values in zip(layers, outputs)
    }


def inside(test, values, lower, upper, what):
    """Each example's sampled values (batch, n, ...) inside its bounds (batch, ...)."""
    lower = np.asarray(lower)[:, None]
    upper = np.asarray(upper)[:, None]
    below = float(np.max(lower - values))
    above = float(np.max(values - upper))
    test.assertLessEqual(below, TOLERANCE, f"{what}: a point below the lower bound by {below}")
    test.assertLessEqual(above, TOLERANCE, f"{what}: a point above the upper bound by {above}")
