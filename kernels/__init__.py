"""Fast paths for UniMMAD: fused C-MoE ops (Triton on CUDA, stock torch elsewhere) and
drop-in layers.

* :class:`FastCMoE` — drop-in :class:`unimmad.CMoE` (collapse + fold algebra, SPEC §2).
* :func:`accelerate` — swap a model's C-MoEs (and a UniMMAD's map, score and loss
  functions) in place (also ``unimmad.accelerate``).
* :func:`anomaly_map`, :func:`image_score`, :func:`decompression_loss` — the fused
  anomaly map (paper eq. 4), image score and L_Dec (eq. 3), see :mod:`kernels.amap`.
* :func:`dynamic_filter`, :mod:`kernels.ops` (``dyn_conv``, ``compose``, ``mix``) — the
  fused primitives, registered as ``torch.library`` custom ops.

Set ``TRITON_INTERPRET=1`` before importing this package to run the Triton kernels on the
CPU interpreter; ``UNIMMAD_AUTOTUNE=0`` pins one kernel configuration.
"""
from . import ops
from .accelerate import accelerate
from .amap import anomaly_map, decompression_loss, image_score
from .cmoe import FastCMoE, dynamic_filter, folded_banks

__all__ = ["FastCMoE", "accelerate", "anomaly_map", "decompression_loss", "dynamic_filter",
           "folded_banks", "image_score", "ops"]
