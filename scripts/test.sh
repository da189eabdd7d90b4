#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite, its
# files shared between TEST_WORKERS processes (default 2, one per core here;
# TEST_WORKERS=0 runs them in this process).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/masks_test.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
.venv/bin/ruff check --quiet .
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 0
fi
exit "$status"
