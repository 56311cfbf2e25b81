"""Small pieces no larger test reached, each against a value written out by hand: the
kernel cache's bookkeeping, the conv→BN layer helper, the trainer's clipping check, the
FLOP count of the training-time fold."""
import math

import pytest
import torch
from torch import nn

from kernels.cmoe_cache import KernelCache
from unimmad.engine import TrainConfig
from unimmad.models.layers import conv_bn


# ----------------------------------------------------------------------------- cache
def _t(n):
    return torch.zeros(n, dtype=torch.float32)          # 4 bytes per element


def test_cache_repr_budget_and_clear():
    c = KernelCache("bounded", budget_mb=0.5)
    assert c.budget_bytes == 2 ** 19
    assert repr(c) == "KernelCache(policy='bounded', budget_mb=0.5, entries=0, nbytes=0)"
    assert c.put("a", 0, _t(10)) and c.put("b", "fixed", _t(5))
    assert c.nbytes == 60 and c.owner_bytes(["a"]) == 40 and c.owner_bytes(["a", "b"]) == 60
    assert repr(c) == "KernelCache(policy='bounded', budget_mb=0.5, entries=2, nbytes=60)"
    c.clear(["a"])
    assert c.nbytes == 20 and c.get("a", 0) is None and c.get("b", "fixed") is not None
    c.clear()
    assert c.nbytes == 0 and c.get("b", "fixed") is None
    assert repr(KernelCache("all")) == "KernelCache(policy='all', entries=0, nbytes=0)"


def test_cache_policy_none_stores_nothing_but_counts_the_fold():
    c = KernelCache("none")
    assert c.put("a", 0, _t(3)) is False
    assert c.nbytes == 0 and c.get("a", 0) is None and c.stats["folds"] == 1


def test_cache_budget_evicts_least_recent_and_keeps_pinned():
    c = KernelCache("bounded", budget_mb=100 / 2 ** 20)   # 100 bytes
    assert c.put("a", 0, _t(10)) and c.put("a", 1, _t(10))          # 80 bytes
    assert c.get("a", 0) is not None                                # 0 is now the newest
    assert c.put("a", 2, _t(10), pinned=[("a", 0)])                 # evicts 1, not 0
    assert c.get("a", 1) is None and c.get("a", 0) is not None
    assert c.stats["evictions"] == 1 and c.nbytes == 80
    assert not c.put("a", 3, _t(30), pinned=[("a", 0), ("a", 2)])   # cannot fit
    assert c.nbytes == 80
    assert c.put("a", 2, _t(5))                                     # replaces in place
    assert c.nbytes == 60


# ----------------------------------------------------------------------------- layers
def test_conv_bn_same_padding_and_optional_relu():
    m = conv_bn(4, 6, 3, 2)
    conv, bn, relu = m
    assert isinstance(conv, nn.Conv2d) and conv.padding == (1, 1) and conv.stride == (2, 2)
    assert conv.bias is None and isinstance(bn, nn.BatchNorm2d) and bn.num_features == 6
    assert isinstance(relu, nn.ReLU)
    assert m(torch.randn(1, 4, 9, 9)).shape == (1, 6, 5, 5)
    plain = conv_bn(4, 6, 5, relu=False)
    assert len(plain) == 2 and plain[0].padding == (2, 2)
    assert plain.eval()(torch.randn(1, 4, 7, 7)).shape == (1, 6, 7, 7)
    up = conv_bn(4, 6, 2, 2, relu=False, transposed=True)
    assert isinstance(up[0], nn.ConvTranspose2d) and up[0].bias is None
    assert up(torch.randn(1, 4, 3, 5)).shape == (1, 6, 6, 10)


# ----------------------------------------------------------------------------- trainer
@pytest.mark.parametrize("clip", [0.0, -1.0, math.nan, math.inf])
def test_grad_clip_must_be_positive_and_finite(clip):
    with pytest.raises((ValueError, TypeError), match="grad_clip"):
        TrainConfig(grad_clip=clip)


def test_grad_clip_accepts_a_positive_value():
    assert TrainConfig(grad_clip=0.5).grad_clip == 0.5 and TrainConfig().grad_clip is None


# ----------------------------------------------------------------------------- flops
def test_training_fold_is_counted_as_compose_mix_and_conv():
    """In training the fast C-MoE composes every unit's kernel (U·N·Co·R multiply-adds per
    branch: the mixture of N base experts), then convolves; fvcore sees all three ops."""
    pytest.importorskip("fvcore")
    from kernels import FastCMoE
    from unimmad import CMoE
    from unimmad.flops import fvcore_macs

    class P(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, g, idx):
            return self.m(x, g, idx)[0]

    C, S, U = 8, 6, 3
    ref = CMoE(C, embed_dim=16, num_base_experts=4, num_leaders=6)
    fast = FastCMoE.from_reference(ref, backend="torch").train()
    args = (torch.randn(U, C, S, S), torch.randn(U, C, S, S), torch.arange(U))
    _, ops = fvcore_macs(P(fast), args, by_operator=True)
    assert ops["compose"] > 0 and ops["dyn_conv"] > 0
    # compose, per branch of kernel k: U units × N = 4 experts × Co = 16 × R = E·k²
    # (E = 16), summed over the branches k = 1, 3, 5
    assert ops["compose"] == sum(U * 4 * 16 * 16 * k * k for k in (1, 3, 5))
