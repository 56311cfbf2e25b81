"""Training losses: decompression consistency L_Dec (paper eq. 3) and the annealed
load-balance loss L_MoE (eq. 1, SPEC §1).

:func:`check_loss_inputs` is the input contract of L_Dec, shared with the fused
``kernels.decompression_loss``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .checks import check_real
from .scoring import (_checking_values, check_features, check_finite_output, check_not_meta,
                      compute_dtype, cosine_anomaly)

__all__ = ["decompression_loss", "moe_anneal_factor", "check_loss_inputs", "overflow_hint",
           "ANNEAL_MODES"]

#: L_MoE annealing: the paper's ``(1 − e/E)²`` and the release's ``max(1 − e/E, 0.001)``.
ANNEAL_MODES = ("quadratic", "linear")


def check_loss_inputs(priors: Sequence[torch.Tensor], predictions: Sequence[torch.Tensor],
                      unit_to_sample: torch.Tensor, sample_weight: Optional[torch.Tensor],
                      gamma: float) -> float:
    """Validate the arguments of :func:`decompression_loss`; returns ``gamma`` as a float.

    The features as :func:`unimmad.scoring.check_features`, at least one unit,
    ``gamma`` a finite number ≥ 0, ``sample_weight`` (optional) a floating 1-D tensor
    ``[B]`` on the device of ``unit_to_sample`` whose samples cover every unit, finite and
    non-negative (values are checked on the CPU only: on CUDA that would need a host sync).
    """
    check_features(priors, predictions, unit_to_sample)
    if unit_to_sample.shape[0] == 0:
        raise ValueError("decompression_loss: there are no units (unit_to_sample is empty)")
    gamma = check_real("gamma", gamma, low=0.0)
    if sample_weight is None:
        if _checking_values(unit_to_sample) and int(unit_to_sample.min()) < 0:
            raise ValueError(f"unit_to_sample values must be >= 0, got {int(unit_to_sample.min())}")
        return gamma
    if not isinstance(sample_weight, torch.Tensor) or sample_weight.dim() != 1:
        raise ValueError(f"sample_weight must be a 1-D tensor [B], got "
                         f"{getattr(sample_weight, 'shape', type(sample_weight).__name__)}")
    if not sample_weight.is_floating_point():
        raise TypeError(f"sample_weight must be a floating tensor, got {sample_weight.dtype}")
    check_not_meta("sample_weight", sample_weight)
    if sample_weight.device != unit_to_sample.device:
        raise ValueError(f"sample_weight is on {sample_weight.device} but unit_to_sample on "
                         f"{unit_to_sample.device}")
    if _checking_values(unit_to_sample):
        lo, hi = int(unit_to_sample.min()), int(unit_to_sample.max())
        if lo < 0:
            raise ValueError(f"unit_to_sample values must be >= 0, got {lo}")
        if hi >= sample_weight.shape[0]:
            raise ValueError(f"sample_weight has {sample_weight.shape[0]} entries but "
                             f"unit_to_sample names sample {hi}: it needs one weight per sample")
        if not bool((torch.isfinite(sample_weight) & (sample_weight >= 0)).all()):
            raise ValueError("sample_weight must be finite and non-negative")
    return gamma


def decompression_loss(priors: Sequence[torch.Tensor], predictions: Sequence[torch.Tensor],
                       unit_to_sample: torch.Tensor,
                       sample_weight: Optional[torch.Tensor] = None,
                       gamma: float = 2.0) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """L_Dec = mean over levels and units of ``w[sample] · mean_hw(sg(A)^γ · A)``.

    ``A = 1 − cos(u, p)``; ``sg`` stops the gradient of the focal factor; ``w`` is the
    per-sample weight (``[B]``, default 1), applied per unit — never averaged over the batch.
    A non-integer ``γ`` takes ``max(A, 0)^γ`` (``A`` can round below 0 where u ≈ p).
    Returns ``(loss, [loss of each level])``, computed in float32 (float64 when an input is
    float64); gradients are finite for zero vectors (see :func:`cosine_anomaly`).
    """
    gamma = check_loss_inputs(priors, predictions, unit_to_sample, sample_weight, gamma)
    levels = []
    for u, p in zip(priors, predictions):
        a = cosine_anomaly(u, p)                                    # [U, H, W]
        focal = a.detach() if gamma.is_integer() else a.detach().clamp_min(0.0)
        per_unit = (focal.pow(gamma) * a).flatten(1).mean(1)        # [U]
        if sample_weight is not None:
            per_unit = per_unit * sample_weight.to(per_unit.dtype)[unit_to_sample]
        levels.append(per_unit.mean())
    dtype = compute_dtype(*priors, *predictions)
    loss = torch.stack([v.to(dtype) for v in levels]).mean()
    return check_finite_output(loss, "decompression loss", overflow_hint(gamma)), levels


def overflow_hint(gamma: float) -> str:
    """The part of the non-finite-loss message about ``gamma`` (``A ≤ 2``, so ``A^γ``
    overflows fp32 from ``γ ≈ 127``)."""
    return f", or A^gamma overflows (gamma={gamma:g})" if gamma > 64 else ""


def moe_anneal_factor(epoch: float, total_epochs: float, mode: str = "quadratic") -> float:
    """``(1 − e/E)²`` (paper, ``"quadratic"``) or ``max(1 − e/E, 0.001)`` (release,
    ``"linear"``), with ``e/E`` clipped to 1; ``epoch`` finite ≥ 0, ``total_epochs`` > 0."""
    total_epochs = check_real("total_epochs", total_epochs, low=0.0, low_open=True)
    epoch = check_real("epoch", epoch, low=0.0)
    frac = min(epoch / total_epochs, 1.0)
    if mode == "quadratic":
        return (1.0 - frac) ** 2
    if mode == "linear":
        return max(1.0 - frac, 0.001)
    raise ValueError(f"mode must be 'quadratic' or 'linear', got {mode!r}")
