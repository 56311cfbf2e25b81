"""Anomaly maps (paper eq. 4 and the release's "joint" variant) and image scores.

Reference implementations in plain PyTorch; ``kernels.anomaly_map`` / ``kernels.image_score``
are the fused fast paths checked against these.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "cosine_anomaly",
    "gaussian_kernel1d",
    "gaussian_blur",
    "anomaly_map",
    "image_score",
    "top_k_count",
]

COS_EPS = 1e-8


def cosine_anomaly(u: torch.Tensor, p: torch.Tensor, eps: float = COS_EPS) -> torch.Tensor:
    """``A = 1 − cos(u, p)`` over channels: ``[N, C, H, W] → [N, H, W]``.

    The denominator ``‖u‖·‖p‖`` is clamped at ``eps``, so a zero vector gives ``cos = 0``
    (``A = 1``) instead of NaN.  Computed in at least fp32.
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, p = u.to(dtype), p.to(dtype)
    dot = (u * p).sum(1)
    norm = (u.square().sum(1) * p.square().sum(1)).sqrt()
    return 1.0 - dot / norm.clamp_min(eps)


def gaussian_kernel1d(sigma: float, kernel_size: int, dtype=torch.float32,
                      device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (sum 1), ``kernel_size`` odd."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    g = torch.exp(-(r ** 2) / (2.0 * sigma ** 2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, kernel_size: int = 15) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, H, W]`` maps with zero padding (the release's
    15×15, σ = 4 filter; the 2-D kernel is the outer product of the 1-D taps)."""
    g = gaussian_kernel1d(sigma, kernel_size, maps.dtype, maps.device)
    r = kernel_size // 2
    x = maps.unsqueeze(1)
    x = F.conv2d(x, g.view(1, 1, 1, -1), padding=(0, r))
    x = F.conv2d(x, g.view(1, 1, -1, 1), padding=(r, 0))
    return x.squeeze(1)


def _size2(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def _upsample(m: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    return F.interpolate(m.unsqueeze(1), size=size, mode="bilinear",
                         align_corners=True).squeeze(1)


def anomaly_map(priors: Sequence[torch.Tensor], predictions: Sequence[torch.Tensor],
                unit_to_sample: torch.Tensor, image_size: Union[int, Sequence[int]],
                num_samples: Optional[int] = None, mode: str = "mean",
                sigma: float = 4.0, kernel_size: int = 15) -> torch.Tensor:
    """Pixel anomaly map ``[B, H, W]`` from per-level priors and predictions.

    Args:
        priors, predictions: lists (one per level) of ``[U, C_l, H_l, W_l]``.
        unit_to_sample: ``[U]`` long, the sample of each unit.
        image_size: output size ``H`` (or ``(H, W)``).
        num_samples: ``B`` (default ``unit_to_sample.max() + 1``).
        mode: ``"mean"`` — paper eq. 4: per level ``sqrt(Σ_units A²)``, upsampled
            (bilinear, align_corners=True), blurred, averaged over levels;
            ``"joint"`` — authors' release: ``sqrt`` of the sum of squares of all upsampled
            level × unit maps, then blurred.
        sigma, kernel_size: the Gaussian blur (zero padding).
    """
    if len(priors) != len(predictions) or not priors:
        raise ValueError("priors and predictions must be non-empty lists of equal length")
    if mode not in ("mean", "joint"):
        raise ValueError(f"mode must be 'mean' or 'joint', got {mode!r}")
    size = _size2(image_size)
    for lvl, (u, p) in enumerate(zip(priors, predictions)):
        if u.shape != p.shape or u.dim() != 4:
            raise ValueError(
                f"level {lvl}: prior {tuple(u.shape)} and prediction {tuple(p.shape)} must "
                "be equal [U, C, H, W] shapes")
        if u.shape[0] != unit_to_sample.shape[0]:
            raise ValueError(
                f"level {lvl}: {u.shape[0]} units but unit_to_sample has "
                f"{unit_to_sample.shape[0]}")
    if num_samples is None:
        B = int(unit_to_sample.max()) + 1
    elif isinstance(num_samples, torch.SymInt):
        B = num_samples  # symbolic batch under torch.export: int() would specialise it
    else:
        B = int(num_samples)
    dtype = torch.promote_types(priors[0].dtype, torch.float32)
    acc = torch.zeros(B, *size, dtype=dtype, device=priors[0].device)
    for u, p in zip(priors, predictions):
        a = cosine_anomaly(u, p)
        if mode == "mean":
            s = torch.zeros(B, *a.shape[1:], dtype=dtype, device=a.device)
            acc = acc + _upsample(s.index_add_(0, unit_to_sample, a.square()).sqrt(), size)
        else:
            acc = acc.index_add(0, unit_to_sample, _upsample(a, size).square())
    acc = acc / len(priors) if mode == "mean" else acc.sqrt()
    return gaussian_blur(acc, sigma, kernel_size)


def top_k_count(num_pixels: int, top_fraction: float = 0.001) -> int:
    """``max(1, floor(num_pixels · top_fraction))`` (65 at 256², fraction 0.1 %)."""
    return max(1, int(math.floor(num_pixels * top_fraction + 1e-9)))


def image_score(anomaly_map: torch.Tensor, top_fraction: float = 0.001) -> torch.Tensor:
    """Image score ``[B]``: mean of the top ``max(1, ⌊H·W·top_fraction⌋)`` pixels."""
    if anomaly_map.dim() != 3:
        raise ValueError(f"anomaly_map must be [B, H, W], got {tuple(anomaly_map.shape)}")
    flat = anomaly_map.flatten(1)
    return flat.topk(top_k_count(flat.shape[1], top_fraction), dim=1).values.mean(1)
