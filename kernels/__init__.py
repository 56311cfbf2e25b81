"""Fast paths for UniMMAD: fused C-MoE ops and anomaly-map ops (Triton on CUDA, stock torch
elsewhere) and drop-in layers.  Builds on the reference package :mod:`unimmad` (imported
first: the core never imports this package).

* :class:`FastCMoE` — drop-in :class:`unimmad.CMoE` (collapse + fold algebra, SPEC §2).
* :func:`accelerate` — swap a model's C-MoEs (and a UniMMAD's map, score and loss
  functions) in place (also ``unimmad.accelerate``), with a memory policy for the folded
  kernels (:mod:`kernels.cmoe_cache`; :func:`cache_info` reports what the caches hold).
* :func:`anomaly_map`, :func:`image_score`, :func:`decompression_loss` — the fused
  anomaly map (paper eq. 4), image score and L_Dec (eq. 3).
* :mod:`kernels.cmoe_ops` (``dyn_conv``, ``compose``, ``mix``) and :mod:`kernels.amap_ops`
  — the fused primitives, registered as ``torch.library`` custom ops.
* :mod:`kernels.backend` — the ``backend=`` switch (``"auto"``, ``"triton"``, ``"torch"``,
  ``"reference"``), resolved in one place.

Layout, the same for each op (``cmoe``, ``amap``): ``<op>_triton.py`` (Triton kernels +
launchers, index contract in the header), ``<op>_torch.py`` (stock torch, same function
signatures), ``<op>_ops.py`` (custom ops + autograd, one lookup per op), ``<op>.py`` (the
public layer or functions).

Set ``TRITON_INTERPRET=1`` before importing this package to run the Triton kernels on the
CPU interpreter; ``UNIMMAD_AUTOTUNE=0`` pins one kernel configuration.
"""
import unimmad  # noqa: F401  (the core first; it re-exports accelerate from here)

from . import amap_ops, backend, cmoe_cache, cmoe_ops
from .accelerate import accelerate, cache_info
from .amap import anomaly_map, decompression_loss, image_score
from .backend import BACKENDS
from .cmoe import FastCMoE

__all__ = ["FastCMoE", "accelerate", "cache_info", "anomaly_map", "decompression_loss",
           "image_score", "cmoe_ops", "cmoe_cache", "amap_ops", "backend", "BACKENDS"]
