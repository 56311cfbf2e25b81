"""FastCMoE (torch backend on CPU), the fused ops' registration, accelerate(), the folded
kernel cache, and torch.compile."""
import pytest
import torch

import unimmad
from unimmad import CMoE, UniMMAD, UniMMADConfig

from cmoe_cases import make_cmoe, make_inputs, route_all_to, smooth_inputs
from helpers import TOL, assert_rel

from kernels import FastCMoE, accelerate, backend, cmoe_triton


def _fwd_bwd(module, general, prior, uts, w=None):
    general = general.clone().requires_grad_(True)
    p, aux = module(general, prior, uts)
    if w is None:
        return p, aux, None
    ((p * w.to(p)).sum() + aux.balance_loss).backward()
    return p, aux, general.grad


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("units", [[1, 2, 3, 4], [1], [3]])
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_backend_matches_float64_reference(mode, units, channels_last):
    ref = make_cmoe().train(mode == "train")
    fast = FastCMoE.from_reference(ref, backend="torch")
    ref64 = ref.double()
    general, prior, uts = smooth_inputs(ref64, units)
    if channels_last:
        general = general.contiguous(memory_format=torch.channels_last)
        prior = prior.contiguous(memory_format=torch.channels_last)
    w = torch.randn(len(uts), 20, 7, 9, dtype=torch.float64)
    p_ref, aux_ref, gx_ref = _fwd_bwd(ref64, general.double(), prior.double(), uts, w)
    p, aux, gx = _fwd_bwd(fast, general, prior, uts, w if mode == "train" else None)
    assert_rel(p, p_ref, TOL["fp32"], "p")
    for a, b in zip(aux.indices, aux_ref.indices):
        assert torch.equal(a, b)
    if mode == "train":
        assert_rel(gx, gx_ref, TOL["grad"], "grad general")
        for (name, a), b in zip(fast.named_parameters(), ref64.parameters()):
            assert_rel(a.grad, b.grad, TOL["grad"], f"grad {name}")


@pytest.mark.parametrize("K, route", [(1, None), (5, None), (2, (4, 0))])
def test_torch_backend_routing_edge_cases(K, route):
    # top-K = 1, top-K = number of leaders, every unit routed to the same leaders
    ref = make_cmoe(K=K).eval()
    if route:
        route_all_to(ref, route)
    fast = FastCMoE.from_reference(ref, backend="torch")
    general, prior, uts = make_inputs([2, 1, 3])
    with torch.no_grad():
        p_ref, aux_ref = ref.double()(general.double(), prior.double(), uts)
        p, aux = fast(general, prior, uts)
    assert_rel(p, p_ref, TOL["fp32"])
    if route:
        assert all(bool((i == torch.tensor(route)).all()) for i in aux.indices)


def test_torch_mix_gathers_at_most_8_mib_of_kernels_per_chunk(monkeypatch):
    """Off the CPU's in-place path (here: a bf16 bank) mix gathers the chosen kernels in
    chunks of units, each chunk's gathered kernels within 8 MiB: 1 MiB kernels go 8 units
    at a time, one gather per top-k slot, and the result is the float64 sum."""
    from kernels import cmoe_torch
    Co, R, L, U, K = 512, 1024, 3, 17, 2                # bf16 [512, 1024]: 1 MiB per kernel
    g = torch.Generator().manual_seed(0)
    g0 = torch.randn(Co, R, generator=g).bfloat16()
    bank = torch.randn(L, Co, R, generator=g).bfloat16()
    idx = torch.randint(0, L, (U, K), generator=g)
    sc = torch.rand(U, K, generator=g)
    rows, real = [], torch.Tensor.index_select

    def spy(self, dim, index):
        if self is bank:
            rows.append(index.numel())
        return real(self, dim, index)
    monkeypatch.setattr(torch.Tensor, "index_select", spy)
    out = cmoe_torch.mix(g0, bank, idx, sc)
    monkeypatch.undo()
    assert rows == [8, 8, 8, 8, 1, 1]                   # chunks of 8, 8 and 1 units
    ref = g0.double() + sum(sc[:, j, None, None].double() * bank.double()[idx[:, j]]
                            for j in range(K))
    assert out.dtype == torch.bfloat16
    assert_rel(out, ref, TOL["bf16"], "chunked mix")


def test_condition_runs_the_key_half_once_per_sample(monkeypatch):
    """With several units per sample the 3 × 3 condition conv is split: its key half runs
    on the B sample keys, its query half on the U units (same result as the reference's
    conv of the concatenation); with one unit per sample it is the reference's one conv."""
    import kernels.cmoe as KC
    ref = make_cmoe(seed=0).double().eval()
    fast = FastCMoE.from_reference(ref, backend="torch").eval()
    E = ref.embed_dim
    seen = []
    real = torch.nn.functional.conv2d

    def conv2d(x, w, *a, **k):
        seen.append((x.shape[0], w.shape[1]))
        return real(x, w, *a, **k)
    monkeypatch.setattr(KC, "F", type("F", (), {"conv2d": staticmethod(conv2d)}))
    for units, want in (([2, 3], [(2, E), (5, E)]), ([1, 1, 1], [])):
        general, prior, uts = make_inputs(units, C=20, dtype=torch.float64)
        key = ref.key(general)
        seen.clear()
        with torch.no_grad():
            got = fast.condition(key, prior, uts)
            assert seen == want
            expected = ref.condition(key, prior, uts)
        assert_rel(got, expected, 1e-12, f"condition {units}")


