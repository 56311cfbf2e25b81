"""Model blocks of UniMMAD (reference PyTorch implementation)."""
from .backbone import (PriorGenerator, WideResNet, load_backbone_weights, read_state_dict,
                       wide_resnet50_2)
from .cmoe import CMoE, CMoEAux, CMoEBranch, compose_leader_kernels, grouped_dynamic_filter
from .encoder import FeatureCompression, InputEmbedding
from .model import UniMMAD, UniMMADOutput, pack_units

__all__ = [
    "PriorGenerator", "WideResNet", "load_backbone_weights", "read_state_dict",
    "wide_resnet50_2", "CMoE", "CMoEAux", "CMoEBranch", "compose_leader_kernels",
    "grouped_dynamic_filter", "FeatureCompression", "InputEmbedding", "UniMMAD",
    "UniMMADOutput", "pack_units",
]
