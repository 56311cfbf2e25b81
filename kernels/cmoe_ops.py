"""The fused C-MoE primitives as ``torch.library`` custom ops, with autograd.

``unimmad::dyn_conv``, ``unimmad::compose`` and ``unimmad::mix`` (and the gradient op of
``dyn_conv``) take the resolved backend name as an argument; each op body is one lookup
into :data:`IMPLS` — :mod:`kernels.cmoe_torch` or :mod:`kernels.cmoe_triton`, which have
the same function signatures.  Fake (meta) implementations let a model calling them
compile under ``torch.compile`` without graph breaks.

The public functions (:func:`dyn_conv`, :func:`compose`, :func:`mix`, :func:`to_bank`)
take any backend name and resolve it with :func:`kernels.backend.resolve`; they go through
the custom ops only where needed (:func:`kernels.backend.needs_custom_op`: compiling,
tracing, autograd) and call the implementation directly otherwise.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import cmoe_torch, cmoe_triton
from .backend import default_precision, needs_custom_op, resolve

__all__ = ["IMPLS", "dyn_conv", "compose", "mix", "to_bank", "to_input_format"]

#: Implementation of each resolved backend.  The primitives have no separate reference
#: (the paper's formulation is the whole layer, :class:`unimmad.CMoE`), so ``"reference"``
#: runs the stock-torch algebra.
IMPLS = {"torch": cmoe_torch, "triton": cmoe_triton, "reference": cmoe_torch}


def _shape_error(op: str, what: str) -> ValueError:
    return ValueError(f"kernels.cmoe_ops.{op}: {what}")


def _check_tensors(op: str, **tensors: Tensor) -> None:
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"kernels.cmoe_ops.{op}: {name} must be a torch.Tensor, "
                            f"got {type(t).__name__}")


def _is_index(t: Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _check_routing(op: str, idx: Tensor, scores: Tensor, num_rows: int, rows: str) -> None:
    """``idx`` integer and ``scores`` floating, both ``[U, K]`` (values are not read: a range
    check would synchronise the device on every call; callers pass indices < ``num_rows``)."""
    _check_tensors(op, idx=idx, scores=scores)
    if idx.dim() != 2 or tuple(scores.shape) != tuple(idx.shape):
        raise _shape_error(op, f"idx and scores must both be [U, K], got {tuple(idx.shape)} "
                               f"and {tuple(scores.shape)}")
    if not _is_index(idx):
        raise _shape_error(op, f"idx must hold integer indices into the {num_rows} {rows}, "
                               f"got {idx.dtype}")
    if not scores.dtype.is_floating_point:
        raise _shape_error(op, f"scores must be floating point, got {scores.dtype}")
    if idx.shape[1] > 0 and num_rows == 0:
        raise _shape_error(op, f"idx selects from {rows} but there are none")


def _check_dyn_conv(x: Tensor, weight: Tensor, job_sample: Tensor, job_weight: Tensor,
                    k: int) -> None:
    _check_tensors("dyn_conv", x=x, weight=weight, job_sample=job_sample,
                   job_weight=job_weight)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 or k % 2 == 0:
        raise _shape_error("dyn_conv", f"k must be an odd positive int, got {k!r}")
    if x.dim() != 4:
        raise _shape_error("dyn_conv", f"x must be [B, Ci, H, W], got {tuple(x.shape)}")
    if weight.dim() != 3 or weight.shape[2] != x.shape[1] * k * k:
        raise _shape_error("dyn_conv", f"weight must be [NW, Co, Ci*k*k] = [NW, Co, "
                                       f"{x.shape[1] * k * k}] for x {tuple(x.shape)} and "
                                       f"k={k}, got {tuple(weight.shape)}")
    for name, t in (("job_sample", job_sample), ("job_weight", job_weight)):
        if t.dim() != 1 or not _is_index(t):
            raise _shape_error("dyn_conv", f"{name} must be a 1-D integer tensor, got "
                                           f"{tuple(t.shape)} {t.dtype}")
    if job_sample.shape[0] != job_weight.shape[0]:
        raise _shape_error("dyn_conv", f"job_sample ({job_sample.shape[0]} jobs) and "
                                       f"job_weight ({job_weight.shape[0]}) differ in length")


def to_bank(w: Tensor, backend: str = "auto") -> Tensor:
    """Conv kernels ``[..., Co, Ci, k, k]`` → the bank layout ``[..., Co, R]`` of the backend
    that runs on ``w``'s device: ``R = (ci, kh, kw)`` for ``torch`` (OIHW), ``(kh, kw, ci)``
    for ``triton`` (OHWI)."""
    return IMPLS[resolve(backend, w)].to_bank(w)


def to_input_format(x: Tensor, backend: str = "auto") -> Tensor:
    """``x`` in the memory format the backend's :func:`dyn_conv` reads fastest
    (channels-last for ``triton``; ``torch`` takes any): convert a value *before* it enters
    the op, so autograd saves it, and returns its gradient, in that format."""
    return IMPLS[resolve(backend, x)].to_input_format(x)


def _grad_format(x: Tensor) -> torch.memory_format:
    """The memory format of ``dx`` for an input ``x``: channels-last when x is channels-last
    (and not also NCHW-contiguous), else NCHW.  Real and fake implementations use it, so
    compiled graphs see the strides the op returns."""
    if (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


# ----------------------------------------------------------------------------- dyn_conv
def _dyn_conv_body(x: Tensor, weight: Tensor, job_sample: Tensor, job_weight: Tensor, k: int,
                   same_samples: bool, same_weights: bool, backend: str,
                   precision: str) -> Tensor:
    return IMPLS[backend].dyn_conv(x, weight, job_sample, job_weight, k, precision,
                                   same_samples, same_weights)


@torch.library.custom_op("unimmad::dyn_conv", mutates_args=())
def _dyn_conv(x: Tensor, weight: Tensor, job_sample: Tensor, job_weight: Tensor, k: int,
              same_samples: bool, same_weights: bool, backend: str, precision: str) -> Tensor:
    return _dyn_conv_body(x, weight, job_sample, job_weight, k, same_samples, same_weights,
                          backend, precision)


@_dyn_conv.register_fake
def _(x, weight, job_sample, job_weight, k, same_samples, same_weights, backend, precision):
    shape = (job_sample.shape[0], weight.shape[1], x.shape[2], x.shape[3])
    return torch.empty(shape, dtype=x.dtype, device=x.device,
                       memory_format=IMPLS[backend].DYN_CONV_FORMAT)


@torch.library.custom_op("unimmad::dyn_conv_backward", mutates_args=())
def _dyn_conv_backward_op(grad: Tensor, x: Tensor, weight: Tensor, job_sample: Tensor,
                          job_weight: Tensor, k: int, same_samples: bool, same_weights: bool,
                          backend: str, precision: str, need_x: bool,
                          need_w: bool) -> Tuple[Tensor, Tensor]:
    """Gradients of ``dyn_conv`` for x and weight (an empty tensor where not needed)."""
    dx, dw = IMPLS[backend].dyn_conv_backward(grad, x, weight, job_sample, job_weight, k,
                                              precision, need_x, need_w, same_samples,
                                              same_weights)
    dx = dx.to(x.dtype).contiguous(memory_format=_grad_format(x)) if need_x else x.new_empty(0)
    dw = dw.to(weight.dtype).contiguous() if need_w else weight.new_empty(0)
    return dx, dw


@_dyn_conv_backward_op.register_fake
def _(grad, x, weight, job_sample, job_weight, k, same_samples, same_weights, backend, precision,
      need_x, need_w):
    dx = torch.empty_like(x, memory_format=_grad_format(x)) if need_x else x.new_empty(0)
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
    # the incoming gradient in the layout of the op's output (channels-last for triton)
    grad = grad.contiguous(memory_format=IMPLS[ctx.args[3]].DYN_CONV_FORMAT)
    dx, dw = _dyn_conv_backward_op(grad, x, weight, job_sample, job_weight, *ctx.args,
                                   need_x, need_w)
    return (dx if need_x else None), (dw if need_w else None), None, None, None, None, None, None, None


_dyn_conv.register_autograd(_dyn_conv_backward, setup_context=_dyn_conv_setup)


def dyn_conv(x: Tensor, weight: Tensor, job_sample: Tensor, job_weight: Tensor, k: int,
             backend: str = "auto", precision: Optional[str] = None,
             same_samples: bool = False, same_weights: bool = False) -> Tensor:
    """Per-job convolution ``y[j] = conv(x[job_sample[j]], weight[job_weight[j]])``.

    x ``[B, Ci, H, W]`` (NCHW or channels-last), weight ``[NW, Co, R]`` (bank layout of the
    backend, see :func:`to_bank`), job indices ``[J]`` long → ``[J, Co, H, W]``; stride 1,
    zero padding ``k // 2``; shapes and index dtypes are checked (``ValueError`` naming
    the argument), index values are not.  Differentiable in ``x`` and ``weight``.
    ``precision``: fp32 dot precision (default :func:`kernels.backend.default_precision`).
    ``same_samples`` / ``same_weights`` promise the index is ``arange`` (lets the torch
    backend skip a gather).
    """
    _check_dyn_conv(x, weight, job_sample, job_weight, k)
    args = (x, weight, job_sample, job_weight, int(k), bool(same_samples), bool(same_weights),
            resolve(backend, x, weight), precision or default_precision())
    if needs_custom_op(x, weight):
        return _dyn_conv(*args)
    return _dyn_conv_body(*args)


# ----------------------------------------------------------------------------- compose
@torch.library.custom_op("unimmad::compose", mutates_args=())
def _compose(base: Tensor, leaders: Tensor, idx: Tensor, scores: Tensor, backend: str) -> Tensor:
    return IMPLS[backend].compose(base, leaders, idx, scores)


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
    base ``[N, Co, R]`` (any layout of R: the op is elementwise over it), leaders
    ``[L, N, Co]``, idx/scores ``[U, K]`` → ``[U, Co, R]``.  Differentiable in ``base``,
    ``leaders`` and ``scores``.  Shapes and dtypes are checked (``ValueError`` naming the
    argument); ``idx`` values must lie in ``[0, L)`` (not read, to keep the call free of
    device synchronisation)."""
    _check_tensors("compose", base=base, leaders=leaders)
    if base.dim() != 3 or leaders.dim() != 3 or tuple(leaders.shape[1:]) != tuple(base.shape[:2]):
        raise _shape_error("compose", f"base must be [N, Co, R] and leaders [L, N, Co], got "
                                      f"{tuple(base.shape)} and {tuple(leaders.shape)}")
    _check_routing("compose", idx, scores, leaders.shape[0], "leaders")
    resolved = resolve(backend, base, leaders)
    if needs_custom_op(base, leaders, scores):
        return _compose(base, leaders, idx, scores, resolved)
    return IMPLS[resolved].compose(base, leaders, idx, scores)


