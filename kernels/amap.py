"""Fused anomaly map, image score and decompression loss (SPEC §1 "Inference", eq. 3–4).

Public functions, with the reference's semantics plus a ``backend=`` switch
(``"auto"`` — Triton on CUDA tensors, the torch fast path elsewhere; ``"triton"``,
``"torch"``, ``"reference"`` — the plain functions of :mod:`unimmad`):

* :func:`anomaly_map` — as :func:`unimmad.anomaly_map` (modes "mean" and "joint");
* :func:`image_score` — as :func:`unimmad.image_score`;
* :func:`decompression_loss` — as :func:`unimmad.decompression_loss`, differentiable in
  the predictions (and the priors, when they need a gradient) through an explicit
  backward that reads u and p once and writes only the gradients.

They run as ``torch.library`` custom ops — ``unimmad::anomaly_map``,
``unimmad::image_score``, ``unimmad::focal_cosine`` (per-unit loss terms, with autograd)
and ``unimmad::focal_cosine_grad`` — with fake implementations for ``torch.compile``.
The implementations live in :mod:`kernels.amap_torch` and :mod:`kernels.amap_triton`.

``"auto"`` sends float64 inputs to the torch path (the Triton kernels take fp32, bf16 and
fp16); ``"triton"`` with float64 raises ``TypeError``.  Out-of-range ``unit_to_sample``
values are reported on the CPU; on CUDA they are not checked (that would need a host sync)
and such units are ignored by the map.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from unimmad import losses as _ref_losses
from unimmad import scoring as _ref_scoring

from . import amap_torch, amap_triton
from .ops import resolve_backend

__all__ = ["anomaly_map", "image_score", "decompression_loss", "MODES"]

MODES = ("mean", "joint")


# ----------------------------------------------------------------------------- checks
def _check_levels(priors, predictions, unit_to_sample) -> None:
    for name, seq in (("priors", priors), ("predictions", predictions)):
        if isinstance(seq, Tensor) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list of [U, C_l, H_l, W_l] tensors (one per "
                            f"level), got {type(seq).__name__}")
    if not priors or len(priors) != len(predictions):
        raise ValueError(f"priors and predictions must be non-empty lists of equal length "
                         f"(one tensor per level), got {len(priors)} and {len(predictions)}")
    if not isinstance(unit_to_sample, Tensor):
        raise TypeError(f"unit_to_sample must be a long tensor [U], got "
                        f"{type(unit_to_sample).__name__}")
    if unit_to_sample.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"unit_to_sample must be an int64 (or int32) tensor [U], got "
                        f"{unit_to_sample.dtype}")
    if unit_to_sample.dim() != 1:
        raise ValueError(f"unit_to_sample must be 1-D [U], got {tuple(unit_to_sample.shape)}")
    U = unit_to_sample.shape[0]
    device = priors[0].device if isinstance(priors[0], Tensor) else None
    for lvl, (u, p) in enumerate(zip(priors, predictions)):
        if not isinstance(u, Tensor) or not isinstance(p, Tensor):
            raise TypeError(f"level {lvl}: priors and predictions must hold tensors")
        if not u.is_floating_point() or not p.is_floating_point():
            raise TypeError(f"level {lvl}: prior ({u.dtype}) and prediction ({p.dtype}) must "
                            "be floating tensors")
        if u.dim() != 4 or u.shape != p.shape:
            raise ValueError(f"level {lvl}: prior {tuple(u.shape)} and prediction "
                             f"{tuple(p.shape)} must be equal [U, C, H, W] shapes")
        if u.shape[0] != U:
            raise ValueError(f"level {lvl}: {u.shape[0]} units but unit_to_sample has {U}")
        if u.device != device or p.device != device:
            raise ValueError(f"level {lvl}: prior on {u.device} and prediction on {p.device}, "
                             f"but level 0 is on {device}; all levels must share one device")
    if unit_to_sample.device != device:
        raise ValueError(f"unit_to_sample is on {unit_to_sample.device} but the features on "
                         f"{device}")


def _check_samples(unit_to_sample: Tensor, num_samples: Optional[int]) -> int:
    """``B`` (default ``max + 1``); on the CPU also checks every index is in ``[0, B)``."""
    if num_samples is None:
        if unit_to_sample.numel() == 0:
            raise ValueError("num_samples is needed when there are no units")
        B = int(unit_to_sample.max()) + 1
    else:
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 0:
            raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
        B = int(num_samples)
    if unit_to_sample.device.type == "cpu" and unit_to_sample.numel():
        lo, hi = int(unit_to_sample.min()), int(unit_to_sample.max())
        if lo < 0 or hi >= B:
            raise ValueError(f"unit_to_sample values must lie in [0, {B}) (num_samples={B}), "
                             f"got values in [{lo}, {hi}]")
    return B


def _size2(image_size) -> Tuple[int, int]:
    if isinstance(image_size, bool):
        raise TypeError("image_size must be an int or a pair of ints")
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        try:
            h, w = image_size
            size = (int(h), int(w))
        except (TypeError, ValueError):
            raise TypeError(f"image_size must be an int or a pair (H, W), got {image_size!r}")
    if min(size) < 1:
        raise ValueError(f"image_size must be positive, got {size}")
    return size


def _check_blur(mode, sigma, kernel_size) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'mean' or 'joint', got {mode!r}")
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) \
            or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def _backend(backend: str, tensors: Sequence[Tensor]) -> str:
    """``resolve_backend`` plus: ``auto`` keeps float64 on the torch path."""
    resolved = resolve_backend(backend, tensors[0].device)
    if resolved == "triton" and any(t.dtype not in amap_triton.FLOAT_DTYPES for t in tensors):
        if backend == "auto":
            return "torch"
        bad = next(t.dtype for t in tensors if t.dtype not in amap_triton.FLOAT_DTYPES)
        raise TypeError(f"backend='triton' takes float32, bfloat16 or float16 tensors, got "
                        f"{bad}; use backend='torch' or 'auto'")
    return resolved


# ----------------------------------------------------------------------------- map op
@torch.library.custom_op("unimmad::anomaly_map", mutates_args=())
def _anomaly_map_op(priors: List[Tensor], predictions: List[Tensor], unit_to_sample: Tensor,
                    num_samples: int, height: int, width: int, mode: str, sigma: float,
                    kernel_size: int, backend: str) -> Tensor:
    size = (height, width)
    if backend == "triton":
        return amap_triton.anomaly_map(priors, predictions, unit_to_sample, num_samples, size,
                                       mode, sigma, kernel_size)
    maps = [amap_torch.cosine_maps(u, p) for u, p in zip(priors, predictions)]
    return amap_torch.combine_maps(maps, unit_to_sample, num_samples, size, mode, sigma,
                                   kernel_size)


@_anomaly_map_op.register_fake
def _(priors, predictions, unit_to_sample, num_samples, height, width, mode, sigma,
      kernel_size, backend):
    dtype = amap_torch.compute_dtype(*priors, *predictions)
    return priors[0].new_empty((num_samples, height, width), dtype=dtype)


def anomaly_map(priors: Sequence[Tensor], predictions: Sequence[Tensor],
                unit_to_sample: Tensor, image_size: Union[int, Sequence[int]],
                num_samples: Optional[int] = None, mode: str = "mean", sigma: float = 4.0,
                kernel_size: int = 15, backend: str = "auto") -> Tensor:
    """Pixel anomaly map ``[B, H, W]`` — the function of :func:`unimmad.anomaly_map`.

    Args:
        priors, predictions: one ``[U, C_l, H_l, W_l]`` tensor per level (fp32, bf16, fp16
            or fp64; NCHW or channels-last memory).
        unit_to_sample: ``[U]`` int64, the sample of each unit (any order; samples may own
            any number of units, 1–4 in UniMMAD).
        image_size: ``H`` or ``(H, W)``.
        num_samples: ``B`` (default ``unit_to_sample.max() + 1``, a host sync).
        mode: ``"mean"`` (paper eq. 4) or ``"joint"`` (authors' release).
        sigma, kernel_size: the zero-padded Gaussian blur.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or ``"reference"``.

    Returns a float32 map (float64 when an input is float64).  Not differentiable (use
    ``backend="reference"`` for gradients of the map).
    """
    _check_levels(priors, predictions, unit_to_sample)
    size = _size2(image_size)
    _check_blur(mode, sigma, kernel_size)
    B = _check_samples(unit_to_sample, num_samples)
    resolved = _backend(backend, list(priors) + list(predictions))
    if resolved == "reference":
        return _ref_scoring.anomaly_map(priors, predictions, unit_to_sample, size, B, mode,
                                        sigma, kernel_size)
    return _anomaly_map_op(list(priors), list(predictions), unit_to_sample, B, size[0],
                           size[1], mode, float(sigma), int(kernel_size), resolved)


# ----------------------------------------------------------------------------- score op
@torch.library.custom_op("unimmad::image_score", mutates_args=())
def _image_score_op(anomaly_map: Tensor, k: int, backend: str) -> Tensor:
    if backend == "triton":
        return amap_triton.image_score(anomaly_map, k).to(anomaly_map.dtype)
    return amap_torch.image_score(anomaly_map, k)


@_image_score_op.register_fake
def _(anomaly_map, k, backend):
    return anomaly_map.new_empty((anomaly_map.shape[0],))


def image_score(anomaly_map: Tensor, top_fraction: float = 0.001,
                backend: str = "auto") -> Tensor:
    """Image score ``[B]``: mean of the top ``max(1, ⌊H·W·top_fraction⌋)`` pixels of each
    ``[B, H, W]`` map — :func:`unimmad.image_score` with a ``backend=`` switch (the Triton
    score sorts blocks of the map on the GPU; ``torch.topk`` elsewhere)."""
    if not isinstance(anomaly_map, Tensor):
        raise TypeError(f"anomaly_map must be a tensor [B, H, W], got "
                        f"{type(anomaly_map).__name__}")
    if anomaly_map.dim() != 3:
        raise ValueError(f"anomaly_map must be [B, H, W], got {tuple(anomaly_map.shape)}")
    if not anomaly_map.is_floating_point():
        raise TypeError(f"anomaly_map must be a floating tensor, got {anomaly_map.dtype}")
    if anomaly_map.shape[1] * anomaly_map.shape[2] == 0:
        raise ValueError(f"anomaly_map has no pixels: {tuple(anomaly_map.shape)}")
    if not (isinstance(top_fraction, (int, float)) and 0 < top_fraction <= 1):
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    resolved = _backend(backend, [anomaly_map])
    if resolved == "reference":
        return _ref_scoring.image_score(anomaly_map, top_fraction)
    k = _ref_scoring.top_k_count(anomaly_map.shape[1] * anomaly_map.shape[2], top_fraction)
    return _image_score_op(anomaly_map, k, resolved)


# ----------------------------------------------------------------------------- loss ops
@torch.library.custom_op("unimmad::focal_cosine", mutates_args=())
def _focal_cosine(u: Tensor, p: Tensor, gamma: float, backend: str) -> Tuple[Tensor, Tensor]:
    if backend == "triton":
        return amap_triton.focal_cosine_forward(u, p, gamma)
    return amap_torch.focal_cosine_forward(u, p, gamma)


@_focal_cosine.register_fake
def _(u, p, gamma, backend):
    dtype = torch.float32 if backend == "triton" else amap_torch.compute_dtype(u, p)
    U, _, H, W = u.shape
    return u.new_empty((U,), dtype=dtype), u.new_empty((3, U, H, W), dtype=dtype)


@torch.library.custom_op("unimmad::focal_cosine_grad", mutates_args=())
def _focal_cosine_grad(g: Tensor, ca: Tensor, cb: Tensor, x: Tensor, y: Tensor,
                       backend: str) -> Tensor:
    if backend == "triton":
        return amap_triton.focal_cosine_grad(g, ca, cb, x, y)
    return amap_torch.focal_cosine_grad(g, ca, cb, x, y)


@_focal_cosine_grad.register_fake
def _(g, ca, cb, x, y, backend):
    return torch.empty_like(y)


def _focal_setup(ctx, inputs, output):
    u, p, _, backend = inputs
    ctx.save_for_backward(u, p, output[1])
    ctx.backend = backend


def _focal_backward(ctx, grad_m, grad_coef):
    u, p, coef = ctx.saved_tensors
    du = dp = None
    if grad_m is not None:
        if ctx.needs_input_grad[0]:
            du = _focal_cosine_grad(grad_m, coef[0], coef[2], p, u, ctx.backend)
        if ctx.needs_input_grad[1]:
            dp = _focal_cosine_grad(grad_m, coef[0], coef[1], u, p, ctx.backend)
    return du, dp, None, None


_focal_cosine.register_autograd(_focal_backward, setup_context=_focal_setup)


def decompression_loss(priors: Sequence[Tensor], predictions: Sequence[Tensor],
                       unit_to_sample: Tensor, sample_weight: Optional[Tensor] = None,
                       gamma: float = 2.0, backend: str = "auto"
                       ) -> Tuple[Tensor, List[Tensor]]:
    """L_Dec (paper eq. 3) — the function of :func:`unimmad.decompression_loss`.

    ``A = 1 − cos(u, p)`` per pixel; per unit ``mean_hw(sg(A)^γ · A)`` times the weight of
    its sample (``sample_weight [B]``, default 1); mean over units, then over levels.
    Returns ``(loss, [loss of each level])``.  The gradient reaches the predictions (and
    the priors when they require it; ``sample_weight`` too) through an explicit backward:
    ``∂/∂p = g·(c_a·u + c_b·p)`` with per-pixel coefficients saved by the forward pass, so
    neither pass materialises full-size temporaries.  A non-integer ``gamma`` uses
    ``max(A, 0)^γ`` (where the reference gives NaN for a rounding-negative A).
    """
    _check_levels(priors, predictions, unit_to_sample)
    U = unit_to_sample.shape[0]
    if U == 0:
        raise ValueError("decompression_loss: there are no units (unit_to_sample is empty)")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if sample_weight is not None:
        if not isinstance(sample_weight, Tensor) or sample_weight.dim() != 1:
            raise ValueError(f"sample_weight must be a 1-D tensor [B], got "
                             f"{getattr(sample_weight, 'shape', type(sample_weight).__name__)}")
        if not sample_weight.is_floating_point():
            raise TypeError(f"sample_weight must be a floating tensor, got {sample_weight.dtype}")
        if sample_weight.device != unit_to_sample.device:
            raise ValueError(f"sample_weight is on {sample_weight.device} but unit_to_sample on "
                             f"{unit_to_sample.device}")
        _check_samples(unit_to_sample, sample_weight.shape[0])
    resolved = _backend(backend, list(priors) + list(predictions))
    if resolved == "reference":
        return _ref_losses.decompression_loss(priors, predictions, unit_to_sample,
                                              sample_weight, gamma)
    levels = []
    for u, p in zip(priors, predictions):
        per_unit, _ = _focal_cosine(u, p, float(gamma), resolved)
        if sample_weight is not None:
            per_unit = per_unit * sample_weight.to(per_unit.dtype)[unit_to_sample]
        levels.append(per_unit.mean())
    return torch.stack(levels).mean(), levels