def test_reference_backend_is_the_reference():
    ref = make_cmoe().eval()
    fast = FastCMoE.from_reference(ref, backend="reference")
    general, prior, uts = make_inputs([2, 2])
    with torch.no_grad():
        torch.testing.assert_close(fast(general, prior, uts)[0], ref(general, prior, uts)[0],
                                   rtol=0, atol=0)


def test_bf16_torch_backend():
    ref = make_cmoe().eval()
    fast = FastCMoE.from_reference(ref, backend="torch").to(torch.bfloat16)
    general, prior, uts = make_inputs([1, 2])
    with torch.no_grad():
        p_ref, _ = ref.double()(general.double(), prior.double(), uts)
        p, _ = fast(general.bfloat16(), prior.bfloat16(), uts)
    assert p.dtype == torch.bfloat16
    assert_rel(p.float(), p_ref, TOL["bf16"])


def test_state_dicts_load_both_ways():
    ref = make_cmoe()
    fast = FastCMoE(20, 24, 3, 5, 2, backend="torch")
    assert list(fast.state_dict()) == list(ref.state_dict())
    fast.load_state_dict(ref.state_dict())
    ref2 = make_cmoe()
    ref2.load_state_dict(fast.state_dict())
    for a, b in zip(ref.state_dict().values(), ref2.state_dict().values()):
        assert torch.equal(a, b)


def test_backend_errors(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        FastCMoE(8, 8, 2, 4, 2, backend="cuda")
    monkeypatch.setattr(backend, "INTERPRET", False)
    fast = FastCMoE(8, 8, 2, 4, 2, backend="triton")
    general, prior, uts = make_inputs([1], C=8)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        fast(general, prior, uts)
    assert backend.resolve("auto", torch.zeros(1)) == "torch"


def test_from_reference_rejects_other_modules():
    with pytest.raises(TypeError):
        FastCMoE.from_reference(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("op", ["dyn_conv", "dyn_conv_channels_last", "compose", "mix"])
def test_custom_op_registration_and_gradients(op):
    """opcheck validates schema, fake (meta) kernels (their strides: the input gradient of a
    channels-last x is channels-last) and autograd registration; gradcheck checks the
    explicit backward formulas in float64."""
    d = dict(dtype=torch.float64)
    if op.startswith("dyn_conv"):
        k = 3
        x = torch.randn(2, 3, 4, 5, **d)
        if op == "dyn_conv_channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        args = (x.requires_grad_(True),
                torch.randn(2, 4, 3 * k * k, **d, requires_grad=True),
                torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1]), k, False, False, "torch", "ieee")
        fn = torch.ops.unimmad.dyn_conv.default
    elif op == "compose":
        args = (torch.randn(3, 4, 6, **d, requires_grad=True),
                torch.randn(5, 3, 4, **d, requires_grad=True),
                torch.tensor([[0, 4], [2, 1]]), torch.rand(2, 2, **d, requires_grad=True), "torch")
        fn = torch.ops.unimmad.compose.default
    else:
        args = (torch.randn(4, 6, **d, requires_grad=True), torch.randn(5, 4, 6, **d, requires_grad=True),
                torch.tensor([[0, 4], [2, 2]]), torch.rand(2, 2, **d, requires_grad=True), "torch")
        fn = torch.ops.unimmad.mix.default
    torch.library.opcheck(fn, args)
    assert torch.autograd.gradcheck(lambda *t: fn(*t), args)


def _op_args(op):
    d = dict(dtype=torch.float64)
    if op == "dyn_conv":
        k = 3
        return torch.ops.unimmad.dyn_conv.default, [
            torch.randn(2, 3, 4, 5, **d), torch.randn(2, 4, 3 * k * k, **d),
            torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1]), k, False, False, "torch", "ieee"], (0, 1)
    if op == "compose":
        return torch.ops.unimmad.compose.default, [
            torch.randn(3, 4, 6, **d), torch.randn(5, 3, 4, **d), torch.tensor([[0, 4], [2, 1]]),
            torch.rand(2, 2, **d), "torch"], (0, 1, 3)
    return torch.ops.unimmad.mix.default, [
        torch.randn(4, 6, **d), torch.randn(5, 4, 6, **d), torch.tensor([[0, 4], [2, 2]]),
        torch.rand(2, 2, **d), "torch"], (0, 1, 3)


