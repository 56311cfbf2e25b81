"""The folded-kernel memory policies of FastCMoE (kernels.cmoe_cache): every public way to
change a parameter is followed by outputs matching a float64 reference built from the
changed weights, for the torch backend and for Triton (on the CPU interpreter when no GPU
is present); an inference-mode build never leaks into autograd; the bounded cache keeps
to its budget."""
import copy

import pytest
import torch

import unimmad
from unimmad import CMoE, UniMMAD, UniMMADConfig

from cmoe_cases import make_cmoe, make_inputs
from helpers import TOL, assert_rel, rel_err

from kernels import FastCMoE, cmoe_cache
from kernels.cmoe_cache import KernelCache, fingerprint

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# Triton cases stay small: the interpreter costs ~2-3 ms per program.
DIMS = {"torch": dict(C=20, E=24, N=3, L=5, K=2, ks=(1, 3, 5)),
        "triton": dict(C=12, E=16, N=2, L=4, K=2, ks=(1, 3))}
SIZES = {"torch": (7, 9), "triton": (5, 6)}
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.interpreter)]
CACHED = ["bounded", "all"]


def _fast(backend, policy, seed=0, **kw):
    ref = make_cmoe(seed=seed, **DIMS[backend]).eval()
    return FastCMoE.from_reference(ref, backend=backend, cache=policy, **kw).to(DEV)


def _inputs(backend, units=(2, 1)):
    H, W = SIZES[backend]
    g, p, uts = make_inputs(list(units), C=DIMS[backend]["C"], H=H, W=W)
    return g.to(DEV), p.to(DEV), uts.to(DEV)


def _reference_out(fast, general, prior, uts):
    """float64 reference C-MoE with ``fast``'s current weights (any dtype / device)."""
    d = DIMS[fast.backend]
    ref = CMoE(d["C"], d["E"], d["N"], d["L"], d["K"], d["ks"]).double()
    ref.load_state_dict({k: v.detach().to("cpu", torch.float64)
                         for k, v in fast.state_dict().items()})
    ref.train(fast.training)
    with torch.no_grad():
        return ref(general.cpu().double(), prior.cpu().double(), uts.cpu())[0]


def _run(fast, general, prior, uts):
    with torch.no_grad():
        dtype = next(fast.parameters()).dtype
        return fast(general.to(dtype), prior.to(dtype), uts)[0]


# ----------------------------------------------------------------------------- mutations
def _random_grads_step(make_opt):
    def mutate(fast):
        opt = make_opt([p for p in fast.parameters() if p.requires_grad])
        for p in fast.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    return mutate


def _data_mul(fast):
    for b in fast.branches:
        b.base_experts.data.mul_(2.0)


def _data_copy(fast):
    for b in fast.branches:                     # a permutation keeps sums and norms
        b.leaders.data.copy_(b.leaders.data.flip(0))
        b.fixed_expert.data.copy_(torch.randn_like(b.fixed_expert))


def _no_grad_inplace(fast):
    with torch.no_grad():                         # (a uniform scale would vanish in post's GN)
        for b in fast.branches:
            b.post.weight.add_(0.2 * torch.randn_like(b.post.weight))


def _load_state_dict(fast):
    other = _fast(fast.backend, "none", seed=123)
    fast.load_state_dict(other.state_dict())


def _half_round_trip(fast):
    fast.half().float()                          # the weights are rounded to fp16


def _meta_round_trip(fast):
    sd = {k: v.clone() * 1.25 for k, v in fast.state_dict().items()}
    fast.to("meta")
    fast.to_empty(device=DEV)
    fast.load_state_dict(sd)


MUTATIONS = {
    "fused_adam": _random_grads_step(lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True)),
    "foreach_adamw": _random_grads_step(
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True)),
    "sgd": _random_grads_step(lambda ps: torch.optim.SGD(ps, lr=1e-2)),
    "fused_sgd": _random_grads_step(lambda ps: torch.optim.SGD(ps, lr=1e-2, fused=True)),
    "data_mul": _data_mul,
    "data_copy": _data_copy,
    "no_grad_inplace": _no_grad_inplace,
    "load_state_dict": _load_state_dict,
    "half_round_trip": _half_round_trip,
    "meta_round_trip": _meta_round_trip,
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize("policy", CACHED)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_follows_every_weight_change(backend, policy, mutation, no_tf32):
    fast = _fast(backend, policy)
    general, prior, uts = _inputs(backend)
    before = _run(fast, general, prior, uts)
    assert fast.cache_bytes() > 0                 # the cache is really in use
    MUTATIONS[mutation](fast)
    after = _run(fast, general, prior, uts)
    ref = _reference_out(fast, general, prior, uts)
    assert_rel(after, ref.to(after), TOL["fp32"], f"{mutation} ({policy}, {backend})")
    # the change was visible: a stale cache would have failed the check above
    assert rel_err(before, ref) > 10 * TOL["fp32"]
    assert fast.kernel_cache.stats["stale"] >= 1


