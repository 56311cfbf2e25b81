"""Triton kernels of the anomaly map, image score and decompression loss (SPEC §1, §2.5;
PERFORMANCE.md §5), with their launchers — the ``"triton"`` implementation of
:mod:`kernels.amap_ops` (same function signatures as :mod:`kernels.amap_torch`).

Index contract
==============

================  ======================  ================================================
array             shape / dtype           meaning
================  ======================  ================================================
``u``, ``p``      [U, C, h, w] fp32,      prior and prediction of one level, any strides
                  bf16 or fp16            (NCHW or channels-last memory); read once
``a``             [Σ_l U·h_l·w_l] fp32    packed per-unit ``1 − cos`` maps: level ``l``
                                          starts at ``U·cum_hw[l]``, unit ``n`` of it at
                                          ``+ n·h_l·w_l``, pixels row-major
``order``         [U] int32               units sorted by sample (stable)
``offsets``       [B + 1] int32           sample ``b`` owns ``order[offsets[b]:offsets[b+1]]``
``meta``          [L, 8] int32            level ``l``: ``h, w, cum_hw, mh_off, mw_off,
                                          wh_off, ww_off, 0``
``mats``          [·] fp32                level ``l``: ``Mh [H, h]`` at ``mh_off`` and
                                          ``Mw [W, w]`` at ``mw_off``; ``G·R/L`` (mode
                                          "mean", blur folded in) or ``R`` ("joint")
``wins``          [·] int32               first column of ``Mh`` that row tile ``t`` uses,
                                          at ``wh_off + t`` (``Mw``: ``ww_off + t``); every
                                          used column lies in ``[start, start + WIN)``
``gtile``         [T, HALO] fp32          blur taps of one tile, ``g[j − i]`` (joint mode)
``out``           [B, H, W] fp32          the blurred map
``coef``          [3, U, h, w] fp32       loss backward coefficients (see
                                          :func:`kernels.amap_torch.focal_cosine_forward`)
``term``          [U, h·w] fp32           loss: per-pixel ``sg(A)^γ · A``
================  ======================  ================================================

Kernels:

* ``_cos_kernel`` — kernel 1: streams u and p once, channel block by channel block (a
  software-pipelined loop: asynchronous copies ``PIPE − 1`` blocks ahead), and reduces
  ``u·p``, ``‖u‖²``, ``‖p‖²`` in fp32; writes ``A = 1 − cos`` (map) or the loss
  terms ``sg(A)^γ·A`` and the backward coefficients (``LOSS``), all low-resolution.  Grid ``(pixel tiles, U)``.
* ``_map_tile_kernel`` — kernel 2: one ``T × T`` output tile of one sample per program.
  Bilinear upsampling (align_corners=True) and the zero-padded Gaussian blur are linear
  per axis, so mode "mean" (paper eq. 4) is ``Σ_l Mh_l[tile, win] · S_l[win, win] ·
  Mw_l[tile, win]ᵀ`` with ``S_l = sqrt(Σ_units A²)`` on a ``WIN × WIN`` low-resolution
  window; mode "joint" upsamples every unit's window onto a ``HALO × HALO`` tile (tile +
  blur radius), sums the squares over units and levels, takes the square root and blurs
  with ``gtile``.  All products are small fp32 ``tl.dot`` (``input_precision="ieee"``).
* ``_topk_kernel`` — image score: each program sorts a block of a map (``tl.sort``) and
  keeps its top ``KP`` values; repeated until one block per sample is left, whose top
  ``k`` are averaged.
* ``_focal_grad_kernel`` — loss backward: ``out = g[n]·(ca·x + cb·y)``, reading x and y
  once and writing the gradient once.

All arithmetic is fp32.  Addresses are integer offsets from one base pointer per tensor
(no pointer arrays), so every kernel runs under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import torch

from unimmad.scoring import COS_EPS, gaussian_kernel1d

from . import amap_torch
from .backend import HAVE_TRITON, all_configs, configs, interpreted, output, resolve, tl, triton

__all__ = ["TUNED", "COS_TUNED", "STREAM_TUNED", "cosine_maps", "combine_maps", "anomaly_map",
           "image_score",
           "focal_cosine_forward", "focal_cosine_grad", "TILE", "MAX_TOPK"]

TILE = 32            # output tile of the map kernel (T)
MAX_TOPK = 1024      # largest k the sort-based score kernel handles (beyond: torch.topk)
SCORE_BLOCK = 4096   # elements sorted per program in the first passes (64 on the interpreter)

# Tile configurations of the streaming kernels; the first row of each list is the pinned
# one (``UNIMMAD_AUTOTUNE=0``, and the interpreter).  Wide pixel tiles suit NCHW (pixels
# contiguous), wide channel tiles channels-last.  Cosine stage: (BLOCK_P, BLOCK_C, PIPE,
# num_warps, num_stages) — PIPE is the software-pipelining depth of its channel loop
# (asynchronous copies PIPE − 1 blocks ahead; 1: plain vector loads), kept as a tuning
# choice because only a GPU can tell which streams faster.  Loss backward (no loop):
# (BLOCK_P, BLOCK_C, num_warps, num_stages).
COS_TUNED = [(64, 32, 3, 4, 3), (128, 16, 3, 4, 3), (16, 128, 3, 4, 3), (128, 32, 2, 8, 3),
             (64, 32, 1, 4, 3)]
STREAM_TUNED = [(64, 32, 4, 3), (128, 16, 4, 3), (128, 32, 8, 3), (16, 128, 4, 3)]
#: Every configuration of each autotuned kernel, by kernel name (see
#: :data:`kernels.cmoe_triton.TUNED`).
TUNED: dict = {}


if HAVE_TRITON:

    TUNED.update(_cos_kernel=all_configs(("BLOCK_P", "BLOCK_C", "PIPE"), COS_TUNED),
                 _focal_grad_kernel=all_configs(("BLOCK_P", "BLOCK_C"), STREAM_TUNED))

    @triton.jit
    def _pixel_offsets(offs_p, W, sh, sw, FLAT: tl.constexpr):
        """Memory offsets of pixels ``offs_p`` (row-major over ``W`` columns): with FLAT
        (``stride_h = W·stride_w``) they are ``q · stride_w``, which keeps contiguity
        along pixels provable to the compiler."""
        if FLAT:
            return offs_p * sw
        return (offs_p // W) * sh + (offs_p % W) * sw

    @triton.autotune(configs=configs(("BLOCK_P", "BLOCK_C", "PIPE"), COS_TUNED),
                     key=["C", "P", "CHANNELS_LAST", "LOSS"])
    @triton.jit
    def _cos_kernel(u_ptr, p_ptr, a_ptr, coef_ptr,
                    C, P, W, a_off, coef_stride, gamma, inv_p, eps,
                    sun, suc, suh, suw, spn, spc, sph, spw,
                    CHANNELS_LAST: tl.constexpr, LOSS: tl.constexpr, GAMMA_INT: tl.constexpr,
                    FLAT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                    PIPE: tl.constexpr):
        pid_p = tl.program_id(0)
        n = tl.program_id(1).to(tl.int64)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = offs_p < P
        u_pix = _pixel_offsets(offs_p, W, suh, suw, FLAT)
        p_pix = _pixel_offsets(offs_p, W, sph, spw, FLAT)
        u_base = u_ptr + n * sun
        p_base = p_ptr + n * spn
        acc_d = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        acc_p = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        for c0 in tl.range(0, C, BLOCK_C, num_stages=PIPE):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            m = (offs_c < C)[:, None] & p_ok[None, :]
            a = tl.load(u_base + offs_c[:, None] * suc + u_pix[None, :], mask=m,
                        other=0.0).to(tl.float32)
            b = tl.load(p_base + offs_c[:, None] * spc + p_pix[None, :], mask=m,
                        other=0.0).to(tl.float32)
            acc_d += a * b
            acc_u += a * a
            acc_p += b * b
        dot = tl.sum(acc_d, axis=0)
        uu = tl.sum(acc_u, axis=0)
        pp = tl.sum(acc_p, axis=0)
        s = tl.sqrt(uu * pp)
        d = tl.maximum(s, eps)
        cos = dot / d
        amap = 1.0 - cos
        if LOSS:
            if GAMMA_INT >= 0:
                f = tl.full((BLOCK_P,), 1.0, tl.float32)
                for _ in tl.static_range(GAMMA_INT):
                    f = f * amap
            else:
                pos = amap > 0
                f = tl.where(pos, tl.exp2(gamma * tl.log2(tl.where(pos, amap, 1.0))), 0.0)
            tl.store(a_ptr + a_off + n * P + offs_p, f * amap, mask=p_ok)
            f = f * inv_p
            act = s >= eps
            fc = f * cos
            c0_ = -f / d
            c1_ = tl.where(act, fc / tl.where(act, pp, 1.0), 0.0)
            c2_ = tl.where(act, fc / tl.where(act, uu, 1.0), 0.0)
            base = coef_ptr + n * P + offs_p
            tl.store(base, c0_, mask=p_ok)
            tl.store(base + coef_stride, c1_, mask=p_ok)
            tl.store(base + 2 * coef_stride, c2_, mask=p_ok)
        else:
            tl.store(a_ptr + a_off + n * P + offs_p, amap, mask=p_ok)

    @triton.jit
    def _map_tile_kernel(a_ptr, order_ptr, offsets_ptr, meta_ptr, mats_ptr, wins_ptr,
                         gtile_ptr, out_ptr, U, L, H, W, n_tx,
                         JOINT: tl.constexpr, T: tl.constexpr, HALO: tl.constexpr,
                         WIN: tl.constexpr, RADIUS: tl.constexpr):
        t = tl.program_id(0)
        b = tl.program_id(1)
        ty = t // n_tx
        tx = t % n_tx
        start = tl.load(offsets_ptr + b)
        end = tl.load(offsets_ptr + b + 1)
        kk = tl.arange(0, WIN)
        if JOINT:
            rows = ty * T - RADIUS + tl.arange(0, HALO)
            cols = tx * T - RADIUS + tl.arange(0, HALO)
            acc = tl.zeros((HALO, HALO), dtype=tl.float32)
        else:
            rows = ty * T + tl.arange(0, T)
            cols = tx * T + tl.arange(0, T)
            acc = tl.zeros((T, T), dtype=tl.float32)
        r_ok = (rows >= 0) & (rows < H)
        c_ok = (cols >= 0) & (cols < W)
        for lvl in range(L):
            h = tl.load(meta_ptr + lvl * 8)
            w = tl.load(meta_ptr + lvl * 8 + 1)
            a_lvl = a_ptr + tl.load(meta_ptr + lvl * 8 + 2).to(tl.int64) * U
            mh_off = tl.load(meta_ptr + lvl * 8 + 3)
            mw_off = tl.load(meta_ptr + lvl * 8 + 4)
            i0 = tl.load(wins_ptr + tl.load(meta_ptr + lvl * 8 + 5) + ty)
            j0 = tl.load(wins_ptr + tl.load(meta_ptr + lvl * 8 + 6) + tx)
            ii = i0 + kk
            jj = j0 + kk
            i_ok = ii < h
            j_ok = jj < w
            mh = tl.load(mats_ptr + mh_off + rows[:, None] * h + ii[None, :],
                         mask=r_ok[:, None] & i_ok[None, :], other=0.0)      # [R, WIN]
            mwt = tl.load(mats_ptr + mw_off + cols[None, :] * w + jj[:, None],
                          mask=j_ok[:, None] & c_ok[None, :], other=0.0)     # [WIN, R]
            win = ii[:, None] * w + jj[None, :]
            win_ok = i_ok[:, None] & j_ok[None, :]
            if JOINT:
                for k in range(start, end):
                    unit = tl.load(order_ptr + k).to(tl.int64)
                    am = tl.load(a_lvl + unit * h * w + win, mask=win_ok, other=0.0)
                    up = tl.dot(tl.dot(mh, am, input_precision="ieee"), mwt,
                                input_precision="ieee")
                    acc += up * up
            else:
                ss = tl.zeros((WIN, WIN), dtype=tl.float32)
                for k in range(start, end):
                    unit = tl.load(order_ptr + k).to(tl.int64)
                    am = tl.load(a_lvl + unit * h * w + win, mask=win_ok, other=0.0)
                    ss += am * am
                acc += tl.dot(tl.dot(mh, tl.sqrt(ss), input_precision="ieee"), mwt,
                              input_precision="ieee")
        o_rows = ty * T + tl.arange(0, T)
        o_cols = tx * T + tl.arange(0, T)
        if JOINT:
            x = tl.sqrt(acc)
            ti = tl.arange(0, T)
            hj = tl.arange(0, HALO)
            g = tl.load(gtile_ptr + ti[:, None] * HALO + hj[None, :])       # [T, HALO]
            gt = tl.load(gtile_ptr + ti[None, :] * HALO + hj[:, None])      # [HALO, T]
            res = tl.dot(tl.dot(g, x, input_precision="ieee"), gt, input_precision="ieee")
        else:
            res = acc
        o_ok = (o_rows < H)[:, None] & (o_cols < W)[None, :]
        tl.store(out_ptr + b.to(tl.int64) * H * W + o_rows[:, None] * W + o_cols[None, :],
                 res, mask=o_ok)

    @triton.jit
    def _topk_kernel(x_ptr, out_ptr, N, x_stride, out_stride, K,
                     BLOCK: tl.constexpr, KP: tl.constexpr, FINAL: tl.constexpr):
        blk = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + b * x_stride + offs, mask=offs < N,
                    other=float("-inf")).to(tl.float32)
        x = tl.sort(x, descending=True)
        idx = tl.arange(0, BLOCK)
        if FINAL:
            top = tl.sum(tl.where(idx < K, x, 0.0), axis=0)
            tl.store(out_ptr + b, top / K)
        else:
            tl.store(out_ptr + b * out_stride + blk * KP + idx, x, mask=idx < KP)

    @triton.autotune(configs=configs(("BLOCK_P", "BLOCK_C"), STREAM_TUNED),
                     key=["C", "P", "CHANNELS_LAST"])
    @triton.jit
    def _focal_grad_kernel(g_ptr, ca_ptr, cb_ptr, x_ptr, y_ptr, o_ptr, C, P, W,
                           sxn, sxc, sxh, sxw, syn, syc, syh, syw, son, soc, soh, sow,
                           CHANNELS_LAST: tl.constexpr, FLAT: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        pid_p = tl.program_id(0)
        pid_c = tl.program_id(1)
        n = tl.program_id(2).to(tl.int64)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        p_ok = offs_p < P
        m = (offs_c < C)[:, None] & p_ok[None, :]
        x_pix = _pixel_offsets(offs_p, W, sxh, sxw, FLAT)
        y_pix = _pixel_offsets(offs_p, W, syh, syw, FLAT)
        o_pix = _pixel_offsets(offs_p, W, soh, sow, FLAT)
        g = tl.load(g_ptr + n).to(tl.float32)
        ca = tl.load(ca_ptr + n * P + offs_p, mask=p_ok, other=0.0) * g
        cb = tl.load(cb_ptr + n * P + offs_p, mask=p_ok, other=0.0) * g
        x = tl.load(x_ptr + n * sxn + offs_c[:, None] * sxc + x_pix[None, :],
                    mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + n * syn + offs_c[:, None] * syc + y_pix[None, :],
                    mask=m, other=0.0).to(tl.float32)
        o = ca[None, :] * x + cb[None, :] * y
        tl.store(o_ptr + n * son + offs_c[:, None] * soc + o_pix[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------- helpers
def _channels_last(x: torch.Tensor) -> bool:
    return x.stride(1) == 1 and x.shape[1] > 1


def _flat(*tensors: torch.Tensor) -> bool:
    """Whether every tensor's pixels are evenly spaced (``stride_h = W·stride_w``), so a
    kernel can address pixel ``q`` as ``q · stride_w`` (NCHW and channels-last both are)."""
    return all(t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3) for t in tensors)


def _gamma_int(gamma: float) -> int:
    g = float(gamma)
    return int(g) if g.is_integer() and 0 <= g <= 16 else -1


def _launch_cos(u, p, a, a_off, coef, loss: bool, gamma: float = 0.0):
    U, C, H, W = u.shape
    P = H * W
    if U * P == 0:
        return
    grid = lambda meta: (triton.cdiv(P, meta["BLOCK_P"]), U)
    _cos_kernel[grid](
        u, p, a, coef, C, P, W, a_off, U * P, float(gamma), 1.0 / P,
        COS_EPS, *u.stride(), *p.stride(),
        CHANNELS_LAST=_channels_last(u), LOSS=loss, GAMMA_INT=_gamma_int(gamma),
        FLAT=_flat(u, p))


def cosine_maps(priors: Sequence[torch.Tensor], predictions: Sequence[torch.Tensor],
                out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, List[int]]:
    """Kernel 1 on every level: the packed ``1 − cos`` maps (see the index contract;
    ``out`` ``[max(1, U·Σ h·w)]`` fp32 if given) and the cumulative pixel counts ``cum_hw``."""
    resolve("triton", *priors, *predictions)
    U = priors[0].shape[0]
    cum = [0]
    for u in priors:
        cum.append(cum[-1] + u.shape[2] * u.shape[3])
    shape = (max(U * cum[-1], 1),)
    a = output(out, shape, torch.float32, priors[0].device)
    if U:
        for u, p, off in zip(priors, predictions, cum):
            _launch_cos(u, p, a, U * off, a, loss=False)
    return a, cum


@functools.lru_cache(maxsize=32)
def _plan(size: Tuple[int, int], dims: Tuple[Tuple[int, int], ...], mode: str, sigma: float,
          kernel_size: int, device: torch.device):
    """Host-side tables of the map kernel for one geometry (cached): ``meta``, ``mats``,
    ``wins``, ``gtile`` on ``device`` and the constexprs ``WIN``, ``HALO``, ``RADIUS``."""
    H, W = size
    T, r = TILE, kernel_size // 2
    joint = mode == "joint"
    halo = triton.next_power_of_2(T + 2 * r) if joint else T
    mats, wins, meta, widest = [], [], [], 1
    mat_off = win_off = cum = 0

    def windows(m: torch.Tensor, n_out: int):
        nonlocal widest
        starts = []
        for t in range(triton.cdiv(n_out, T)):
            lo = t * T - r if joint else t * T
            rows = m[max(lo, 0):min(lo + halo, n_out)]
            cols = torch.nonzero(rows.abs().sum(0) > 0).flatten()
            first = int(cols[0]) if cols.numel() else 0
            last = int(cols[-1]) if cols.numel() else 0
            widest = max(widest, last - first + 1)
            starts.append(first)
        return starts

    for h, w in dims:
        mh = amap_torch.level_operators(H, h, sigma, kernel_size, mode, torch.float64,
                                        torch.device("cpu"))
        mw = amap_torch.level_operators(W, w, sigma, kernel_size, mode, torch.float64,
                                        torch.device("cpu"))
        if not joint:
            mh = mh / len(dims)
        sh, sw = windows(mh, H), windows(mw, W)
        meta.append([h, w, cum, mat_off, mat_off + H * h, win_off, win_off + len(sh), 0])
        mats += [mh.flatten(), mw.flatten()]
        wins += sh + sw
        mat_off += H * h + W * w
        win_off += len(sh) + len(sw)
        cum += h * w
    win = max(16, triton.next_power_of_2(widest))
    gtile = torch.zeros(T, halo, dtype=torch.float64)
    if joint:                                   # gtile[i, j] = g[j − i], j − i ∈ [0, ks)
        taps = gaussian_kernel1d(sigma, kernel_size, torch.float64)
        for i in range(T):
            gtile[i, i:i + kernel_size] = taps
    return (torch.tensor(meta, dtype=torch.int32, device=device),
            torch.cat(mats).to(device=device, dtype=torch.float32),
            torch.tensor(wins, dtype=torch.int32, device=device),
            gtile.to(device=device, dtype=torch.float32), win, halo, r)


def _csr(unit_to_sample: torch.Tensor, num_samples: int):
    """Units grouped by sample without a host sync: ``(order, offsets)``."""
    keys, order = torch.sort(unit_to_sample, stable=True)
    bounds = torch.arange(num_samples + 1, device=keys.device, dtype=keys.dtype)
    offsets = torch.searchsorted(keys, bounds)
    return order.to(torch.int32), offsets.to(torch.int32)


def combine_maps(a: torch.Tensor, dims: Sequence[Tuple[int, int]], unit_to_sample: torch.Tensor,
                 num_samples: int, size: Tuple[int, int], mode: str, sigma: float,
                 kernel_size: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Kernel 2: packed per-unit maps → blurred map ``[B, H, W]`` fp32 (``out``, contiguous,
    if given)."""
    H, W = size
    U = unit_to_sample.shape[0]
    device = a.device
    meta, mats, wins, gtile, win, halo, r = _plan(size, tuple(dims), mode, float(sigma),
                                                  int(kernel_size), device)
    order, offsets = _csr(unit_to_sample, num_samples)
    out = output(out, (num_samples, H, W), torch.float32, device)
    if num_samples == 0:
        return out
    n_tx = triton.cdiv(W, TILE)
    grid = (triton.cdiv(H, TILE) * n_tx, num_samples)
    _map_tile_kernel[grid](a, order, offsets, meta, mats, wins, gtile, out, U, len(dims), H, W,
                           n_tx, JOINT=mode == "joint", T=TILE, HALO=halo, WIN=win, RADIUS=r,
                           num_warps=8 if mode == "joint" else 4)   # joint: 4 warps spill
    return out


