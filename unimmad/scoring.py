"""Anomaly maps (paper eq. 4 and the release's "joint" variant) and image scores.

Reference implementations in plain PyTorch; ``kernels.anomaly_map`` / ``kernels.image_score``
are the fused fast paths checked against these.  The input contract lives here too: the
``check_*`` functions below are called by the reference and by the fast paths alike, so
both accept and refuse the same inputs with the same messages.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .checks import check_int, check_real

__all__ = [
    "COS_EPS",
    "MODES",
    "compute_dtype",
    "cosine_anomaly",
    "gaussian_kernel1d",
    "gaussian_blur",
    "anomaly_map",
    "image_score",
    "top_k_count",
    "check_features",
    "check_num_samples",
    "check_image_size",
    "check_blur",
    "check_score_input",
    "check_cosine_input",
    "check_not_meta",
    "check_finite_output",
]

#: Clamp of ``‖u‖·‖p‖`` in the cosine (a zero vector gives ``cos = 0``, ``A = 1``).
COS_EPS = 1e-8
#: Anomaly-map modes: paper eq. 4 and the authors' release.
MODES = ("mean", "joint")


# ----------------------------------------------------------------------------- contract
def check_not_meta(name: str, t: torch.Tensor) -> None:
    """Refuse a ``meta`` tensor (no values: maps, scores and losses need them)."""
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (a tensor without values); the anomaly "
                         "map, image score and losses compute values, pass real tensors")


def _checking_values(t: torch.Tensor) -> bool:
    """Whether value checks run on ``t``: on the CPU, outside tracing (on CUDA they would
    synchronise with the device; under ``torch.compile``/``torch.export`` they would be
    data-dependent guards; under the TorchScript tracer, constants)."""
    return (t.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


def check_finite_output(out: torch.Tensor, what: str, hint: str = "") -> torch.Tensor:
    """``out`` if every value is finite, else a ``ValueError`` naming the inputs.  The
    cosine is clamped, so finite features give a finite map and loss: a NaN or Inf comes
    from the features (or an overflow of their squares).  Checked on the CPU only (see
    :func:`_checking_values`); on CUDA a non-finite input gives a non-finite result."""
    if _checking_values(out) and out.numel() and not bool(torch.isfinite(out).all()):
        raise ValueError(f"the {what} is not finite: priors or predictions contain NaN or Inf "
                         f"values (or their squares overflow {out.dtype}){hint}")
    return out


def check_features(priors, predictions, unit_to_sample) -> None:
    """Per-level priors and predictions (lists of equal ``[U, C_l, H_l, W_l]`` floating
    tensors on one device) and ``unit_to_sample`` (int64/int32 ``[U]`` on that device)."""
    for name, seq in (("priors", priors), ("predictions", predictions)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list of [U, C_l, H_l, W_l] tensors (one per "
                            f"level), got {type(seq).__name__}")
    if not priors or len(priors) != len(predictions):
        raise ValueError(f"priors and predictions must be non-empty lists of equal length "
                         f"(one tensor per level), got {len(priors)} and {len(predictions)}")
    if not isinstance(unit_to_sample, torch.Tensor):
        raise TypeError(f"unit_to_sample must be a long tensor [U], got "
                        f"{type(unit_to_sample).__name__}")
    if unit_to_sample.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"unit_to_sample must be an int64 (or int32) tensor [U], got "
                        f"{unit_to_sample.dtype}")
    if unit_to_sample.dim() != 1:
        raise ValueError(f"unit_to_sample must be 1-D [U], got {tuple(unit_to_sample.shape)}")
    U = unit_to_sample.shape[0]
    device = priors[0].device if isinstance(priors[0], torch.Tensor) else None
    for lvl, (u, p) in enumerate(zip(priors, predictions)):
        if not isinstance(u, torch.Tensor) or not isinstance(p, torch.Tensor):
            raise TypeError(f"level {lvl}: priors and predictions must hold tensors")
        if not u.is_floating_point() or not p.is_floating_point():
            raise TypeError(f"level {lvl}: prior ({u.dtype}) and prediction ({p.dtype}) must "
                            "be floating tensors")
        if u.dim() != 4 or u.shape != p.shape:
            raise ValueError(f"level {lvl}: prior {tuple(u.shape)} and prediction "
                             f"{tuple(p.shape)} must be equal [U, C, H, W] shapes")
        if u.shape[0] != U:
            raise ValueError(f"level {lvl}: {u.shape[0]} units but unit_to_sample has {U}")
        if 0 in u.shape[1:]:
            raise ValueError(f"level {lvl}: priors and predictions {tuple(u.shape)} have an empty "
                             "channel or spatial dimension (C, H and W must be >= 1)")
        check_not_meta(f"level {lvl}: the prior", u)
        check_not_meta(f"level {lvl}: the prediction", p)
        if u.device != device or p.device != device:
            raise ValueError(f"level {lvl}: prior on {u.device} and prediction on {p.device}, "
                             f"but level 0 is on {device}; all levels must share one device")
    check_not_meta("unit_to_sample", unit_to_sample)
    if unit_to_sample.device != device:
        raise ValueError(f"unit_to_sample is on {unit_to_sample.device} but the features on "
                         f"{device}")


def check_num_samples(unit_to_sample: torch.Tensor, num_samples: Optional[int]) -> int:
    """``B``: ``num_samples`` (a non-negative int) or, by default, ``max + 1`` (a host
    sync).  On the CPU also checks that every index lies in ``[0, B)``; on CUDA that check
    would need a host sync, and while tracing (``torch.compile`` / ``torch.export``) it
    would be a data-dependent guard, so it is skipped there (units outside are ignored by
    the fused map)."""
    if num_samples is None:
        if unit_to_sample.numel() == 0:
            raise ValueError("num_samples is needed when there are no units")
        B = int(unit_to_sample.max()) + 1
    elif isinstance(num_samples, torch.SymInt):
        return num_samples  # a symbolic batch under torch.export: int() would specialise it
    else:
        B = check_int("num_samples", num_samples, low=0)
    if (unit_to_sample.device.type == "cpu" and unit_to_sample.numel()
            and not torch.compiler.is_compiling()):
        lo, hi = int(unit_to_sample.min()), int(unit_to_sample.max())
        if lo < 0 or hi >= B:
            raise ValueError(f"unit_to_sample values must lie in [0, {B}) (num_samples={B}), "
                             f"got values in [{lo}, {hi}]")
    return B


def check_image_size(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``(H, W)`` from an int or a pair of positive ints (a list, tuple, ``torch.Size``,
    1-D array or tensor of two ints; numpy integers count as ints)."""
    if isinstance(image_size, (str, bytes)):
        raise TypeError(f"image_size must be an int or a pair (H, W), got {image_size!r}")
    pair = isinstance(image_size, (list, tuple, torch.Size)) or (
        hasattr(image_size, "__len__") and getattr(image_size, "ndim", 1) == 1)
    if pair:
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an int or a pair (H, W), got {image_size!r}")
        return (check_int("image_size[0]", _item(image_size[0]), low=1),
                check_int("image_size[1]", _item(image_size[1]), low=1))
    s = check_int("image_size", image_size, low=1)
    return (s, s)


