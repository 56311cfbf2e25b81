"""Analytic FLOP counts (2 FLOPs per multiply-add) of the C-MoE, SPEC §2.

Per unit at paper dimensions (256² input, one unit per sample) the three levels cost
98.4 GFLOP in the reference formulation, 73.8 collapsed and 44.9 folded.
"""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["cmoe_gflop", "FORMS"]

FORMS = ("reference", "collapsed", "folded")


def cmoe_gflop(in_channels: int, size: int, units: int = 1, samples: Optional[int] = None,
               embed_dim: int = 256, kernel_sizes: Sequence[int] = (1, 3, 5), top_k: int = 2,
               form: str = "reference") -> float:
    """GFLOP of one C-MoE call on ``units`` units of ``samples`` samples (default: one unit
    per sample) at ``size × size`` with ``in_channels`` channels.

    ``form``: ``"reference"`` — the fixed and top-K kernels each filter the values, then
    ``post``; ``"collapsed"`` — fixed + one mixed kernel, then ``post``; ``"folded"`` — one
    conv per unit with ``post`` folded in.  Per-sample work (key, values) counts once per
    sample; kernel composition, GroupNorm and activations are not counted.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    samples = units if samples is None else samples
    C, E, P = in_channels, embed_dim, size * size

    def conv(cin, cout, k=1, n=1):
        return 2.0 * n * cin * cout * k * k * P

    shared = (conv(C, E, n=samples)                       # key (per sample)
              + conv(C, E, n=units)                       # query
              + conv(2 * E, E, 3, n=units)                # condition 3×3
              + conv(E, E, n=units)                       # condition 1×1
              + conv(E, E, n=samples * len(kernel_sizes))  # values (per sample)
              + conv(len(kernel_sizes) * E, C, n=units))  # aggregation
    dyn = 0.0
    for k in kernel_sizes:
        if form == "reference":
            dyn += conv(E, E, k, n=units * (top_k + 1)) + conv(2 * E, E, n=units)
        elif form == "collapsed":
            dyn += conv(E, E, k, n=units * 2) + conv(2 * E, E, n=units)
        else:
            dyn += conv(E, E, k, n=units)
    return (shared + dyn) / 1e9
