"""Training losses: decompression consistency L_Dec (paper eq. 3) and the annealed
load-balance loss L_MoE (eq. 1, SPEC §1)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .scoring import cosine_anomaly

__all__ = ["decompression_loss", "moe_anneal_factor"]


def decompression_loss(priors: Sequence[torch.Tensor], predictions: Sequence[torch.Tensor],
                       unit_to_sample: torch.Tensor,
                       sample_weight: Optional[torch.Tensor] = None,
                       gamma: float = 2.0) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """L_Dec = mean over levels and units of ``w[sample] · mean_hw(sg(A)^γ · A)``.

    ``A = 1 − cos(u, p)``; ``sg`` stops the gradient of the focal factor; ``w`` is the
    per-sample weight (``[B]``, default 1), applied per unit — never averaged over the batch.
    Returns ``(loss, [loss of each level])``.
    """
    levels = []
    for u, p in zip(priors, predictions):
        a = cosine_anomaly(u, p)                                    # [U, H, W]
        per_unit = (a.detach().pow(gamma) * a).flatten(1).mean(1)   # [U]
        if sample_weight is not None:
            per_unit = per_unit * sample_weight.to(per_unit.dtype)[unit_to_sample]
        levels.append(per_unit.mean())
    return torch.stack(levels).mean(), levels


def moe_anneal_factor(epoch: float, total_epochs: float, mode: str = "quadratic") -> float:
    """``(1 − e/E)²`` (paper, ``"quadratic"``) or ``max(1 − e/E, 0.001)`` (release, ``"linear"``)."""
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    frac = min(float(epoch) / float(total_epochs), 1.0)
    if mode == "quadratic":
        return (1.0 - frac) ** 2
    if mode == "linear":
        return max(1.0 - frac, 0.001)
    raise ValueError(f"mode must be 'quadratic' or 'linear', got {mode!r}")
