"""Float32 copies of mixed-precision networks, for attacks and certification.

A network trained under `mixed_float16` computes in float16. Attacking it in
float16 gives wrong answers: cross-entropy gradients below 2^-24 flush to
zero, the attack stops moving on confidently classified examples, and robust
accuracy is overstated. Evaluation, attacks and certification therefore run
on a float32 copy of the same weights (variables are float32 under mixed
precision, so the copy holds exactly the trained values).
"""

import keras

_MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def _to_float32(value):
    """A config with every mixed dtype policy replaced by float32 (recursively)."""
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            name = value.get("config", {}).get("name")
            if name in _MIXED_POLICIES:
                return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _to_float32(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_float32(item) for item in value]
    if isinstance(value, str) and value in _MIXED_POLICIES:
        return "float32"
    return value


def _layers(model):
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        yield layer
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)


def is_float32(model):
    """Whether every layer of `model` computes in float32."""
    return all(layer.compute_dtype == "float32" for layer in _layers(model))


def as_float32(model):
    """`model` itself if it computes in float32, else a float32 copy.

    The copy has the same architecture, layer names and weights (including
    HYDRA scores, so it selects the same masks) and computes in float32.
    """
    if is_float32(model):
        return model
    # Importing the score layers registers them for deserialisation.
    from hydra_tf.models import layers  # noqa: F401

    config = _to_float32(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    if not is_float32(copy):
        raise ValueError(f"Could not make a float32 copy of {model.name!r}.")
    return copy
