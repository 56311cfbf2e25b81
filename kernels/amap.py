"""Fused anomaly map, image score and decompression loss (SPEC §1 "Inference", eq. 3–4):
the public functions.

They have the reference functions' semantics, input contract and messages (the checks of
:mod:`unimmad.scoring` and :mod:`unimmad.losses` are called here too) plus a ``backend=``
switch (:mod:`kernels.backend`; ``"reference"`` calls the plain functions of
:mod:`unimmad`):

* :func:`anomaly_map` — as :func:`unimmad.anomaly_map` (modes "mean" and "joint");
* :func:`image_score` — as :func:`unimmad.image_score`;
* :func:`decompression_loss` — as :func:`unimmad.decompression_loss`, differentiable in
  the predictions (and the priors, when they need a gradient) through an explicit
  backward that reads u and p once and writes only the gradients.

The ops themselves are in :mod:`kernels.amap_ops`; the implementations in
:mod:`kernels.amap_torch` and :mod:`kernels.amap_triton`.  ``"auto"`` sends float64 inputs
to the torch path (the Triton kernels take fp32, bf16 and fp16); ``"triton"`` with float64
raises ``TypeError``.  Out-of-range ``unit_to_sample`` values are reported on the CPU; on
CUDA they are not checked (that would need a host sync) and such units are ignored by the
map.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from unimmad import losses as ref_losses
from unimmad import scoring as ref_scoring

from . import amap_ops
from .backend import resolve

__all__ = ["anomaly_map", "image_score", "decompression_loss"]


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
    ref_scoring.check_features(priors, predictions, unit_to_sample)
    size = ref_scoring.check_image_size(image_size)
    mode, sigma, kernel_size = ref_scoring.check_blur(mode, sigma, kernel_size)
    B = ref_scoring.check_num_samples(unit_to_sample, num_samples)
    resolved = resolve(backend, *priors, *predictions)
    if resolved == "reference":
        return ref_scoring.anomaly_map(priors, predictions, unit_to_sample, size, B, mode,
                                       sigma, kernel_size)
    out = amap_ops.anomaly_map(list(priors), list(predictions), unit_to_sample, B, size[0],
                               size[1], mode, sigma, kernel_size, resolved)
    return ref_scoring.check_finite_output(out, "anomaly map")


def image_score(anomaly_map: Tensor, top_fraction: float = 0.001,
                backend: str = "auto") -> Tensor:
    """Image score ``[B]``: mean of the top ``max(1, ⌊H·W·top_fraction⌋)`` pixels of each
    ``[B, H, W]`` map — :func:`unimmad.image_score` with a ``backend=`` switch (the Triton
    score sorts blocks of the map on the GPU; ``torch.topk`` elsewhere)."""
    top_fraction = ref_scoring.check_score_input(anomaly_map, top_fraction)
    resolved = resolve(backend, anomaly_map)
    if resolved == "reference":
        return ref_scoring.image_score(anomaly_map, top_fraction)
    if anomaly_map.shape[0] == 0:                   # no maps: no scores (as the reference)
        return anomaly_map.new_empty((0,))
    k = ref_scoring.top_k_count(anomaly_map.shape[1] * anomaly_map.shape[2], top_fraction)
    return amap_ops.image_score(anomaly_map, k, resolved)


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
    ``max(A, 0)^γ``, as the reference.
    """
    gamma = ref_losses.check_loss_inputs(priors, predictions, unit_to_sample, sample_weight,
                                         gamma)
    resolved = resolve(backend, *priors, *predictions)
    if resolved == "reference":
        return ref_losses.decompression_loss(priors, predictions, unit_to_sample,
                                             sample_weight, gamma)
    levels = []
    for u, p in zip(priors, predictions):
        per_unit, _ = amap_ops.focal_cosine(u, p, gamma, resolved)
        if sample_weight is not None:
            per_unit = per_unit * sample_weight.to(per_unit.dtype)[unit_to_sample]
        levels.append(per_unit.mean())
    return (ref_scoring.check_finite_output(torch.stack(levels).mean(), "decompression loss",
                                            ref_losses.overflow_hint(gamma)), levels)

