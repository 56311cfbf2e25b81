"""Small building blocks shared by the model: GroupNorm sizing and conv + norm + act."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["gn_groups", "GroupNormReLU", "ConvGN", "conv_bn"]


def gn_groups(channels: int, preferred: int = 32) -> int:
    """Group count of SPEC §1: ``preferred`` if it divides ``channels``, else the largest
    of 16, 8, 4, 2, 1 (not above ``preferred``) that does."""
    if channels % preferred == 0:
        return preferred
    for g in (16, 8, 4, 2, 1):
        if g <= preferred and channels % g == 0:
            return g
    return 1


class GroupNormReLU(nn.Module):
    """GroupNorm followed by ReLU ("GN" in SPEC §1).  Keeps the GroupNorm's parameters
    under ``.norm`` so state dicts read ``<name>.norm.weight``."""

    def __init__(self, channels: int, groups: int | None = None, relu: bool = True):
        super().__init__()
        self.norm = nn.GroupNorm(groups or gn_groups(channels), channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return torch.relu(x) if self.relu else x


class ConvGN(nn.Module):
    """``conv(k×k, bias-free) → GroupNorm → ReLU``."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, stride: int = 1,
                 groups: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False)
        self.gn = GroupNormReLU(cout, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv(x))


def conv_bn(cin: int, cout: int, kernel_size: int, stride: int = 1, relu: bool = True,
            transposed: bool = False) -> nn.Sequential:
    """``conv → BatchNorm (→ ReLU)``; a transposed conv uses kernel = stride (×2 upsampling)."""
    if transposed:
        conv = nn.ConvTranspose2d(cin, cout, kernel_size, stride, bias=False)
    else:
        conv = nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False)
    mods = [conv, nn.BatchNorm2d(cout)]
    if relu:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)
