"""Figures of a pipeline run (matplotlib, written as PNG files).

- robust accuracy vs pruning ratio, HYDRA vs LWM (dense as a reference line);
- the magnitude histogram of the pretrained weights each method keeps (the
  paper observes that HYDRA keeps some small weights and drops some large ones);
- per-layer sparsity of the exported kernels.

Every function takes plain data (the rows of the results, `records.Row` or
`records.StudyRow`, and numpy arrays) and a path, so pipeline runs and
multi-seed studies draw the same figures.
"""

import matplotlib

matplotlib.use("Agg")  # Files only; no display needed.

import matplotlib.pyplot as plt
import numpy as np

from hydra_tf.experiments import records

_COLORS = {"hydra": "tab:red", "lwm": "tab:blue", "dense": "tab:gray"}
_LABELS = {"hydra": "HYDRA", "lwm": "LWM", "dense": "dense"}


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _accuracy(row, key):
    """(accuracy, spread over seeds) of a row: `key` is "robust" or "clean".

    A pipeline row is one network: it has no spread.
    """
    spread = isinstance(row, records.StudyRow)
    if key == "robust":
        return row.robust_acc, row.robust_std if spread else 0.0
    return row.clean_acc, row.clean_std if spread else 0.0


def robust_vs_pruning(rows, path, title="", metric="robust"):
    """Robust accuracy (and clean, dashed) against the pruning ratio.

    Args:
      rows: `records.Row`s, or `records.StudyRow`s (their spread over seeds
        is drawn as error bars).
      path: PNG file to write.
      title: figure title.
      metric: what the rows' robust accuracy is, for the labels: "robust" (under
        attack) or "certified" (randomized smoothing).

    Returns:
      `path`.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("lwm", "hydra"):
        points = sorted((r for r in rows if r.method == method), key=lambda r: -r.keep_ratio)
        if not points:
            continue
        x = [100 * (1 - r.keep_ratio) for r in points]
        for key, style in (("robust", "-o"), ("clean", "--")):
            accuracies = [_accuracy(r, key) for r in points]
            ax.errorbar(
                x,
                [100 * value for value, _ in accuracies],
                yerr=[100 * std for _, std in accuracies],
                fmt=style,
                color=_COLORS[method],
                capsize=3,
                label=f"{_LABELS[method]} {metric if key == 'robust' else key}",
                alpha=1.0 if key == "robust" else 0.5,
            )
    for r in rows:
        if r.method == "dense":
            ax.axhline(100 * r.robust_acc, color=_COLORS["dense"], ls=":", label=f"dense {metric}")
            break
    ax.set_xlabel("pruning ratio (% of weights removed per layer)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or f"{metric.capitalize()} accuracy vs pruning ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def kept_magnitude_histogram(magnitudes, kept, path, title=""):
    """Histogram of the pretrained |w| kept by each method.

    Args:
      magnitudes: 1-D array of per-layer-normalised pretrained magnitudes
        (|w| / max|w| of its layer), all prunable layers concatenated.
      kept: {method: boolean array like `magnitudes`} (True = kept).
      path: PNG file to write.
      title: figure title.

    Returns:
      `path`.
    """
    magnitudes = np.asarray(magnitudes)
    fig, ax = plt.subplots(figsize=(6, 4))
    # The bins start at the smallest kept magnitude, so the plot spans what
    # the methods keep rather than every tiny weight of the network.
    kept_positive = [magnitudes[np.asarray(m) & (magnitudes > 0)] for m in kept.values()]
    low = min([k.min() for k in kept_positive if k.size] + [1.0])
    low = max(low / 1.5, 1e-6)
    bins = np.logspace(np.log10(low), 0, 50)
    for method, mask in kept.items():
        ax.hist(
            magnitudes[np.asarray(mask)],
            bins=bins,
            histtype="step",
            lw=1.5,
            color=_COLORS.get(method),
            label=f"{_LABELS.get(method, method)} ({int(np.sum(mask))} kept)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("pretrained |w| / max |w| of its layer")
    ax.set_ylabel("weights kept")
    ax.set_title(title or "Magnitude of the weights each method keeps")
    ax.legend(fontsize=8)
    return _save(fig, path)


def layer_sparsity(rows, path, title=""):
    """Grouped bars: the sparsity of every layer, for each pruned model.

    Args:
      rows: `records.Row`s or `records.StudyRow`s (their method, keep ratio
        and per-layer sparsity, {layer: fraction of zeros}).
      path: PNG file to write.
      title: figure title.

    Returns:
      `path`.
    """
    rows = [r for r in rows if r.method != "dense"]
    layers = list(rows[0].layer_sparsity) if rows else []
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(layers) + 2), 4))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        ax.bar(
            np.arange(len(layers)) + i * width,
            [100 * r.layer_sparsity[name] for name in layers],
            width,
            color=_COLORS[r.method],
            alpha=0.4 + 0.6 * (1 - r.keep_ratio),
            label=f"{_LABELS[r.method]} keep {r.keep_ratio:g}",
        )
    ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
    ax.set_xticklabels(layers, rotation=45, ha="right")
    ax.set_ylabel("zeros in the exported kernel (%)")
    ax.set_ylim(min([100 * min(r.layer_sparsity.values()) for r in rows] + [100]) - 5, 100.5)
    ax.set_title(title or "Per-layer sparsity of the exported models")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def robust_vs_latency(points, path, title=""):
    """Robust accuracy against measured TF Lite latency (batch 1), one marker per network.

    Args:
      points: dicts with "label", "group" (e.g. "dense", "unstructured
        HYDRA", "structured HYDRA", "structured LWM"), "latency_ms" and
        "robust_acc".
      path: PNG file to write.
      title: figure title.

    Returns:
      `path`.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = sorted({p["group"] for p in points}, key=[p["group"] for p in points].index)
    markers = "osD^vP*X"
    for index, group in enumerate(groups):
        mine = sorted((p for p in points if p["group"] == group), key=lambda p: p["latency_ms"])
        ax.plot(
            [p["latency_ms"] for p in mine],
            [100 * p["robust_acc"] for p in mine],
            marker=markers[index % len(markers)],
            linestyle="-" if len(mine) > 1 else "none",
            label=group,
        )
        for p in mine:
            ax.annotate(
                p["label"],
                (p["latency_ms"], 100 * p["robust_acc"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    ax.set_xscale("log")
    ax.set_xlabel("TF Lite latency at batch 1 (ms, log scale)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(title or "Robust accuracy against measured latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
