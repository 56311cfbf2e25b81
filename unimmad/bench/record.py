"""Result files of the GPU scripts that survive being stopped: one JSON object rewritten
(atomically) after every row, a soft time budget checked before each row, and the
prologue every ``benchmarks/gpu_*.py`` script shares (arguments, CUDA check, metadata).

A script of the GPU suite (``benchmarks/gpu_suite.sh``) is stopped by SIGINT when its stage
runs out of time: :class:`JsonRecord` marks the file ``"interrupted"``, writes it and lets
the ``KeyboardInterrupt`` end the script (:func:`run_script` turns it into exit status
130); rows already measured are on disk either way.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional

import torch

from .meta import environment

__all__ = ["JsonRecord", "script_parser", "open_record", "run_script", "ms_fields"]


class JsonRecord:
    """``{"meta": …, **head, "rows": [...], "skipped": [...], "status": …}`` at ``path``,
    rewritten after every change.

    ``budget_s``: a soft budget — :meth:`over_budget` turns true once it has passed since
    the record was opened, and :meth:`row` then records the row as skipped instead of
    measuring it.  ``status`` is ``"running"`` until the ``with`` block ends, then
    ``"complete"``, ``"interrupted"`` (KeyboardInterrupt, i.e. SIGINT) or ``"error"``.
    """

    def __init__(self, path: str, meta: Dict, budget_s: Optional[float] = None, **head):
        self.path = path
        self.budget_s = budget_s
        self.start = time.monotonic()
        self.data: Dict[str, object] = {"meta": meta, **head, "budget_s": budget_s,
                                        "status": "running", "rows": [], "skipped": []}
        self.save()

    # ------------------------------------------------------------------ writing
    def save(self) -> None:
        """Write the whole record (to a temporary file, then renamed: never half a file)."""
        self.data["wall_s"] = round(time.monotonic() - self.start, 2)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)

    def set(self, key: str, value) -> None:
        """A top-level entry (a ceiling, a summary), written at once."""
        self.data[key] = value
        self.save()

    def add(self, row: Dict) -> Dict:
        """Append a measured row, print it as one JSON line and write the file."""
        self.data["rows"].append(row)
        print(json.dumps(row, default=str), flush=True)
        self.save()
        return row

    def skip(self, what: Dict, why: str = "time budget") -> None:
        self.data["skipped"].append({**what, "why": why})
        print(f"skipped {what}: {why}", flush=True)
        self.save()

    # ------------------------------------------------------------------ measuring
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.elapsed() > self.budget_s

    def row(self, what: Dict, measure: Callable[[], Dict]) -> Optional[Dict]:
        """Measure one row: ``what`` (the row's identity) updated with ``measure()``'s
        result, or with ``error`` when it raises (one failure must not hide the rest).
        Skipped (``None``) once the budget is spent.  KeyboardInterrupt passes through."""
        if self.over_budget():
            self.skip(what)
            return None
        row = dict(what)
        try:
            row.update(measure())
            row.setdefault("error", None)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        return self.add(row)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "JsonRecord":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            self.data["status"] = "complete"
        elif issubclass(kind, KeyboardInterrupt):
            self.data["status"] = "interrupted"
        else:
            self.data["status"] = "error"
            self.data["error"] = f"{kind.__name__}: {exc}"[:2000]
        self.save()
        return False


def script_parser(doc: str, default_budget_s: Optional[float] = None) -> argparse.ArgumentParser:
    """``--out DIR`` and ``--budget-s S`` (start no new row after S seconds; the GPU suite
    passes its stage budget less the interrupt grace)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=doc)
    ap.add_argument("--out", required=True, help="directory of the result file")
    ap.add_argument("--budget-s", type=float, default=default_budget_s,
                    help="soft time budget in seconds (default: none)")
    return ap


def open_record(args: argparse.Namespace, filename: str, device: str = "cuda",
                **head) -> JsonRecord:
    """The prologue of a GPU script: CUDA present (``device="cpu"`` only for the scripts'
    CPU smoke tests), ``cudnn.benchmark`` on (recorded with the TF32 switches), the output
    folder made, the record opened with the environment."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{filename}: needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    head.setdefault("settings", {"cudnn_benchmark": True,
                                 "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                                 "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32})
    return JsonRecord(os.path.join(args.out, filename), environment(device), args.budget_s,
                      **head)


def run_script(main: Callable[[Optional[List[str]]], object],
               argv: Optional[Iterable[str]] = None) -> int:
    """Run a script's ``main``; SIGINT (KeyboardInterrupt) ends it with status 130 after the
    record has been written, without a traceback."""
    try:
        main(None if argv is None else list(argv))
    except KeyboardInterrupt:
        print("interrupted: results so far are written", file=sys.stderr, flush=True)
        return 130
    return 0


def ms_fields(ms: float, flop: Optional[float] = None, nbytes: Optional[float] = None,
              ceiling_tflops: Optional[float] = None,
              ceiling_gbps: Optional[float] = None) -> Dict[str, float]:
    """A time with its rates: TFLOP/s and the fraction of a measured matmul ceiling, GB/s
    and the fraction of the measured copy bandwidth."""
    out: Dict[str, float] = {"ms": ms}
    if flop is not None:
        out["tflops"] = flop / (ms * 1e-3) / 1e12
        if ceiling_tflops:
            out["fraction_of_matmul"] = out["tflops"] / ceiling_tflops
    if nbytes is not None:
        out["gbps"] = nbytes / (ms * 1e-3) / 1e9
        if ceiling_gbps:
            out["fraction_of_copy"] = out["gbps"] / ceiling_gbps
    return out

