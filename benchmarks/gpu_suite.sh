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
UNIMMAD_AUTOTUNE=0 timeout 180 $PY -m pytest -q -p no:cacheprovider -m "gpu or interpreter" \
  tests/test_gpu_cmoe.py tests/test_triton_kernels.py tests/test_anomaly_map_kernels.py \
  --junitxml="$OUT/gpu_tests.xml" \
  2>&1 | tail -n 40 || status=1
# 2. memory check of one small fused C-MoE launch (forward + backward)
if command -v compute-sanitizer >/dev/null 2>&1; then
  UNIMMAD_AUTOTUNE=0 timeout 60 compute-sanitizer --tool memcheck --print-limit 20 \
    $PY -c "
import torch
from kernels import FastCMoE
m = FastCMoE(20, 24, 3, 5, 2, backend='triton').cuda().train()
g = torch.randn(2, 20, 7, 9, device='cuda', requires_grad=True)
p = torch.randn(3, 20, 7, 9, device='cuda')
out, aux = m(g, p, torch.tensor([0, 1, 1], device='cuda'))
(out.square().mean() + aux.balance_loss).backward()
m.eval()
with torch.no_grad():
    m(g, p, torch.tensor([0, 1, 1], device='cuda'))
torch.cuda.synchronize()
print('memcheck run finished')
" > "$OUT/memcheck.txt" 2>&1 || status=1
  tail -n 5 "$OUT/memcheck.txt"
else
  echo "compute-sanitizer not found: memcheck skipped" | tee "$OUT/memcheck.txt"
fi
# 3. benchmarks
timeout 110 $PY -m benchmarks.gpu_cmoe --out "$OUT" 2>&1 | tail -n 60 || status=1
timeout 80 $PY -m benchmarks.gpu_model --out "$OUT" 2>&1 | tail -n 40 || status=1
if [ -f benchmarks/gpu_anomaly_map.py ]; then
  timeout 45 $PY -m benchmarks.gpu_anomaly_map --out "$OUT" 2>&1 | tail -n 30 || status=1
fi
echo "gpu_suite: $(( $(date +%s) - start )) s, status $status"
exit $status
