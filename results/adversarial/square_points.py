"""The points Square breaks after AutoAttack's gradient attacks: what they have in common.

Runs AutoAttack's three gradient attacks (APGD-CE, APGD-T, FAB-T) as one
cascade, then Square on the points they left robust, as the standard cascade
does, and asks of the points Square breaks ("Square's points"), beside the
points both leave robust ("robust points"):

  - margin: z_y - max_{j != y} z_j at the clean image and at the gradient
    attacks' best point (their first attack's, as the cascade keeps it);
    near zero there means the gradient attacks came close and Square only
    went slightly further;
  - where Square's perturbation acts: its point with the perturbation undone
    on the background (pixels exactly 0) or on the object; still wrong with
    only one part says which part fools the network;
  - whether the gradient attacks can find them when started where Square
    starts: PGD-CE, 100 steps, from random corners of the eps-ball (every
    pixel moved by +-eps) and, as a control, from uniform random points,
    the same number of restarts each;
  - the margin along the segment from the clean image to Square's point, and
    the share of its drop made on the segment's last tenth: a margin that
    stays flat and then drops (share near 1) is invisible to a gradient, one
    that falls evenly (0.1) is not;
  - the input coordinates whose margin gradient is zero at the clean image
    but not at a random corner (`diagnostics.hidden_pixels`).

  PYTHONPATH=. python results/adversarial/square_points.py cnn_small-pgd_at-vertex-99 \\
      --limit=1000 --output=results/adversarial/square_points/cnn_small-pgd_at-vertex-99.json

A network is a zoo name or a model.keras path.
"""

import argparse
import json
import os
import re
import time

import numpy as np
import tensorflow as tf

from hydra_tf import files
from hydra_tf import zoo
from hydra_tf.evaluation import cascade
from hydra_tf.evaluation import diagnostics
from hydra_tf.objectives import attacks
from hydra_tf.objectives.attacks import square

GRADIENT = ("apgd-ce", "apgd-t", "fab-t")
SEGMENT = np.linspace(0.0, 1.0, 11)


def _network(name):
    return files.load_network(name) if name.endswith(".keras") else zoo.load(name)


def _margins_and_wrong(network, x, y, batch_size=500):
    margin, wrong = [], []
    for start in range(0, len(x), batch_size):
        logits = network(tf.constant(x[start : start + batch_size]), training=False)
        batch_margin, batch_wrong = square.margin_and_wrong(
            tf.cast(logits, tf.float32), tf.constant(y[start : start + batch_size], tf.int32)
        )
        margin.append(batch_margin.numpy())
        wrong.append(batch_wrong.numpy())
    if not margin:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    return np.concatenate(margin), np.concatenate(wrong)


def margins(network, x, y):
    """z_y - max_{j != y} z_j per example."""
    return _margins_and_wrong(network, x, y)[0]


def wrong(network, x, y):
    """Whether the network misclassifies each example (its argmax is not y)."""
    return _margins_and_wrong(network, x, y)[1]


def restarted_pgd(network, x, y, eps, start, restarts, steps, seed):
    """Whether PGD-CE (`steps` steps of eps / 4) from `restarts` random starts of kind
    `start` ("vertex" or "uniform") breaks each example."""
    tf.random.set_seed(seed)
    config = attacks.PGDConfig(eps=eps, steps=steps, restarts=1, step_size=eps / 4)
    begin = attacks.vertex_start if start == "vertex" else attacks.uniform_start
    broken = np.zeros(len(x), bool)
    xt, yt = tf.constant(x), tf.constant(y, tf.int64)
    for _ in range(restarts):
        x_adv = attacks.pgd(network, xt, yt, config, start=begin(xt, eps))
        broken |= wrong(network, x_adv.numpy(), y)
    return broken


def _median(values):
    return round(float(np.median(values)), 4) if len(values) else None


def _share(flags):
    return [int(np.sum(flags)), len(flags)]