def _item(v):
    """A 0-d numpy array element as its numpy scalar (check_int takes those)."""
    return v[()] if getattr(v, "ndim", None) == 0 and not isinstance(v, torch.Tensor) else v


def check_blur(mode: str, sigma: float, kernel_size: int) -> Tuple[str, float, int]:
    """``(mode, sigma, kernel_size)``: mode one of :data:`MODES`, sigma finite > 0,
    kernel_size an odd positive int."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'mean' or 'joint', got {mode!r}")
    sigma = check_real("sigma", sigma, low=0.0, low_open=True)
    kernel_size = check_int("kernel_size", kernel_size, low=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size}")
    return mode, sigma, kernel_size


def check_score_input(anomaly_map: torch.Tensor, top_fraction: float) -> float:
    """A floating ``[B, H, W]`` map with pixels, and ``top_fraction`` in ``(0, 1]``."""
    if not isinstance(anomaly_map, torch.Tensor):
        raise TypeError(f"anomaly_map must be a tensor [B, H, W], got "
                        f"{type(anomaly_map).__name__}")
    if anomaly_map.dim() != 3:
        raise ValueError(f"anomaly_map must be [B, H, W], got {tuple(anomaly_map.shape)}")
    if not anomaly_map.is_floating_point():
        raise TypeError(f"anomaly_map must be a floating tensor, got {anomaly_map.dtype}")
    if anomaly_map.shape[1] * anomaly_map.shape[2] == 0:
        raise ValueError(f"anomaly_map has no pixels: {tuple(anomaly_map.shape)}")
    check_not_meta("anomaly_map", anomaly_map)
    top_fraction = check_real("top_fraction", top_fraction, low=0.0, high=1.0, low_open=True)
    if (_checking_values(anomaly_map) and anomaly_map.numel()
            and not bool(torch.isfinite(anomaly_map).all())):
        raise ValueError("anomaly_map contains NaN or Inf values")
    return top_fraction


def check_cosine_input(u: torch.Tensor, p: torch.Tensor, eps: float) -> float:
    """Two floating ``[N, C, H, W]`` tensors of one shape on one device, and ``eps`` a
    finite number > 0; returns ``eps`` as a float."""
    for name, t in (("u", u), ("p", p)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor [N, C, H, W], got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [N, C, H, W], got {tuple(t.shape)}")
        check_not_meta(name, t)
    if u.shape != p.shape:
        raise ValueError(f"u {tuple(u.shape)} and p {tuple(p.shape)} must have one shape")
    if u.device != p.device:
        raise ValueError(f"u is on {u.device} but p on {p.device}")
    return check_real("eps", eps, low=0.0, low_open=True)


# ----------------------------------------------------------------------------- functions
def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Arithmetic dtype of the maps and losses: float64 when any input is float64, else
    float32 (half-precision inputs are computed in fp32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def cosine_anomaly(u: torch.Tensor, p: torch.Tensor, eps: float = COS_EPS) -> torch.Tensor:
    """``A = 1 − cos(u, p)`` over channels: ``[N, C, H, W] → [N, H, W]``.

    The denominator ``‖u‖·‖p‖`` is clamped at ``eps`` (as ``sqrt(max(‖u‖²‖p‖², eps²))``),
    so a zero vector gives ``cos = 0`` (``A = 1``) and a finite gradient instead of NaN.
    Computed in :func:`compute_dtype`; ``u`` and ``p`` are floating ``[N, C, H, W]`` of one
    shape (else ``TypeError``/``ValueError``), ``eps`` > 0.
    """
    eps = check_cosine_input(u, p, eps)
    dtype = compute_dtype(u, p)
    u, p = u.to(dtype), p.to(dtype)
    dot = (u * p).sum(1)
    norm = (u.square().sum(1) * p.square().sum(1)).clamp_min(eps * eps).sqrt()
    return 1.0 - dot / norm


def gaussian_kernel1d(sigma: float, kernel_size: int, dtype=torch.float32,
                      device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``exp(−r²/2σ²) / Σ`` for ``r = −ks//2 .. ks//2``
    (``kernel_size`` odd, ``sigma`` > 0)."""
    _, sigma, kernel_size = check_blur("mean", sigma, kernel_size)
    r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)      # (r/σ)²: no 0/0 when σ² underflows
    return (g / g.sum()).to(dtype=dtype, device=device)


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, kernel_size: int = 15) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, H, W]`` maps with zero padding (the release's
    15×15, σ = 4 filter; the 2-D kernel is the outer product of the 1-D taps)."""
    if not isinstance(maps, torch.Tensor) or not maps.is_floating_point():
        raise TypeError(f"gaussian_blur: maps must be a floating tensor [B, H, W], got "
                        f"{getattr(maps, 'dtype', type(maps).__name__)}")
    if maps.dim() != 3 or maps.shape[1] * maps.shape[2] == 0:
        raise ValueError(f"gaussian_blur: maps must be [B, H, W] with pixels, got "
                         f"{tuple(maps.shape)}")
    check_not_meta("maps", maps)
    g = gaussian_kernel1d(sigma, kernel_size, maps.dtype, maps.device)
    r = kernel_size // 2
    x = maps.unsqueeze(1)
    x = F.conv2d(x, g.view(1, 1, 1, -1), padding=(0, r))
    x = F.conv2d(x, g.view(1, 1, -1, 1), padding=(r, 0))
    return x.squeeze(1)


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
        unit_to_sample: ``[U]`` int64 (or int32), the sample of each unit.
        image_size: output size ``H`` (or ``(H, W)``).
        num_samples: ``B`` (default ``unit_to_sample.max() + 1``).
        mode: ``"mean"`` — paper eq. 4: per level ``sqrt(Σ_units A²)``, upsampled
            (bilinear, align_corners=True), blurred, averaged over levels;
            ``"joint"`` — authors' release: ``sqrt`` of the sum of squares of all upsampled
            level × unit maps, then blurred.
        sigma, kernel_size: the Gaussian blur (zero padding).

    Returns a float32 map (float64 when an input is float64); differentiable.
    """
    check_features(priors, predictions, unit_to_sample)
    size = check_image_size(image_size)
    mode, sigma, kernel_size = check_blur(mode, sigma, kernel_size)
    B = check_num_samples(unit_to_sample, num_samples)
    dtype = compute_dtype(*priors, *predictions)
    acc = torch.zeros(B, *size, dtype=dtype, device=priors[0].device)
    for u, p in zip(priors, predictions):
        a = cosine_anomaly(u, p).to(dtype)
        if mode == "mean":
            s = torch.zeros(B, *a.shape[1:], dtype=dtype, device=a.device)
            acc = acc + _upsample(s.index_add_(0, unit_to_sample, a.square()).sqrt(), size)
        else:
            acc = acc.index_add(0, unit_to_sample, _upsample(a, size).square())
    acc = acc / len(priors) if mode == "mean" else acc.sqrt()
    return check_finite_output(gaussian_blur(acc, sigma, kernel_size), "anomaly map")


def top_k_count(num_pixels: int, top_fraction: float = 0.001) -> int:
    """``max(1, floor(num_pixels · top_fraction))`` (65 at 256², fraction 0.1 %)."""
    return max(1, int(math.floor(num_pixels * top_fraction + 1e-9)))


def image_score(anomaly_map: torch.Tensor, top_fraction: float = 0.001) -> torch.Tensor:
    """Image score ``[B]``: mean of the top ``max(1, ⌊H·W·top_fraction⌋)`` pixels of each
    ``[B, H, W]`` map."""
    top_fraction = check_score_input(anomaly_map, top_fraction)
    flat = anomaly_map.flatten(1)
    return flat.topk(top_k_count(flat.shape[1], top_fraction), dim=1).values.mean(1)
