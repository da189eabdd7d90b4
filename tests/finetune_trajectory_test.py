"""Tests for results/adversarial/finetune_trajectory.py: it replays a finetune's steps."""

import json
import os
import subprocess
import sys
import tempfile

from hydra_tf import objectives
from hydra_tf import training

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, "results", "adversarial", "finetune_trajectory.py")


def _config(workdir, phase, source=None, epochs=1):
    return training.TrainConfig(
        workdir=workdir,
        phase=phase,
        source_checkpoint=source,
        keep_ratio=1.0 if phase == "pretrain" else 0.1,
        train_limit=128,
        test_limit=64,
        batch_size=64,
        epochs=epochs,
        learning_rate=0.01,
        objective=objectives.config("trades", eps=0.1, steps=2),
    )


def test_replay_matches_the_phase_epoch_loss():
    with tempfile.TemporaryDirectory() as root:
        dense = training.train(_config(os.path.join(root, "dense"), "pretrain"), verbose=0)
        tuned = _config(os.path.join(root, "finetune"), "finetune", dense.model_path)
        result = training.train(tuned, verbose=0)
        records_path = os.path.join(root, "records.json")
        env = dict(os.environ, PYTHONPATH=_ROOT)
        subprocess.run(
            [
                sys.executable,
                _SCRIPT,
                os.path.join(tuned.workdir, "config.json"),
                "--steps=2",
                "--every=1",
                f"--output={records_path}",
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        with open(records_path) as f:
            records = json.load(f)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert record["kl"] >= 0.0 and 0.0 <= record["clean_acc"] <= 1.0
    # Two steps of 64 examples are the phase's one epoch: the replay's mean step
    # loss is the phase's epoch loss.
    mean = sum(r["loss"] for r in records) / len(records)
    assert abs(mean - result.history["loss"][-1]) < 1e-3 * max(1.0, abs(mean))
