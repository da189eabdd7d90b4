"""Compares what pruned networks cost on the device: dense, unstructured and structured.

Reads the results.json of pipeline runs on one architecture and dataset (for
example one with --granularity=weight and one with --granularity=channel,
which may share a workdir and its dense network) and writes to --output_dir:

- deployment.md: each network's parameters (non-zero), multiply-adds, TF
  Lite file size, measured latency (batch 1 and 32, LiteRT, 2 threads,
  XNNPACK: what the pipeline measured), clean and robust accuracy, and each
  structured HYDRA network against the unstructured HYDRA network of the
  closest latency;
- robust_vs_latency.png: robust accuracy against latency at batch 1.

Example:
  python -m binaries.pipeline --workdir=runs/cnn_large --arch=cnn_large
  python -m binaries.pipeline --workdir=runs/cnn_large --arch=cnn_large \
      --granularity=channel --keep_ratios=0.5,0.25,0.1
  python -m binaries.deployment --results=runs/cnn_large/results.json \
      --results=runs/cnn_large/channels/results.json --output_dir=runs/cnn_large/deployment
"""

import json
import os

from absl import app
from absl import flags

from binaries import common
from hydra_tf import files
from hydra_tf.experiments import plots
from hydra_tf.experiments import records
from hydra_tf.experiments import report

_RESULTS = flags.DEFINE_multi_string(
    "results", None, "A pipeline run's results.json (repeat the flag).", required=True
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.", required=True)


def _read(path):
    try:
        with open(path) as f:
            return records.PipelineResults.from_json(json.load(f))
    except FileNotFoundError:
        raise FileNotFoundError(f"No results file at {path}: run the pipeline first.") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a pipeline results.json ({error}).") from None


def _compare():
    results = [_read(path) for path in _RESULTS.value]
    points = report.deployment_points(results)
    attack = report.attack_name(results[0].rows[0].attack)
    config = results[0].config
    title = f"{config['arch']} on {config['dataset']}"
    files.make_dir(_OUTPUT_DIR.value)
    lines = [
        f"# Deployment: {title}",
        "",
        (
            "Measured by the pipeline on each network's TF Lite file (LiteRT, 2 threads, "
            "XNNPACK; median latency). Parameters and multiply-adds per image of the exported "
            "Keras model, as it runs: an unstructured network keeps the dense shapes (its zeros "
            "are stored and multiplied), a structured one is smaller."
        ),
        "",
        *report.deployment_comparison(points, attack),
        "",
        "![robust accuracy against latency](robust_vs_latency.png)",
    ]
    with open(os.path.join(_OUTPUT_DIR.value, "deployment.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plots.robust_vs_latency(
        points, os.path.join(_OUTPUT_DIR.value, "robust_vs_latency.png"), f"{title}: {attack}"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(common.main_without_args(_compare))