# ----------------------------------------------------------------------------- mix
@torch.library.custom_op("unimmad::mix", mutates_args=())
def _mix(g0: Tensor, bank: Tensor, idx: Tensor, scores: Tensor, backend: str) -> Tensor:
    return IMPLS[backend].mix(g0, bank, idx, scores)


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
    g = grad.to(acc)
    if ctx.needs_input_grad[3]:   # one gathered [U, Co, R] at a time, not [U, K, Co, R]
        d_scores = torch.stack([(bank.index_select(0, idx[:, j]).to(acc) * g).sum((1, 2))
                                for j in range(idx.shape[1])], 1).to(scores.dtype)
    if ctx.needs_input_grad[1]:
        d_bank = torch.zeros_like(bank, dtype=acc)
        for j in range(idx.shape[1]):
            d_bank.index_add_(0, idx[:, j], g * scores[:, j, None, None].to(acc))
        d_bank = d_bank.to(bank.dtype)
    return d_g0, d_bank, None, d_scores, None


_mix.register_autograd(_mix_backward, setup_context=_mix_setup)


def mix(g0: Tensor, bank: Tensor, idx: Tensor, scores: Tensor, backend: str = "auto") -> Tensor:
    """Folded per-unit kernels ``W[u] = g0 + Σ_j scores[u, j] · bank[idx[u, j]]``:
    g0 ``[Co, R]``, bank ``[L, Co, R]`` → ``[U, Co, R]``; differentiable in all three.
    Shapes and dtypes are checked (``ValueError`` naming the argument); ``idx`` values must
    lie in ``[0, L)`` (not read, to keep the call free of device synchronisation)."""
    _check_tensors("mix", g0=g0, bank=bank)
    if g0.dim() != 2 or bank.dim() != 3 or tuple(bank.shape[1:]) != tuple(g0.shape):
        raise _shape_error("mix", f"g0 must be [Co, R] and bank [L, Co, R], got "
                                  f"{tuple(g0.shape)} and {tuple(bank.shape)}")
    _check_routing("mix", idx, scores, bank.shape[0], "bank rows")
    resolved = resolve(backend, g0, bank)
    if needs_custom_op(g0, bank, scores):
        return _mix(g0, bank, idx, scores, resolved)
    return IMPLS[resolved].mix(g0, bank, idx, scores)
