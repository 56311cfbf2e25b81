"""The stage runner of the GPU suite (``benchmarks/gpu_suite.sh``): stages run one after the
other as child processes, each with its own time budget, their output tee'd to
``OUT/suite.log`` and summarised in ``OUT/suite.json`` — the first file written (commit,
versions, tools, the plan) and rewritten after every stage.

Budgets: a stage that outlives ``budget − grace`` seconds gets SIGINT (its process group,
as Ctrl-C would), so its script writes what it has (pytest writes its ``--junitxml``);
``grace`` seconds later it is killed.  The whole run stops starting stages once
``total_budget_s`` is spent.  The runner itself turns SIGINT/SIGTERM into the same
interrupt of the running stage and writes ``suite.json`` before it exits.  What a stage
writes into OUT must stay flat and, with the two suite files, at most :data:`MAX_FILES`.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ["Stage", "StageContext", "Unavailable", "MAX_FILES", "select", "run_suite"]

#: The device tool brings back at most 8 files, flat (the GPU suite writes no more).
MAX_FILES = 8
LOG, SUMMARY = "suite.log", "suite.json"


class Unavailable(Exception):
    """The stage cannot run on this machine (the message says why); it counts as failed."""


@dataclasses.dataclass
class StageContext:
    """What a stage's command is built from."""
    out: str                 # the output folder (absolute)
    budget_s: float          # hard budget of this run of the stage
    soft_budget_s: float     # start no new row after this (budget − grace − margin)
    python: str              # the interpreter running the suite
    root: str                # the checkout (working directory of every stage)


@dataclasses.dataclass
class Stage:
    """One stage: ``command(ctx)`` gives its argv (or raises :class:`Unavailable`)."""
    name: str
    budget_s: float
    command: Callable[[StageContext], List[str]]
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    files: Sequence[str] = ()
    about: str = ""


def select(stages: Sequence[Stage], spec: Optional[str]) -> List[Stage]:
    """The stages named in ``spec`` (``"a,b"``; empty or ``"all"``: every stage), in plan
    order; an unknown name is a ``ValueError`` listing the known ones."""
    names = [s.name for s in stages]
    if not spec or spec.strip() in ("", "all"):
        return list(stages)
    wanted = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {names}")
    return [s for s in stages if s.name in wanted]


class _Tee:
    """Lines to stdout and the suite log, prefixed with the stage and its elapsed time."""

    def __init__(self, path: str):
        self.file = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
        self.lock = threading.Lock()

    def line(self, text: str, stage: str = "suite", t0: Optional[float] = None) -> None:
        stamp = f"{time.monotonic() - t0:6.1f}s" if t0 is not None else _now()
        out = f"[{stage} {stamp}] {text.rstrip()}"
        with self.lock:
            print(out, flush=True)
            self.file.write(out + "\n")

    def close(self) -> None:
        self.file.close()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S")


