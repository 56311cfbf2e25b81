"""Parity of the Triton kernels against float64 references (SPEC §3).

Run on the CPU interpreter (TRITON_INTERPRET=1, set in conftest.py) in CI and on CUDA where
present; sizes keep each launch to well under ~100 programs."""
import pytest
import torch

from unimmad import CMoE
from unimmad.models.cmoe import compose_leader_kernels, grouped_dynamic_filter

from cmoe_cases import (dyn_conv_reference, dynamic_filter, make_cmoe, oihw_from_bank,
                        route_all_to, smooth_inputs)
from helpers import TOL, assert_rel

from kernels import FastCMoE, cmoe_ops
from kernels import cmoe_triton as triton_impl

pytestmark = pytest.mark.interpreter
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def bank(NW, Co, Ci, k, dtype=torch.float32):
    return (torch.randn(NW, Co, k * k * Ci) / (k * (Ci ** 0.5))).to(DEV, dtype)


@pytest.mark.parametrize("k", [1, 3, 5])          # k = 5 with padding 2 broke older Triton convs
@pytest.mark.parametrize("channels_last", [False, True])
def test_dyn_conv_forward(k, channels_last, no_tf32):
    # Ci = 24, Co = 20: channel counts that are not powers of two; 7×9: odd H and W
    x = torch.randn(3, 24, 7, 9, device=DEV)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = bank(4, 20, 24, k)
    js = torch.tensor([0, 1, 1, 2, 2, 2], device=DEV)   # ragged: 1, 2, 3 jobs per sample
    jw = torch.tensor([3, 0, 1, 2, 2, 0], device=DEV)   # a weight used by several jobs
    out = torch.full((6, 20, 7, 9), float("nan"), device=DEV)  # poisoned
    y = triton_impl.dyn_conv(x, w, js, jw, k, "ieee", out=out)
    assert_rel(y, dyn_conv_reference(x.cpu(), w.cpu(), js.cpu(), jw.cpu(), k, "triton").to(DEV),
               TOL["fp32"], f"dyn_conv k={k}")


def test_dyn_conv_single_job_smaller_than_a_tile(no_tf32):
    # one job of 3×5 pixels: fewer pixels than BLOCK_M, fewer channels than BLOCK_N
    x = torch.randn(1, 5, 3, 5, device=DEV)
    w = bank(1, 3, 5, 5)
    js = jw = torch.zeros(1, dtype=torch.long, device=DEV)
    y = triton_impl.dyn_conv(x, w, js, jw, 5, "ieee")
    assert_rel(y, dyn_conv_reference(x.cpu(), w.cpu(), js.cpu(), jw.cpu(), 5, "triton").to(DEV),
               TOL["fp32"])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_dyn_conv_backward(k, no_tf32):
    x = torch.randn(3, 24, 7, 9, device=DEV)
    w = bank(4, 20, 24, k)
    js = torch.tensor([0, 1, 1, 2], device=DEV)
    jw = torch.tensor([3, 0, 0, 2], device=DEV)
    g = torch.randn(4, 20, 7, 9, device=DEV)
    x64 = x.cpu().double().requires_grad_(True)
    w64 = w.cpu().double().requires_grad_(True)
    ref = dyn_conv_reference(x64, w64, js.cpu(), jw.cpu(), k, "triton")
    dx_ref, dw_ref = torch.autograd.grad(ref, (x64, w64), g.cpu().double())
    dx, dw = triton_impl.dyn_conv_backward(g, x, w, js, jw, k, "ieee", True, True)
    assert_rel(dx, dx_ref.to(DEV), TOL["grad"], "grad x")
    assert_rel(dw, dw_ref.to(DEV), TOL["grad"], "grad weight")


@pytest.mark.parametrize("K, idx_rows", [
    (1, [[4], [0], [2]]),                      # top-K = 1
    (5, [[4, 0, 2, 1, 3], [0, 1, 2, 3, 4]]),  # top-K = number of leaders
    (2, [[3, 1], [3, 1], [3, 1]]),            # every unit routed to the same leaders
])
def test_compose(K, idx_rows):
    N, L, Co, Ci, k = 3, 5, 20, 6, 3
    base = torch.randn(N, Co, Ci, k, k, dtype=torch.float64)
    leaders = torch.randn(L, N, Co, dtype=torch.float64)
    idx = torch.tensor(idx_rows)
    scores = torch.softmax(torch.randn(len(idx_rows), K, dtype=torch.float64), 1)
    ref = (compose_leader_kernels(base, leaders, idx) * scores[:, :, None, None, None, None]).sum(1)
    out = torch.full((len(idx_rows), Co, k * k * Ci), float("nan"), device=DEV)
    got = triton_impl.compose(triton_impl.to_bank(base).float().to(DEV), leaders.float().to(DEV),
                              idx.to(DEV), scores.float().to(DEV), out=out)
    assert_rel(oihw_from_bank(got, k, "triton"), ref.to(DEV), TOL["fp32"], "compose")


