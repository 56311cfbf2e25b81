"""``accelerate(model)``: swap a UniMMAD model's C-MoEs for the fused ones, in place."""
from __future__ import annotations

from torch import nn

from unimmad.models.cmoe import CMoE

from .cmoe import FastCMoE
from .ops import BACKENDS

__all__ = ["accelerate"]


def accelerate(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Turn every :class:`unimmad.CMoE` inside ``model`` into a :class:`FastCMoE` (same
    parameter objects, so existing optimizers keep working) and return ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate needs an nn.Module, got {type(model).__name__}")
    found = 0
    for module in model.modules():
        if isinstance(module, CMoE):
            FastCMoE.convert_(module, backend)
            found += 1
    if not found:
        raise ValueError("accelerate: the model holds no unimmad.CMoE to replace")
    return model
