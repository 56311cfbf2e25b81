"""The numerical contract of SPEC §3, in one place: the tolerance table, the relative
error, and the verdict written into every benchmark row.  ``tests/``, ``benchmarks/`` and
the GPU scripts import it from here."""
from __future__ import annotations

from typing import Dict, Optional

import torch

__all__ = ["TOL", "tolerance", "rel_err", "judge"]

#: SPEC §3: ``‖out − ref‖ / ‖ref‖`` against a float64 reference.
TOL = {
    "fp32": 1e-5,   # full-precision fp32 dot products (TF32 off)
    "tf32": 2e-3,
    "bf16": 2e-2,   # bf16 / fp16 inputs, fp32 accumulation
    "fp16": 2e-2,
    "grad": 1e-4,   # gradients, fp32 only
}


def tolerance(dtype: torch.dtype, device) -> float:
    """SPEC §3 relative tolerance for comparing two paths at ``dtype`` on ``device`` (CUDA
    fp32 convolutions use TF32 under PyTorch's default cuDNN setting)."""
    if dtype in (torch.bfloat16, torch.float16):
        return TOL["bf16"]
    if torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32:
        return TOL["tf32"]
    return TOL["fp32"]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64 (``‖out − ref‖`` when ``ref`` is zero); NaN or
    Inf anywhere in ``out`` gives ``inf``, so a broken output never passes."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if out64.shape != ref64.shape or not bool(torch.isfinite(out64).all()):
        return float("inf")
    den = float(ref64.norm())
    num = float((out64 - ref64).norm())
    return num / den if den > 0 else num


def judge(row: Dict, err: Optional[float], tol: float, ref_median_ms: Optional[float]) -> None:
    """Write the parity verdict into a result row: ``status`` ("ok" or "FAIL parity"),
    ``parity_rel_err``, ``parity_tol`` and — only where parity holds — the speedup over the
    reference of the same run (``err=None``: the row is the reference itself)."""
    row["parity_rel_err"] = err
    row["parity_tol"] = tol
    if err is None:
        row["status"] = "ok"
        row["speedup"] = 1.0 if ref_median_ms else None
        return
    row["status"] = "ok" if err <= tol else "FAIL parity"
    row["speedup"] = (ref_median_ms / row["latency_median_ms"]
                      if row["status"] == "ok" and ref_median_ms else None)