@pytest.mark.parametrize("policy", ["none"] + CACHED)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_moves(backend, policy, no_tf32):
    fast = _fast(backend, policy)
    general, prior, uts = _inputs(backend)
    _run(fast, general, prior, uts)
    moves = [(torch.bfloat16, TOL["bf16"])]
    if backend == "torch":                       # Triton takes fp32 / bf16 / fp16 only
        moves.append((torch.float64, TOL["fp32"]))
    for dtype, tol in moves + [(torch.float32, TOL["fp32"])]:
        fast.to(dtype)
        out = _run(fast, general, prior, uts)
        assert out.dtype == dtype
        assert_rel(out.double(), _reference_out(fast, general, prior, uts).to(out.device),
                   tol, f"after .to({dtype})")
        if policy != "none":
            assert all(t.dtype == dtype for t in fast.kernel_cache._entries.values())


@pytest.mark.parametrize("policy", CACHED)
def test_meta_device_forward_folds_on_the_fly(policy):
    fast = _fast("torch", policy)
    general, prior, uts = _inputs("torch")
    _run(fast, general, prior, uts)
    fast.to("meta")
    out = _run(fast, general.to("meta"), prior.to("meta"), uts.to("meta"))
    assert out.device.type == "meta" and out.shape == prior.shape[:1] + (20,) + prior.shape[2:]


def _freeze_branch_weights(fast):
    for b in fast.branches:
        for p in (b.base_experts, b.leaders, b.fixed_expert, b.post.weight):
            p.requires_grad_(False)


@pytest.mark.parametrize("policy", ["none"] + CACHED)
@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_mode_build_then_training(backend, policy, no_tf32):
    """A cache built under torch.inference_mode (what evaluate/predict use), then a
    grad-enabled step with frozen branch weights and trainable routers: no "Inference
    tensors cannot be saved for backward", and the gradients match the reference."""
    fast = _fast(backend, policy)
    general, prior, uts = _inputs(backend, (1, 2))
    with torch.inference_mode():
        fast(general, prior, uts)
    if policy != "none":
        assert fast.cache_bytes() > 0
    _freeze_branch_weights(fast)
    d = DIMS[backend]
    ref = CMoE(d["C"], d["E"], d["N"], d["L"], d["K"], d["ks"]).double()
    ref.load_state_dict({k: v.detach().cpu().double() for k, v in fast.state_dict().items()})
    _freeze_branch_weights(ref)
    fast.train(), ref.train()
    w = torch.randn(len(uts), d["C"], *SIZES[backend], dtype=torch.float64)
    p, aux = fast(general, prior, uts)
    ((p * w.to(p)).sum() + aux.balance_loss).backward()
    p_ref, aux_ref = ref(general.cpu().double(), prior.cpu().double(), uts.cpu())
    ((p_ref * w).sum() + aux_ref.balance_loss).backward()
    assert_rel(p, p_ref.to(p), TOL["fp32"], "p")
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        if b.requires_grad:
            assert_rel(a.grad, b.grad.to(a.grad), TOL["grad"], f"grad {name}")
    routers = [b.router.weight.grad for b in fast.branches]
    assert all(g is not None and g.abs().max() > 0 for g in routers)


# ----------------------------------------------------------------------------- policies
def test_none_policy_holds_nothing_and_matches():
    fast = _fast("torch", "none")
    general, prior, uts = _inputs("torch", (1, 3, 2))
    out = _run(fast, general, prior, uts)
    assert fast.cache_bytes() == 0 and fast.kernel_cache.nbytes == 0
    assert_rel(out, _reference_out(fast, general, prior, uts), TOL["fp32"])


def test_all_policy_holds_every_leader_and_reuses_it():
    fast = _fast("torch", "all")
    general, prior, uts = _inputs("torch")
    _run(fast, general, prior, uts)
    d = DIMS["torch"]
    expected = sum((d["L"] + 1) * d["E"] * d["E"] * k * k * 4 for k in d["ks"])
    assert fast.cache_bytes() == expected
    folds = fast.kernel_cache.stats["folds"]
    out = _run(fast, general, prior, uts)            # same weights: no refold
    assert fast.kernel_cache.stats["folds"] == folds
    assert fast.kernel_cache.stats["stale"] == 0
    assert_rel(out, _reference_out(fast, general, prior, uts), TOL["fp32"])


