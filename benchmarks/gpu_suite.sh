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
PY=${PYTHON:-python3}
# the GPU image's interpreter with torch, should a bare python3 lack it
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" \
    2>/dev/null && [ -x /opt/torch/.venv/bin/python3 ]; then
  PY=/opt/torch/.venv/bin/python3
fi
exec "$PY" -m benchmarks.gpu_suite "$@"
