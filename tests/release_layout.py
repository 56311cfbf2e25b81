"""The authors' release checkpoint layout written out from SPEC §4's key names and shapes
(independently of ``unimmad.release``'s mapping rules), for the loader tests.

``release_layout(cfg)`` → {file name: {key: shape}} including the tensors the model does
not use (``layer4``, ``conv_out_second``, ``prior_head``), as a real folder holds them.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from unimmad.models.backbone import WideResNet

Shape = Tuple[int, ...]


def _bn(prefix: str, c: int) -> Dict[str, Shape]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _gn(prefix: str, c: int) -> Dict[str, Shape]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def trunk_layout(cfg, layer4_blocks: int = 3) -> Dict[str, Shape]:
    """torchvision names of a WideResNet with layer4 (timm's features_only keeps it)."""
    with torch.device("meta"):
        net = WideResNet(tuple(cfg.backbone_layers) + (layer4_blocks,), cfg.backbone_base_planes,
                         cfg.backbone_width_factor, include_top=True)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith("fc.")}


def fcm_layout(cfg) -> Dict[str, Shape]:
    c1, c2, c3 = cfg.level_channels
    E = cfg.fcm_width
    out: Dict[str, Shape] = {}
    # conv_x1 / conv_x2: BasicBlock(cin → E), bare 1×1 downsample; conv_x3: up block
    for i, cin in ((1, c1), (2, c2)):
        p = f"1.conv_x{i}.0"
        out[f"{p}.conv1.weight"] = (E, cin, 3, 3)
        out.update(_bn(f"{p}.bn1", E))
        out[f"{p}.conv2.weight"] = (E, E, 3, 3)
        out.update(_bn(f"{p}.bn2", E))
        out[f"{p}.downsample.weight"] = (E, cin, 1, 1)
    p = "1.conv_x3.0"
    out[f"{p}.conv1.weight"] = (c3, E, 2, 2)            # ConvTranspose2d: [in, out, k, k]
    out.update(_bn(f"{p}.bn1", E))
    out[f"{p}.conv2.weight"] = (E, E, 3, 3)
    out.update(_bn(f"{p}.bn2", E))
    out[f"{p}.upsample.weight"] = (c3, E, 4, 4)
    out[f"{p}.upsample.bias"] = (E,)
    b = E // 3
    for K in cfg.fcm_kernel_sizes:
        for j in (1, 2, 3):
            p = f"1.bn{K}.b{j}"
            out[f"{p}.dw.weight"] = (E, 1, K, K)
            out[f"{p}.pw.weight"] = (b, E, 1, 1)
            out.update(_gn(f"{p}.na.0", b))
        out[f"1.bn{K}.post.0.weight"] = (E, 3 * b, 2, 2)
        out[f"1.bn{K}.post.0.bias"] = (E,)
        out.update(_gn(f"1.bn{K}.post.1.0", E))
    top = 2 * c3
    out["1.out_bn3.proj.0.weight"] = (E, 3 * E, 1, 1)
    out.update(_gn("1.out_bn3.proj.1.0", E))
    out["1.out_bn3.head.0.weight"] = (top, E, 2, 2)
    out.update(_gn("1.out_bn3.head.1.0", top))
    cin = top
    for s, (cout, blocks) in enumerate(zip((c3, c2, c1), cfg.backbone_layers), start=1):
        w = cout // 2
        for blk in range(blocks):
            p = f"1.decoder.layer{s}.{blk}"
            out[f"{p}.conv1.weight"] = (w, cin, 1, 1)
            out.update(_bn(f"{p}.bn1", w))
            out[f"{p}.conv2.weight"] = (w, w, 2, 2) if blk == 0 else (w, w, 3, 3)
            out.update(_bn(f"{p}.bn2", w))
            out[f"{p}.conv3.weight"] = (cout, w, 1, 1)
            out.update(_bn(f"{p}.bn3", cout))
            if blk == 0:
                out[f"{p}.upsample.0.weight"] = (cin, cout, 2, 2)
                out.update(_bn(f"{p}.upsample.1", cout))
            cin = cout
    for i, c in enumerate((c1, c2, c3)):
        out[f"1.final.{i}.weight"] = (c, c, 1, 1)
    return out