def test_bounded_policy_keeps_to_its_budget_and_evicts_least_recent():
    d = DIMS["torch"]
    per_leader = {k: d["E"] * d["E"] * k * k * 4 for k in d["ks"]}
    budget = sum(per_leader.values()) * 4 / 2 ** 20       # room for 4 kernels per branch
    fast = _fast("torch", "bounded", cache_mb=budget)
    cache = fast.kernel_cache
    general, prior, uts = _inputs("torch", (1, 1, 1, 1))
    for trial in range(4):
        out = _run(fast, general[trial:trial + 1], prior[trial:trial + 1], uts[:1])
        assert cache.nbytes <= cache.budget_bytes
        assert_rel(out, _reference_out(fast, general[trial:trial + 1],
                                       prior[trial:trial + 1], uts[:1]), TOL["fp32"])
    hits = cache.stats["hits"]
    _run(fast, general[3:4], prior[3:4], uts[:1])          # the most recent: all hits
    assert cache.stats["hits"] - hits == 3 * 3             # per branch: G0 + K=2 leaders
    # a budget below one call's needs still gives the right answer, holding what fits
    tiny = _fast("torch", "bounded", cache_mb=per_leader[1] / 2 ** 20)
    out = _run(tiny, general, prior, torch.arange(4))
    assert tiny.kernel_cache.nbytes <= tiny.kernel_cache.budget_bytes
    assert_rel(out, _reference_out(tiny, general, prior, torch.arange(4)), TOL["fp32"])


def test_accelerate_shares_one_budget_and_model_matches_after_fused_adam():
    """The issue's case: an accelerated model, one fused-Adam step, then inference."""
    torch.manual_seed(0)
    cfg = UniMMADConfig.tiny()
    model = UniMMAD(cfg).eval()
    reference = copy.deepcopy(model)
    unimmad.accelerate(model, backend="torch", cache="bounded", cache_mb=1.0)
    caches = {id(m.kernel_cache) for m in model.cmoe}
    assert len(caches) == 1
    images = torch.randn(2, 4, 3, 64, 64)
    nm = torch.tensor([2, 1])
    with torch.no_grad():
        model(images, nm)
    assert 0 < model.cmoe[0].kernel_cache.nbytes <= 2 ** 20
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, b = model(images, nm), reference.double()(images.double(), nm)
    assert_rel(a.anomaly_map, b.anomaly_map, 1e-4, "anomaly map after fused Adam")


@pytest.mark.parametrize("policy", CACHED)
def test_cache_is_not_used_while_weights_need_grad(policy):
    fast = _fast("torch", policy).train()
    general, prior, uts = _inputs("torch")
    p, aux = fast(general, prior, uts)                 # training: folded inside autograd
    ((p ** 2).mean() + aux.balance_loss).backward()
    assert fast.cache_bytes() == 0
    assert all(b.base_experts.grad is not None for b in fast.branches)
    _run(fast.eval(), general, prior, uts)
    assert fast.cache_bytes() > 0


def test_set_cache_and_clear():
    fast = _fast("torch", "all")
    general, prior, uts = _inputs("torch")
    _run(fast, general, prior, uts)
    assert fast.cache_bytes() > 0
    fast.clear_cache()
    assert fast.cache_bytes() == 0
    fast.set_cache("bounded", 1.0)
    assert fast.cache_policy == "bounded" and fast.kernel_cache.budget_mb == 1.0
    assert "cache='bounded'" in repr(fast)


@pytest.mark.parametrize("kw, err, match", [
    (dict(cache="some"), ValueError, "cache must be one of"),
    (dict(cache="all", cache_mb=10), ValueError, "cache_mb applies to cache='bounded'"),
    (dict(cache="bounded", cache_mb=-1), ValueError, "cache_mb must be finite and >= 0"),
    (dict(cache="bounded", cache_mb=float("nan")), ValueError, "cache_mb must be finite"),
    (dict(cache="bounded", cache_mb=True), TypeError, "cache_mb must be a number"),
])
def test_bad_policy_arguments(kw, err, match):
    with pytest.raises(err, match=match):
        FastCMoE(8, 8, 2, 4, 2, backend="torch", **kw)
    with pytest.raises(err, match=match):
        unimmad.accelerate(UniMMAD(UniMMADConfig.tiny()), **kw)


def test_fingerprint_sees_single_values_and_permutations():
    t = torch.randn(3, 5000)
    meta, content = fingerprint([t])
    for change in (lambda x: x.view(-1)[4097].add_(1e-4),
                   lambda x: x.copy_(x.flip(1)),
                   lambda x: x.view(-1)[-1].mul_(1.001)):        # the partial last block
        u = t.clone()
        change(u)
        assert not torch.equal(fingerprint([u])[1], content)
    assert torch.equal(fingerprint([t.clone()])[1], content)     # content, not storage
    assert fingerprint([t.double()])[0] != meta
    assert cmoe_cache.DEFAULT_POLICY == "none"
    assert KernelCache().policy == "none"
