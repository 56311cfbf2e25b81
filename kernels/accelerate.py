"""``accelerate(model)``: swap a UniMMAD model's C-MoEs for the fused ones, in place, and
(for a :class:`unimmad.UniMMAD`) its anomaly-map, image-score and decompression-loss
functions for the fused ones of :mod:`kernels.amap`."""
from __future__ import annotations

import functools
from typing import Dict, Optional

from torch import nn

from unimmad.models.cmoe import CMoE
from unimmad.models.model import UniMMAD

from .amap import anomaly_map as fused_anomaly_map
from .amap import decompression_loss as fused_decompression_loss
from .amap import image_score as fused_image_score
from .backend import check_name
from .cmoe import FastCMoE
from .cmoe_cache import KernelCache

__all__ = ["accelerate", "cache_info"]


def accelerate(model: nn.Module, backend: str = "auto", cache: str = "none",
               cache_mb: Optional[float] = None) -> nn.Module:
    """Turn every :class:`unimmad.CMoE` inside ``model`` into a :class:`FastCMoE` (same
    parameter objects, so existing optimizers keep working) and return ``model``.

    ``cache`` is the memory policy of the folded kernels (:mod:`kernels.cmoe_cache`):
    ``"none"`` (default: folded on the fly, never more memory than the reference),
    ``"bounded"`` (the most recently routed leaders within ``cache_mb`` MB for the whole
    model, one cache shared by all its C-MoEs) or ``"all"``.

    When ``model`` is a :class:`unimmad.UniMMAD`, its ``anomaly_map_fn``,
    ``image_score_fn`` and ``decompression_loss_fn`` become :func:`kernels.anomaly_map`,
    :func:`kernels.image_score` and :func:`kernels.decompression_loss` bound to
    ``backend`` (same call signatures as the reference functions)."""
    check_name(backend)
    shared = KernelCache(cache, cache_mb)
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate needs an nn.Module, got {type(model).__name__}")
    found = 0
    for module in model.modules():
        if isinstance(module, CMoE):
            FastCMoE.convert_(module, backend, shared)
            found += 1
    if not found:
        raise ValueError("accelerate: the model holds no unimmad.CMoE to replace")
    if isinstance(model, UniMMAD):
        model.anomaly_map_fn = functools.partial(fused_anomaly_map, backend=backend)
        model.image_score_fn = functools.partial(fused_image_score, backend=backend)
        model.decompression_loss_fn = functools.partial(fused_decompression_loss,
                                                        backend=backend)
    return model


def cache_info(model: nn.Module) -> Dict[str, object]:
    """Memory policy and bytes held by the folded-kernel caches of ``model``'s
    :class:`FastCMoE` layers: ``{"policy", "budget_mb", "bytes", "layers"}`` (``policy`` is
    ``"mixed"`` when the layers differ; ``bytes`` counts each shared cache once)."""
    layers = [m for m in model.modules() if isinstance(m, FastCMoE)]
    caches = {id(m.kernel_cache): m.kernel_cache for m in layers}
    policies = {c.policy for c in caches.values()}
    budgets = {c.budget_mb for c in caches.values()}
    return {"policy": policies.pop() if len(policies) == 1 else ("mixed" if policies else None),
            "budget_mb": budgets.pop() if len(budgets) == 1 else None,
            "bytes": sum(c.nbytes for c in caches.values()), "layers": len(layers)}
