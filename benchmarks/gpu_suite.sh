#!/usr/bin/env bash
# One prepared run for a lent H200 (see README "GPU suite"): the gpu-marked parity tests, then
# the GPU benchmarks; every result is written as JSON into the folder given as argument.
#   bash benchmarks/gpu_suite.sh OUT_DIR
# The device image has torch + triton but no network: the package runs from this checkout
# (PYTHONPATH), nothing is installed.  Target: well under 6 minutes on an H200.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_suite.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
start=$(date +%s)
$PY - <<'PY' > "$OUT/env.json" || status=1
import json, torch
from unimmad.benchmeta import environment
print(json.dumps(environment("cuda" if torch.cuda.is_available() else "cpu"), indent=2))
PY
# 1. parity on the GPU (one kernel config: compile time, not speed, matters here)
UNIMMAD_AUTOTUNE=0 timeout 240 $PY -m pytest -q -p no:cacheprovider -m "gpu or interpreter" \
  tests/test_gpu_cmoe.py tests/test_triton_kernels.py --junitxml="$OUT/gpu_tests.xml" \
  2>&1 | tail -n 40 || status=1
# 2. benchmarks
timeout 240 $PY -m benchmarks.gpu_cmoe --out "$OUT" 2>&1 | tail -n 80 || status=1
if [ -f benchmarks/gpu_anomaly_map.py ]; then
  timeout 90 $PY -m benchmarks.gpu_anomaly_map --out "$OUT" 2>&1 | tail -n 30 || status=1
fi
echo "gpu_suite: $(( $(date +%s) - start )) s, status $status"
exit $status
