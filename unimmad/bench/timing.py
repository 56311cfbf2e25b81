"""One timing helper for every benchmark: wall-clock ``perf_counter`` around a device sync
(CPU, and CUDA end-to-end calls) and ``triton.testing.do_bench`` (CUDA events, median) for
kernels; plus the summary statistics reported with each row."""
from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from kernels.backend import triton

__all__ = ["sync", "timed", "time_calls", "do_bench_ms", "summarize", "quantile", "copy_ceiling",
           "matmul_ceiling"]


def sync(device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device) -> Callable[[], object]:
    """``fn`` followed by a device synchronisation (so a wall-clock timer covers the work;
    what pytest-benchmark times)."""
    def run():
        out = fn()
        sync(device)
        return out
    return run


def time_calls(fn: Callable[[], object], device, warmup: int, iters: int,
               label: Optional[str] = None, show: bool = False) -> Tuple[List[float], object]:
    """Call ``fn`` ``warmup`` times untimed, then ``iters`` times timed (seconds, each call
    synchronised); returns ``(times, last output)``.  ``show`` draws a progress bar on
    stderr labelled ``label``."""
    bar = tqdm(total=warmup + iters, desc=label, leave=False, disable=not show, file=sys.stderr)
    times, out = [], None
    for i in range(warmup + iters):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        bar.update(1)
    bar.close()
    return times, out


def do_bench_ms(fn: Callable[[], object], rep: int = 100, warmup: int = 25,
                grad_to_none: Optional[List[torch.Tensor]] = None) -> float:
    """Median time (ms) of ``fn`` on CUDA by ``triton.testing.do_bench`` (CUDA events, L2
    flushed between calls; ``rep``/``warmup`` in ms; the gradients of ``grad_to_none``
    cleared between calls; the defaults are ``do_bench``'s)."""
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                                         return_mode="median"))


def copy_ceiling(nbytes: int = 1 << 30) -> Dict[str, float]:
    """Device-to-device copy of ``nbytes`` random bytes on CUDA: ``ms`` and ``gbps``
    counting bytes read plus bytes written (the bandwidth ceiling of streaming kernels)."""
    x = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench_ms(lambda: y.copy_(x))
    return {"bytes": 2 * nbytes, "ms": ms, "gbps": 2 * nbytes / (ms * 1e-3) / 1e9}


def matmul_ceiling(n: int = 8192) -> Dict[str, float]:
    """An ``n³`` bf16 matrix product of random data on CUDA (cuBLAS): ``ms`` and ``tflops``
    (the ceiling of tensor-core kernels)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = do_bench_ms(lambda: a @ b)
    return {"n": n, "ms": ms, "tflops": 2 * n ** 3 / (ms * 1e-3) / 1e12}


def quantile(xs: List[float], q: float) -> float:
    """Linear-interpolation quantile of ``xs`` (``q`` in [0, 1])."""
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times: List[float], batch: int) -> Dict[str, float]:
    """Median latency, spread and throughput (``batch`` items per call)."""
    med = statistics.median(times)
    return {
        "latency_median_ms": med * 1e3,
        "latency_min_ms": min(times) * 1e3,
        "latency_max_ms": max(times) * 1e3,
        "latency_iqr_ms": (quantile(times, 0.75) - quantile(times, 0.25)) * 1e3,
        "samples_per_s": batch / med,
    }