class _Runner:
    def __init__(self, out: str, stages: List[Stage], total_budget_s: float, grace_s: float,
                 head: Dict, root: str, python: str):
        self.out, self.stages, self.total, self.grace = out, stages, total_budget_s, grace_s
        self.root, self.python = root, python
        self.t0 = time.monotonic()
        self.stop_reason: Optional[str] = None
        self.tee = _Tee(os.path.join(out, LOG))
        self.summary = {**head, "started": _now(), "total_budget_s": total_budget_s,
                        "grace_s": grace_s, "status": "running",
                        "plan": [{"stage": s.name, "budget_s": s.budget_s, "files": list(s.files),
                                  "about": s.about} for s in stages],
                        "stages": []}
        self.save()

    def save(self) -> None:
        self.summary["wall_s"] = round(time.monotonic() - self.t0, 1)
        tmp = os.path.join(self.out, SUMMARY + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.summary, f, indent=1, default=str)
        os.replace(tmp, os.path.join(self.out, SUMMARY))

    # ------------------------------------------------------------------ signals
    def on_signal(self, signum, frame) -> None:
        """SIGINT/SIGTERM to the suite: interrupt the running stage (the wait loop sends it
        SIGINT, then SIGKILL after the grace) and start no other."""
        self.stop_reason = f"suite received {signal.Signals(signum).name}"

    # ------------------------------------------------------------------ one stage
    def run_stage(self, stage: Stage) -> Dict:
        rec = {"stage": stage.name, "budget_s": stage.budget_s}
        remaining = self.total - (time.monotonic() - self.t0)
        if self.stop_reason:
            return {**rec, "status": "skipped", "why": self.stop_reason}
        if remaining < min(stage.budget_s, 2 * self.grace):
            return {**rec, "status": "skipped",
                    "why": f"suite budget spent ({remaining:.0f} s left of {self.total:.0f})"}
        budget = min(stage.budget_s, remaining)
        soft = max(1.0, budget - self.grace - min(3.0, 0.1 * budget))
        ctx = StageContext(self.out, budget, soft, self.python, self.root)
        try:
            argv = stage.command(ctx)
        except Unavailable as exc:
            self.tee.line(f"UNAVAILABLE: {exc}", stage.name)
            return {**rec, "status": "failed", "why": f"unavailable: {exc}"}
        rec.update(budget_s=round(budget, 1), soft_budget_s=round(soft, 1), argv=argv,
                   env=stage.env)
        env = dict(os.environ, **stage.env, PYTHONUNBUFFERED="1")
        t0 = time.monotonic()
        self.tee.line(f"start: {' '.join(argv)} (budget {budget:.0f} s)", stage.name, t0)
        tail: collections.deque = collections.deque(maxlen=40)
        proc = subprocess.Popen(argv, cwd=self.root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", bufsize=1,
                                start_new_session=True)

        def pump():
            for text in proc.stdout:
                tail.append(text.rstrip()[:500])
                self.tee.line(text, stage.name, t0)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        stopped_at, why, killed = None, None, False
        while proc.poll() is None:
            now = time.monotonic()
            if stopped_at is None and (now - t0 >= budget - self.grace or self.stop_reason):
                why = "budget" if not self.stop_reason else self.stop_reason
                self.tee.line(f"{why}: SIGINT after {now - t0:.0f} s", stage.name, t0)
                _signal_group(proc, signal.SIGINT)
                stopped_at = now
            elif stopped_at is not None and now - stopped_at >= self.grace:
                self.tee.line(f"SIGKILL after {self.grace:.0f} s of grace", stage.name, t0)
                _signal_group(proc, signal.SIGKILL)
                killed = True
                proc.wait()
            else:
                time.sleep(0.05)
        _signal_group(proc, signal.SIGKILL)          # nothing of the stage outlives it
        reader.join(timeout=5)
        seconds = time.monotonic() - t0
        if why is None:
            status = "ok" if proc.returncode == 0 else "failed"
        else:
            status = "timeout" if why == "budget" else "interrupted"
        self.tee.line(f"end: {status}, exit status {proc.returncode}, {seconds:.1f} s",
                      stage.name, t0)
        return {**rec, "status": status, "returncode": proc.returncode,
                "seconds": round(seconds, 1), "interrupted": why is not None, "killed": killed,
                "tail": list(tail)[-15:]}

    def run(self) -> int:
        for stage in self.stages:
            rec = self.run_stage(stage)
            self.summary["stages"].append(rec)
            self.save()
        for f in os.listdir(self.out):      # a stage killed while it rewrote a file
            if f.endswith(".tmp"):
                os.remove(os.path.join(self.out, f))
        extra = sorted(os.listdir(self.out))
        nested = [f for f in extra if os.path.isdir(os.path.join(self.out, f))]
        problems = []
        if len(extra) > MAX_FILES or nested:
            problems.append(f"OUT holds {len(extra)} entries (folders: {nested}); the device "
                            f"tool returns at most {MAX_FILES} flat files")
        self.summary["files"] = extra
        failed = [r["stage"] for r in self.summary["stages"] if r["status"] != "ok"]
        self.summary["failed"] = failed
        self.summary["problems"] = problems
        self.summary["status"] = "interrupted" if self.stop_reason else (
            "ok" if not failed and not problems else "failed")
        self.summary["finished"] = _now()
        self.save()
        self.tee.line(f"done in {time.monotonic() - self.t0:.0f} s: {self.summary['status']}"
                      + (f"; not ok: {failed}" if failed else "")
                      + (f"; {problems}" if problems else ""))
        self.tee.close()
        return 0 if self.summary["status"] == "ok" else 1


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_suite(out: str, stages: Sequence[Stage], spec: Optional[str] = None,
              total_budget_s: float = 355.0, grace_s: float = 6.0,
              head: Optional[Dict] = None, root: Optional[str] = None,
              python: Optional[str] = None) -> int:
    """Run the stages of ``spec`` (see :func:`select`) into ``out``; ``head`` goes first
    into ``suite.json`` (written before any stage starts).  Returns 0 when every selected
    stage exited 0 within its budget and OUT holds no more than :data:`MAX_FILES` flat
    files, else 1."""
    chosen = select(stages, spec)
    os.makedirs(out, exist_ok=True)
    out = os.path.abspath(out)
    runner = _Runner(out, chosen, total_budget_s, grace_s, dict(head or {}),
                     root or os.getcwd(), python or sys.executable)
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for s in old:
            signal.signal(s, runner.on_signal)
    try:
        return runner.run()
    finally:
        if in_main:
            for s, h in old.items():
                signal.signal(s, h)
