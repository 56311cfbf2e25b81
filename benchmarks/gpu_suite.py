"""The GPU suite's plan and entry point (``bash benchmarks/gpu_suite.sh`` runs it; README
"GPU suite"):

    bash benchmarks/gpu_suite.sh --prepare      # here, where git is: record the commit
    bash benchmarks/gpu_suite.sh OUT            # on the GPU machine: every stage
    STAGES=parity,memcheck bash benchmarks/gpu_suite.sh OUT     # only some
    bash benchmarks/gpu_suite.sh --list         # the stages and their budgets

Stages, in order (budgets in seconds; the whole run stops starting stages after
``SUITE_BUDGET_S``, default 355):

========  ======  ==============  ========================================================
stage     budget  writes          what
========  ======  ==============  ========================================================
compile       30  compile.json    every kernel × configuration compiled as launched
                                  (``kernels.compile_check --all-configs``, in parallel):
                                  registers, spills, shared memory; fills Triton's cache
kernels       70  kernels.json    copy + bf16 matmul ceilings; ``dyn_conv`` at paper dims
                                  (Triton vs cuDNN); the cosine stage vs copy bandwidth
parity        85  parity.xml      gpu / interpreter tests on the GPU, every autotune
                                  configuration forced in turn (pytest, junit XML)
memcheck      45  (suite.log)     compute-sanitizer memcheck of every kernel/configuration
cmoe          55  cmoe.json       the C-MoE layer: reference fp32 vs torch vs triton bf16
model         45  model.json      the whole model, reference vs accelerated (+ CUDA graph)
amap          25  amap.json       anomaly map, score and loss against the byte floor
========  ======  ==============  ========================================================

With ``suite.log`` and ``suite.json`` that is 8 files, flat in OUT.  Every stage shares
``TRITON_CACHE_DIR`` (default ``/tmp/unimmad-triton-cache``) and
``TRITON_CACHE_AUTOTUNING=1``, so a kernel compiled or tuned by one stage is reused by the
next (and by a rerun on the same machine).  The suite installs nothing and needs no
network.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from unimmad.bench.meta import ROOT, SOURCE_FILE, provenance, write_source
from unimmad.bench.suite import Stage, StageContext, Unavailable, run_suite, select

TRITON_CACHE = "/tmp/unimmad-triton-cache"
#: Test files of the parity stage (their ``gpu`` and ``interpreter`` tests run on the GPU).
PARITY_TESTS = ("tests/test_triton_configs.py", "tests/test_gpu_cmoe.py",
                "tests/test_triton_kernels.py", "tests/test_anomaly_map_kernels.py",
                "tests/test_fast_cmoe.py")
#: Python modules the stages run (``python -m``), for the import check of the CPU tests.
STAGE_MODULES = ("kernels.compile_check", "benchmarks.gpu_kernels", "benchmarks.gpu_memcheck",
                 "benchmarks.gpu_cmoe", "benchmarks.gpu_model", "benchmarks.gpu_anomaly_map")
PER_TEST_TIMEOUT_S = 120


def _workers(limit: int) -> int:
    return max(1, min(limit, (os.cpu_count() or 2) - 2))


def _script(module: str):
    def command(ctx: StageContext) -> List[str]:
        return [ctx.python, "-m", module, "--out", ctx.out, "--budget-s",
                f"{ctx.soft_budget_s:.0f}"]
    return command


def _compile(ctx: StageContext) -> List[str]:
    return [ctx.python, "-m", "kernels.compile_check", "--all-configs", "--jobs",
            str(_workers(12)), "--json", os.path.join(ctx.out, "compile.json")]


def _parity(ctx: StageContext) -> List[str]:
    argv = [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
            "gpu or interpreter", *PARITY_TESTS, f"--junitxml={ctx.out}/parity.xml"]
    if importlib.util.find_spec("xdist") is not None:
        argv += ["-n", str(_workers(8))]
    if importlib.util.find_spec("pytest_timeout") is not None:
        argv += [f"--timeout={PER_TEST_TIMEOUT_S}"]
    return argv


def find_sanitizer() -> Tuple[Optional[str], List[str]]:
    """compute-sanitizer on PATH or under a CUDA root (``CUDA_HOME``, ``CUDA_PATH``,
    /usr/local/cuda*, /opt/nvidia, the ``nvidia`` Python packages); ``(path, places
    looked in)``."""
    looked = ["PATH"]
    found = shutil.which("compute-sanitizer")
    if found:
        return found, looked
    roots = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT")]
    roots += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    roots += ["/opt/cuda", "/opt/nvidia"]
    try:
        import nvidia  # the pip CUDA packages (namespace package)
        roots += list(getattr(nvidia, "__path__", []))
    except ImportError:
        pass
    for root in (r for r in roots if r):
        looked.append(root)
        for pattern in ("bin/compute-sanitizer", "compute-sanitizer/compute-sanitizer",
                        "**/compute-sanitizer"):
            for path in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
                if os.path.isfile(path) and os.access(path, os.X_OK):
                    return path, looked
    return None, looked


def _memcheck(ctx: StageContext) -> List[str]:
    tool, looked = find_sanitizer()
    if tool is None:
        raise Unavailable(f"compute-sanitizer not found (looked in {', '.join(looked)})")
    return [tool, "--tool", "memcheck", "--error-exitcode", "1", "--print-limit", "20",
            ctx.python, "-m", "benchmarks.gpu_memcheck"]


STAGES = [
    Stage("compile", 30, _compile, files=("compile.json",),
          about="every kernel and configuration compiled as launched: registers, spills"),
    Stage("kernels", 70, _script("benchmarks.gpu_kernels"), files=("kernels.json",),
          about="ceilings, dyn_conv at paper dims (Triton vs cuDNN), cosine stage"),
    Stage("parity", 85, _parity, env={"UNIMMAD_AUTOTUNE": "0"}, files=("parity.xml",),
          about="gpu/interpreter tests; every autotune configuration forced in turn"),
    Stage("memcheck", 45, _memcheck,
          env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "UNIMMAD_AUTOTUNE": "0"},
          about="compute-sanitizer memcheck of every kernel and configuration"),
    Stage("cmoe", 55, _script("benchmarks.gpu_cmoe"), files=("cmoe.json",),
          about="C-MoE layer: reference fp32 vs torch vs triton bf16, U = 32 and 1; train"),
    Stage("model", 45, _script("benchmarks.gpu_model"), files=("model.json",),
          about="whole model: reference vs accelerated, CUDA graph"),
    Stage("amap", 25, _script("benchmarks.gpu_anomaly_map"), files=("amap.json",),
          about="anomaly map, score and loss vs the byte floor"),
]


def _run(argv: List[str], timeout: float = 15) -> Optional[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def head() -> Dict[str, object]:
    """What ``suite.json`` starts with: commit and its provenance, versions, GPU and
    driver (from nvidia-smi: the suite itself creates no CUDA context), tools, settings."""
    versions = {"python": platform.python_version(), "executable": sys.executable}
    for name in ("torch", "triton", "numpy", "pytest"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception as exc:
            versions[name] = f"missing: {type(exc).__name__}"
    try:
        import torch
        versions["cuda_runtime"] = torch.version.cuda
        versions["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        pass
    sanitizer, looked = find_sanitizer()
    gpu = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                "compute_cap", "--format=csv,noheader"])
    return {"suite": "unimmad GPU suite (issue 14)", "source": provenance(),
            "versions": versions, "host": platform.node(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "gpu": gpu,
            "tools": {"compute_sanitizer": sanitizer, "looked_in": looked,
                      "nvidia_smi": shutil.which("nvidia-smi"),
                      "pytest_xdist": importlib.util.find_spec("xdist") is not None,
                      "pytest_timeout": importlib.util.find_spec("pytest_timeout") is not None},
            "env": {k: os.environ.get(k) for k in
                    ("TRITON_CACHE_DIR", "TRITON_CACHE_AUTOTUNING", "CUDA_VISIBLE_DEVICES",
                     "STAGES", "SUITE_BUDGET_S", "UNIMMAD_COMMIT")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("out", nargs="?", help="output folder (flat, at most 8 files)")
    ap.add_argument("--stages", default=os.environ.get("STAGES"),
                    help="comma-separated stages to run (default: $STAGES, else all)")
    ap.add_argument("--budget-s", type=float,
                    default=float(os.environ.get("SUITE_BUDGET_S", "355")),
                    help="whole-run budget (default: $SUITE_BUDGET_S, else 355)")
    ap.add_argument("--prepare", action="store_true",
                    help=f"write {SOURCE_FILE} (commit, digests) for a copy without .git")
    ap.add_argument("--list", action="store_true", help="print the stages and exit")
    args = ap.parse_args(argv)
    if args.prepare:
        info = write_source()
        print(f"wrote {SOURCE_FILE}: commit {info['commit'][:12]}"
              f"{' (dirty)' if info['dirty'] else ''}, {len(info['files'])} files; the "
              f"device call must carry it (carry=[\"{SOURCE_FILE}\"])")
        return 0
    try:
        chosen = select(STAGES, args.stages)
    except ValueError as exc:
        ap.error(str(exc))
    if args.list:
        for s in chosen:
            print(f"{s.name:<9} {s.budget_s:>4.0f} s  {', '.join(s.files) or '(suite.log)':<14} "
                  f"{s.about}")
        return 0
    if not args.out:
        ap.error("OUT is required (the folder the results go to)")
    os.environ.setdefault("TRITON_CACHE_DIR", TRITON_CACHE)
    os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
    return run_suite(args.out, STAGES, args.stages, args.budget_s, head=head(), root=ROOT,
                     python=sys.executable)


if __name__ == "__main__":
    sys.exit(main())