def describe(network, x, y, eps, gradient_best, square_adv, restarts, steps, seed):
    """The measurements of the module docstring on one group of points."""
    if not len(x):
        return {"points": 0}
    delta = square_adv - x
    background = x == 0
    lower, upper = np.maximum(x - eps, 0), np.minimum(x + eps, 1)
    at_edge = np.isclose(square_adv, lower, atol=1e-6) | np.isclose(square_adv, upper, atol=1e-6)
    only_background = np.clip(x + np.where(background, delta, 0), 0, 1)
    only_object = np.clip(x + np.where(background, 0, delta), 0, 1)
    segment = np.stack([margins(network, x + t * delta, y) for t in SEGMENT], axis=1)
    clean_margin = segment[:, 0]
    # The share of the clean-to-Square margin drop made on the segment's last tenth:
    # 0.1 if the margin falls evenly, near 1 if it stays flat and then drops.
    drop = segment[:, 0] - segment[:, -1]
    last_tenth = (segment[:, -2] - segment[:, -1]) / np.where(drop > 0, drop, np.nan)
    hidden = diagnostics.hidden_pixels(network, x, y, eps)
    return {
        "points": len(x),
        "clean_margin_median": _median(clean_margin),
        "gradient_attacks_margin_median": _median(margins(network, gradient_best, y)),
        "square_margin_median": _median(segment[:, -1]),
        "square_at_ball_or_box_edge_median": _median(at_edge.reshape(len(x), -1).mean(axis=1)),
        "wrong_with_square_on_background_only": _share(wrong(network, only_background, y)),
        "wrong_with_square_on_object_only": _share(wrong(network, only_object, y)),
        "pgd_vertex_starts_break": _share(
            restarted_pgd(network, x, y, eps, "vertex", restarts, steps, seed)
        ),
        "pgd_uniform_starts_break": _share(
            restarted_pgd(network, x, y, eps, "uniform", restarts, steps, seed)
        ),
        "segment_t": [round(float(t), 2) for t in SEGMENT],
        "segment_margin_median": [_median(column) for column in segment.T],
        "segment_last_tenth_of_drop_median": _median(last_tenth[drop > 0]),
        "hidden_pixels_median": _median(hidden),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="A zoo name or a model.keras path.")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=1000, help="First N test images.")
    parser.add_argument("--restarts", type=int, default=10, help="PGD restarts per start kind.")
    parser.add_argument("--steps", type=int, default=100, help="PGD steps per restart.")
    parser.add_argument("--controls", type=int, default=100, help="Robust points compared.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="Write the result JSON here too.")
    args = parser.parse_args()
    for name in ("limit", "restarts", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.controls < 0 or not args.eps > 0:
        parser.error(f"--controls must be >= 0 and --eps > 0, got {args.controls}, {args.eps}")

    try:
        network = _network(args.network)
    except (zoo.ZooError, OSError, ValueError) as error:
        parser.error(str(error))
    images, labels = zoo.test_arrays("fashion_mnist", args.limit)
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int64)
    began = time.time()
    gradient_cascade = attacks.Cascade(
        name="gradient", attacks=tuple(attacks.make(n, args.eps) for n in GRADIENT)
    )
    gradient = cascade.run(network, images, labels, gradient_cascade)
    left = np.flatnonzero(gradient.robust)
    after = cascade.run(network, images[left], labels[left], attacks.make("square", args.eps))
    square_points = left[~after.robust]
    robust_points = left[after.robust]
    rng = np.random.default_rng(args.seed)
    controls = rng.choice(robust_points, min(args.controls, len(robust_points)), replace=False)
    square_adv = np.zeros_like(images)
    square_adv[left] = after.adversarial

    def group(points):
        # Robust points' "Square point" is Square's best try.
        return describe(
            network,
            images[points],
            labels[points],
            args.eps,
            gradient.adversarial[points],
            square_adv[points],
            args.restarts,
            args.steps,
            args.seed,
        )

    result = {
        "network": args.network,
        "eps": args.eps,
        "images": args.limit,
        "clean": round(float(gradient.clean.mean()), 4),
        "after_gradient_attacks": round(float(gradient.robust.mean()), 4),
        "after_square": round(float(len(robust_points) / args.limit), 4),
        "pgd": {"steps": args.steps, "step_size": args.eps / 4, "restarts": args.restarts},
        "square_points": group(square_points),
        "robust_points": group(np.sort(controls)),
        "seconds": round(time.time() - began, 1),
    }
    # One line per list.
    text = re.sub(
        r"\[\s+([^\[\]{}]*?)\s+\]",
        lambda m: "[" + " ".join(m.group(1).split()) + "]",
        json.dumps(result, indent=1),
    )
    print(text, flush=True)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
