"""Shared test helpers: relative-error checks of SPEC §3 and small model factories."""
from __future__ import annotations

import torch

from unimmad.bench.parity import TOL, rel_err  # noqa: F401  (the SPEC §3 table, one copy)


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
