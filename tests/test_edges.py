"""Small pieces no larger test reached, each against a value written out by hand: the
kernel cache's bookkeeping, the conv→BN layer helper, the trainer's clipping check."""
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