def anomaly_map(priors: Sequence[torch.Tensor], predictions: Sequence[torch.Tensor],
                unit_to_sample: torch.Tensor, num_samples: int, size: Tuple[int, int],
                mode: str, sigma: float, kernel_size: int) -> torch.Tensor:
    """Kernels 1 and 2: the blurred anomaly map ``[B, H, W]`` fp32 (inputs validated by
    :func:`kernels.anomaly_map`)."""
    a, _ = cosine_maps(priors, predictions)
    dims = [tuple(u.shape[2:]) for u in priors]
    return combine_maps(a, dims, unit_to_sample, num_samples, size, mode, sigma, kernel_size)


def image_score(anomaly_map: torch.Tensor, k: int,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of the top ``k`` pixels of each map ``[B, H, W]`` → ``[B]`` fp32 (sort-based
    kernel for ``k ≤ MAX_TOPK``; ``torch.topk`` beyond)."""
    resolve("triton", anomaly_map)
    B = anomaly_map.shape[0]
    x = anomaly_map.reshape(B, -1)
    if x.stride(1) != 1:
        x = x.contiguous()
    N = x.shape[1]
    if k > MAX_TOPK:
        res = x.float().topk(k, dim=1).values.mean(1)
        return res if out is None else out.copy_(res)
    out = output(out, (B,), torch.float32, x.device)
    if B == 0:
        return out
    kp = triton.next_power_of_2(k)
    block = max(64 if interpreted() else SCORE_BLOCK, 2 * kp)
    while N > block:                      # keep the top kp of every block
        nblk = triton.cdiv(N, block)
        cand = torch.empty(B, nblk * kp, dtype=torch.float32, device=x.device)
        _topk_kernel[(nblk, B)](x, cand, N, x.stride(0), cand.stride(0), k,
                                BLOCK=block, KP=kp, FINAL=False, num_warps=8)
        x, N = cand, nblk * kp
    final = max(16, triton.next_power_of_2(N))
    _topk_kernel[(1, B)](x, out, N, x.stride(0), 0, k, BLOCK=final, KP=kp, FINAL=True,
                         num_warps=8)
    return out


# ----------------------------------------------------------------------------- loss
def focal_cosine_forward(u: torch.Tensor, p: torch.Tensor, gamma: float
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(m [U], coef [3, U, h, w])`` as :func:`kernels.amap_torch.focal_cosine_forward`,
    in one pass over u and p."""
    resolve("triton", u, p)
    U, C, H, W = u.shape
    P = H * W
    coef = torch.empty(3, U, H, W, dtype=torch.float32, device=u.device)
    if U == 0 or P == 0:
        return torch.zeros(U, dtype=torch.float32, device=u.device), coef
    term = torch.empty(U, P, dtype=torch.float32, device=u.device)
    _launch_cos(u, p, term, 0, coef, loss=True, gamma=gamma)
    return term.mean(1), coef


def focal_cosine_grad(g: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor, x: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
    """``g[n]·(ca·x + cb·y)`` → ``[U, C, h, w]`` in y's dtype and memory format."""
    resolve("triton", x, y)
    U, C, H, W = y.shape
    P = H * W
    out = torch.empty_like(y)
    if out.numel() == 0:
        return out
    ca, cb = ca.contiguous(), cb.contiguous()
    grid = lambda meta: (triton.cdiv(P, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]), U)
    _focal_grad_kernel[grid](g.float().contiguous(), ca, cb, x, y, out, C, P, W,
                             *x.stride(), *y.stride(), *out.stride(),
                             CHANNELS_LAST=_channels_last(y), FLAT=_flat(x, y, out))
    return out
