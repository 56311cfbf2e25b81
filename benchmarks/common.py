"""Shared benchmark helpers: timing and peak-memory measurement, result metadata."""
from __future__ import annotations

import time
from typing import Callable

import torch

from unimmad.benchmeta import peak_memory_mb, sync  # noqa: F401  (re-exported)


def timed(fn: Callable[[], object], device) -> Callable[[], object]:
    """``fn`` followed by a device synchronisation (so wall time covers the work)."""
    def run():
        out = fn()
        sync(device)
        return out
    return run


def wall(fn: Callable[[], object], device, reps: int = 3) -> float:
    """Median wall time (s) of ``reps`` calls after one warm-up."""
    run = timed(fn, device)
    run()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def do_bench_ms(fn: Callable[[], object], rep: int = 100, warmup: int = 25) -> float:
    """Median time (ms) of ``fn`` on CUDA by ``triton.testing.do_bench`` (CUDA events)."""
    from triton.testing import do_bench
    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