def embedding_layout(cfg) -> Dict[str, Shape]:
    c, S = cfg.input_channels, cfg.image_size
    out: Dict[str, Shape] = {"input_embedding": (c, S, S)}
    out["stem.0.weight"], out["stem.0.bias"] = (2 * c, c, 3, 3), (2 * c,)
    out.update(_bn("stem.1", 2 * c))
    out["stem.3.weight"], out["stem.3.bias"] = (4 * c, 2 * c, 3, 3), (4 * c,)
    out.update(_bn("stem.4", 4 * c))
    out["stem.6.weight"], out["stem.6.bias"] = (3, 4 * c, 3, 3), (3,)
    out["shortcut.weight"], out["shortcut.bias"] = (3, c, 1, 1), (3,)
    return out


def cmoe_layout(cfg, with_unused: bool = True) -> Dict[str, Shape]:
    E, N, L = cfg.embed_dim, cfg.num_base_experts, cfg.num_leaders
    out: Dict[str, Shape] = {}
    for lvl, C in enumerate(cfg.level_channels):
        p = f"{lvl}."
        out[p + "conv_share.0.weight"] = (E, C, 1, 1)
        out.update(_gn(p + "conv_share.1.0", E))
        out[p + "conv_prior.0.weight"] = (E, C, 1, 1)
        out.update(_gn(p + "conv_prior.1.0", E))
        out[p + "conv_cond.0.0.weight"] = (E, 2 * E, 3, 3)
        out.update(_bn(p + "conv_cond.0.1", E))
        out.update(_gn(p + "conv_cond.1.0", E))
        out[p + "conv_cond.2.weight"] = (E, E, 1, 1)
        out.update(_gn(p + "conv_cond.3.0", E))
        for i, k in enumerate(cfg.cmoe_kernel_sizes):
            q = f"{p}MoEs.{i}."
            out[q + "soft_expert"] = (E, E, k, k)
            out[q + "experts"] = (L, N, E)
            out[q + "gate.gate.weight"] = (L, E)
            out[q + "gate.gate.bias"] = (L,)
            out[q + "pre.0.weight"] = (E, E, 1, 1)
            out.update(_gn(q + "pre.1.0", E))
            out[q + "post.0.weight"] = (E, 2 * E, 1, 1)
            out.update(_gn(q + "post.1.0", E))
            out[f"{p}expert_bases.{i}"] = (N, E, E, k, k)
        out[p + "conv_out_first.0.weight"] = (C, 3 * E, 1, 1)
        out.update(_gn(p + "conv_out_first.1.0", C))
        if with_unused:
            for name in ("conv_out_second", "prior_head"):
                out[f"{p}{name}.weight"] = (1, E, 1, 1)
                out[f"{p}{name}.bias"] = (1,)
    return out


def release_layout(cfg, with_unused: bool = True) -> Dict[str, Dict[str, Shape]]:
    trunk = trunk_layout(cfg)
    if not with_unused:
        trunk = {k: v for k, v in trunk.items() if not k.startswith("layer4.")}
    enc = {f"0.model.{k}": v for k, v in trunk.items()}
    enc.update(fcm_layout(cfg))
    return {"model.safetensors": enc, "model_1.safetensors": embedding_layout(cfg),
            "model_2.safetensors": cmoe_layout(cfg, with_unused)}


def random_tensors(layout: Dict[str, Shape], generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """Random values of the right kind: positive running variances, integer counters."""
    out = {}
    for k, shape in layout.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(int(torch.randint(1, 1000, (), generator=generator)))
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=generator) + 0.5
        else:
            out[k] = torch.randn(shape, generator=generator) * 0.1
    return out
