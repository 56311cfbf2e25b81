"""The fused anomaly map, image score and decompression loss as ``torch.library`` custom
ops, with autograd for the loss.

``unimmad::anomaly_map``, ``unimmad::image_score``, ``unimmad::focal_cosine`` (per-unit loss
terms and backward coefficients, differentiable) and ``unimmad::focal_cosine_grad`` take
the resolved backend name as an argument; each op body is one lookup into :data:`IMPLS` —
:mod:`kernels.amap_torch` or :mod:`kernels.amap_triton`, which have the same function
signatures.  Fake implementations let ``torch.compile`` trace through them.  Inputs are
validated by the public functions of :mod:`kernels.amap`.  The public functions here go
through the custom ops only where needed (:func:`kernels.backend.needs_custom_op`) and
call the implementation directly otherwise.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from unimmad.scoring import compute_dtype

from . import amap_torch, amap_triton
from .backend import needs_custom_op

__all__ = ["IMPLS", "anomaly_map", "image_score", "focal_cosine"]

#: Implementation of each resolved backend (``"reference"`` never reaches these ops: it is
#: the plain functions of :mod:`unimmad`).
IMPLS = {"torch": amap_torch, "triton": amap_triton}


# ----------------------------------------------------------------------------- map
def _anomaly_map_body(priors, predictions, unit_to_sample, num_samples, height, width, mode,
                      sigma, kernel_size, backend):
    out = IMPLS[backend].anomaly_map(priors, predictions, unit_to_sample, num_samples,
                                     (height, width), mode, sigma, kernel_size)
    return out.to(compute_dtype(*priors, *predictions))


@torch.library.custom_op("unimmad::anomaly_map", mutates_args=())
def _anomaly_map(priors: List[Tensor], predictions: List[Tensor], unit_to_sample: Tensor,
                 num_samples: int, height: int, width: int, mode: str, sigma: float,
                 kernel_size: int, backend: str) -> Tensor:
    return _anomaly_map_body(priors, predictions, unit_to_sample, num_samples, height, width,
                             mode, sigma, kernel_size, backend)


def anomaly_map(priors: List[Tensor], predictions: List[Tensor], unit_to_sample: Tensor,
                num_samples: int, height: int, width: int, mode: str, sigma: float,
                kernel_size: int, backend: str) -> Tensor:
    """The blurred map ``[B, H, W]`` (float32; float64 for float64 inputs); through the
    custom op only where needed (:func:`kernels.backend.needs_custom_op`)."""
    args = (priors, predictions, unit_to_sample, num_samples, height, width, mode, sigma,
            kernel_size, backend)
    return (_anomaly_map if needs_custom_op(*priors, *predictions)
            else _anomaly_map_body)(*args)


@_anomaly_map.register_fake
def _(priors, predictions, unit_to_sample, num_samples, height, width, mode, sigma,
      kernel_size, backend):
    dtype = compute_dtype(*priors, *predictions)
    return priors[0].new_empty((num_samples, height, width), dtype=dtype)


# ----------------------------------------------------------------------------- score
def _image_score_body(anomaly_map, k, backend):
    return IMPLS[backend].image_score(anomaly_map, k).to(anomaly_map.dtype)


@torch.library.custom_op("unimmad::image_score", mutates_args=())
def _image_score(anomaly_map: Tensor, k: int, backend: str) -> Tensor:
    return _image_score_body(anomaly_map, k, backend)


def image_score(anomaly_map: Tensor, k: int, backend: str) -> Tensor:
    """Mean of the top ``k`` pixels of each map, in the map's dtype (through the custom op
    only where needed)."""
    return (_image_score if needs_custom_op(anomaly_map) else _image_score_body)(
        anomaly_map, k, backend)


@_image_score.register_fake
def _(anomaly_map, k, backend):
    return anomaly_map.new_empty((anomaly_map.shape[0],))


# ----------------------------------------------------------------------------- loss
def _focal_cosine_body(u, p, gamma, backend):
    m, coef = IMPLS[backend].focal_cosine_forward(u, p, gamma)
    dtype = compute_dtype(u, p)
    return m.to(dtype), coef.to(dtype)


@torch.library.custom_op("unimmad::focal_cosine", mutates_args=())
def _focal_cosine(u: Tensor, p: Tensor, gamma: float, backend: str) -> Tuple[Tensor, Tensor]:
    return _focal_cosine_body(u, p, gamma, backend)


def focal_cosine(u: Tensor, p: Tensor, gamma: float, backend: str) -> Tuple[Tensor, Tensor]:
    """Per-unit ``mean_hw(sg(A)^γ·A)`` ``[U]`` and the backward coefficients ``[3, U, h, w]``
    (see :func:`kernels.amap_torch.focal_cosine_forward`); differentiable through the
    custom op, called directly where autograd does not record it."""
    return (_focal_cosine if needs_custom_op(u, p) else _focal_cosine_body)(
        u, p, gamma, backend)


@_focal_cosine.register_fake
def _(u, p, gamma, backend):
    dtype = compute_dtype(u, p)
    U, _, H, W = u.shape
    return u.new_empty((U,), dtype=dtype), u.new_empty((3, U, H, W), dtype=dtype)


@torch.library.custom_op("unimmad::focal_cosine_grad", mutates_args=())
def _focal_cosine_grad(g: Tensor, ca: Tensor, cb: Tensor, x: Tensor, y: Tensor,
                       backend: str) -> Tensor:
    return IMPLS[backend].focal_cosine_grad(g, ca, cb, x, y)


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
