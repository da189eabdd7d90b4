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
"""

import argparse
import json

import numpy as np

from hydra_tf import files
from hydra_tf.models import layers


def first_layer(network):
    """The network's first scored (prunable) layer."""
    scored = layers.scored_layers(network)
    if not scored:
        raise ValueError("The network has no scored (prunable) layer.")
    return scored[0]


def filters(layer):
    """Per output channel with a live weight: {channel, live, bias, switch_on, can_be_on}."""
    kernel = np.asarray(layer.masked_kernel())
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="+", help="model.keras files.")
    parser.add_argument("--eps", type=float, default=0.1, help="The attack's L-inf radius.")
    args = parser.parse_args()
    for path in args.networks:
        layer = first_layer(files.load_network(path))
        rows = filters(layer)
        live = [r for r in rows if r["can_be_on"]]
        within = [r for r in live if r["switch_on"] is not None and 0 < r["switch_on"] < args.eps]
        print(
            json.dumps(
                {
                    "network": path,
                    "layer": layer.name,
                    "live_weights": int(sum(r["live"] for r in rows)),
                    "filters_that_can_be_on": len(live),
                    "switched_on_within_eps": [r["switch_on"] for r in within],
                    "filters": rows,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
