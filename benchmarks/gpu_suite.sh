#!/usr/bin/env bash
# The GPU suite (README "GPU suite"; the plan and its budgets: benchmarks/gpu_suite.py).
#   bash benchmarks/gpu_suite.sh --prepare        here, before the copy: commit + file digests
#   bash benchmarks/gpu_suite.sh OUT              on the GPU machine: every stage into OUT
#   STAGES=parity,memcheck bash benchmarks/gpu_suite.sh OUT     rerun only some stages
#   bash benchmarks/gpu_suite.sh --list           the stages, budgets and files
# Everything is tee'd to OUT/suite.log; OUT/suite.json (written first) holds the commit,
# versions and every stage's outcome.  Nothing is installed; the package runs from this
# checkout (PYTHONPATH).  Exit status 0 only when every selected stage passed in budget.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m benchmarks.gpu_suite "$@"
