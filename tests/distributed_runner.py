"""Runs the three phases under a tf.distribute strategy, in a process of its own.

`tests/distribute_test.py` starts this script, because a strategy over logical
CPU devices must be set up before TensorFlow starts, and a multi-worker
cluster needs one process per worker (TF_CONFIG says which). It trains a tiny
cnn_small with the natural objective (no random numbers, so runs on one and on
several devices can be compared), then writes to --out:

  weights_<phase>.npz   the final variables of each phase
  report.json           replicas, seconds per step of each phase, the
                        evaluation and certification of the last model,
                        and the random numbers each replica drew inside a
                        step

With --kill_after_epoch=K the pretrain phase stops after epoch K (like a
killed run); rerunning the same command resumes it.
"""

import argparse
import json
import os
import sys
import time

import numpy as np


def _parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--cpu_replicas", type=int, default=None)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--objective", default="natural")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train_limit", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--kill_after_epoch", type=int, default=None)
    parser.add_argument("--phases", default="pretrain,prune,finetune")
    return parser.parse_args()


def main():
    args = _parse()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hydra_tf import distribute

    if args.cpu_replicas:
        distribute.split_cpu(args.cpu_replicas)
    import tensorflow as tf

    from hydra_tf import files
    from hydra_tf import objectives
    from hydra_tf import training

    strategy = distribute.make_strategy(args.strategy)
    objective = objectives.config(args.objective, eps=0.1, steps=2, step_size=0.05)
    common = {
        "train_limit": args.train_limit,
        "test_limit": 64,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "learning_rate": 0.05,
        "schedule": "constant",
        "objective": objective,
        "seed": 3,
    }
    if args.kill_after_epoch is not None:

        class Killed(Exception):
            pass

        original = training._LogProgress.on_epoch_end

        def kill(callback, epoch, logs=None):
            original(callback, epoch, logs)
            if epoch == args.kill_after_epoch:
                raise Killed(f"killed after epoch {epoch}")

        training._LogProgress.on_epoch_end = kill

    os.makedirs(args.out, exist_ok=True)
    report = {"replicas": strategy.num_replicas_in_sync, "seconds_per_step": {}, "resumed": {}}
    source = None
    steps = -(-args.train_limit // args.batch_size) * args.epochs
    for phase in args.phases.split(","):
        config = training.TrainConfig(
            workdir=os.path.join(args.workdir, phase),
            phase=phase,
            keep_ratio=1.0 if phase == "pretrain" else 0.1,
            source_checkpoint=source,
            **common,
        )
        start = time.time()
        result = training.train(config, verbose=0, strategy=strategy)
        report["seconds_per_step"][phase] = (time.time() - start) / steps
        report["resumed"][phase] = result.resumed
        source = result.model_path
        model = files.load_network(result.model_path)
        np.savez(
            os.path.join(args.out, f"weights_{phase}.npz"),
            **{v.path: v.numpy() for v in model.weights},
        )

    # Evaluation splits each batch between the replicas (no random start, so
    # the attack is the same on every device).
    from hydra_tf import data
    from hydra_tf import evaluation
    from hydra_tf import files
    from hydra_tf.objectives import attacks

    with strategy.scope():
        model = files.load_network(source)
    test_ds, _ = data.load("fashion_mnist", "test", limit=96)
    result = evaluation.evaluate(
        model,
        data.make_pipeline(test_ds, 32, training=False),
        attacks.PGDConfig(eps=0.1, steps=3, random_start=False),
        strategy=strategy,
    )
    report["eval"] = [result.clean_acc, result.robust_acc, result.num_examples]

    # Certification splits each example's noisy copies between the replicas:
    # 250 copies in chunks of 100 leave the second replica an empty last chunk.
    from hydra_tf.evaluation import smoothing

    certify_config = smoothing.SmoothingConfig(n0=20, n=250, batch=100, seed=3)
    records = smoothing.certify_dataset(
        model, test_ds, 10, certify_config, limit=4, log_every=0, strategy=strategy
    )
    report["certify"] = [[r["prediction"], r["p_lower"], r["radius"]] for r in records]
    smoother = smoothing.Smoother(model, 10, certify_config, strategy)
    image = next(iter(test_ds))[0]
    report["counts"] = smoother.sample_counts(image, 250, example=7, draw=1).tolist()

    # Random numbers of one step, drawn on every replica from one seed.
    @tf.function
    def draw():
        def replica():
            with distribute.step_randomness(3, tf.constant(5, tf.int64)):
                return distribute.uniform([4], 0.0, 1.0)

        return strategy.experimental_local_results(strategy.run(replica))

    report["draws"] = [d.numpy().tolist() for d in draw()]
    if distribute.is_chief(strategy):
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main()
