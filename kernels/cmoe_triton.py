"""Triton kernels of the fused C-MoE (SPEC §2), with their launchers — the ``"triton"``
implementation of :mod:`kernels.cmoe_ops` (same function signatures as
:mod:`kernels.cmoe_torch`).

Index contract
==============

=================  ===================  ===================================================
array              shape / dtype        meaning
=================  ===================  ===================================================
``x``              [B, Ci, H, W] any    per-*sample* input (the branch values), read
                   float                channels-last (NHWC memory; other strides are
                                        converted first: :func:`to_input_format`)
``weight``         [NW, Co, R] float    kernel bank, ``R = k·k·Ci`` ordered (kh, kw, ci):
                                        an OIHW kernel stored OHWI
``job_sample``     [J] int              input sample of job ``j`` (jobs of one sample are
                                        adjacent: their programs reuse x from L2)
``job_weight``     [J] int              bank entry of job ``j``
``y``              [J, Co, H, W]        output of job ``j``, channels-last memory
``base``           [N, Co, R]           base experts of one branch (OHWI)
``leaders``        [L, N, Co]           MoE-leader logits S
``idx``            [U, K] int           chosen leaders of unit ``u`` (top-K, distinct)
``scores``         [U, K] float         their renormalised router scores
``g0``/``bank``    [Co, R] / [L, Co, R] folded fixed kernel and per-leader folded kernels
=================  ===================  ===================================================

Kernels:

* ``_dyn_conv_kernel`` — implicit-GEMM convolution, stride 1, zero padding ``k // 2``;
  M = pixels of one job, N = Co, K = k·k·Ci, walked as one flat loop over (tap, channel
  block) so the software pipeline never drains between taps; grid ``(N tiles, M tiles,
  J)``; autotuned per dot precision (:data:`CONV`).  Activations are read channels-last
  (:data:`INPUT_FORMAT`; the launchers convert others): a tile row is one pixel's
  contiguous channels, loaded by 16-byte asynchronous copies.  The C-MoE
  calls it with one job per unit (the unit's folded kernel) reading its sample's x in
  place: x is never replicated.  Also computes the input gradient (flipped, transposed
  bank).
* ``_wgrad_kernel`` — weight gradient of one job per tap: ``dW[j, :, tap, :] =
  dyᵀ · shift(x)``, reduction over pixels; grid ``(Ci tiles, Co tiles, J·k·k)``.
* ``_compose_kernel`` — MoE-in-MoE composition fused with the collapse: for unit ``u``,
  ``α = Σ_j scores[u, j] softmax_n(S[idx[u, j]])`` and ``M[u] = Σ_n α[n, o] base[n, o]``;
  grid ``(U, R tiles, Co tiles)`` with units fastest so a base tile is shared in L2.
* ``_mix_kernel`` — folded kernels ``W[u] = g0 + Σ_j scores[u, j] bank[idx[u, j]]``.

All arithmetic accumulates in fp32.  Addresses are integer offsets from one base pointer
per tensor (no pointer arrays), so every kernel runs under ``TRITON_INTERPRET=1``; there
``tl.dot`` operands are upcast to fp32 (the interpreter's bf16 dot is wrong).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .backend import HAVE_TRITON, all_configs, configs, interpreted, output, resolve, tl, triton

__all__ = ["DYN_CONV_FORMAT", "INPUT_FORMAT", "TUNED", "CONV", "to_bank", "to_input_format",
           "dyn_conv", "dyn_conv_backward", "compose", "mix", "flip_bank"]

#: Memory format of :func:`dyn_conv`'s output (pixels × channels tiles are stored NHWC).
DYN_CONV_FORMAT = torch.channels_last
#: Memory format the kernels read activations and gradients in (others are converted).
INPUT_FORMAT = torch.channels_last


# Tile configurations: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); the first row of
# each list is the pinned one (UNIMMAD_AUTOTUNE=0).  Every row must fit Hopper's shared
# memory and compile without register spills (kernels.compile_check checks both, for
# every row).  The tensor-core rows (bf16, fp16, fp32 with TF32 dot products): the last
# covers all 256 output channels of the paper's C-MoE in one tile, so x is gathered once
# per pixel tile instead of twice — whether that is faster only a GPU can tell (the
# autotuner picks per shape).  fp32 with IEEE dot products runs on FMA units and needs
# smaller K slices to stay out of local memory.  The interpreter uses small tiles.
_TILE = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
CONV_TUNED = [(64, 64, 32, 4, 3), (128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
              (128, 256, 32, 8, 3)]
CONV_IEEE_TUNED = [(64, 64, 16, 8, 3), (128, 64, 16, 8, 3), (64, 32, 32, 4, 3)]
WGRAD_TUNED = [(64, 64, 64, 4, 3), (128, 128, 32, 8, 3)]
_INTERPRETER_TILE = (32, 32, 16, 4, 3)
_CONV_KEY = ["H", "W", "Ci", "Co", "KS", "PRECISION"]
#: Every configuration of each autotuned kernel, by kernel name (the conv's by its
#: ``PRECISION``), whatever ``UNIMMAD_AUTOTUNE`` says: the parity tests force each in
#: turn, the compile check compiles each.
TUNED: dict = {}
#: The autotuned convolution per dot precision: one JIT function, two configuration lists
#: (bf16/fp16 launches pass ``PRECISION="tf32"``; it does not apply to them).
CONV: dict = {}

if HAVE_TRITON:

    TUNED.update(_dyn_conv_kernel={"tf32": all_configs(_TILE, CONV_TUNED),
                                   "ieee": all_configs(_TILE, CONV_IEEE_TUNED)},
                 _wgrad_kernel=all_configs(_TILE, WGRAD_TUNED))

    @triton.jit
    def _dyn_conv_kernel(x_ptr, w_ptr, y_ptr, job_sample_ptr, job_weight_ptr,
                         H, W, Ci, Co, R,
                         sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                         KS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        job = tl.program_id(2).to(tl.int64)
        s = tl.load(job_sample_ptr + job).to(tl.int64)
        wi = tl.load(job_weight_ptr + job).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = offs_m < H * W
        n_ok = offs_n < Co
        oh = offs_m // W
        ow = offs_m % W
        pix = oh * sxh + ow * sxw
        x_base = x_ptr + s * sxb
        w_base = w_ptr + wi * Co * R
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # One flat K loop over (tap, channel block): the software pipeline stays full
        # across taps instead of draining at the end of every tap's channel loop.
        n_cb = tl.cdiv(Ci, BLOCK_K)
        for step in range(0, KS * KS * n_cb):
            if KS == 1:
                tap = 0
                c0 = step * BLOCK_K
            else:
                tap = step // n_cb
                c0 = (step - tap * n_cb) * BLOCK_K
            dh = tap // KS - KS // 2
            dw = tap % KS - KS // 2
            ih = oh + dh
            iw = ow + dw
            ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            offs_k = c0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < Ci
            a = tl.load(x_base + (pix + (dh * sxh + dw * sxw))[:, None] + offs_k[None, :] * sxc,
                        mask=ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_base + offs_n[None, :] * R + (tap * Ci + offs_k)[:, None],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        y = (y_ptr + job * syb + (oh * syh + ow * syw)[:, None] + offs_n[None, :] * syc)
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    CONV.update(tf32=triton.autotune(configs(_TILE, CONV_TUNED, _INTERPRETER_TILE),
                                     key=_CONV_KEY)(_dyn_conv_kernel),
                ieee=triton.autotune(configs(_TILE, CONV_IEEE_TUNED, _INTERPRETER_TILE),
                                     key=_CONV_KEY)(_dyn_conv_kernel))

    @triton.autotune(configs=configs(_TILE, WGRAD_TUNED, _INTERPRETER_TILE), key=_CONV_KEY)
    @triton.jit
    def _wgrad_kernel(x_ptr, g_ptr, dw_ptr, job_sample_ptr, H, W, Ci, Co, R,
                      sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw, KS: tl.constexpr,
                      PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_ci = tl.program_id(0)
        pid_co = tl.program_id(1)
        jt = tl.program_id(2)
        job = (jt // (KS * KS)).to(tl.int64)
        tap = jt % (KS * KS)
        dh = tap // KS - KS // 2
        dw_ = tap % KS - KS // 2
        s = tl.load(job_sample_ptr + job).to(tl.int64)
        offs_co = pid_co * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_ci = pid_ci * BLOCK_N + tl.arange(0, BLOCK_N)
        co_ok = offs_co < Co
        ci_ok = offs_ci < Ci
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for p0 in range(0, H * W, BLOCK_K):
            offs_p = p0 + tl.arange(0, BLOCK_K)
            p_ok = offs_p < H * W
            oh = offs_p // W
            ow = offs_p % W
            ih = oh + dh
            iw = ow + dw_
            ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(g_ptr + job * sgb + offs_co[:, None] * sgc + (oh * sgh + ow * sgw)[None, :],
                        mask=co_ok[:, None] & p_ok[None, :], other=0.0)
            b = tl.load(x_ptr + s * sxb + (ih * sxh + iw * sxw)[:, None] + offs_ci[None, :] * sxc,
                        mask=ok[:, None] & ci_ok[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        out = dw_ptr + job * Co * R + offs_co[:, None] * R + (tap * Ci + offs_ci)[None, :]
        tl.store(out, acc, mask=co_ok[:, None] & ci_ok[None, :])

    @triton.jit
    def _compose_kernel(base_ptr, leaders_ptr, idx_ptr, scores_ptr, out_ptr,
                        N, Co, R, TOPK,
                        N_BLOCK: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr):
        u = tl.program_id(0).to(tl.int64)
        pid_r = tl.program_id(1)
        pid_o = tl.program_id(2)
        offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        o_ok = offs_o < Co
        r_ok = offs_r < R
        nn = tl.arange(0, N_BLOCK)
        n_ok = nn < N
        alpha = tl.zeros((N_BLOCK, BLOCK_O), dtype=tl.float32)
        for j in range(TOPK):
            leader = tl.load(idx_ptr + u * TOPK + j).to(tl.int64)
            sj = tl.load(scores_ptr + u * TOPK + j).to(tl.float32)
            s = tl.load(leaders_ptr + leader * N * Co + nn[:, None] * Co + offs_o[None, :],
                        mask=n_ok[:, None] & o_ok[None, :], other=0.0).to(tl.float32)
            s = tl.where(n_ok[:, None], s, float("-inf"))
            e = tl.exp(s - tl.max(s, axis=0)[None, :])
            e = tl.where(n_ok[:, None], e, 0.0)
            alpha += sj * e / tl.sum(e, axis=0)[None, :]
        acc = tl.zeros((BLOCK_O, BLOCK_R), dtype=tl.float32)
        tile = offs_o[:, None] * R + offs_r[None, :]
        mask = o_ok[:, None] & r_ok[None, :]
        for n in range(N):
            a_n = tl.sum(tl.where(nn[:, None] == n, alpha, 0.0), axis=0)
            w = tl.load(base_ptr + n * Co * R + tile, mask=mask, other=0.0).to(tl.float32)
            acc += a_n[:, None] * w
        tl.store(out_ptr + u * Co * R + tile, acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _mix_kernel(g0_ptr, bank_ptr, idx_ptr, scores_ptr, out_ptr, SIZE, TOPK,
                    BLOCK: tl.constexpr):
        u = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < SIZE
        acc = tl.load(g0_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        for j in range(TOPK):
            leader = tl.load(idx_ptr + u * TOPK + j).to(tl.int64)
            sj = tl.load(scores_ptr + u * TOPK + j).to(tl.float32)
            acc += sj * tl.load(bank_ptr + leader * SIZE + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + u * SIZE + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _precision(dtype: torch.dtype, precision: str) -> str:
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    return precision if dtype == torch.float32 else "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return interpreted() and dtype != torch.float32


def _i32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32).contiguous()


def to_bank(w: torch.Tensor) -> torch.Tensor:
    """Conv kernels ``[..., Co, Ci, k, k]`` → this backend's bank ``[..., Co, R]`` with
    ``R = (kh, kw, ci)`` (OIHW stored OHWI: a K slice of the implicit GEMM is contiguous)."""
    return w.movedim(-3, -1).flatten(-3)


def dyn_conv(x: torch.Tensor, weight: torch.Tensor, job_sample: torch.Tensor,
             job_weight: torch.Tensor, k: int, precision: str = "ieee",
             same_samples: bool = False, same_weights: bool = False,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``y[j] = conv(x[job_sample[j]], weight[job_weight[j]])`` → ``[J, Co, H, W]``
    (channels-last memory unless ``out`` is given).  See the index contract above; the
    ``same_*`` hints of the torch path are accepted and not needed here."""
    resolve("triton", x, weight, job_sample, job_weight)
    if x.dtype != weight.dtype:
        raise TypeError(f"dyn_conv: x ({x.dtype}) and weight ({weight.dtype}) must share a dtype")
    B, Ci, H, W = x.shape
    NW, Co, R = weight.shape
    if R != k * k * Ci:
        raise ValueError(f"weight bank R={R} does not match k={k}, Ci={Ci}")
    J = job_sample.shape[0]
    weight = weight.contiguous()
    x = to_input_format(x)
    y = output(out, (J, Co, H, W), x.dtype, x.device, contiguous=False,
               memory_format=torch.channels_last)
    if J == 0:
        return y
    grid = lambda meta: (triton.cdiv(Co, meta["BLOCK_N"]), triton.cdiv(H * W, meta["BLOCK_M"]), J)
    prec = _precision(x.dtype, precision)
    CONV[prec][grid](
        x, weight, y, _i32(job_sample), _i32(job_weight), H, W, Ci, Co, R,
        *x.stride(), *y.stride(), KS=k, PRECISION=prec, UPCAST=_upcast(x.dtype))
    return y


