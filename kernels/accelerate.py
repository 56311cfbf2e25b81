"""``accelerate(model)``: swap a UniMMAD model's C-MoEs for the fused ones, in place, and
(for a :class:`unimmad.UniMMAD`) its anomaly-map, image-score and decompression-loss
functions for the fused ones of :mod:`kernels.amap`."""
from __future__ import annotations

import functools

from torch import nn

from unimmad.models.cmoe import CMoE
from unimmad.models.model import UniMMAD

from .amap import anomaly_map as fused_anomaly_map
from .amap import decompression_loss as fused_decompression_loss
from .amap import image_score as fused_image_score
from .backend import check_name
from .cmoe import FastCMoE

__all__ = ["accelerate"]


def accelerate(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Turn every :class:`unimmad.CMoE` inside ``model`` into a :class:`FastCMoE` (same
    parameter objects, so existing optimizers keep working) and return ``model``.

    When ``model`` is a :class:`unimmad.UniMMAD`, its ``anomaly_map_fn``,
    ``image_score_fn`` and ``decompression_loss_fn`` become :func:`kernels.anomaly_map`,
    :func:`kernels.image_score` and :func:`kernels.decompression_loss` bound to
    ``backend`` (same call signatures as the reference functions)."""
    check_name(backend)
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate needs an nn.Module, got {type(model).__name__}")
    found = 0
    for module in model.modules():
        if isinstance(module, CMoE):
            FastCMoE.convert_(module, backend)
            found += 1
    if not found:
        raise ValueError("accelerate: the model holds no unimmad.CMoE to replace")
    if isinstance(model, UniMMAD):
        model.anomaly_map_fn = functools.partial(fused_anomaly_map, backend=backend)
        model.image_score_fn = functools.partial(fused_image_score, backend=backend)
        model.decompression_loss_fn = functools.partial(fused_decompression_loss,
                                                        backend=backend)
    return model
