import pytest
import torch

from unimmad import decompression_loss, moe_anneal_factor


def test_decompression_loss_formula_and_weights():
    uts = torch.tensor([0, 0, 1])
    pri = [torch.randn(3, 5, 4, 4, dtype=torch.float64), torch.randn(3, 6, 2, 2, dtype=torch.float64)]
    pre = [torch.randn_like(t) for t in pri]
    w = torch.tensor([2.0, 0.5], dtype=torch.float64)
    loss, per_level = decompression_loss(pri, pre, uts, w, gamma=2.0)
    ref_levels = []
    for u, p in zip(pri, pre):
        a = 1 - torch.nn.functional.cosine_similarity(u, p, dim=1)
        per_unit = (a ** 3).flatten(1).mean(1) * w[uts]
        ref_levels.append(per_unit.mean())
    torch.testing.assert_close(torch.stack(per_level), torch.stack(ref_levels))
    torch.testing.assert_close(loss, torch.stack(ref_levels).mean())


def test_focal_factor_has_no_gradient():
    # d/dA [sg(A)^γ · A] = A^γ, not (γ+1)·A^γ.
    u = torch.randn(1, 3, 1, 1, dtype=torch.float64)
    p = torch.randn(1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    loss, _ = decompression_loss([u], [p], torch.tensor([0]), gamma=2.0)
    (g,) = torch.autograd.grad(loss, p)
    p2 = p.detach().clone().requires_grad_(True)
    a = 1 - torch.nn.functional.cosine_similarity(u, p2, dim=1)
    (ga,) = torch.autograd.grad(a.sum(), p2)
    torch.testing.assert_close(g, (a.detach() ** 2).sum() * ga)


def test_anneal_factors():
    assert moe_anneal_factor(0, 200) == 1.0
    assert moe_anneal_factor(100, 200) == pytest.approx(0.25)
    assert moe_anneal_factor(100, 200, "linear") == pytest.approx(0.5)
    assert moe_anneal_factor(200, 200, "linear") == pytest.approx(0.001)
    assert moe_anneal_factor(250, 200) == 0.0
    with pytest.raises(ValueError):
        moe_anneal_factor(1, 0)
    with pytest.raises(ValueError):
        moe_anneal_factor(1, 10, "cosine")