def test_mix():
    L, Co, R = 5, 20, 54
    g0, bnk = torch.randn(Co, R, dtype=torch.float64), torch.randn(L, Co, R, dtype=torch.float64)
    idx = torch.tensor([[1, 4], [0, 1], [4, 4]])
    scores = torch.rand(3, 2, dtype=torch.float64)
    ref = g0 + (scores[:, :, None, None] * bnk[idx]).sum(1)
    out = torch.full((3, Co, R), float("nan"), device=DEV)
    got = triton_impl.mix(g0.float().to(DEV), bnk.float().to(DEV), idx.to(DEV),
                          scores.float().to(DEV), out=out)
    assert_rel(got, ref.to(DEV), TOL["fp32"], "mix")


@pytest.mark.parametrize("k", [1, 3, 5])
def test_dynamic_filter_matches_grouped_reference(k, no_tf32):
    # samples with 1, 2, 3 and 4 modalities in one batch
    uts = torch.repeat_interleave(torch.arange(4), torch.tensor([1, 2, 3, 4]))
    E, N, L = 24, 3, 5
    x = torch.randn(4, E, 7, 9, dtype=torch.float64)
    fixed = torch.randn(E, E, k, k, dtype=torch.float64) / (k * 5)
    base = torch.randn(N, E, E, k, k, dtype=torch.float64) / (k * 5)
    leaders = torch.randn(L, N, E, dtype=torch.float64)
    idx = torch.stack([torch.randperm(L)[:2] for _ in range(10)])
    scores = torch.softmax(torch.randn(10, 2, dtype=torch.float64), 1)
    ref = grouped_dynamic_filter(x, uts, fixed, compose_leader_kernels(base, leaders, idx), scores)
    got = dynamic_filter(x.float().to(DEV), uts.to(DEV), fixed.float().to(DEV),
                         base.float().to(DEV), leaders.float().to(DEV), idx.to(DEV),
                         scores.float().to(DEV), backend="triton")
    assert_rel(got, ref.to(DEV), TOL["fp32"], "dynamic_filter")


CASES = {
    "mixed_modalities": dict(units=[1, 2, 3, 4], K=2, route=None),
    "single_unit": dict(units=[1], K=2, route=None),
    "topk_1": dict(units=[2, 1], K=1, route=None),
    "topk_all": dict(units=[1, 2], K=5, route=None),
    "one_leader": dict(units=[2, 2], K=2, route=(3, 1)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fast_cmoe_triton_matches_float64_reference(case, mode, no_tf32):
    c = CASES[case]
    ref = make_cmoe(K=c["K"])
    if c["route"]:
        route_all_to(ref, c["route"])
    ref.train(mode == "train")
    fast = FastCMoE.from_reference(ref, backend="triton").to(DEV)
    ref64 = ref.double()
    general, prior, uts = smooth_inputs(ref64, c["units"])
    g64 = general.double().requires_grad_(True)
    p_ref, aux_ref = ref64(g64, prior.double(), uts)
    g32 = general.to(DEV).requires_grad_(True)
    p, aux = fast(g32, prior.to(DEV), uts.to(DEV))
    assert_rel(p, p_ref.to(DEV), TOL["fp32"], "p")
    for a, b in zip(aux.indices, aux_ref.indices):
        assert torch.equal(a.cpu(), b)
    if mode == "eval":
        return
    w = torch.randn_like(p_ref)
    ((p_ref * w).sum() + aux_ref.balance_loss).backward()
    ((p * w.to(p)).sum() + aux.balance_loss).backward()
    assert_rel(g32.grad, g64.grad.to(DEV), TOL["grad"], "grad general")
    for (name, a), b in zip(fast.named_parameters(), ref64.parameters()):
        assert_rel(a.grad, b.grad.to(DEV), TOL["grad"], f"grad {name}")


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, TOL["bf16"]),
                                        (torch.float16, TOL["fp16"])])
def test_half_inputs_accumulate_in_fp32(dtype, tol):
    x = torch.randn(2, 24, 7, 9, device=DEV)
    w = bank(2, 20, 24, 5)
    js = torch.tensor([0, 1, 1], device=DEV)
    jw = torch.tensor([1, 0, 1], device=DEV)
    y = triton_impl.dyn_conv(x.to(dtype), w.to(dtype), js, jw, 5)
    ref = dyn_conv_reference(x.cpu(), w.cpu(), js.cpu(), jw.cpu(), 5, "triton")
    assert y.dtype == dtype
    assert_rel(y.float(), ref.to(DEV).float(), tol, f"{dtype} dyn_conv")
