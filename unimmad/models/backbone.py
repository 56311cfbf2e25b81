"""WideResNet50-2 written here, in torchvision's state-dict key layout.

torchvision and timm cannot be installed beside the pinned CPU torch, so the backbone is
defined in this file; its parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``, ``fc``) are torchvision's, so ImageNet checkpoints saved by
torchvision (``.pth``) or timm (``.safetensors``, same names) load unchanged.

UniMMAD uses the stem and layer1..layer3 only (``include_top=False`` drops layer4, avgpool
and fc: they never influence the three feature levels).
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..tensorio import read_state_dict_file

__all__ = [
    "Bottleneck",
    "WideResNet",
    "wide_resnet50_2",
    "read_state_dict",
    "load_backbone_weights",
    "PriorGenerator",
    "WEIGHTS_ENV",
]

WEIGHTS_ENV = "UNIMMAD_BACKBONE_WEIGHTS"


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3×3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, width_factor: int = 2,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        width = planes * width_factor
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class WideResNet(nn.Module):
    """ResNet with bottleneck width ``planes * width_factor`` (torchvision layout).

    ``forward`` returns the list of layer1..layer3 outputs (the three UniMMAD levels); with
    ``include_top=True`` the full classifier (layer4, avgpool, fc) also exists and
    :meth:`classify` runs it.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), base_planes: int = 64,
                 width_factor: int = 2, in_channels: int = 3, num_classes: int = 1000,
                 include_top: bool = False):
        super().__init__()
        if include_top and len(layers) != 4:
            raise ValueError("include_top=True needs 4 stage block counts")
        self.include_top = include_top
        self.width_factor = width_factor
        self.inplanes = base_planes
        self.conv1 = nn.Conv2d(in_channels, base_planes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        n_stages = 4 if include_top else 3
        if len(layers) < n_stages:
            raise ValueError(f"need {n_stages} stage block counts, got {tuple(layers)}")
        for i in range(n_stages):
            stage = self._make_layer(base_planes * 2 ** i, layers[i], 1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        if include_top:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(base_planes * 8 * Bottleneck.expansion, num_classes)
        self.out_channels = tuple(base_planes * 2 ** i * Bottleneck.expansion for i in range(3))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        out = planes * Bottleneck.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        mods = [Bottleneck(self.inplanes, planes, stride, self.width_factor, downsample)]
        self.inplanes = out
        mods += [Bottleneck(out, planes, 1, self.width_factor) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (needs ``include_top=True``)."""
        if not self.include_top:
            raise RuntimeError("this WideResNet was built without layer4/fc (include_top=False)")
        f3 = self.forward(x)[-1]
        return self.fc(torch.flatten(self.avgpool(self.layer4(f3)), 1))


def wide_resnet50_2(include_top: bool = False, **kwargs) -> WideResNet:
    """WideResNet50-2; ``include_top=True`` gives torchvision's full 68,883,240-parameter
    classifier, the default the stem + layer1..3 trunk UniMMAD uses."""
    return WideResNet((3, 4, 6, 3), 64, 2, include_top=include_top, **kwargs)


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from a local ``.safetensors`` or ``.pth``/``.pt`` file through
    :mod:`unimmad.tensorio` (``torch.load`` with ``weights_only=True`` only: a pickle holding
    anything but tensors and plain containers is refused, nothing in it runs).  Unwraps
    ``{"state_dict": ...}`` / ``{"model": ...}`` and a ``module.`` prefix (DataParallel
    checkpoints)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file not found: {path!r}")
    try:
        sd = read_state_dict_file(path)
    except ValueError as exc:  # corrupt, foreign or unsafe file: say which one
        raise ValueError(f"cannot read backbone weights: {exc}") from None
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_backbone_weights(module: WideResNet, source, strict: bool = True) -> Dict[str, list]:
    """Load ImageNet weights into ``module`` from a path or a state dict.

    Keys of stages the module does not build (``layer4.*``, ``fc.*`` for a trunk) are
    ignored.  Any other missing, unexpected or mis-shaped key raises ``ValueError`` listing
    them (``strict=False``: a warning, and the fitting keys are loaded).  Returns the
    report ``{"missing": [...], "unexpected": [...], "mismatched": [...], "ignored": [...]}``.
    """
    name = source if isinstance(source, (str, os.PathLike)) else "<state dict>"
    sd = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    own = module.state_dict()
    dropped = () if module.include_top else ("layer4.", "fc.")
    ignored = sorted(k for k in sd if k.startswith(dropped))
    report = {
        "missing": sorted(k for k in own if k not in sd and not k.endswith("num_batches_tracked")),
        "unexpected": sorted(k for k in sd if k not in own and not k.startswith(dropped)),
        "mismatched": sorted(
            f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)),
        "ignored": ignored,
    }
    problems = {k: v for k, v in report.items() if k != "ignored" and v}
    if problems:
        lines = [f"{k} ({len(v)}): {v[:6]}{' ...' if len(v) > 6 else ''}"
                 for k, v in problems.items()]
        msg = f"backbone weights {name!r} do not fit the WideResNet: " + "; ".join(lines)
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    bad = {k.split(":")[0] for k in report["mismatched"]}
    fitting = {k: v for k, v in sd.items() if k in own and k not in bad}
    module.load_state_dict(fitting, strict=False)
    return report


def resolve_weights_path(path: Optional[str]) -> Optional[str]:
    """The configured weights path, else ``$UNIMMAD_BACKBONE_WEIGHTS``, else ``None``."""
    return path or os.environ.get(WEIGHTS_ENV) or None


class PriorGenerator(nn.Module):
    """Frozen WideResNet trunk producing the per-unit priors.

    Always in eval mode (``.train()`` does not change it), no parameter requires grad, and
    its forward runs without autograd.  Returns the raw (ReLU'd) layer1..3 features; the
    model L2-normalises them into priors ``u_l``.
    """

    def __init__(self, backbone: WideResNet):
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "PriorGenerator":
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [torch.relu(f) for f in self.backbone(x)]


def build_trunks(cfg) -> Tuple[WideResNet, WideResNet]:
    """The prior-generator and general-encoder trunks of a config, with weights loaded."""
    def make():
        return WideResNet(cfg.backbone_layers, cfg.backbone_base_planes,
                          cfg.backbone_width_factor, include_top=False)

    prior, encoder = make(), make()
    path = resolve_weights_path(cfg.backbone_weights)
    if path is None:
        warnings.warn(
            "UniMMAD: no ImageNet backbone weights given (config.backbone_weights or "
            f"${WEIGHTS_ENV}); the prior generator is randomly initialised, so anomaly "
            "scores are meaningless until you load real weights.", stacklevel=3)
    else:
        sd = read_state_dict(path)
        load_backbone_weights(prior, sd)
        if cfg.encoder_from_pretrained:
            load_backbone_weights(encoder, sd)
    return prior, encoder
