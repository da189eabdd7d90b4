#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the main job: the HYDRA
# pipeline on offline Fashion-MNIST (small preset). Extra arguments are
# pipeline flags, e.g. scripts/pipeline.sh --preset=tiny --workdir=runs/tiny
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m binaries.pipeline "$@"
