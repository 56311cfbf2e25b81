"""Machine, versions and commit recorded with every benchmark result, and peak memory.

The commit comes from ``UNIMMAD_COMMIT`` if set, else from git, else from
``benchmarks/suite_source.json`` — the file ``bash benchmarks/gpu_suite.sh --prepare``
writes (:func:`write_source`) before a checkout is copied to a machine without ``.git``
(the GPU machine): commit, whether the tree was dirty, and a digest of every source file,
which :func:`provenance` checks against the files actually there.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
from typing import Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from kernels.backend import triton

from .timing import sync

__all__ = ["environment", "git_commit", "peak_memory_mb", "peak_rss_mb", "ROOT", "SOURCE_FILE",
           "source_files", "write_source", "read_source", "provenance"]

#: The checkout this package was imported from.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Written by ``gpu_suite.sh --prepare`` (git-ignored; the device call carries it).
SOURCE_FILE = os.path.join("benchmarks", "suite_source.json")
_SOURCE_DIRS = ("kernels", "unimmad", "benchmarks", "tests")
_SOURCE_EXT = (".py", ".sh", ".ini", ".cfg", ".toml", ".txt")


def _git(*args: str, root: str = ROOT) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_files(root: str = ROOT) -> List[str]:
    """The files whose content decides what a benchmark runs: sources, scripts and configs
    under kernels/, unimmad/, benchmarks/, tests/ and the top level (relative paths)."""
    found = [f for f in os.listdir(root) if f.endswith(_SOURCE_EXT) and os.path.isfile(
        os.path.join(root, f))]
    for top in _SOURCE_DIRS:
        for dirpath, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "results"))
            found += [os.path.relpath(os.path.join(dirpath, f), root) for f in files
                      if f.endswith(_SOURCE_EXT)]
    return sorted(p.replace(os.sep, "/") for p in found if p != SOURCE_FILE)


def _digests(root: str, paths: List[str]) -> Dict[str, Optional[str]]:
    out = {}
    for p in paths:
        try:
            with open(os.path.join(root, p), "rb") as f:
                out[p] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            out[p] = None
    return out


def write_source(root: str = ROOT) -> Dict[str, object]:
    """Record the commit, the dirty flag and a digest of every source file into
    :data:`SOURCE_FILE` (run where git is, before the tree is copied elsewhere)."""
    commit = _git("rev-parse", "HEAD", root=root)
    if commit is None:
        raise RuntimeError(f"{root} is not a git checkout: nothing to prepare")
    status = _git("status", "--porcelain", "--untracked-files=no", root=root) or ""
    info = {"commit": commit, "branch": _git("rev-parse", "--abbrev-ref", "HEAD", root=root),
            "dirty": bool(status.strip()), "dirty_files": status.splitlines()[:50],
            "prepared": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": _digests(root, source_files(root))}
    with open(os.path.join(root, SOURCE_FILE), "w") as f:
        json.dump(info, f, indent=1)
    return info


def read_source(root: str = ROOT) -> Optional[Dict[str, object]]:
    """:data:`SOURCE_FILE` if present and readable, else ``None``."""
    try:
        with open(os.path.join(root, SOURCE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def git_commit(root: str = ROOT) -> Optional[str]:
    """The commit of the code that runs: ``UNIMMAD_COMMIT``, else git's HEAD, else the
    commit in :data:`SOURCE_FILE` (``None`` when none of them is there)."""
    if os.environ.get("UNIMMAD_COMMIT"):
        return os.environ["UNIMMAD_COMMIT"]
    commit = _git("rev-parse", "HEAD", root=root)
    if commit:
        return commit
    source = read_source(root)
    return source.get("commit") if source else None


def provenance(root: str = ROOT) -> Dict[str, object]:
    """Where the commit came from and whether the files here are the ones it names:
    ``tree_matches`` compares every source file with the digests :func:`write_source`
    took (``changed``: the paths that differ, added or removed)."""
    if os.environ.get("UNIMMAD_COMMIT"):
        return {"commit": os.environ["UNIMMAD_COMMIT"], "commit_from": "UNIMMAD_COMMIT",
                "tree_matches": None}
    source = read_source(root)
    head = _git("rev-parse", "HEAD", root=root)
    if source is None:
        if head:
            status = _git("status", "--porcelain", "--untracked-files=no", root=root) or ""
            return {"commit": head, "commit_from": "git", "dirty": bool(status.strip()),
                    "tree_matches": None}
        return {"commit": None, "commit_from": "unknown", "tree_matches": None,
                "warning": f"no .git and no {SOURCE_FILE}: run 'bash benchmarks/gpu_suite.sh "
                           "--prepare' before copying the tree"}
    files = source.get("files", {})
    now = _digests(root, sorted(set(files) | set(source_files(root))))
    changed = sorted(p for p in now if now[p] != files.get(p))
    return {"commit": head or source.get("commit"),
            "commit_from": "git" if head else SOURCE_FILE,
            "prepared_commit": source.get("commit"), "prepared": source.get("prepared"),
            "dirty": source.get("dirty"), "dirty_files": source.get("dirty_files"),
            "tree_matches": not changed, "changed": changed[:50]}


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
