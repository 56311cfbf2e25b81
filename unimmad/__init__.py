"""UniMMAD: unified multi-modal, multi-class anomaly detection (reference PyTorch model).

Public API::

    from unimmad import UniMMADConfig, UniMMAD, CMoE, anomaly_map, image_score, accelerate
    from unimmad import load_release_checkpoint   # the authors' released weights

Layering: the core (``config``, ``checks``, ``models``, ``scoring``, ``losses``) never
imports :mod:`kernels`; :mod:`kernels` builds on the core; ``engine``, ``bench`` and ``cli``
import both.  This façade imports the core first and then re-exports
:func:`kernels.accelerate` (``unimmad.accelerate``).
"""
from .config import UniMMADConfig
from .losses import decompression_loss, moe_anneal_factor
from .models import (CMoE, CMoEAux, UniMMAD, UniMMADOutput, WideResNet, load_backbone_weights,
                     pack_units, wide_resnet50_2)
from .release import (cmoe_state_dict_from_release, cmoe_state_dict_to_release,
                      load_release_checkpoint)
from .scoring import anomaly_map, cosine_anomaly, gaussian_blur, image_score

__version__ = "0.1.0"

# After the core: kernels imports unimmad.models / scoring / losses.
from kernels.accelerate import accelerate  # noqa: E402


__all__ = [
    "UniMMADConfig", "UniMMAD", "UniMMADOutput", "CMoE", "CMoEAux", "WideResNet",
    "wide_resnet50_2", "load_backbone_weights", "pack_units", "anomaly_map", "image_score",
    "cosine_anomaly", "gaussian_blur", "decompression_loss", "moe_anneal_factor",
    "accelerate", "load_release_checkpoint", "cmoe_state_dict_from_release",
    "cmoe_state_dict_to_release", "__version__",
]
