"""The C-MoE algebra of SPEC §2 in stock PyTorch ops — the ``"torch"`` implementation of
:mod:`kernels.cmoe_ops`, with the same function signatures as :mod:`kernels.cmoe_triton`.

Layouts:

* kernel banks are ``[..., Co, R]`` with ``R = Ci·k·k``; this backend orders R as
  ``(ci, kh, kw)`` (OIHW, what oneDNN/cuDNN convolutions run fastest on), the Triton
  backend as ``(kh, kw, ci)`` (OHWI) — see :func:`to_bank`;
* activations are logical NCHW tensors in any memory format.

``precision`` is accepted for the shared signature: stock convolutions follow
``torch.backends.cudnn.allow_tf32``, the switch :func:`kernels.backend.default_precision`
reads.  ``out=`` buffers are filled by a copy.  ``kernels.cmoe_ops`` wraps these functions as
``torch.library`` custom ops with explicit backward formulas.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .backend import output

__all__ = ["DYN_CONV_FORMAT", "INPUT_FORMAT", "to_bank", "to_input_format", "compose",
           "compose_transposed", "mix", "dyn_conv", "dyn_conv_backward"]

#: Memory format of :func:`dyn_conv`'s output (what the grouped convolution returns).
DYN_CONV_FORMAT = torch.contiguous_format
#: Memory format the convolutions want their inputs in (``None``: any; cuDNN and oneDNN
#: choose their own).
INPUT_FORMAT = None


def to_input_format(x: torch.Tensor) -> torch.Tensor:
    """``x`` as it is (stock convolutions take any memory format)."""
    return x


def _deliver(out: Optional[torch.Tensor], result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    return output(out, result.shape, result.dtype, result.device, contiguous=False).copy_(result)


def to_bank(w: torch.Tensor) -> torch.Tensor:
    """Conv kernels ``[..., Co, Ci, k, k]`` → this backend's bank ``[..., Co, R]`` with
    ``R = (ci, kh, kw)`` (OIHW, a free view)."""
    return w.flatten(-3)


#: Units per chunk of :func:`mix` are chosen so one chunk's gathered kernels stay within
#: this (8 MiB; at least one unit per chunk).
MIX_CHUNK_BYTES = 8 * 2 ** 20


def compose_transposed(base: torch.Tensor, leaders: torch.Tensor, idx: torch.Tensor,
                       scores: torch.Tensor) -> torch.Tensor:
    """:func:`compose` in the layout ``[Co, U, R]`` (unit ``u``'s kernel is ``[:, u]``): one
    batched matmul over output channels, ``α[:, :, o] @ base[:, o]``, that reads the base
    bank once, in place, for all units (fp32 or better)."""
    acc = torch.promote_types(base.dtype, torch.float32)
    p = torch.softmax(leaders[idx].to(acc), dim=2)                  # [U, K, N, Co]
    alpha = (scores.to(acc)[:, :, None, None] * p).sum(1)          # [U, N, Co]
    return torch.bmm(alpha.permute(2, 0, 1).to(base.dtype), base.transpose(0, 1))


def compose(base: torch.Tensor, leaders: torch.Tensor, idx: torch.Tensor,
            scores: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mixed routed kernel of every unit (collapse + MoE-in-MoE).

    ``M[u, o, r] = Σ_n α[u, n, o] · base[n, o, r]`` with
    ``α[u] = Σ_j scores[u, j] · softmax_n(leaders[idx[u, j]])``.
    base ``[N, Co, R]``, leaders ``[L, N, Co]``, idx/scores ``[U, K]`` → ``[U, Co, R]``
    (:func:`compose_transposed`, made unit-major).
    """
    mixed = compose_transposed(base, leaders, idx, scores).transpose(0, 1).contiguous()
    return _deliver(out, mixed)


def mix(g0: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor,
        scores: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Folded per-unit kernel ``W[u] = g0 + Σ_j scores[u, j] · bank[idx[u, j]]``.

    g0 ``[Co, R]``, bank ``[L, Co, R]``, idx/scores ``[U, K]`` → ``[U, Co, R]`` (bank's dtype),
    accumulated in fp32 or better: on the CPU (fp32 / float64 banks) by adding the chosen
    rows in place, elsewhere in chunks of units (gathered kernels of one chunk at most
    :data:`MIX_CHUNK_BYTES`, 8 MiB) without reading the routing on the host.
    """
    U, K = idx.shape
    acc = torch.promote_types(bank.dtype, torch.float32)
    w = torch.empty((U, *g0.shape), dtype=bank.dtype, device=bank.device)
    if bank.device.type == "cpu" and bank.dtype == acc:
        # on the host the routing is at hand: add the bank rows in place, no gathered copy
        rows, s = idx.tolist(), scores.to(torch.float64).tolist()
        for u in range(U):
            w[u].copy_(g0)
            for j in range(K):
                w[u].add_(bank[rows[u][j]], alpha=s[u][j])
        return _deliver(out, w)
    step = max(1, MIX_CHUNK_BYTES // max(1, g0.numel() * bank.element_size()))
    for u0 in range(0, U, step):
        u1 = min(U, u0 + step)
        dst = w[u0:u1] if w.dtype == acc else torch.empty((u1 - u0, *g0.shape), dtype=acc,
                                                          device=bank.device)
        dst.copy_(g0.expand(u1 - u0, *g0.shape))
        for j in range(K):
            dst.addcmul_(bank.index_select(0, idx[u0:u1, j]),
                         scores[u0:u1, j, None, None].to(acc))
        if w.dtype != acc:
            w[u0:u1].copy_(dst)
    return _deliver(out, w)


def _grouped(x, weight, job_sample, job_weight, k, same_samples, same_weights):
    J = job_sample.shape[0]
    xg = x if same_samples else x[job_sample]
    wg = weight if same_weights else weight[job_weight]
    _, ci, H, W = xg.shape
    return xg.reshape(1, J * ci, H, W), wg.reshape(-1, ci, k, k), J


def dyn_conv(x: torch.Tensor, weight: torch.Tensor, job_sample: torch.Tensor,
             job_weight: torch.Tensor, k: int, precision: str = "ieee",
             same_samples: bool = False, same_weights: bool = False,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-job convolution: ``y[j] = conv(x[job_sample[j]], weight[job_weight[j]])``.

    x ``[B, Ci, H, W]``, weight ``[NW, Co, Ci·k·k]`` (:func:`to_bank`) → ``[J, Co, H, W]``; stride 1,
    zero padding ``k // 2``.  One grouped convolution over all jobs (``groups = J``), or one
    batched matmul for ``k = 1``; the ``same_*`` hints say the index is ``arange`` so no
    gather copy is made.
    """
    if k == 1:
        xg = x if same_samples else x[job_sample]
        wg = weight if same_weights else weight[job_weight]
        J, ci, H, W = xg.shape
        return _deliver(out, torch.matmul(wg, xg.reshape(J, ci, H * W)).view(J, -1, H, W))
    xg, wg, J = _grouped(x, weight, job_sample, job_weight, k, same_samples, same_weights)
    y = F.conv2d(xg, wg, padding=k // 2, groups=J)
    return _deliver(out, y.view(J, -1, *y.shape[2:]))


def dyn_conv_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                      job_sample: torch.Tensor, job_weight: torch.Tensor, k: int,
                      precision: str, need_x: bool, need_w: bool,
                      same_samples: bool = False, same_weights: bool = False
                      ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of :func:`dyn_conv` for ``x`` and ``weight`` (``None`` where not needed),
    both from one ``convolution_backward`` of the grouped convolution."""
    xg, wg, J = _grouped(x, weight, job_sample, job_weight, k, same_samples, same_weights)
    g = grad.reshape(1, -1, *grad.shape[2:])
    gx, gw, _ = torch.ops.aten.convolution_backward(
        g, xg, wg, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], J,
        [need_x, need_w, False])
    dx = dw = None
    if need_x:
        gx = gx.view(J, -1, *gx.shape[2:])
        dx = gx if same_samples else torch.zeros_like(x).index_add_(0, job_sample, gx)
    if need_w:
        gw = gw.reshape(J, *weight.shape[1:])
        dw = gw if same_weights else torch.zeros_like(weight).index_add_(0, job_weight, gw)
    return dx, dw
