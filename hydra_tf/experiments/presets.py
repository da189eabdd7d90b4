"""Size presets of the pipeline; the dataset, architecture and eps come from the flags."""

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
}
