"""Analytic FLOP counts (2 FLOPs per multiply-add) of the C-MoE, SPEC §2.

Per unit at paper dimensions (256² input, one unit per sample) the three levels cost
98.4 GFLOP in the reference formulation, 73.8 collapsed and 44.9 folded.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .models.cmoe import CMoE

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


# ----------------------------------------------------------------------------- fvcore
def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# fvcore is imported where it is used: it is a dependency of FLOP counting only (the GPU
# machine's image, for one, does not carry it).
def _dyn_conv_macs(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape
    x, w, job_sample = (get_shape(v) for v in inputs[:3])
    return int(job_sample[0]) * int(w[1]) * int(w[2]) * int(x[2]) * int(x[3])


def _compose_macs(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape
    base, _, idx = (get_shape(v) for v in inputs[:3])
    return int(idx[0]) * _numel(base)             # U · N · Co · R


def _mix_macs(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape
    g0, _, idx = (get_shape(v) for v in inputs[:3])
    return _numel(idx) * _numel(g0)               # U · K · Co · R


def _mm_macs(inputs, outputs) -> int:
    """``aten::mm`` with or without ``out=`` (fvcore's own handle expects two inputs)."""
    from fvcore.nn.jit_handles import get_shape
    a, b = (get_shape(v) for v in inputs[:2])
    return int(a[0]) * int(a[1]) * int(b[1])


FUSED_OP_HANDLES = {
    "aten::mm": _mm_macs,
    "unimmad::dyn_conv": _dyn_conv_macs,
    "unimmad::compose": _compose_macs,
    "unimmad::mix": _mix_macs,
}


def fvcore_macs(module, inputs, by_operator: bool = False):
    """Multiply-adds counted by fvcore (which calls one multiply-add one FLOP), with
    handles for the fused ``unimmad::`` ops so accelerated models are counted too.

    ``module(*inputs)`` must return tensors (wrap modules that return dataclasses).
    Returns the total, or ``(total, Counter by operator)``.
    """
    from fvcore.nn import FlopCountAnalysis
    fa = FlopCountAnalysis(module, tuple(inputs)).set_op_handle(**FUSED_OP_HANDLES)
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    fa.tracer_warnings("none")
    total = int(fa.total())
    return (total, fa.by_operator()) if by_operator else total


def activated_parameters(model) -> int:
    """Parameters one unit activates (the paper's Table 6 "ActPar." convention).

    Every parameter counts except, in each C-MoE branch, ``N − K`` kernels of base-expert
    size: a unit's routed path uses K composed kernels (one per selected leader) where N
    base experts are stored.  All leaders' S count (0.3 % of the routed parameters).  At
    paper dims this removes 3 · 6 · 256² · (1 + 9 + 25) = 41.29 M, the paper's
    233.66 − 192.38 difference.
    """
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, CMoE):
            for b in m.branches:
                per_kernel = b.base_experts[0].numel()
                total -= (m.num_base_experts - m.top_k) * per_kernel
    return total
