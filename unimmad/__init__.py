"""UniMMAD: unified multi-modal, multi-class anomaly detection (reference PyTorch model).

Public API::

    from unimmad import UniMMADConfig, UniMMAD, CMoE, anomaly_map, image_score, accelerate

Layering: the core (``config``, ``checks``, ``models``, ``scoring``, ``losses``) never
imports :mod:`kernels`; :mod:`kernels` builds on the core; ``engine``, ``bench`` and ``cli``
import both.  This façade imports the core first and then re-exports
:func:`kernels.accelerate` (``unimmad.accelerate``).
"""
from .config import UniMMADConfig
from .losses import decompression_loss, moe_anneal_factor
from .models import (CMoE, CMoEAux, UniMMAD, UniMMADOutput, WideResNet, load_backbone_weights,
                     pack_units, wide_resnet50_2)
from .scoring import anomaly_map, cosine_anomaly, gaussian_blur, image_score

__version__ = "0.1.0"

# After the core: kernels imports unimmad.models / scoring / losses.
from kernels.accelerate import accelerate  # noqa: E402


__all__ = [
    "UniMMADConfig", "UniMMAD", "UniMMADOutput", "CMoE", "CMoEAux", "WideResNet",
    "wide_resnet50_2", "load_backbone_weights", "pack_units", "anomaly_map", "image_score",
    "cosine_anomaly", "gaussian_blur", "decompression_loss", "moe_anneal_factor",
    "accelerate", "__version__",
]
