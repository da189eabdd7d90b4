#!/bin/bash
# Runs, resumes, saves or reports issue 20's adversarial studies that span sessions.
# From the repository root, after scripts/setup.sh:
#
#   bash results/adversarial/study.sh run <study> <seed>   # train and evaluate one seed (resumes)
#   bash results/adversarial/study.sh progress <study>     # <study>/progress.md, both seeds
#   bash results/adversarial/study.sh save <study>         # the workdir into <study>/state
#   bash results/adversarial/study.sh results <study>      # <study>/results.md, both seeds
#
# studies (README.md says what each is): cnn_small_pgd_at_ftv, cnn_small_trades_ftv,
# cnn_large_trades_ftv, cnn_large_pgd_at. `run` first restores <study>/state (the committed
# snapshot) when the workdir is missing, so a new machine carries on where the last one stopped. Workdirs are under
# $RUNS (default runs/); a seed's own results go to $RUNS/adv_out/<study>_seed<seed>.
# One thread per process: run the two seeds side by side on two cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
action=${1:-} study=${2:-} seed=${3:-}
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
case $study in
  cnn_small_pgd_at_ftv)
    flags=(--objective=pgd_at --archs=cnn_small --finetune_attack_start=vertex
      --keep_ratios=0.01,0.1,0.05)
    workdir=$RUNS/adv_pgd_at_ftv ;;
  cnn_small_trades_ftv)
    flags=(--objective=trades --archs=cnn_small --finetune_attack_start=vertex
      --keep_ratios=0.01,0.1,0.05)
    workdir=$RUNS/adv_trades_small_ftv ;;
  cnn_large_trades_ftv)
    # 90 and 95% first: their HYDRA - LWM is what the earlier machine had not measured.
    flags=(--objective=trades --archs=cnn_large --finetune_attack_start=vertex
      --keep_ratios=0.1,0.05,0.01)
    workdir=$RUNS/adv_trades_ftv ;;
  cnn_large_pgd_at)
    # Pretrain lr 0.01: at the study's 0.1 PGD-AT leaves cnn_large (no BatchNorm)
    # at chance (README.md, "cnn_large, PGD-AT").
    flags=(--objective=pgd_at --archs=cnn_large --finetune_attack_start=vertex
      --keep_ratios=0.1,0.05,0.01 --pretrain_lr=0.01)
    workdir=$RUNS/adv_pgd_at_large ;;
  *)
    echo "study.sh: unknown study '$study'; one of cnn_small_pgd_at_ftv, cnn_small_trades_ftv," \
      "cnn_large_trades_ftv, cnn_large_pgd_at" >&2
    exit 2 ;;
esac
flags+=(--eps=0.1 --pretrain_epochs=5 --prune_epochs=2 --finetune_epochs=1 --lwm_equal_budget
  --also_pgd --test_limit=2000 --workdir="$workdir")
state=results/adversarial/$study/state
export PYTHONPATH=. TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
case $action in
  run)
    if [[ ! "$seed" =~ ^[0-9]+$ ]]; then
      echo "study.sh: run needs a seed (0 or 1), got '$seed'" >&2
      exit 2
    fi
    if [[ ! -d "$workdir" && -f "$state/snapshot.json" ]]; then
      "$PY" -m binaries.snapshot restore --snapshot="$state" --workdir="$workdir"
    fi
    exec "$PY" -m binaries.reproduce "${flags[@]}" --seeds="$seed" \
      --output_dir="$RUNS/adv_out/${study}_seed$seed" ;;
  progress)
    exec "$PY" -m binaries.reproduce "${flags[@]}" --seeds=0,1 --progress \
      --output_dir="results/adversarial/$study" ;;
  save)
    exec "$PY" -m binaries.snapshot save --workdir="$workdir" --snapshot="$state" ;;
  results)
    exec "$PY" -m binaries.reproduce "${flags[@]}" --seeds=0,1 \
      --output_dir="results/adversarial/$study" ;;
  *)
    echo "study.sh: give an action: run, progress, save or results (got '$action')" >&2
    exit 2 ;;
esac
