"""The anomaly map, image score and decompression loss in stock PyTorch ops — the
``"torch"`` implementation of :mod:`kernels.amap_ops`, with the same function signatures as
:mod:`kernels.amap_triton` (on CUDA it is the baseline the Triton kernels are timed against).

Where the reference (:mod:`unimmad.scoring`, :mod:`unimmad.losses`) loses its time, and
what this path does instead (same function, SPEC §3 tolerances):

* **Cosine stage.**  ``cosine_anomaly`` makes three full-size temporaries per level
  (``u·p``, ``u²``, ``p²``), each a fresh allocation of up to 67 MB at paper dimensions
  (B = 8, 2 modalities): on the CPU the page faults of those allocations cost more than
  the arithmetic.  Here the per-pixel statistics ``u·p``, ``‖u‖²``, ``‖p‖²`` are reduced
  over channels chunk by chunk through one L3-sized buffer (8 MiB, :func:`cosine_stats`),
  so u and p are read once from memory and nothing full-size is written.  On CUDA the
  chunk is the whole level (the caching allocator has no page faults; fewer launches win).
  Each chunk costs six parallel regions: on an oversubscribed CPU (other processes busy)
  every region waits for a descheduled thread, so this path loses more of its lead there
  than the reference does.
* **Upsample, combine, blur.**  Bilinear upsampling with ``align_corners=True`` and the
  zero-padded separable blur are linear maps along each axis: ``blur(up(S)) = K_h S K_wᵀ``
  with ``K = G·R`` (``G`` the banded blur matrix, ``R`` the interpolation matrix).  The
  paper's level mean (eq. 4) is therefore ``Σ_l K_h,l S_l K_w,lᵀ / L``: two small GEMMs per
  level on the low-resolution maps, instead of interpolating and convolving full-size
  single-channel maps.  The "joint" mode (square after upsampling) upsamples with the
  ``R`` matrices and blurs with the ``G`` matrices (GEMMs again).
* **Loss.**  The forward pass keeps only per-pixel coefficients (three low-resolution maps
  per level); the backward pass is ``dp = g·(c_a·u + c_b·p)``, written chunk by chunk
  straight into the gradient (:func:`focal_cosine_grad`), instead of autograd through the
  reference's elementwise temporaries.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import torch

from unimmad.scoring import COS_EPS, compute_dtype, gaussian_kernel1d

__all__ = ["cosine_stats", "cosine_maps", "interp_matrix", "blur_matrix", "level_operators",
           "combine_maps", "anomaly_map", "image_score", "focal_cosine_forward",
           "focal_cosine_grad", "focal_power"]

CHUNK_ELEMENTS = 1 << 21  # CPU chunk: 8 MiB of fp32 per operand, L3-resident


# ----------------------------------------------------------------------------- layouts
def _as_rows(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``[U, C, H, W]`` → a 3-D view: ``[U, C, P]`` (NCHW) or ``[U, P, C]`` (NHWC)."""
    U, C, H, W = x.shape
    if channels_last:
        return x.permute(0, 2, 3, 1).reshape(U, H * W, C)
    return x.reshape(U, C, H * W)


