"""Machine, versions and commit recorded with every benchmark result, and peak memory."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import resource
import subprocess
import sys
from typing import Dict, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from kernels.backend import triton

from .timing import sync

__all__ = ["environment", "git_commit", "peak_memory_mb", "peak_rss_mb"]


def git_commit() -> Optional[str]:
    """HEAD of the checkout this package was imported from (``None`` outside git)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: Optional[torch.device] = None) -> Dict[str, object]:
    """Where and with what a result was measured."""
    triton_version = triton.__version__ if triton is not None else None
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        device_name = torch.cuda.get_device_name(dev)
    else:
        device_name = _cpu_name()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "device": str(dev),
        "device_name": device_name,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def peak_rss_mb() -> float:
    """Peak resident set of this process (MiB; Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def _silenced_stderr():
    """File descriptor 2 pointed at /dev/null for the duration (what C++ code prints there
    is dropped; Python's ``sys.stderr`` is flushed first).  Used around the profiler's
    start and stop only, never around the measured call."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr descriptor: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(fn, device) -> float:
    """Peak tensor memory (MiB) allocated during one call of ``fn``, above what was live
    before it: CUDA max-allocated on GPU; on CPU, the running sum of the torch profiler's
    per-op self-allocation events (tensor memory only, not the process's resident set)."""
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _silenced_stderr():     # the profiler's C++ "USDT: ... profiler_start/stop" lines
        prof.start()
    try:
        fn()
    finally:
        with _silenced_stderr():
            prof.stop()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak / 2 ** 20
