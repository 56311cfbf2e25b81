"""General multi-modal encoder: input embedding, trainable WideResNet trunk, and the
Feature Compression Module (FCM) with its reverse-distillation style decoder (SPEC §1)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNormReLU, conv_bn

__all__ = ["InputEmbedding", "BasicBlock", "UpBottleneck", "FeatureCompression"]


class InputEmbedding(nn.Module):
    """Maps the zero-padded ``[B, 3·M_max, H, W]`` modality stack to 3 channels.

    ``x + E_in`` (learnable, N(0, std²)) goes through a 3-conv stem (12→24→48→3, BN+ReLU
    between) plus a 1×1 shortcut (12→3); the two are summed.  Every conv carries a bias
    (SPEC §1, as in the authors' release: its checkpoints hold them).  ``stem`` is one flat
    ``Sequential`` (conv, BN, ReLU, conv, BN, ReLU, conv).

    ``autocast`` (``None``, ``"bfloat16"`` or ``"float16"``): run this module under
    ``torch.autocast`` at that dtype and cast its output back to the input's dtype — what
    accelerate's ``mixed_precision="bf16"`` did to this module in the authors' runs
    (``UniMMADConfig.embedding_autocast``).
    """

    def __init__(self, in_channels: int, image_size: int, std: float = 0.02,
                 autocast: Optional[str] = None):
        super().__init__()
        if autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast must be None, 'bfloat16' or 'float16', got {autocast!r}")
        self.autocast = autocast
        self.embedding = nn.Parameter(torch.randn(in_channels, image_size, image_size) * std)
        c = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(c, 2 * c, 3, 1, 1), nn.BatchNorm2d(2 * c), nn.ReLU(inplace=True),
            nn.Conv2d(2 * c, 4 * c, 3, 1, 1), nn.BatchNorm2d(4 * c), nn.ReLU(inplace=True),
            nn.Conv2d(4 * c, 3, 3, 1, 1))
        self.shortcut = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast is None:
            return self._embed(x)
        with torch.autocast(x.device.type, dtype=getattr(torch, self.autocast)):
            y = self._embed(x)
        return y.to(x.dtype)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.embedding
        return self.stem(x) + self.shortcut(x)


class BasicBlock(nn.Module):
    """Basic residual block of the FCM's level alignment (SPEC §1, step 1).

    ``mode`` ``"same"`` (3×3 convs, stride 1) or ``"down"`` (first conv stride 2): the
    shortcut is a bare 1×1 conv (stride 1 or 2; no bias, no BN — also when ``cin ==
    cout``).  ``"up"``: the first conv is a 2×2 stride-2 transposed conv (no bias) and the
    shortcut a 4×4 stride-2 padding-1 transposed conv **with** bias and no BN.
    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.
    """

    def __init__(self, cin: int, cout: int, mode: str = "same"):
        super().__init__()
        if mode not in ("same", "down", "up"):
            raise ValueError(f"mode must be 'same', 'down' or 'up', got {mode!r}")
        if mode == "up":
            self.conv1 = nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)
            self.shortcut = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        else:
            stride = 2 if mode == "down" else 1
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class UpBottleneck(nn.Module):
    """A WideResNet bottleneck run in reverse (reverse distillation's decoder block): with
    ``upsample`` its middle conv and its shortcut are 2×2 stride-2 transposed convs."""

    def __init__(self, cin: int, cout: int, width: int, upsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if upsample:
            self.conv2 = nn.ConvTranspose2d(width, width, 2, 2, bias=False)
        else:
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        if upsample:
            self.shortcut = conv_bn(cin, cout, 2, 2, relu=False, transposed=True)
        elif cin != cout:
            self.shortcut = conv_bn(cin, cout, 1, relu=False)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class _InnerBottleneck(nn.Module):
    """One K of the inner multi-scale bottleneck: per level depthwise K×K → 1×1 → GN(2);
    concat → 2×2 stride-2 conv (with bias, as in the release) → GN."""

    def __init__(self, width: int, k: int, n_levels: int, n_kernel_sizes: int):
        super().__init__()
        branch = width // n_kernel_sizes
        self.levels = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, k, 1, k // 2, groups=width, bias=False),
                nn.Conv2d(width, branch, 1, bias=False),
                GroupNormReLU(branch, groups=2 if branch % 2 == 0 else 1))
            for _ in range(n_levels))
        self.reduce = nn.Sequential(
            nn.Conv2d(branch * n_levels, width, 2, 2), GroupNormReLU(width))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.reduce(torch.cat([m(f) for m, f in zip(self.levels, feats)], 1))


class FeatureCompression(nn.Module):
    """FCM: 3 levels → common width at 1/8 → inner multi-scale bottleneck (1/16) → outer
    bottleneck (1/32, ``2·C3`` channels) → decoder back to the 3 levels.

    The structure is the authors' release's (SPEC §1), so their checkpoints load
    (:func:`unimmad.load_release_checkpoint`); 56.76 M parameters at paper dims.

    Returns the general features ``f_l`` ``[B, C_l, H_l, W_l]``, L2-normalised over channels.
    """

    def __init__(self, level_channels: Sequence[int], width: int = 512,
                 kernel_sizes: Sequence[int] = (1, 3, 5),
                 decoder_blocks: Sequence[int] = (3, 4, 6)):
        super().__init__()
        c1, c2, c3 = level_channels
        self.align = nn.ModuleList([
            BasicBlock(c1, width, "down"), BasicBlock(c2, width, "same"),
            BasicBlock(c3, width, "up")])
        self.inner = nn.ModuleList(
            _InnerBottleneck(width, k, 3, len(kernel_sizes)) for k in kernel_sizes)
        top = 2 * c3
        self.outer = nn.Sequential(
            nn.Conv2d(width * len(kernel_sizes), width, 1, bias=False), GroupNormReLU(width),
            nn.Conv2d(width, top, 2, 2, bias=False), GroupNormReLU(top))
        stages = []
        cin = top
        for cout, blocks in zip((c3, c2, c1), decoder_blocks):
            blk = [UpBottleneck(cin, cout, cout // 2, upsample=True)]
            blk += [UpBottleneck(cout, cout, cout // 2, upsample=False) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*blk))
            cin = cout
        self.decoder = nn.ModuleList(stages)
        for m in self.decoder.modules():  # the release's decoder init (transposed convs: default)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.heads = nn.ModuleList(nn.Conv2d(c, c, 1, bias=False) for c in (c3, c2, c1))

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        aligned = [m(f) for m, f in zip(self.align, feats)]
        z = self.outer(torch.cat([m(aligned) for m in self.inner], 1))
        outs = []
        for stage, head in zip(self.decoder, self.heads):
            z = stage(z)
            outs.append(F.normalize(head(z), dim=1))
        return outs[::-1]  # [f1 (1/4), f2 (1/8), f3 (1/16)]
