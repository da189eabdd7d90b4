"""Benchmarks standard AutoAttack on the networks of a pipeline run: seconds per attack.

For each network the pipeline exported (`<workdir>/<name>/eval.json` names its
`.keras` file), runs the cascade (APGD-CE, APGD-T, FAB-T, Square, each on the
points still robust) on the first N test images, for each N of --examples,
and prints the seconds and the robust accuracy after each attack, the whole
cascade's seconds, and APGD-CE's throughput (attacked images x steps per
second). The robust accuracy the pipeline measured (its eval.json) is printed
beside, with the attack it used.

Usage:
  python -m binaries.pipeline --workdir=runs/pipeline        # once
  python -m benchmarks.autoattack --workdir=runs/pipeline --examples=500,1000
  python -m benchmarks.autoattack --workdir=runs/pipeline --json > figures.jsonl
"""

import json
import os
import time

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", "runs/pipeline", "A finished pipeline run.")
_EXAMPLES = flags.DEFINE_list("examples", ["500", "1000"], "Test images per measurement.")
_NETWORKS = flags.DEFINE_list("networks", None, "Rows to measure (default: every row).")
_ATTACK = flags.DEFINE_string("attack", "autoattack", "An attack of attacks.REGISTRY.")
_EPS = flags.DEFINE_float("eps", None, "L-inf radius (default: the pipeline's).")
_BATCH = flags.DEFINE_integer("batch", 500, "Examples per attack call.", lower_bound=1)
_JSON = flags.DEFINE_boolean("json", False, "Print one JSON line per measurement.")


def _rows(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    return results["config"], results["rows"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not os.path.exists(os.path.join(_WORKDIR.value, "results.json")):
        raise app.UsageError(f"No finished pipeline run in {_WORKDIR.value} (no results.json).")
    import keras
    import numpy as np

    from hydra_tf import data
    from hydra_tf.evaluation import cascade
    from hydra_tf.objectives import attacks

    config, rows = _rows(_WORKDIR.value)
    eps = _EPS.value
    if eps is None:
        eps = config.get("eval_eps") or config["objective"]["eps"]
    attack = attacks.make(_ATTACK.value, eps)
    largest = max(int(n) for n in _EXAMPLES.value)
    test_ds, _ = data.load(config["dataset"], "test", config.get("data_dir"), largest)
    pairs = list(test_ds.as_numpy_iterator())
    images = np.stack([x for x, _ in pairs])
    labels = np.array([y for _, y in pairs])
    for row in rows:
        name = f"{row['method']}_{row['keep_ratio']:g}" if row["method"] != "dense" else "dense"
        if _NETWORKS.value and name not in _NETWORKS.value:
            continue
        network = keras.saving.load_model(os.path.join(_WORKDIR.value, row["keras_path"]))
        for count in (int(n) for n in _EXAMPLES.value):
            start = time.perf_counter()
            result = cascade.run(
                network, images[:count], labels[:count], attack, batch_size=_BATCH.value
            )
            seconds = time.perf_counter() - start
            stages = [s.to_json() for s in result.stages]
            first = result.stages[0]
            steps = getattr(getattr(attack, "attacks", (attack,))[0], "steps", 1)
            figures = {
                "network": name,
                "examples": count,
                "attack": attack.name,
                "eps": eps,
                "seconds": seconds,
                "clean_acc": float(result.clean.mean()),
                "robust_acc": float(result.robust.mean()),
                "stages": stages,
                "first_attack_images_steps_per_sec": first.attacked * steps / first.seconds,
                "pipeline_robust_acc": row["robust_acc"],
                "pipeline_attack": row["attack"].get("name"),
            }
            if _JSON.value:
                print(json.dumps(figures), flush=True)
                continue
            after = ", ".join(
                f"{s['attack']} {100 * s['robust_acc']:.1f}% ({s['seconds']:.1f}s)" for s in stages
            )
            print(
                f"{name:>10} {count:>5} images: {seconds:6.1f}s; clean "
                f"{100 * figures['clean_acc']:.1f}%; after {after}; pipeline "
                f"({figures['pipeline_attack']}) {100 * row['robust_acc']:.1f}%; "
                f"{first.attack} {figures['first_attack_images_steps_per_sec']:.0f} image-steps/s",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
