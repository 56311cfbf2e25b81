"""Argument checks shared by the reference functions and the fast paths (one input
contract: :mod:`kernels` calls the same checks as :mod:`unimmad.scoring` and
:mod:`unimmad.losses`, so both accept and refuse the same inputs with the same messages).

Python scalars: booleans are never numbers here, NaN and infinities are refused, and the
message names the argument and the accepted range.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

__all__ = ["check_real", "check_int"]


def check_real(name: str, value, low: Optional[float] = None, high: Optional[float] = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """``float(value)`` if ``value`` is a finite real number (not a bool) within the bounds,
    else a ``TypeError`` (not a number) or ``ValueError`` (NaN, infinite, out of range)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


def check_int(name: str, value, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``int(value)`` if ``value`` is an integer (not a bool, not a float; a 0-d integer
    tensor counts, as shapes are under tracing) within ``[low, high]``, else a
    ``TypeError`` or ``ValueError`` naming the argument."""
    if (isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype in
            (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        rng = f">= {low}" if high is None else (f"<= {high}" if low is None else
                                                f"in [{low}, {high}]")
        raise ValueError(f"{name} must be an int {rng}, got {v}")
    return v
