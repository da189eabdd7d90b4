"""What lets Square break points the gradient attacks left robust, on a pipeline's networks.

For each network: run APGD-CE, APGD-T and FAB-T (the gradient part of
AutoAttack), then Square on the points they left robust. On the points Square
breaks (S) and on those it does not (R), report the median margin, the median
input-gradient L1 norm of the margin, the fraction of input pixels a ReLU
switched on within eps hides from the gradient (`diagnostics.hidden_pixels`),
the fraction of ReLU units active at the clean point, and whether stronger
gradient attacks (APGD-CE and APGD-DLR, each with 10 random restarts) break
the S points.

Usage:
  python -m benchmarks.gradient_masking --workdir=runs/pipeline [--networks=hydra_0.05,lwm_0.05]
"""

import json
import os

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", "runs/pipeline", "A finished pipeline run.")
_NETWORKS = flags.DEFINE_list("networks", None, "Rows to analyse (default: every row).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import keras
    import numpy as np

    from hydra_tf import data
    from hydra_tf.evaluation import cascade
    from hydra_tf.evaluation import diagnostics
    from hydra_tf.objectives import attacks

    workdir, names = _WORKDIR.value, _NETWORKS.value
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    config = results["config"]
    eps = config.get("eval_eps") or config["objective"]["eps"]
    test_ds, _ = data.load(config["dataset"], "test", config.get("data_dir"), config["test_limit"])
    pairs = list(test_ds.as_numpy_iterator())
    images = np.stack([p[0] for p in pairs])
    labels = np.array([p[1] for p in pairs]).astype(np.int64)
    gradient_part = attacks.Cascade(
        "gradient", tuple(attacks.make(n, eps) for n in ("apgd-ce", "apgd-t", "fab-t"))
    )
    for row in results["rows"]:
        name = "dense" if row["method"] == "dense" else f"{row['method']}_{row['keep_ratio']:g}"
        if names and name not in names:
            continue
        network = keras.saving.load_model(os.path.join(workdir, row["keras_path"]))
        first = cascade.run(network, images, labels, gradient_part, log_every=0)
        robust = np.flatnonzero(first.robust)
        square = cascade.run(
            network, images[robust], labels[robust], attacks.make("square", eps), log_every=0
        )
        broken = robust[~square.robust]
        kept = robust[square.robust]
        report = {"network": name, "gradient_robust": len(robust), "square_broke": len(broken)}
        for label, index in (("S", broken), ("R", kept)):
            if len(index) == 0:
                continue
            margin, grad, _ = diagnostics.margins_and_gradients(
                network, images[index], labels[index]
            )
            report[label] = {
                "margin_median": float(np.median(margin)),
                "grad_l1_median": float(np.median(grad)),
                "eps_grad_over_margin_median": float(np.median(eps * grad / margin)),
                "hidden_pixels_median": float(
                    np.median(diagnostics.hidden_pixels(network, images[index], labels[index], eps))
                ),
                "active_relu_fraction": float(
                    np.mean(diagnostics.active_fraction(network, images[index]))
                ),
            }
        if len(broken):
            for attack in ("apgd-ce", "apgd-dlr"):
                strong = cascade.run(
                    network,
                    images[broken],
                    labels[broken],
                    attacks.make(attack, eps, restarts=10),
                    log_every=0,
                )
                report[f"{attack}_10_restarts_breaks_of_S"] = int((~strong.robust).sum())
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    app.run(main)