@pytest.mark.parametrize("op", ["dyn_conv", "compose", "mix"])
def test_custom_op_gradient_of_each_input_alone(op):
    """Frozen weights with a trainable input (and the reverse) are common in training: the
    gradient of each input, when it is the only one that needs it, equals its gradient when
    all need it (a backward that reads the wrong needs_input_grad slot drops it)."""
    torch.manual_seed(0)
    fn, args, diff = _op_args(op)
    full = [a.clone().requires_grad_(True) if i in diff else a for i, a in enumerate(args)]
    out = fn(*full)
    g_out = torch.randn_like(out)
    ref = torch.autograd.grad(out, [full[i] for i in diff], g_out)
    for j, i in enumerate(diff):
        one = [a.clone().requires_grad_(n == i) if n in diff else a for n, a in enumerate(args)]
        (g,) = torch.autograd.grad(fn(*one), [one[i]], g_out)
        torch.testing.assert_close(g, ref[j], rtol=1e-12, atol=1e-12, msg=f"input {i} of {op}")


@pytest.mark.interpreter
def test_triton_cmoe_feeds_the_conv_channels_last_and_keeps_gradients_so(monkeypatch):
    """The branch values are GroupNorm outputs (NCHW); the fused C-MoE converts them before
    the conv op, so the kernels read channels-last values and the gradient leaves the op
    channels-last (the layout their 16-byte asynchronous copies need)."""
    seen = []
    fwd, bwd = cmoe_triton.dyn_conv, cmoe_triton.dyn_conv_backward

    def spy_fwd(x, *a, **kw):
        seen.append(("x", x.is_contiguous(memory_format=torch.channels_last)))
        return fwd(x, *a, **kw)

    def spy_bwd(grad, x, *a, **kw):
        seen.append(("grad", grad.is_contiguous(memory_format=torch.channels_last)))
        seen.append(("saved x", x.is_contiguous(memory_format=torch.channels_last)))
        return bwd(grad, x, *a, **kw)

    monkeypatch.setattr(cmoe_triton, "dyn_conv", spy_fwd)
    monkeypatch.setattr(cmoe_triton, "dyn_conv_backward", spy_bwd)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    fast = FastCMoE.from_reference(make_cmoe(ks=(3,)), backend="triton").to(dev).train()
    branch = fast.branches[0]
    uts = torch.tensor([0, 1, 1], device=dev)
    x = torch.randn(2, 24, 5, 6, device=dev, requires_grad=True)   # an NCHW value
    idx = torch.tensor([[0, 1], [2, 3], [4, 0]], device=dev)
    scores = torch.softmax(torch.randn(3, 2, device=dev), 1)
    z = fast.branch_filter(branch, x, uts, idx, scores)
    z.square().sum().backward()
    assert ("x", True) in seen and ("x", False) not in seen
    assert ("grad", True) in seen and ("saved x", True) in seen
    assert not any(ok is False for name, ok in seen), seen
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_accelerate_in_place_keeps_parameters_and_outputs():
    torch.manual_seed(0)
    model = UniMMAD(UniMMADConfig.tiny()).eval()
    ref = UniMMAD(UniMMADConfig.tiny()).eval()
    ref.load_state_dict(model.state_dict())
    params = {n: p for n, p in model.named_parameters()}
    out = unimmad.accelerate(model, backend="torch")
    assert out is model
    assert all(isinstance(c, FastCMoE) for c in model.cmoe)
    assert all(p is params[n] for n, p in model.named_parameters())
    images = torch.randn(3, 4, 3, 64, 64)
    nm = torch.tensor([1, 4, 2])
    with torch.no_grad():
        a, b = model(images, nm), ref(images, nm)
    assert_rel(a.anomaly_map, b.anomaly_map, 1e-4)
    model.train(), ref.train()
    la, _ = model.loss(images, nm)
    lb, _ = ref.loss(images, nm)
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no unimmad.CMoE"):
        accelerate(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_torch_compile_has_no_graph_break(mode):
    ref = make_cmoe().train(mode == "train")
    fast = FastCMoE.from_reference(ref, backend="torch")
    general, prior, uts = make_inputs([2, 1])
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    with torch.set_grad_enabled(mode == "train"):
        p, aux = compiled(general, prior, uts)
        p_eager, _ = fast(general, prior, uts)
    torch.testing.assert_close(p, p_eager, rtol=1e-5, atol=1e-6)
    if mode == "train":
        (p.square().mean() + aux.balance_loss).backward()
        assert all(q.grad is not None for q in fast.parameters())


def test_eager_inference_stays_out_of_the_custom_op_machinery():
    """Plain inference of an accelerated model calls the fused implementations directly:
    the custom ops' first call imports torch._dynamo (~75 MB resident), which would make
    the fast path need more memory than the reference."""
    import subprocess
    import sys
    code = ("import sys, torch, unimmad\n"
            "from unimmad.bench.cases import build_model, model_inputs, preset_config\n"
            "cfg = preset_config('tiny')\n"
            "m = build_model(cfg, 0, torch.float32, 'cpu', 'torch')\n"
            "im, nm = model_inputs(cfg, 2, 2, 1)\n"
            "with torch.inference_mode():\n"
            "    m(im, nm)\n"
            "with torch.no_grad():\n"
            "    m(im, nm)\n"
            "assert 'torch._dynamo' not in sys.modules, 'custom-op path taken'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
