"""What the pipeline and the study measure besides accuracy.

Which weights HYDRA keeps, and the figures.
"""

import os

import numpy as np

from hydra_tf import files
from hydra_tf.experiments import plots
from hydra_tf.models import layers as score_layers
from hydra_tf.models import masks
from hydra_tf.models import scores


def kept_weights(dense_path, hydra_path, keep_ratio):
    """Which pretrained weights (or channels) HYDRA and LWM keep at `keep_ratio`.

    Args:
      dense_path: the pretrained dense network (`model.keras`).
      hydra_path: a HYDRA network of that keep ratio (prune or finetune).
      keep_ratio: the keep ratio of `hydra_path`.

    Returns:
      A dict with "magnitudes" (pretrained |w| / max |w| of its layer, all
      prunable layers concatenated; for structured pruning each channel's
      filter L1 norm / the layer's largest), "hydra" and "lwm" (boolean kept
      masks like "magnitudes"), and "overlap" (fraction of HYDRA's kept
      weights that LWM keeps too).
    """
    dense = files.load_network(dense_path)
    hydra = files.load_network(hydra_path)
    magnitudes, hydra_kept, lwm_kept = [], [], []
    measured = [
        (layer, np.abs(dense.get_layer(layer.name).kernel.numpy()))
        for layer in score_layers.scored_layers(hydra)
    ] + [
        (gate, scores.channel_norms(dense.get_layer(gate.source).kernel.numpy()))
        for gate in score_layers.channel_gates(hydra)
    ]
    for layer, magnitude in measured:
        magnitudes.append((magnitude / magnitude.max()).ravel())
        hydra_kept.append(layer.mask().numpy().ravel() > 0)
        # LWM keeps the top-k magnitudes (L1 filter pruning: the top-k
        # channel norms): the same mask function on them.
        lwm_kept.append(masks.topk_mask(magnitude, keep_ratio).numpy().ravel() > 0)
    hydra_kept = np.concatenate(hydra_kept)
    lwm_kept = np.concatenate(lwm_kept)
    return {
        "magnitudes": np.concatenate(magnitudes),
        "hydra": hydra_kept,
        "lwm": lwm_kept,
        "overlap": float(np.sum(hydra_kept & lwm_kept) / np.sum(hydra_kept)),
    }


def figures(workdir, rows, kept, keep_ratio, title="", metric="robust"):
    """Writes the PNG figures under `<workdir>/plots`; returns their relative paths.

    Args:
      workdir: the run's directory.
      rows: the `records.Row`s or `records.StudyRow`s (each method and keep ratio).
      kept: `kept_weights(...)` of the HYDRA network at `keep_ratio`.
      keep_ratio: the keep ratio `kept` describes.
      title: prefix of the figure titles.
      metric: "robust" (PGD) or "certified" (smoothing), for the labels.
    """
    out = os.path.join(workdir, "plots")
    os.makedirs(out, exist_ok=True)
    paths = {
        "robust_vs_pruning": plots.robust_vs_pruning(
            rows, os.path.join(out, "robust_vs_pruning.png"), title, metric
        ),
        "kept_magnitudes": plots.kept_magnitude_histogram(
            kept["magnitudes"],
            {"lwm": kept["lwm"], "hydra": kept["hydra"]},
            os.path.join(out, "kept_magnitudes.png"),
            f"{title} keep {keep_ratio:g}: pretrained magnitude of kept weights".strip(),
        ),
        "layer_sparsity": plots.layer_sparsity(rows, os.path.join(out, "layer_sparsity.png")),
    }
    return {name: os.path.relpath(path, workdir) for name, path in paths.items()}