def to_input_format(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :data:`INPUT_FORMAT` (no copy when it already is).  The kernels gather one
    pixel's channels per row of an operand tile: contiguous channels (and strides the JIT
    sees divisible by 16) let it use 16-byte asynchronous copies; with NCHW strides every
    element is a separate 2-byte load."""
    return x.contiguous(memory_format=INPUT_FORMAT)


def flip_bank(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Bank of the transposed convolution: ``[NW, Co, (kh, kw, Ci)] → [NW, Ci, (kh', kw', Co)]``
    with ``kh' = k − 1 − kh`` (the input gradient is a convolution with it)."""
    NW, Co, R = weight.shape
    Ci = R // (k * k)
    return weight.view(NW, Co, k, k, Ci).flip(2, 3).permute(0, 4, 2, 3, 1).reshape(NW, Ci, -1)


def _grad_input(grad: torch.Tensor, weight: torch.Tensor, job_sample: torch.Tensor,
                job_weight: torch.Tensor, k: int, num_samples: int,
                precision: str) -> torch.Tensor:
    """``dx[b] = Σ_{j: job_sample[j] = b} conv_transpose(grad[j], weight[job_weight[j]])``."""
    J = grad.shape[0]
    jobs = torch.arange(J, device=grad.device)
    per_job = dyn_conv(grad, flip_bank(weight, k).contiguous(), jobs, job_weight, k, precision)
    out = torch.zeros((num_samples, *per_job.shape[1:]), device=grad.device, dtype=torch.float32)
    out.index_add_(0, job_sample, per_job.float())
    return out.to(grad.dtype).contiguous(memory_format=torch.channels_last)


