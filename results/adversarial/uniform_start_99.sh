#!/usr/bin/env bash
# A cnn_large 99% finetune of the TRADES study with TRADES' attack started uniformly in the
# eps-ball (--trades_start=uniform), from the study's own networks, then standard AutoAttack
# on the first 2000 test images. Everything else is the study's finetune (compare the two
# config.json files). START=vertex starts it at a random corner of the ball instead.
# Resumable: run it again after a kill.
#
#   bash results/adversarial/uniform_start_99.sh hydra|lwm SEED [RUNS] [OUT]
#
# RUNS is the study's --workdir (default runs/adv_trades), OUT where the finetunes go
# (default runs/uniform_start_99). HYDRA finetunes the study's 99% prune network for 1 epoch;
# LWM finetunes the dense network under its magnitude mask for 3 epochs (the equal budget).
set -euo pipefail
method=$1 seed=$2 runs=${3:-runs/adv_trades} out=${4:-runs/uniform_start_99}
study=$runs/cnn_large/seed$seed
case $method in
  hydra) source=$study/hydra_0.01/prune/model.keras epochs=1 name=hydra_0.01 ;;
  lwm) source=$study/dense/pretrain/model.keras epochs=3 name=lwm_equal_0.01 ;;
  *) echo "uniform_start_99.sh: method must be hydra or lwm, not '$method'" >&2; exit 2 ;;
esac
[ -f "$source" ] || { echo "uniform_start_99.sh: no study network at $source" >&2; exit 1; }
dir=$out/seed$seed/$name
export TF_NUM_INTRAOP_THREADS=${THREADS:-1} TF_NUM_INTEROP_THREADS=1
python=${PYTHON:-python}
$python -m binaries.train --phase=finetune --arch=cnn_large --keep_ratio=0.01 \
  --learning_rate=0.01 --objective=trades --trades_start=${START:-uniform} --eps=0.1 --epochs=$epochs \
  --seed=$seed --test_limit=2000 --source_checkpoint=$source --workdir=$dir
$python -m binaries.evaluate --checkpoint=$dir/model.keras --attack=autoattack --eps=0.1 \
  --test_limit=2000 --output=$dir/eval.json
