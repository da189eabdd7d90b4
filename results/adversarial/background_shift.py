"""Accuracy when every zero (background) pixel is raised by delta: one fixed L-inf perturbation.

Fashion-MNIST's background is exactly 0. A first-layer filter whose bias sits
just below zero is off there on clean images but switches on over the whole
background once the input may rise by eps, which a gradient attack started at
(or within 0.001 of) the clean input does not see: its ReLU passes no gradient.
Raising the background by delta <= eps is a valid L-inf perturbation that
tests this directly, without gradients.

  PYTHONPATH=. python results/adversarial/background_shift.py \
      runs/adv_trades/cnn_small/seed0/hydra_0.1/finetune/model.keras --limit=2000
"""

import argparse
import json

import numpy as np

from hydra_tf import data
from hydra_tf import files


def shift_background(images, delta):
    """`images` with every exactly-zero pixel raised by `delta` (kept in [0, 1])."""
    background = (images == 0).astype(images.dtype)
    return np.clip(images + delta * background, 0, 1)


def measure(network, images, labels, deltas):
    """{"clean": accuracy, "background+<delta>": accuracy, ...} of `network`."""

    def accuracy(x):
        logits = network.predict(x, batch_size=500, verbose=0)
        return round(float(np.mean(np.argmax(logits, -1) == labels)), 4)

    row = {"clean": accuracy(images)}
    for delta in deltas:
        row[f"background+{delta:g}"] = accuracy(shift_background(images, delta))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="+", help="model.keras files.")
    parser.add_argument("--limit", type=int, default=2000, help="First N test images.")
    parser.add_argument("--deltas", default="0.05,0.1", help="Comma-separated shifts.")
    args = parser.parse_args()
    deltas = [float(d) for d in args.deltas.split(",")]
    test_ds, _ = data.load("fashion_mnist", "test", None, args.limit)
    images, labels = next(iter(test_ds.batch(args.limit)))
    images, labels = images.numpy(), labels.numpy()
    for path in args.networks:
        row = measure(files.load_network(path), images, labels, deltas)
        print(json.dumps({"network": path, **row}), flush=True)


if __name__ == "__main__":
    main()
