"""Replays the start of a finetune phase step by step: where a TRADES finetune breaks.

Rebuilds the phase of a study's `<variant>/finetune/config.json` (same source
checkpoint, seed, data order, optimizer) and trains it for --steps steps. After
each step it prints the step's training loss, and every --every steps (and on
every step whose loss is over --alarm) the mean TRADES KL of the training
attack on the first 256 test images, the clean accuracy on them, and the
largest bias of the first layer with its filter's number of kept weights.
One thread (TF_NUM_INTRAOP_THREADS=1, as the study ran) replays the study's
trajectory; other thread counts take other, equally valid ones.
--learning_rate and --global_clipnorm replay it with another learning rate or
with the gradient's global norm clipped (candidate remedies).

  TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 PYTHONPATH=. python \
      results/adversarial/finetune_trajectory.py \
      runs/adv_trades/cnn_small/seed0/hydra_0.1/finetune/config.json --steps=45
"""

import argparse
import dataclasses
import json
import math

import keras
import numpy as np

from hydra_tf import data
from hydra_tf import files
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.models import layers as score_layers
from hydra_tf.objectives import base
from hydra_tf.pruning import phases
from hydra_tf.training import TrainConfig
from hydra_tf.training import coupled_l2
from hydra_tf.training import make_optimizer
from hydra_tf.training import trainer as trainer_lib


def _build(config):
    keras.utils.set_random_seed(config.seed)
    meta = data.info(config.dataset)
    train_ds, num_train = training.training_data(config)
    steps_per_epoch = math.ceil(num_train / config.batch_size)
    network = phases.build_network(
        config.phase, config.arch, meta.image_shape, meta.num_classes, config.keep_ratio
    )
    phases.prepare(
        network,
        config.phase,
        files.load_network(config.source_checkpoint),
        config.score_init,
        prune_bn=config.prune_bn,
    )
    objective = objectives.make(config.objective, steps_per_epoch=steps_per_epoch)
    trainer = trainer_lib.RobustTrainer(network, objective, seed=config.seed, l2=coupled_l2(config))
    trainer.compile(optimizer=make_optimizer(config, steps_per_epoch))
    return train_ds, network, objective, trainer


def _probe(network, objective, images, labels):
    """Mean KL(p(clean) || p(attacked)) of the training attack, clean accuracy, first-layer bias."""
    attacked = objective.perturb(network, images, labels)
    clean = network(images, training=False)
    other = network(attacked, training=False)
    kl = base.LogitKLDivergence()(clean, other)
    accuracy = np.mean(np.argmax(clean, axis=-1) == labels.numpy())
    first = score_layers.scored_layers(network)[0]
    bias = first.bias.numpy()
    kept = np.count_nonzero(first.masked_kernel().numpy().reshape(-1, bias.shape[0]), axis=0)
    top = int(np.argmax(bias))
    return {
        "kl": float(kl),
        "clean_acc": float(accuracy),
        "first_layer_max_bias": float(bias[top]),
        "its_kept_weights": int(kept[top]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="A finetune phase's config.json.")
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--alarm", type=float, default=2.0, help="Probe after a loss above this.")
    parser.add_argument("--output", help="Also write the records here (JSON).")
    parser.add_argument("--learning_rate", type=float, help="Instead of the phase's.")
    parser.add_argument("--global_clipnorm", type=float, help="Clip the gradient's global norm.")
    args = parser.parse_args()
    with open(args.config) as f:
        config = TrainConfig.from_json(json.load(f))
    if args.learning_rate is not None:
        config = dataclasses.replace(config, learning_rate=args.learning_rate)
    if config.phase != "finetune":
        raise SystemExit(f"{args.config} is a {config.phase} phase, not a finetune phase.")
    train_ds, network, objective, trainer = _build(config)
    # Keras clips in `optimizer.apply`, which the trainer's step calls.
    trainer.optimizer.global_clipnorm = args.global_clipnorm
    test_ds, _ = data.load(config.dataset, "test", config.data_dir, 256)
    images, labels = next(iter(test_ds.batch(256)))
    records = []

    class Probe(keras.callbacks.Callback):
        mean = 0.0

        def on_train_batch_end(self, batch, logs=None):
            # Keras reports the epoch's running mean; the step's own loss is its increment.
            loss = logs["loss"] * (batch + 1) - self.mean * batch
            self.mean = logs["loss"]
            record = {"step": batch + 1, "loss": float(loss)}
            if (batch + 1) % args.every == 0 or loss > args.alarm:
                record.update(_probe(network, objective, images, labels))
            records.append(record)
            print(json.dumps(record), flush=True)

    print(json.dumps({"step": 0, **_probe(network, objective, images, labels)}), flush=True)
    trainer.fit(train_ds, epochs=1, steps_per_epoch=args.steps, callbacks=[Probe()], verbose=0)
    if args.output:
        files.write_json(args.output, records)


if __name__ == "__main__":
    main()
