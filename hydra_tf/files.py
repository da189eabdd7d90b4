"""Files shared by every stage: JSON results, saved networks, run directories, histories."""

import json
import os

import keras


def load_network(path):
    """Loads a network saved by a run (`model.keras`), with a clear error."""
    # Importing hydra_tf.models.layers registers the score layers for deserialisation.
    from hydra_tf.models import layers  # noqa: F401

    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zip errors, ...
        raise ValueError(
            f"Cannot load {path} as a Keras model ({type(error).__name__}: {error}). "
            "Pass a model.keras written by a hydra_tf run."
        ) from error


def read_history(path):
    """{column: [values]} of a CSVLogger history file ({} if missing or empty)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        lines = [line.strip().split(",") for line in f if line.strip()]
    if len(lines) < 2:
        return {}
    header, rows = lines[0], lines[1:]
    return {key: [float(row[i]) for row in rows] for i, key in enumerate(header)}


def make_dir(path, flag="--workdir"):
    """Creates directory `path` (and its parents) if missing.

    Raises:
      ValueError: one line naming `flag` if `path`, or a parent of it, is a
        file (os.makedirs would raise FileExistsError / NotADirectoryError).
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag}={path} is a file, not a directory. Pass a directory.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Cannot create {flag}={path}: {error.strerror or error}.") from error
    return path


def read_json(path):
    """The JSON value in `path`, with a one-line error for a missing or corrupt file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path} is missing.") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from error


def write_json(path, value):
    """Writes JSON atomically (a killed run never leaves half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
