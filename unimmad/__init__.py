"""UniMMAD: unified multi-modal, multi-class anomaly detection (reference PyTorch model).

Public API::

    from unimmad import UniMMADConfig, UniMMAD, CMoE, anomaly_map, image_score
    from unimmad import load_release_checkpoint   # the authors' released weights
"""
from .config import UniMMADConfig
from .losses import decompression_loss, moe_anneal_factor
from .models import (CMoE, CMoEAux, UniMMAD, UniMMADOutput, WideResNet, load_backbone_weights,
                     pack_units, wide_resnet50_2)
from .release import (cmoe_state_dict_from_release, cmoe_state_dict_to_release,
                      load_release_checkpoint)
from .scoring import anomaly_map, cosine_anomaly, gaussian_blur, image_score

__version__ = "0.1.0"


def accelerate(model, backend: str = "auto"):
    """Swap every C-MoE of ``model`` for :class:`kernels.FastCMoE` in place (fused
    collapse + fold kernels) and, for a :class:`UniMMAD`, its anomaly-map, image-score and
    decompression-loss functions for the fused ones (Triton on CUDA, the torch fast path
    elsewhere); returns ``model``.  See :func:`kernels.accelerate`."""
    from kernels import accelerate as _accelerate
    return _accelerate(model, backend)


__all__ = [
    "UniMMADConfig", "UniMMAD", "UniMMADOutput", "CMoE", "CMoEAux", "WideResNet",
    "wide_resnet50_2", "load_backbone_weights", "pack_units", "anomaly_map", "image_score",
    "cosine_anomaly", "gaussian_blur", "decompression_loss", "moe_anneal_factor",
    "accelerate", "load_release_checkpoint", "cmoe_state_dict_from_release",
    "cmoe_state_dict_to_release", "__version__",
]
