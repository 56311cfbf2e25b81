"""Shared test helpers: relative-error checks of SPEC §3 and small model factories."""
from __future__ import annotations

import torch

# SPEC §3: ‖out − ref‖ / ‖ref‖ against a float64 reference.
TOL = {
    "fp32": 1e-5,
    "tf32": 2e-3,
    "bf16": 2e-2,
    "fp16": 2e-2,
    "grad": 1e-4,
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64; NaN or Inf anywhere gives ``inf``."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if not bool(torch.isfinite(out64).all()):
        return float("inf")
    den = ref64.norm()
    num = (out64 - ref64).norm()
    return float(num / den) if den > 0 else float(num)


def assert_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, name: str = "output") -> None:
    """Assert the SPEC §3 relative error, reporting the worst element on failure."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    if not err <= tol:
        diff = (out.detach().double() - ref.detach().double()).abs()
        diff = torch.nan_to_num(diff, nan=float("inf"))
        idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(
            f"{name}: relative error {err:.3e} > {tol:.1e}; worst at {idx}: "
            f"out={out[idx].item():.6g} ref={ref[idx].item():.6g}")
