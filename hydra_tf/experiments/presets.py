"""Presets of the pipeline: sizes, and for ImageNet the paper's whole setting.

The size presets take the dataset, architecture and objective from the
flags. `imagenet` also names them (ResNet-50, free adversarial training at
eps 4/255, SGD with a cosine schedule, as in HYDRA's ImageNet runs); a flag
given on the command line still overrides any preset value.
"""

from hydra_tf import objectives

PRESETS = {
    # Seconds: for tests and a first look.
    "tiny": {
        "train_limit": 512,
        "test_limit": 128,
        "batch_size": 64,
        "pretrain_epochs": 1,
        "prune_epochs": 1,
        "finetune_epochs": 1,
        "eval_attack": "pgd",
        "eval_steps": 10,
        "eval_restarts": 1,
        "certify_n": 200,
        "certify_limit": 32,
    },
    # The default: under 15 minutes on a 2-core CPU; standard AutoAttack.
    "small": {
        "train_limit": 10000,
        "test_limit": 500,
        "batch_size": 128,
        "pretrain_epochs": 4,
        "prune_epochs": 1,
        "finetune_epochs": 1,
        "certify_n": 1000,
        "certify_limit": 200,
    },
    # The paper's schedule (needs a GPU): 100 / 20 / 20 epochs, full data.
    "paper": {
        "train_limit": None,
        "test_limit": None,
        "batch_size": 128,
        "pretrain_epochs": 100,
        "prune_epochs": 20,
        "finetune_epochs": 20,
    },
    # HYDRA's ImageNet setting (needs GPUs and the manual download):
    # ResNet-50, free AT with m = 4 at eps = step = 4/255; epochs count
    # gradient computations, so 90 pretraining epochs are ceil(90 / 4) = 23
    # passes over the data; prune and finetune 20 each (5 passes); SGD lr
    # 0.1 (finetune 0.01), momentum 0.9, weight decay 1e-4, cosine; batch
    # 256; AutoAttack on 5000 validation images (PGD-10 with step 1/255:
    # --attack=pgd --eval_steps=10 --eval_restarts=1).
    "imagenet": {
        "dataset": "imagenet2012",
        "arch": "resnet50",
        "objective": objectives.FreeATConfig(eps=4 / 255, replays=4),
        "train_limit": None,
        "test_limit": 5000,
        "batch_size": 256,
        "pretrain_epochs": 90,
        "prune_epochs": 20,
        "finetune_epochs": 20,
        "optimizer": "sgd",
        "pretrain_lr": 0.1,
        "prune_lr": 0.1,
        "finetune_lr": 0.01,
        "weight_decay": 1e-4,
        "eval_steps": 10,
        "eval_restarts": 1,
    },
}
