"""The fused C-MoE primitives as ``torch.library`` custom ops, with autograd.

``unimmad::dyn_conv``, ``unimmad::compose`` and ``unimmad::mix`` (and the gradient ops
they use) dispatch on a ``backend`` argument — ``"torch"`` (:mod:`kernels.torch_impl`) or
``"triton"`` (:mod:`kernels.triton_impl`) — and have fake (meta) implementations, so a
model calling them compiles under ``torch.compile`` without graph breaks.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from . import torch_impl, triton_impl

__all__ = ["dyn_conv", "compose", "mix", "resolve_backend", "kernel_backend",
           "default_precision", "to_bank", "BACKENDS"]

BACKENDS = ("auto", "triton", "torch", "reference")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` → ``triton`` on CUDA tensors, ``torch`` elsewhere.  ``triton`` where it
    cannot run raises a clear ``RuntimeError`` (never a silent fallback)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_impl.HAVE_TRITON else "torch"
    if backend == "triton":
        if not triton_impl.HAVE_TRITON:
            raise RuntimeError("backend='triton' needs the triton package (Linux)")
        if device.type != "cuda" and not triton_impl.INTERPRET:
            raise RuntimeError(
                f"backend='triton' cannot run on {device.type} tensors: it needs CUDA (or "
                "TRITON_INTERPRET=1 set before importing kernels, for the CPU interpreter); "
                "use backend='torch' or 'auto'")
    return backend


def kernel_backend(backend: str, device: torch.device) -> str:
    """The implementation a fused op runs: :func:`resolve_backend`, with ``"reference"``
    (meaningful for whole layers) served by the torch implementation."""
    backend = resolve_backend(backend, device)
    return "torch" if backend == "reference" else backend


def to_bank(w: Tensor, backend: str) -> Tensor:
    """Conv kernels ``[..., Co, Ci, k, k]`` → the backend's bank layout ``[..., Co, R]``:
    ``R = (ci, kh, kw)`` for ``torch`` (OIHW), ``(kh, kw, ci)`` for ``triton`` (OHWI)."""
    if backend == "triton":
        return w.movedim(-3, -1).flatten(-3)
    return w.flatten(-3)


def default_precision() -> str:
    """fp32 dot precision of the Triton kernels: ``"tf32"`` when cuDNN convolutions may use
    TF32 (``torch.backends.cudnn.allow_tf32``, PyTorch's default), else ``"ieee"``."""
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


# ----------------------------------------------------------------------------- dyn_conv
@torch.library.custom_op("unimmad::dyn_conv", mutates_args=())
def _dyn_conv(x: Tensor, weight: Tensor, job_sample: Tensor, job_weight: Tensor, k: int,
              same_samples: bool, same_weights: bool, backend: str, precision: str) -> Tensor:
    if backend == "triton":
        return triton_impl.dyn_conv(x, weight, job_sample, job_weight, k, precision)
    return torch_impl.dyn_conv(x, weight, job_sample, job_weight, k, same_samples,
                               same_weights)


@_dyn_conv.register_fake
def _(x, weight, job_sample, job_weight, k, same_samples, same_weights, backend, precision):
    shape = (job_sample.shape[0], weight.shape[1], x.shape[2], x.shape[3])
    fmt = torch.channels_last if backend == "triton" else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


@torch.library.custom_op("unimmad::dyn_conv_backward", mutates_args=())
def _dyn_conv_backward_op(grad: Tensor, x: Tensor, weight: Tensor, job_sample: Tensor,
                          job_weight: Tensor, k: int, same_samples: bool, same_weights: bool,
                          backend: str, precision: str, need_x: bool,
                          need_w: bool) -> Tuple[Tensor, Tensor]:
    """Gradients of ``dyn_conv`` for x and weight (an empty tensor where not needed)."""
    if backend == "triton":
        dx = dw = None
        if need_x:
            dx = triton_impl.dyn_conv_grad_input(grad, weight, job_sample, job_weight, k,
                                                 x.shape[0], precision)
        if need_w:
            dw = triton_impl.dyn_conv_grad_weight(grad, x, job_sample, job_weight, k,
                                                  weight.shape[0], precision)
    else:
        dx, dw = torch_impl.dyn_conv_backward(grad, x, weight, job_sample, job_weight, k,
                                              need_x, need_w, same_samples, same_weights)
    dx = dx.to(x.dtype).contiguous() if need_x else x.new_empty(0)
    dw = dw.to(weight.dtype).contiguous() if need_w else weight.new_empty(0)
    return dx, dw


@_dyn_conv_backward_op.register_fake
def _(grad, x, weight, job_sample, job_weight, k, same_samples, same_weights, backend, precision,
      need_x, need_w):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty(0)
    dw = (torch.empty_like(weight, memory_format=torch.contiguous_format) if need_w
          else weight.new_empty(0))
    return dx, dw


def _dyn_conv_setup(ctx, inputs, output):
    x, weight, job_sample, job_weight, k, same_s, same_w, backend, precision = inputs
    ctx.save_for_backward(x, weight, job_sample, job_weight)
    ctx.args = (k, same_s, same_w, backend, precision)


def _dyn_conv_backward(ctx, grad):
    x, weight, job_sample, job_weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dw = _dyn_conv_backward_op(grad.contiguous(), x, weight, job_sample, job_weight,
                                   *ctx.args, need_x, need_w)
    return (dx if need_x else None), (dw if need_w else None), None, None, None, None, None, None, None


_dyn_conv.register_autograd(_dyn_conv_backward, setup_context=_dyn_conv_setup)


def dyn_conv(x: Tensor, weight: Tensor, job_sample: Tensor, job_weight: Tensor, k: int,
             backend: str = "auto", precision: str | None = None,
             same_samples: bool = False, same_weights: bool = False) -> Tensor:
    """Per-job convolution ``y[j] = conv(x[job_sample[j]], weight[job_weight[j]])``.

    x ``[B, Ci, H, W]`` (NCHW or channels-last), weight ``[NW, Co, R]`` (bank layout of the
    backend, see :func:`to_bank`),
    job indices ``[J]`` long → ``[J, Co, H, W]``; stride 1, zero padding ``k // 2``.
    Differentiable in ``x`` and ``weight``.  ``same_samples``/``same_weights`` promise the
    index is ``arange`` (lets the torch backend skip a gather).
    """
    return _dyn_conv(x, weight, job_sample, job_weight, int(k), bool(same_samples),
                     bool(same_weights), kernel_backend(backend, x.device),
                     precision or default_precision())


# ----------------------------------------------------------------------------- compose
@torch.library.custom_op("unimmad::compose", mutates_args=())
def _compose(base: Tensor, leaders: Tensor, idx: Tensor, scores: Tensor, backend: str) -> Tensor:
    if backend == "triton":
        return triton_impl.compose(base, leaders, idx, scores)
    return torch_impl.compose(base, leaders, idx, scores)


@_compose.register_fake
def _(base, leaders, idx, scores, backend):
    return base.new_empty((idx.shape[0], base.shape[1], base.shape[2]))


def _compose_setup(ctx, inputs, output):
    base, leaders, idx, scores, _ = inputs
    ctx.save_for_backward(base, leaders, idx, scores)


def _compose_backward(ctx, grad):
    base, leaders, idx, scores = ctx.saved_tensors
    acc = torch.promote_types(base.dtype, torch.float32)
    g = grad.to(acc)
    p = torch.softmax(leaders[idx].to(acc), dim=2)                 # [U, K, N, Co]
    d_alpha = torch.einsum("nor,uor->uno", base.to(acc), g)        # [U, N, Co]
    d_base = d_leaders = d_scores = None
    if ctx.needs_input_grad[0]:
        alpha = (scores.to(acc)[:, :, None, None] * p).sum(1)
        d_base = torch.einsum("uno,uor->nor", alpha, g).to(base.dtype)
    if ctx.needs_input_grad[3]:
        d_scores = (p * d_alpha[:, None]).sum((2, 3)).to(scores.dtype)
    if ctx.needs_input_grad[1]:
        dp = scores.to(acc)[:, :, None, None] * d_alpha[:, None]   # [U, K, N, Co]
        dlogit = p * (dp - (p * dp).sum(2, keepdim=True))
        d_leaders = torch.zeros_like(leaders, dtype=acc).index_add_(
            0, idx.reshape(-1), dlogit.reshape(-1, *dlogit.shape[2:])).to(leaders.dtype)
    return d_base, d_leaders, None, d_scores, None


_compose.register_autograd(_compose_backward, setup_context=_compose_setup)


def compose(base: Tensor, leaders: Tensor, idx: Tensor, scores: Tensor,
            backend: str = "auto") -> Tensor:
    """Mixed routed kernel per unit (MoE-in-MoE composition + collapse of the top-K):
    base ``[N, Co, R]`` (any layout of R: the op is elementwise over it), leaders ``[L, N, Co]``, idx/scores ``[U, K]`` → ``[U, Co, R]``.
    Differentiable in ``base``, ``leaders`` and ``scores``."""
    return _compose(base, leaders, idx, scores, kernel_backend(backend, base.device))


# ----------------------------------------------------------------------------- mix
@torch.library.custom_op("unimmad::mix", mutates_args=())
def _mix(g0: Tensor, bank: Tensor, idx: Tensor, scores: Tensor, backend: str) -> Tensor:
    if backend == "triton":
        return triton_impl.mix(g0, bank, idx, scores)
    return torch_impl.mix(g0, bank, idx, scores)


@_mix.register_fake
def _(g0, bank, idx, scores, backend):
    return bank.new_empty((idx.shape[0], *g0.shape))


def _mix_setup(ctx, inputs, output):
    g0, bank, idx, scores, _ = inputs
    ctx.save_for_backward(bank, idx, scores)


def _mix_backward(ctx, grad):
    bank, idx, scores = ctx.saved_tensors
    d_g0 = d_bank = d_scores = None
    if ctx.needs_input_grad[0]:
        d_g0 = grad.sum(0)
    acc = torch.promote_types(bank.dtype, torch.float32)
    if ctx.needs_input_grad[3]:
        d_scores = torch.einsum("ujor,uor->uj", bank[idx].to(acc), grad.to(acc)).to(scores.dtype)
    if ctx.needs_input_grad[1]:
        contrib = scores.to(acc)[:, :, None, None] * grad.to(acc)[:, None]
        d_bank = torch.zeros_like(bank, dtype=acc).index_add_(
            0, idx.reshape(-1), contrib.reshape(-1, *grad.shape[1:])).to(bank.dtype)
    return d_g0, d_bank, None, d_scores, None


_mix.register_autograd(_mix_backward, setup_context=_mix_setup)


def mix(g0: Tensor, bank: Tensor, idx: Tensor, scores: Tensor, backend: str = "auto") -> Tensor:
    """Folded per-unit kernels ``W[u] = g0 + Σ_j scores[u, j] · bank[idx[u, j]]``:
    g0 ``[Co, R]``, bank ``[L, Co, R]`` → ``[U, Co, R]``; differentiable in all three."""
    return _mix(g0, bank, idx, scores, kernel_backend(backend, bank.device))