def _layout(u: torch.Tensor, p: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """Bring u and p to one dense layout (NCHW or channels-last, whichever u has)."""
    if u.is_contiguous():
        return u, p.contiguous(), False
    if u.is_contiguous(memory_format=torch.channels_last):
        return u, p.contiguous(memory_format=torch.channels_last), True
    if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
        return u.contiguous(memory_format=torch.channels_last), p, True
    return u.contiguous(), p.contiguous(), False


def _chunks(U: int, C: int, P: int, target: int):
    """``(n0, n1, q0, q1)`` blocks of units × pixels holding about ``target`` elements."""
    per_unit = C * P
    if per_unit > target:
        q = max(1, target // C)
        for n in range(U):
            for q0 in range(0, P, q):
                yield n, n + 1, q0, min(P, q0 + q)
    else:
        nu = max(1, target // per_unit)
        for n0 in range(0, U, nu):
            yield n0, min(U, n0 + nu), 0, P


def _chunk_target(device: torch.device) -> int:
    return 1 << 62 if device.type == "cuda" else CHUNK_ELEMENTS


def _block(x3: torch.Tensor, channels_last: bool, n0, n1, q0, q1) -> torch.Tensor:
    return x3[n0:n1, q0:q1] if channels_last else x3[n0:n1, :, q0:q1]


# ----------------------------------------------------------------------------- cosine
def cosine_stats(u: torch.Tensor, p: torch.Tensor, chunk: int | None = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel ``(u·p, ‖u‖², ‖p‖²)`` over channels, each ``[U, H, W]`` in
    :func:`compute_dtype`; u and p are read once, chunk by chunk (``chunk`` elements per
    operand, default: :data:`CHUNK_ELEMENTS` = 2²¹ on the CPU, 8 MiB of fp32; the whole
    tensor on CUDA)."""
    U, C, H, W = u.shape
    P = H * W
    dtype = compute_dtype(u, p)
    u, p, cl = _layout(u, p)
    u3, p3 = _as_rows(u, cl), _as_rows(p, cl)
    red = 2 if cl else 1
    stats = torch.empty(3, U, P, dtype=dtype, device=u.device)
    target = chunk or _chunk_target(u.device)
    size = min(target, U * C * P) if U * C * P else 0
    buf = torch.empty(max(size, 1), dtype=dtype, device=u.device)
    low_u, low_p = u.dtype != dtype, p.dtype != dtype
    cu = torch.empty_like(buf) if low_u else None
    cp = torch.empty_like(buf) if low_p else None
    for n0, n1, q0, q1 in _chunks(U, C, P, target):
        a = _block(u3, cl, n0, n1, q0, q1)
        b = _block(p3, cl, n0, n1, q0, q1)
        shape = a.shape
        t = buf[:a.numel()].view(shape)
        if low_u:
            a = cu[:a.numel()].view(shape).copy_(a)
        if low_p:
            b = cp[:b.numel()].view(shape).copy_(b)
        dot, uu, pp = (s[n0:n1, q0:q1] for s in stats)
        torch.sum(torch.mul(a, b, out=t), red, out=dot)
        torch.sum(torch.mul(a, a, out=t), red, out=uu)
        torch.sum(torch.mul(b, b, out=t), red, out=pp)
    return tuple(s.view(U, H, W) for s in stats)


def _cos_from_stats(dot, uu, pp, eps=COS_EPS):
    """``(cos, clamp inactive, clamped denominator)`` from the per-pixel statistics."""
    norm = (uu * pp).sqrt_()
    active = norm >= eps
    norm = norm.clamp_min_(eps)
    return dot / norm, active, norm


def cosine_maps(u: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``A = 1 − cos(u, p)`` over channels, ``[U, C, H, W] → [U, H, W]`` (denominator
    clamped at ``COS_EPS``: zero vectors give ``A = 1``)."""
    dot, uu, pp = cosine_stats(u, p)
    cos, _, _ = _cos_from_stats(dot, uu, pp)
    return cos.neg_().add_(1.0)


# ----------------------------------------------------------------------------- operators
def interp_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """``[n_out, n_in]`` float64 matrix of 1-D linear interpolation with
    ``align_corners=True`` (PyTorch's source index ``i·(n_in − 1)/(n_out − 1)``, 0 when
    ``n_out = 1``)."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = torch.arange(n_out, dtype=torch.float64) * scale
    i0 = src.floor().long().clamp_(0, n_in - 1)
    lam = (src - i0).clamp_(0.0, 1.0)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    r = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    r.index_put_((rows, i0), 1.0 - lam, accumulate=True)
    r.index_put_((rows, i1), lam, accumulate=True)
    return r


def blur_matrix(n: int, sigma: float, kernel_size: int) -> torch.Tensor:
    """``[n, n]`` float64 banded matrix of the zero-padded 1-D Gaussian blur
    (:func:`unimmad.scoring.gaussian_kernel1d` taps)."""
    g = gaussian_kernel1d(sigma, kernel_size, torch.float64)
    r = kernel_size // 2
    d = torch.arange(n)[None, :] - torch.arange(n)[:, None] + r     # tap index j − i + r
    ok = (d >= 0) & (d < kernel_size)
    return torch.where(ok, g[d.clamp(0, kernel_size - 1)], torch.zeros((), dtype=torch.float64))


@functools.lru_cache(maxsize=64)
def level_operators(n_out: int, n_in: int, sigma: float, kernel_size: int, mode: str,
                    dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The per-axis operator of one level: ``G·R`` (mode "mean", blur folded in) or ``R``
    ("joint"), ``[n_out, n_in]`` (cached)."""
    r = interp_matrix(n_out, n_in)
    if mode == "mean":
        r = blur_matrix(n_out, sigma, kernel_size) @ r
    return r.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _blur_op(n: int, sigma: float, kernel_size: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
    return blur_matrix(n, sigma, kernel_size).to(dtype=dtype, device=device)


def combine_maps(maps: Sequence[torch.Tensor], unit_to_sample: torch.Tensor, num_samples: int,
                 size: Tuple[int, int], mode: str, sigma: float, kernel_size: int
                 ) -> torch.Tensor:
    """Per-unit low-resolution maps ``A_l [U, h_l, w_l]`` → blurred map ``[B, H, W]``
    (the rest of :func:`unimmad.scoring.anomaly_map` after the cosine stage)."""
    H, W = size
    dtype, device = maps[0].dtype, maps[0].device
    B, L = num_samples, len(maps)
    out = torch.zeros(B, H, W, dtype=dtype, device=device)
    if mode == "mean":
        for a in maps:
            h, w = a.shape[1:]
            kh = level_operators(H, h, sigma, kernel_size, "mean", dtype, device)
            kw = level_operators(W, w, sigma, kernel_size, "mean", dtype, device)
            s = torch.zeros(B, h, w, dtype=dtype, device=device)
            s.index_add_(0, unit_to_sample, a.square()).sqrt_()
            out.add_(torch.matmul(kh, torch.matmul(s, kw.t())))
        return out.div_(L)
    for a in maps:                                       # joint: Σ_l,u up(A)², sqrt, blur
        h, w = a.shape[1:]
        rh = level_operators(H, h, sigma, kernel_size, "joint", dtype, device)
        rw = level_operators(W, w, sigma, kernel_size, "joint", dtype, device)
        up = torch.matmul(rh, torch.matmul(a, rw.t()))   # [U, H, W]
        out.index_add_(0, unit_to_sample, up.square_())
    out.sqrt_()
    gh = _blur_op(H, sigma, kernel_size, dtype, device)
    gw = _blur_op(W, sigma, kernel_size, dtype, device)
    return torch.matmul(gh, torch.matmul(out, gw.t()))


def anomaly_map(priors: Sequence[torch.Tensor], predictions: Sequence[torch.Tensor],
                unit_to_sample: torch.Tensor, num_samples: int, size: Tuple[int, int],
                mode: str, sigma: float, kernel_size: int) -> torch.Tensor:
    """The blurred anomaly map ``[B, H, W]`` (:func:`compute_dtype`): the cosine stage per
    level, then :func:`combine_maps` (inputs validated by :func:`kernels.anomaly_map`)."""
    maps = [cosine_maps(u, p) for u, p in zip(priors, predictions)]
    return combine_maps(maps, unit_to_sample, num_samples, size, mode, sigma, kernel_size)


def image_score(anomaly_map: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the top ``k`` pixels of each ``[B, H, W]`` map → ``[B]``."""
    return anomaly_map.flatten(1).topk(k, dim=1).values.mean(1)


# ----------------------------------------------------------------------------- loss
def focal_power(a: torch.Tensor, gamma: float) -> torch.Tensor:
    """``A^γ`` (the stopped focal factor).  A non-integer γ takes ``max(A, 0)^γ`` so a
    rounding-negative ``A`` (u ≈ p) gives 0 instead of the reference's NaN."""
    if float(gamma).is_integer():
        return a.pow(gamma)
    return a.clamp_min(0.0).pow(gamma)


def focal_cosine_forward(u: torch.Tensor, p: torch.Tensor, gamma: float
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-unit ``m[u] = mean_hw(sg(A)^γ · A)`` ``[U]`` and the backward coefficients
    ``coef [3, U, H, W]``: with ``g = ∂L/∂m[u]``,
    ``∂L/∂p = g·(coef[0]·u + coef[1]·p)`` and ``∂L/∂u = g·(coef[0]·p + coef[2]·u)``.

    With ``s = sqrt(‖u‖²‖p‖²)``, ``d = max(s, eps)``, ``f = A^γ / (H·W)``:
    ``coef[0] = −f/d``, ``coef[1] = f·cos/‖p‖²`` and ``coef[2] = f·cos/‖u‖²`` where
    ``s ≥ eps`` (the clamp is inactive), else 0 — autograd's derivative of the reference,
    with no NaN where a vector is zero."""
    U, C, H, W = u.shape
    dot, uu, pp = cosine_stats(u, p)
    cos, active, norm = _cos_from_stats(dot, uu, pp)
    a = 1.0 - cos
    f = focal_power(a, gamma)
    m = (f * a).flatten(1).mean(1)
    f = f.div_(H * W)
    zero = torch.zeros((), dtype=f.dtype, device=f.device)
    fc = f * cos
    coef = torch.stack([
        -f / norm,
        torch.where(active, fc / torch.where(active, pp, 1.0), zero),
        torch.where(active, fc / torch.where(active, uu, 1.0), zero),
    ])
    return m, coef


def focal_cosine_grad(g: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor, x: torch.Tensor,
                      y: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``out[n] = g[n]·(ca[n]·x[n] + cb[n]·y[n])`` (coefficients broadcast over channels),
    ``[U, C, H, W]`` in y's dtype and memory format, written chunk by chunk."""
    U, C, H, W = y.shape
    P = H * W
    dtype = ca.dtype
    y, x, cl = _layout(y, x)
    out = torch.empty_like(y)
    if out.numel() == 0:
        return out
    x3, y3, o3 = _as_rows(x, cl), _as_rows(y, cl), _as_rows(out, cl)
    scale = g.to(dtype)[:, None]
    ca = (ca.reshape(U, P) * scale)
    cb = (cb.reshape(U, P) * scale)
    if cl:
        ca, cb = ca[:, :, None], cb[:, :, None]
    else:
        ca, cb = ca[:, None, :], cb[:, None, :]
    target = chunk or _chunk_target(y.device)
    direct = out.dtype == dtype
    buf = None if direct else torch.empty(min(target, out.numel()), dtype=dtype,
                                          device=y.device)
    for n0, n1, q0, q1 in _chunks(U, C, P, target):
        a = _block(x3, cl, n0, n1, q0, q1)
        b = _block(y3, cl, n0, n1, q0, q1)
        o = _block(o3, cl, n0, n1, q0, q1)
        c0 = _block(ca, cl, n0, n1, q0, q1)
        c1 = _block(cb, cl, n0, n1, q0, q1)
        t = o if direct else buf[:o.numel()].view(o.shape)
        torch.mul(a, c0, out=t)
        t.addcmul_(b, c1)
        if not direct:
            o.copy_(t)
    return out
