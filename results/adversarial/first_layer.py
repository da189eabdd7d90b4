"""The first layer of a pruned network: its live filters and the radius that switches each on.

A 99% cnn_large keeps 3 of its first layer's 288 weights (1% of 3 x 3 x 1 x 32).
Each filter with one live weight w and bias b < 0 is a threshold on one pixel:
off until the pixel exceeds -b / w. On Fashion-MNIST's zero background such a
filter passes no gradient below its threshold, so when the network sees its input
only through it, a gradient attack cannot raise a background pixel; Square can.
For every filter with a live weight this prints how far every pixel of a zero
window must rise to switch it on (-b / sum of its positive weights; "on" if
b >= 0, "never" if no weight is positive), and whether it can be on at all for
inputs in [0, 1].

  PYTHONPATH=. python results/adversarial/first_layer.py \\
      runs/adv_trades/cnn_large/seed0/hydra_0.01/finetune/model.keras [--eps=0.1]

With --study, for every network of a study's workdir (<workdir>/<arch>/seed*/
<stage>, evaluated with AutoAttack) a markdown table of the lowest switch-on
radius below eps beside the points Square breaks after the gradient attacks,
and their rank correlation:

  PYTHONPATH=. python results/adversarial/first_layer.py --study runs/adv_pgd_at/cnn_small
"""

import argparse
import glob
import json
import os

import keras
import numpy as np
from scipy import stats

from hydra_tf import files
from hydra_tf.models import layers


def first_layer(network):
    """The network's first layer with a kernel: scored (prunable), or a plain Conv2D /
    Dense (a dense network's, or an exported one's with its mask folded in)."""
    for layer in layers.walk(network):
        if layers.is_scored(layer) or isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            return layer
    raise ValueError("The network has no Conv2D or Dense layer.")


def filters(layer):
    """Per output channel with a live weight: {channel, live, bias, switch_on, can_be_on}."""
    kernel = np.asarray(layer.masked_kernel() if layers.is_scored(layer) else layer.kernel)
    kernel = kernel.reshape(-1, kernel.shape[-1])
    bias = np.asarray(layer.bias) if layer.use_bias else np.zeros(kernel.shape[-1])
    rows = []
    for c in range(kernel.shape[-1]):
        w = kernel[:, c]
        if not np.any(w):
            continue
        positive = float(np.sum(np.maximum(w, 0)))
        if bias[c] >= 0:
            switch_on = 0.0
        elif positive == 0:
            switch_on = None
        else:
            switch_on = round(float(-bias[c] / positive), 4)
        rows.append(
            {
                "channel": c,
                "live": int(np.count_nonzero(w)),
                "bias": round(float(bias[c]), 4),
                "switch_on": switch_on,
                "can_be_on": bool(bias[c] + positive > 0),
            }
        )
    return rows


def within_eps(rows, eps):
    """The switch-on radii of the filters that are off at zero and on within eps."""
    return [
        r["switch_on"]
        for r in rows
        if r["can_be_on"] and r["switch_on"] is not None and 0 < r["switch_on"] < eps
    ]


def square_points(evaluation):
    """Robust-accuracy points Square takes after the attacks before it (an AutoAttack
    `eval.json`), None if Square is not its last stage."""
    stages = evaluation.get("stages") or []
    if len(stages) < 2 or stages[-1].get("attack") != "square":
        return None
    return 100 * (stages[-2]["robust_acc"] - stages[-1]["robust_acc"])


def _network(stage_dir):
    """The trained network of a study stage: its finetune's, or the dense pretraining's."""
    for phase in ("finetune", "pretrain"):
        path = os.path.join(stage_dir, phase, "model.keras")
        if os.path.exists(path):
            return path
    return None


def study_rows(workdir, eps):
    """Per evaluated network of a study workdir (<workdir>/seed*/<stage>): its seed,
    stage, lowest switch-on radius below eps (None: none) and Square's points."""
    rows = []
    for seed_dir in sorted(glob.glob(os.path.join(workdir, "seed*"))):
        for evaluation in sorted(glob.glob(os.path.join(seed_dir, "*", "eval.json"))):
            stage_dir = os.path.dirname(evaluation)
            points = square_points(files.read_json(evaluation))
            path = _network(stage_dir)
            if points is None or path is None:
                continue
            rows_of_filters = filters(first_layer(files.load_network(path)))
            radii = within_eps(rows_of_filters, eps)
            rows.append(
                {
                    "seed": os.path.basename(seed_dir),
                    "stage": os.path.basename(stage_dir),
                    "can_be_on": sum(r["can_be_on"] for r in rows_of_filters),
                    "lowest": min(radii) if radii else None,
                    "within": len(radii),
                    "square": round(points, 2),
                }
            )
    if not rows:
        raise ValueError(
            f"No network evaluated with AutoAttack under {workdir}/seed*/ (give one "
            "architecture's directory of the study, such as <workdir>/cnn_small)."
        )
    return rows


def _lowest_text(row):
    """A `study_rows` row's lowest switch-on radius below eps, as the table gives it."""
    return "none" if row["lowest"] is None else f"{row['lowest']:.4f}"


def study_table(rows, eps):
    """The markdown table of `study_rows` and, over the pruned networks, the Spearman
    correlation of Square's points with how far below eps the lowest threshold sits
    (0 if none). A dense network sees every pixel through many filters, so one
    filter's threshold does not hide a pixel from its gradient; it is left out."""
    header = (
        f"| seed | network | filters that can be on | of them on within eps {eps:g} | "
        "lowest switch-on | Square's points |"
    )
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['stage']} | {r['can_be_on']} | {r['within']} | "
            f"{_lowest_text(r)} | "
            f"{r['square']:.2f} |"
        )
    pruned = [r for r in rows if r["stage"] != "dense"]
    if len(pruned) > 2:
        depth = [0.0 if r["lowest"] is None else eps - r["lowest"] for r in pruned]
        if len(set(depth)) == 1:  # a rank correlation with a constant is undefined
            lines.append(
                f"\nEvery one of the {len(pruned)} pruned networks has the same lowest "
                f"switch-on below eps ({_lowest_text(pruned[0])}), so Square's points "
                "cannot be ranked by it."
            )
        else:
            rho, p = stats.spearmanr(depth, [r["square"] for r in pruned])
            lines.append(
                f"\nSpearman rank correlation of Square's points with eps - lowest switch-on, "
                f"over the {len(pruned)} pruned networks: {rho:.2f} (p = {p:.2g})."
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="*", help="model.keras files.")
    parser.add_argument("--study", help="A study's workdir of one architecture.")
    parser.add_argument("--eps", type=float, default=0.1, help="The attack's L-inf radius.")
    args = parser.parse_args()
    if bool(args.networks) == bool(args.study):
        parser.error("give either model.keras files or --study, one of the two.")
    if args.study:
        print(study_table(study_rows(args.study, args.eps), args.eps))
        return
    for path in args.networks:
        layer = first_layer(files.load_network(path))
        rows = filters(layer)
        live = [r for r in rows if r["can_be_on"]]
        print(
            json.dumps(
                {
                    "network": path,
                    "layer": layer.name,
                    "live_weights": int(sum(r["live"] for r in rows)),
                    "filters_that_can_be_on": len(live),
                    "switched_on_within_eps": within_eps(rows, args.eps),
                    "filters": rows,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
