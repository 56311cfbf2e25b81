import pytest
import torch
import torch.nn.functional as F

from unimmad import CMoE
from unimmad.models.cmoe import balance_loss, compose_leader_kernels, grouped_dynamic_filter


def small_cmoe(C=24, E=32, N=4, L=6, K=2, ks=(1, 3, 5), dtype=torch.float64):
    m = CMoE(C, E, N, L, K, ks).to(dtype)
    # Non-trivial BatchNorm statistics so eval mode is not the identity.
    bn = m.cond[1]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    return m


def inputs(B, units_per_sample, C=24, H=7, W=9, dtype=torch.float64):
    uts = torch.repeat_interleave(torch.arange(B), torch.tensor(units_per_sample))
    return (torch.randn(B, C, H, W, dtype=dtype), torch.randn(len(uts), C, H, W, dtype=dtype),
            uts)


def test_paper_dims_parameter_counts():
    m = CMoE(256)
    base = sum(b.base_experts.numel() for b in m.branches)
    fixed = sum(b.fixed_expert.numel() for b in m.branches)
    leaders = sum(b.leaders.numel() for b in m.branches)
    assert base == 8 * 256 * 256 * (1 + 9 + 25)
    assert fixed == 256 * 256 * (1 + 9 + 25)
    assert leaders == 3 * 32 * 8 * 256
    full_leaders = 32 * 256 * 256 * (1 + 9 + 25)  # 32 leaders with their own kernels
    assert (base + leaders) / full_leaders <= 0.26  # paper: ≈ 75 % saving


def test_packed_equals_per_unit_loop():
    m = small_cmoe().eval()
    general, prior, uts = inputs(4, [1, 2, 3, 4])
    with torch.no_grad():
        p, aux = m(general, prior, uts)
        for u in range(prior.shape[0]):
            s = int(uts[u])
            pu, au = m(general[s:s + 1], prior[u:u + 1], torch.zeros(1, dtype=torch.long))
            torch.testing.assert_close(p[u:u + 1], pu, rtol=1e-6, atol=1e-6)
            for b in range(len(m.branches)):
                assert torch.equal(aux.indices[b][u], au.indices[b][0])
                torch.testing.assert_close(aux.scores[b][u], au.scores[b][0], rtol=1e-6, atol=1e-6)
    assert p.shape == prior.shape


def test_grouped_dynamic_filtering_equals_one_conv_per_expert():
    B, E, k, K = 3, 8, 5, 2
    uts = torch.tensor([0, 1, 1, 2, 2, 2])
    U = len(uts)
    x = torch.randn(B, E, 6, 7, dtype=torch.float64)
    fixed = torch.randn(E, E, k, k, dtype=torch.float64)
    kernels = torch.randn(U, K, E, E, k, k, dtype=torch.float64)
    scores = torch.softmax(torch.randn(U, K, dtype=torch.float64), 1)
    out = grouped_dynamic_filter(x, uts, fixed, kernels, scores)
    for u in range(U):
        xs = x[uts[u]].unsqueeze(0)
        y_fix = F.conv2d(xs, fixed, padding=k // 2)
        y_rt = sum(scores[u, j] * F.conv2d(xs, kernels[u, j], padding=k // 2) for j in range(K))
        torch.testing.assert_close(out[u:u + 1], torch.cat([y_fix, y_rt], 1))


def test_compose_leader_kernels_is_eq2():
    N, L, E, k = 3, 5, 4, 3
    base = torch.randn(N, E, E, k, k, dtype=torch.float64)
    leaders = torch.randn(L, N, E, dtype=torch.float64)
    idx = torch.tensor([[4, 0], [2, 2]])
    out = compose_leader_kernels(base, leaders, idx)
    for u in range(2):
        for j in range(2):
            s = torch.softmax(leaders[idx[u, j]], dim=0)  # over the base axis
            for o in range(E):
                ref = sum(s[n, o] * base[n, o] for n in range(N))
                torch.testing.assert_close(out[u, j, o], ref)


def test_fixed_expert_is_identity_at_init():
    m = small_cmoe(ks=(5,))
    x = torch.randn(2, 32, 6, 6, dtype=torch.float64)
    b = m.branches[0]
    torch.testing.assert_close(F.conv2d(x, b.fixed_expert, padding=2), x)


@pytest.mark.parametrize("K, L", [(1, 6), (6, 6), (2, 6)])
def test_routing_invariants(K, L):
    m = small_cmoe(K=K, L=L)
    general, prior, uts = inputs(2, [3, 2])
    _, aux = m(general, prior, uts)
    for idx, sc, pr in zip(aux.indices, aux.scores, aux.probs):
        assert idx.shape == (5, K) and sc.shape == (5, K) and pr.shape == (5, L)
        torch.testing.assert_close(sc.sum(1), torch.ones(5, dtype=sc.dtype))
        assert bool((sc >= 0).all())
        # indices are the top-K probabilities, each leader at most once per unit
        torch.testing.assert_close(pr.gather(1, idx), pr.topk(K, 1).values)
        assert all(len(set(r.tolist())) == K for r in idx)
    assert aux.balance_loss.dim() == 0 and torch.isfinite(aux.balance_loss)


def test_balance_loss_zero_cv_for_uniform_router():
    L = 8
    logits = torch.zeros(5, L)
    probs = torch.softmax(logits, 1)
    z = torch.logsumexp(logits, 1).pow(2).mean()
    torch.testing.assert_close(balance_loss(logits, probs, 1e-4), 1e-4 * z)
    probs = torch.zeros(5, L)
    probs[:, 0] = 1  # all mass on one leader: CV² = L - 1
    torch.testing.assert_close(balance_loss(torch.zeros(5, L), probs, 0.0), torch.tensor(L - 1.0))


def test_backward_reaches_every_parameter():
    m = small_cmoe(dtype=torch.float32).train()
    general, prior, uts = inputs(2, [2, 2], dtype=torch.float32)
    general.requires_grad_(True)
    p, aux = m(general, prior, uts)
    (p.square().mean() + aux.balance_loss).backward()
    for name, prm in m.named_parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0, name
    assert general.grad.abs().sum() > 0


def test_bad_inputs():
    m = small_cmoe(dtype=torch.float32)
    g, p, uts = inputs(2, [1, 1], dtype=torch.float32)
    with pytest.raises(ValueError, match="general must be"):
        m(g[:, :5], p, uts)
    with pytest.raises(ValueError, match="prior must be"):
        m(g, p[0], uts)
    with pytest.raises(ValueError, match="spatial"):
        m(g, p[..., :4], uts)
    with pytest.raises(ValueError, match="unit_to_sample values"):
        m(g, p, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="unit_to_sample must be"):
        m(g, p, torch.tensor([0]))
    with pytest.raises(TypeError, match="long"):
        m(g, p, uts.int())
    with pytest.raises(TypeError, match="share dtype"):
        m(g.double(), p, uts)
    with pytest.raises(ValueError, match="top_k"):
        CMoE(8, 8, 2, 4, 5)
