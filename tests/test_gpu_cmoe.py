"""C-MoE parity at paper dimensions on CUDA (fp32 with IEEE dot, TF32, bf16).  Skipped
without a GPU; ``benchmarks/gpu_suite.sh`` runs them on a lent H200."""
import pytest
import torch

from kernels import FastCMoE
from unimmad.bench.cases import level_case
from helpers import TOL, assert_rel

pytestmark = pytest.mark.gpu


def _fast(module, backend="triton"):
    return FastCMoE.from_reference(module, backend=backend)


def _routing(module, units, seed=0):
    g = torch.Generator().manual_seed(seed)
    L, K = module.num_leaders, module.top_k
    idx = torch.stack([torch.randperm(L, generator=g)[:K] for _ in range(units)]).cuda()
    scores = torch.softmax(torch.randn(units, K, generator=g), 1).cuda()
    return idx, scores


@pytest.mark.parametrize("level", [1, 2, 3])
def test_fp32_ieee_whole_cmoe(level, no_tf32):
    # 4 units from 2 samples (shared values), eval mode, full-precision dot
    module, general, prior, uts = level_case(level, 4, samples=2, device="cuda")
    module.eval()
    fast = _fast(module)
    with torch.no_grad():
        p, aux = fast(general, prior, uts)
        p_ref, aux_ref = module.double()(general.double(), prior.double(), uts)
    assert_rel(p, p_ref, TOL["fp32"], f"level {level}")
    for a, b in zip(aux.indices, aux_ref.indices):
        assert torch.equal(a, b)


@pytest.mark.parametrize("precision, dtype, tol", [
    ("tf32", torch.float32, TOL["tf32"]),
    ("ieee", torch.bfloat16, TOL["bf16"]),
])
@pytest.mark.parametrize("level", [1, 3])
def test_branch_with_fixed_routing(level, precision, dtype, tol):
    """TF32 and bf16 change the router's inputs enough to flip near-tied leaders, so the
    reduced-precision contract is checked per branch with the routing given."""
    module, general, prior, uts = level_case(level, 8, samples=4, device="cuda")
    fast = _fast(module).to(dtype)
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        for b_fast, b_ref in zip(fast.branches, module.double().branches):
            x = torch.randn(4, 256, *general.shape[2:], device="cuda")
            x = x.contiguous(memory_format=torch.channels_last)
            idx, scores = _routing(module, 8)
            with torch.no_grad():
                z = fast.branch_filter(b_fast, x.to(dtype), uts, idx, scores.to(dtype))
                z_ref = b_ref.filter_reference(x.double(), uts, idx, scores.double())
            assert_rel(z.float(), z_ref, tol, f"level {level} k={b_ref.kernel_size} {dtype}")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_fp32_gradients_level3(no_tf32):
    module, general, prior, uts = level_case(3, 4, samples=2, device="cuda")
    module.train()
    fast = _fast(module)
    ref64 = module.double()
    w = torch.randn(4, 1024, 16, 16, device="cuda", dtype=torch.float64)
    g32 = general.clone().requires_grad_(True)
    g64 = general.double().requires_grad_(True)
    p, aux = fast(g32, prior, uts)
    p_ref, aux_ref = ref64(g64, prior.double(), uts)
    for a, b in zip(aux.indices, aux_ref.indices):
        assert torch.equal(a, b)
    ((p * w.float()).sum() + aux.balance_loss).backward()
    ((p_ref * w).sum() + aux_ref.balance_loss).backward()
    assert_rel(g32.grad, g64.grad, TOL["grad"], "grad general")
    for (name, a), b in zip(fast.named_parameters(), ref64.parameters()):
        assert_rel(a.grad, b.grad, TOL["grad"], f"grad {name}")


def test_triton_matches_torch_backend_bf16_u32():
    # the benchmark configuration: U = 32 units, bf16, channels_last
    module, general, prior, uts = level_case(1, 32, device="cuda")
    module.eval()
    fast_t = _fast(module, "triton").to(torch.bfloat16)
    fast_p = _fast(module, "torch").to(torch.bfloat16)
    general = general.bfloat16().contiguous(memory_format=torch.channels_last)
    prior = prior.bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, aux_a = fast_t(general, prior, uts)
        b, aux_b = fast_p(general, prior, uts)
    same = torch.stack([(x == y).all(1) for x, y in zip(aux_a.indices, aux_b.indices)]).all(0)
    assert same.float().mean() > 0.9  # bf16 routing may flip a near-tied unit
    assert_rel(a[same].float(), b[same].float(), TOL["bf16"], "triton vs torch bf16")