def _grad_weight(grad: torch.Tensor, x: torch.Tensor, job_sample: torch.Tensor,
                 job_weight: torch.Tensor, k: int, num_weights: int,
                 precision: str) -> torch.Tensor:
    """``dW[w] = Σ_{j: job_weight[j] = w} Σ_pixels grad[j] ⊗ shift(x[job_sample[j]])``
    → ``[NW, Co, R]`` (fp32)."""
    B, Ci, H, W = x.shape
    J, Co = grad.shape[:2]
    R = k * k * Ci
    x, grad = to_input_format(x), to_input_format(grad)
    per_job = torch.empty((J, Co, R), device=x.device, dtype=torch.float32)
    if J:
        grid = lambda meta: (triton.cdiv(Ci, meta["BLOCK_N"]), triton.cdiv(Co, meta["BLOCK_M"]),
                             J * k * k)
        _wgrad_kernel[grid](
            x, grad, per_job, _i32(job_sample), H, W, Ci, Co, R, *x.stride(), *grad.stride(),
            KS=k, PRECISION=_precision(x.dtype, precision), UPCAST=_upcast(x.dtype))
    out = torch.zeros((num_weights, Co, R), device=x.device, dtype=torch.float32)
    return out.index_add_(0, job_weight, per_job)


def dyn_conv_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                      job_sample: torch.Tensor, job_weight: torch.Tensor, k: int,
                      precision: str, need_x: bool, need_w: bool,
                      same_samples: bool = False, same_weights: bool = False
                      ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of :func:`dyn_conv` for ``x`` and ``weight`` (``None`` where not needed):
    the input gradient is a ``dyn_conv`` with the flipped, transposed bank; the weight
    gradient reduces over pixels, one program per (tile, job, tap)."""
    resolve("triton", grad, x, weight)
    dx = _grad_input(grad, weight, job_sample, job_weight, k, x.shape[0],
                     precision) if need_x else None
    dw = _grad_weight(grad, x, job_sample, job_weight, k, weight.shape[0],
                      precision) if need_w else None
    return dx, dw


def compose(base: torch.Tensor, leaders: torch.Tensor, idx: torch.Tensor,
            scores: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mixed routed kernels ``[U, Co, R]`` (see :func:`kernels.cmoe_torch.compose`)."""
    resolve("triton", base, leaders, idx, scores)
    N, Co, R = base.shape
    U, K = idx.shape
    out = output(out, (U, Co, R), base.dtype, base.device)
    if U == 0:
        return out
    BLOCK_O, BLOCK_R = (16, 32) if interpreted() else (32, 128)
    grid = (U, triton.cdiv(R, BLOCK_R), triton.cdiv(Co, BLOCK_O))
    _compose_kernel[grid](base.contiguous(), leaders.contiguous(), _i32(idx),
                          scores.float().contiguous(), out, N, Co, R, K,
                          N_BLOCK=triton.next_power_of_2(N), BLOCK_O=BLOCK_O, BLOCK_R=BLOCK_R,
                          num_warps=4)
    return out


def mix(g0: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor,
        scores: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Folded per-unit kernels ``[U, Co, R]`` (see :func:`kernels.cmoe_torch.mix`)."""
    resolve("triton", g0, bank, idx, scores)
    Co, R = g0.shape
    U, K = idx.shape
    out = output(out, (U, Co, R), bank.dtype, bank.device)
    if U == 0:
        return out
    BLOCK = 1024 if interpreted() else 2048
    grid = (U, triton.cdiv(Co * R, BLOCK))
    _mix_kernel[grid](g0.contiguous(), bank.contiguous(), _i32(idx), scores.float().contiguous(),
                      out, Co * R, K, BLOCK=BLOCK, num_warps=4)
    return out
