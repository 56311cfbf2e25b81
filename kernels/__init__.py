"""Fast paths for UniMMAD: fused C-MoE ops (Triton on CUDA, stock torch elsewhere) and
drop-in layers.

* :class:`FastCMoE` — drop-in :class:`unimmad.CMoE` (collapse + fold algebra, SPEC §2).
* :func:`accelerate` — swap a model's C-MoEs in place (also ``unimmad.accelerate``).
* :func:`dynamic_filter`, :mod:`kernels.ops` (``dyn_conv``, ``compose``, ``mix``) — the
  fused primitives, registered as ``torch.library`` custom ops.

Set ``TRITON_INTERPRET=1`` before importing this package to run the Triton kernels on the
CPU interpreter; ``UNIMMAD_AUTOTUNE=0`` pins one kernel configuration.
"""
from . import ops
from .accelerate import accelerate
from .cmoe import FastCMoE, dynamic_filter, folded_banks

__all__ = ["FastCMoE", "accelerate", "dynamic_filter", "folded_banks", "ops"]
