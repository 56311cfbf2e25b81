"""Fused anomaly map, image score and decompression loss (kernels.amap) against
float64 references (SPEC §3): the torch fast path everywhere, the Triton kernels under
the marker ``interpreter`` (TRITON_INTERPRET=1 on the CPU, set in conftest.py), and a
``gpu`` set at paper shapes.

Shapes keep every interpreter launch well under ~100 programs; Triton outputs are written
into NaN-poisoned ``out=`` buffers where the launcher takes one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unimmad
from unimmad.scoring import gaussian_kernel1d, top_k_count

from helpers import TOL, assert_rel

import kernels
from kernels import amap_torch, amap_triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = pytest.param("triton", marks=pytest.mark.interpreter)
BACKENDS = ["torch", TRITON]

# levels with channel counts that are not powers of two and odd, non-square sizes
ODD_DIMS = ((24, 13, 11), (40, 7, 6), (72, 4, 3))
# samples with 1, 2, 3 and 4 units, listed out of order (units of a sample not adjacent)
RAGGED = [2, 0, 1, 3, 2, 1, 3, 2, 3, 3]


def make_levels(unit_to_sample, dims=ODD_DIMS, dtype=torch.float32, channels_last=False,
                similarity=0.7):
    """Priors and predictions whose cosines spread over (−1, 1) (``p = s·u + noise``)."""
    uts = torch.tensor(unit_to_sample, dtype=torch.long)
    U = len(unit_to_sample)
    pri, pre = [], []
    for c, h, w in dims:
        u = torch.randn(U, c, h, w, dtype=torch.float64)
        s = similarity * torch.rand(U, 1, h, w, dtype=torch.float64) * 3
        p = s * u + torch.randn_like(u)
        u, p = u.to(DEV, dtype), p.to(DEV, dtype)
        if channels_last:
            u = u.contiguous(memory_format=torch.channels_last)
            p = p.contiguous(memory_format=torch.channels_last)
        pri.append(u)
        pre.append(p)
    return pri, pre, uts.to(DEV)


def ref_map(pri, pre, uts, size, B=None, mode="mean", sigma=4.0, ks=15):
    """The reference map in float64 on the CPU (from the exact input values)."""
    return unimmad.anomaly_map([t.cpu().double() for t in pri], [t.cpu().double() for t in pre],
                               uts.cpu(), size, B, mode, sigma, ks)


def safe_reference_loss(pri, pre, uts, weight=None, gamma=2.0):
    """The reference loss in float64 with NaN-free derivatives at zero vectors (the
    reference's ``sqrt(‖u‖²‖p‖²)`` has a 0/0 derivative there; the clamp makes the true
    derivative finite)."""
    levels = []
    for u, p in zip(pri, pre):
        dot = (u * p).sum(1)
        q = u.square().sum(1) * p.square().sum(1)
        pos = q > 0
        s = torch.where(pos, torch.where(pos, q, 1.0).sqrt(), 0.0)
        a = 1.0 - dot / s.clamp_min(1e-8)
        f = a.detach().pow(gamma) if float(gamma).is_integer() \
            else a.detach().clamp_min(0).pow(gamma)
        per_unit = (f * a).flatten(1).mean(1)
        if weight is not None:
            per_unit = per_unit * weight[uts]
        levels.append(per_unit.mean())
    return torch.stack(levels).mean(), levels


def run_map(backend, pri, pre, uts, size, B, mode="mean", sigma=4.0, ks=15):
    """The map of one backend; the Triton launchers write into NaN-poisoned buffers."""
    if backend != "triton":
        return kernels.anomaly_map(pri, pre, uts, size, B, mode, sigma, ks, backend=backend)
    size = (size, size) if isinstance(size, int) else tuple(size)
    U = uts.shape[0]
    n = max(1, U * sum(u.shape[2] * u.shape[3] for u in pri))
    a = torch.full((n,), float("nan"), device=DEV)
    a, _ = amap_triton.cosine_maps(pri, pre, out=a)
    out = torch.full((B, *size), float("nan"), device=DEV)
    dims = [tuple(u.shape[2:]) for u in pri]
    got = amap_triton.combine_maps(a, dims, uts, B, size, mode, sigma, ks, out=out)
    # the public entry point gives the same numbers
    assert torch.equal(got, kernels.anomaly_map(pri, pre, uts, size, B, mode, sigma, ks,
                                                backend="triton"))
    return got


# ----------------------------------------------------------------------------- operators
@pytest.mark.parametrize("n_out, n_in", [(45, 13), (7, 7), (5, 11), (1, 4), (9, 1)])
def test_interp_matrix_is_bilinear_align_corners(n_out, n_in):
    # upsampling, identity, downsampling, a 1-pixel output and a 1-pixel input
    x = torch.randn(3, n_in, dtype=torch.float64)
    ref = F.interpolate(x[None, :, None, :], size=(1, n_out), mode="bilinear",
                        align_corners=True)[0, :, 0]
    torch.testing.assert_close(x @ amap_torch.interp_matrix(n_out, n_in).t(), ref)


@pytest.mark.parametrize("n, sigma, ks", [(40, 4.0, 15), (6, 4.0, 15), (9, 1.5, 5)])
def test_blur_matrix_is_zero_padded_gaussian(n, sigma, ks):
    # an image narrower than the kernel (6 < 15) keeps only the taps that fall inside
    x = torch.randn(2, n, dtype=torch.float64)
    g = gaussian_kernel1d(sigma, ks, torch.float64)
    ref = F.conv1d(x[:, None], g.view(1, 1, -1), padding=ks // 2)[:, 0]
    torch.testing.assert_close(x @ amap_torch.blur_matrix(n, sigma, ks).t(), ref)


def test_cosine_stats_chunks_cover_every_pixel():
    # a chunk smaller than one unit (pixel ranges) and one spanning several units
    u, p = torch.randn(5, 6, 7, 9, dtype=torch.float64), torch.randn(5, 6, 7, 9, dtype=torch.float64)
    for chunk in (10, 6 * 63 * 2):
        for cl in (False, True):
            uu = u.contiguous(memory_format=torch.channels_last) if cl else u
            dot, nu, npp = amap_torch.cosine_stats(uu, p, chunk=chunk)
            torch.testing.assert_close(dot, (u * p).sum(1))
            torch.testing.assert_close(nu, u.square().sum(1))
            torch.testing.assert_close(npp, p.square().sum(1))


@pytest.mark.parametrize("U, C, P, target", [
    (5, 6, 63, 10), (5, 6, 63, 6 * 63 * 2), (5, 6, 63, 6 * 63 * 2 + 5), (3, 4, 10, 40),
    (3, 4, 10, 39), (7, 1, 1, 3), (2, 8, 5, 8), (1, 2, 3, 1 << 62)])
def test_chunk_plan_covers_every_element_once_within_the_target(U, C, P, target):
    """Blocks of units × pixels tile [U, P] exactly once; each holds at most ``target``
    elements of one operand (C per pixel; one pixel when C alone exceeds it) and as many
    whole units as fit, so few blocks are made."""
    seen = np.zeros((U, P), int)
    blocks = list(amap_torch._chunks(U, C, P, target))
    for n0, n1, q0, q1 in blocks:
        assert 0 <= n0 < n1 <= U and 0 <= q0 < q1 <= P
        assert C * (n1 - n0) * (q1 - q0) <= max(target, C)
        seen[n0:n1, q0:q1] += 1
    assert (seen == 1).all()
    if C * P <= target:                                  # whole units, as many as fit
        per = target // (C * P)
        assert len(blocks) == -(-U // per)
    else:                                                # pixel ranges of one unit
        q = max(1, target // C)
        assert len(blocks) == U * -(-P // q)


def test_chunk_target_is_the_cpu_constant_and_whole_tensors_on_cuda():
    assert amap_torch._chunk_target(torch.device("cpu")) == amap_torch.CHUNK_ELEMENTS == 1 << 21
    assert amap_torch._chunk_target(torch.device("cuda")) >= 1 << 62


@pytest.mark.parametrize("channels_last", [False, True])
def test_loss_gradient_is_rounded_once_to_a_low_precision_output(channels_last):
    """``focal_cosine_grad`` with bf16 x, y and fp32 coefficients: the sum is formed in fp32
    and rounded once to bf16 (chunk by chunk through an fp32 buffer) — not product by
    product in bf16, which differs in a large share of the elements."""
    g_ = torch.Generator().manual_seed(5)
    U, C, H, W = 3, 6, 5, 7
    x = torch.randn(U, C, H, W, generator=g_).bfloat16()
    y = torch.randn(U, C, H, W, generator=g_).bfloat16()
    if channels_last:
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    ca, cb = torch.randn(U, H, W, generator=g_), torch.randn(U, H, W, generator=g_)
    g = torch.rand(U, generator=g_) + 0.5
    c0, c1 = (ca * g[:, None, None])[:, None], (cb * g[:, None, None])[:, None]
    want = (x.float() * c0 + y.float() * c1).bfloat16()
    for chunk in (None, 40):
        out = amap_torch.focal_cosine_grad(g, ca, cb, x, y, chunk=chunk)
        assert out.dtype == torch.bfloat16
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert (out != want).float().mean() < 0.01
        torch.testing.assert_close(out.float(), want.float(), rtol=1e-2, atol=1e-2)
    # fp32 in, fp32 out: written in place, the same values
    out32 = amap_torch.focal_cosine_grad(g, ca, cb, x.float(), y.float())
    torch.testing.assert_close(out32, x.float() * c0 + y.float() * c1, rtol=1e-6, atol=1e-6)


def test_csr_groups_units_by_sample():
    uts = torch.tensor(RAGGED + [5])          # sample 4 has no unit
    order, offsets = amap_triton._csr(uts, 6)
    assert offsets.tolist() == [0, 1, 3, 6, 10, 10, 11]
    for b in range(6):
        units = order[offsets[b]:offsets[b + 1]].long()
        assert (uts[units] == b).all() and units.tolist() == sorted(units.tolist())


# ----------------------------------------------------------------------------- map
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["mean", "joint"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_map_matches_reference(backend, mode, channels_last):
    # ragged, unsorted units; odd H_l ≠ W_l; output 45×37 is not a multiple of the tile
    pri, pre, uts = make_levels(RAGGED, channels_last=channels_last)
    out = run_map(backend, pri, pre, uts, (45, 37), 4, mode)
    assert out.dtype == torch.float32 and out.shape == (4, 45, 37)
    assert_rel(out, ref_map(pri, pre, uts, (45, 37), 4, mode).to(DEV), TOL["fp32"], "map")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["mean", "joint"])
def test_map_geometry_edge_cases(backend, mode):
    # one level; output smaller than the feature map (downsampling) and narrower than the
    # 15-tap kernel; an empty sample (num_samples > max + 1) gives a zero map
    pri, pre, uts = make_levels([0, 2, 2], dims=((5, 13, 11),))
    out = run_map(backend, pri, pre, uts, (6, 5), 4, mode)
    ref = ref_map(pri, pre, uts, (6, 5), 4, mode)
    assert_rel(out, ref.to(DEV), TOL["fp32"], "map")
    assert float(out[1].abs().max()) == 0.0 and float(out[3].abs().max()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_other_blur_and_wide_upsampling(backend):
    # σ = 1.5 with a 5-tap kernel; 3×2 → 70×33 (large upsampling factor, tiles in x and y)
    pri, pre, uts = make_levels([0, 0, 1], dims=((8, 3, 2), (4, 9, 9)))
    out = run_map(backend, pri, pre, uts, (70, 33), 2, "mean", 1.5, 5)
    assert_rel(out, ref_map(pri, pre, uts, (70, 33), 2, "mean", 1.5, 5).to(DEV),
               TOL["fp32"], "map")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["mean", "joint"])
def test_map_zero_vectors_give_no_nan(backend, mode):
    # zero priors, zero predictions, both zero at one pixel, and a whole zero unit: A = 1
    pri, pre, uts = make_levels([0, 1, 1], dims=((6, 5, 4), (10, 3, 3)))
    pri[0][0, :, 1, 1] = 0
    pre[0][1, :, 2, 3] = 0
    pri[0][2, :, 0, 0] = 0
    pre[0][2, :, 0, 0] = 0
    pri[1][2] = 0
    out = run_map(backend, pri, pre, uts, 19, 2, mode)
    assert torch.isfinite(out).all()
    assert_rel(out, ref_map(pri, pre, uts, 19, 2, mode).to(DEV), TOL["fp32"], "map")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["mean", "joint"])
def test_identical_priors_and_predictions_give_zero_map(backend, mode):
    pri, _, uts = make_levels([0, 1, 1, 2], dims=((6, 5, 4), (10, 3, 3)))
    out = run_map(backend, pri, [t.clone() for t in pri], uts, 20, 3, mode)
    assert float(out.abs().max()) < 1e-5          # fp32 rounding of 1 − cos only
    score = kernels.image_score(out, backend="torch")
    assert float(score.abs().max()) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_map_low_precision_inputs(backend, dtype):
    # bf16/fp16 storage, fp32 accumulation; one level channels-last, mixed in one call
    pri, pre, uts = make_levels(RAGGED, dtype=dtype)
    pre[1] = pre[1].contiguous(memory_format=torch.channels_last)
    out = run_map(backend, pri, pre, uts, (45, 37), 4, "mean")
    assert out.dtype == torch.float32
    tol = TOL["bf16" if dtype == torch.bfloat16 else "fp16"]
    assert_rel(out, ref_map(pri, pre, uts, (45, 37), 4).to(DEV), tol, "map")


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_and_loss_on_strided_crops(backend):
    # crops of larger tensors: pixel rows are not evenly spaced (stride_h ≠ W·stride_w)
    pri, pre, uts = make_levels([0, 1, 1], dims=((6, 5, 7), (10, 4, 6)))
    pri = [t[:, :, :-1, 1:-1] for t in pri]
    pre = [t.contiguous(memory_format=torch.channels_last)[:, :, 1:, 2:] for t in pre]
    out = run_map(backend, pri, pre, uts, 17, 2, "mean")
    assert_rel(out, ref_map(pri, pre, uts, 17, 2).to(DEV), TOL["fp32"], "map")
    ps = [t.clone().requires_grad_(True) for t in pre]
    loss, _ = kernels.decompression_loss(pri, ps, uts, backend=backend)
    loss.backward()
    ps64 = [t.detach().cpu().double().requires_grad_(True) for t in pre]
    ref, _ = safe_reference_loss([t.cpu().double() for t in pri], ps64, uts.cpu())
    ref.backward()
    assert_rel(loss, ref.to(DEV), TOL["fp32"], "loss")
    for a, b in zip(ps, ps64):
        assert_rel(a.grad, b.grad.to(DEV), TOL["grad"], "grad p")


def test_map_float64_stays_float64_on_the_torch_path():
    pri, pre, uts = make_levels([0, 1], dims=((6, 5, 4),), dtype=torch.float64)
    out = kernels.anomaly_map(pri, pre, uts, 12, backend="auto")   # auto: float64 → torch
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.cpu(), ref_map(pri, pre, uts, 12))


# ----------------------------------------------------------------------------- score
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, fraction", [
    ((2, 12, 11), 0.001),    # k = 1 (max)
    ((2, 12, 11), 0.025),    # k = 3 (not a power of two): one sort pass
    ((1, 20, 16), 0.05),     # k = 16 over 320 pixels: several passes of 64-element blocks
])
def test_image_score_matches_reference(backend, shape, fraction):
    m = torch.rand(*shape, dtype=torch.float64)
    ref = unimmad.image_score(m, fraction)
    x = m.float().to(DEV)
    if backend == "triton":
        out = torch.full((shape[0],), float("nan"), device=DEV)
        got = amap_triton.image_score(x, top_k_count(shape[1] * shape[2], fraction), out=out)
    else:
        got = kernels.image_score(x, fraction, backend=backend)
    assert_rel(got, ref.to(DEV), TOL["fp32"], "score")


@pytest.mark.interpreter
def test_image_score_large_k_uses_topk():
    # k > MAX_TOPK is handed to torch.topk
    m = torch.rand(2, 40, 40, device=DEV)
    got = kernels.image_score(m, 0.9, backend="triton")
    torch.testing.assert_close(got, unimmad.image_score(m, 0.9))


@pytest.mark.interpreter
def test_sort_kernel_takes_k_up_to_1024_and_topk_beyond(monkeypatch):
    """The score kernel sorts candidate blocks for k ≤ 1024 (its register budget on the
    GPU); k = 1025 goes to ``torch.topk``.  Both give the mean of the top k."""
    launches = []

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launches.append(grid)
            return self.kernel[grid]

    monkeypatch.setattr(amap_triton, "_topk_kernel", Counting(amap_triton._topk_kernel))
    m = torch.rand(2, 33, 32, dtype=torch.float64)
    for k in (1024, 1025):
        launches.clear()
        got = amap_triton.image_score(m.float().to(DEV), k)
        ref = m.reshape(2, -1).sort(1, descending=True).values[:, :k].mean(1)
        assert_rel(got, ref.to(DEV), TOL["fp32"], f"score k={k}")
        assert bool(launches) == (k <= 1024), (k, launches)


# ----------------------------------------------------------------------------- loss
def _loss_case(backend, channels_last, dtype=torch.float32, u_grad=True, weight=True,
               gamma=2.0):
    pri, pre, uts = make_levels(RAGGED, dtype=dtype, channels_last=channels_last)
    w = torch.rand(4, dtype=torch.float64) + 0.5 if weight else None
    us = [t.clone().requires_grad_(u_grad) for t in pri]
    ps = [t.clone().requires_grad_(True) for t in pre]
    loss, levels = kernels.decompression_loss(
        us, ps, uts, None if w is None else w.to(DEV, torch.float32), gamma, backend=backend)
    loss.backward()
    us64 = [t.detach().cpu().double().requires_grad_(u_grad) for t in pri]
    ps64 = [t.detach().cpu().double().requires_grad_(True) for t in pre]
    ref, ref_levels = safe_reference_loss(us64, ps64, uts.cpu(), w, gamma)
    ref.backward()
    return loss, levels, us, ps, ref, ref_levels, us64, ps64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_loss_forward_and_gradients(backend, channels_last):
    loss, levels, us, ps, ref, ref_levels, us64, ps64 = _loss_case(backend, channels_last)
    assert_rel(loss, ref.to(DEV), TOL["fp32"], "loss")
    assert_rel(torch.stack(levels), torch.stack(ref_levels).to(DEV), TOL["fp32"], "levels")
    for lvl, (a, b) in enumerate(zip(ps, ps64)):
        assert_rel(a.grad, b.grad.to(DEV), TOL["grad"], f"grad p level {lvl}")
        assert a.grad.stride() == a.stride()      # the gradient keeps p's memory format
    for lvl, (a, b) in enumerate(zip(us, us64)):
        assert_rel(a.grad, b.grad.to(DEV), TOL["grad"], f"grad u level {lvl}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma", [0.0, 1.5])
def test_loss_gamma_and_frozen_priors(backend, gamma):
    # γ = 0 (plain mean of A) and a non-integer γ; priors without gradient, no weights
    loss, _, us, ps, ref, _, _, ps64 = _loss_case(backend, False, u_grad=False, weight=False,
                                                 gamma=gamma)
    assert_rel(loss, ref.to(DEV), TOL["fp32"], "loss")
    assert all(u.grad is None for u in us)
    for a, b in zip(ps, ps64):
        assert_rel(a.grad, b.grad.to(DEV), TOL["grad"], "grad p")


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_matches_unimmad_reference_function(backend):
    # against the reference function itself (float64), where its gradient is defined
    pri, pre, uts = make_levels([0, 1, 1], dims=((6, 5, 4), (10, 3, 3)))
    w = torch.tensor([2.0, 0.5], device=DEV)
    ps = [t.clone().requires_grad_(True) for t in pre]
    loss, levels = kernels.decompression_loss(pri, ps, uts, w, backend=backend)
    loss.backward()
    ps64 = [t.detach().cpu().double().requires_grad_(True) for t in pre]
    ref, ref_levels = unimmad.decompression_loss([t.cpu().double() for t in pri], ps64,
                                                 uts.cpu(), w.cpu().double())
    ref.backward()
    assert_rel(torch.stack(levels), torch.stack(ref_levels).to(DEV), TOL["fp32"], "levels")
    for a, b in zip(ps, ps64):
        assert_rel(a.grad, b.grad.to(DEV), TOL["grad"], "grad p")


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_zero_vectors_give_finite_gradients(backend):
    # the reference's gradient is NaN here; the fused one is the clamped derivative
    pri, pre, uts = make_levels([0, 1, 1], dims=((6, 5, 4),))
    pri[0][0, :, 1, 1] = 0          # zero prior: gradient for p is 0 there
    pre[0][1, :, 2, 3] = 0          # zero prediction: the clamp is active
    pri[0][2, :, 0, 0] = 0
    pre[0][2, :, 0, 0] = 0
    us = [t.clone().requires_grad_(True) for t in pri]
    ps = [t.clone().requires_grad_(True) for t in pre]
    loss, _ = kernels.decompression_loss(us, ps, uts, backend=backend)
    loss.backward()
    us64 = [t.detach().cpu().double().requires_grad_(True) for t in pri]
    ps64 = [t.detach().cpu().double().requires_grad_(True) for t in pre]
    ref, _ = safe_reference_loss(us64, ps64, uts.cpu())
    ref.backward()
    assert torch.isfinite(ps[0].grad).all() and torch.isfinite(us[0].grad).all()
    assert_rel(loss, ref.to(DEV), TOL["fp32"], "loss")
    assert_rel(ps[0].grad, ps64[0].grad.to(DEV), TOL["grad"], "grad p")
    assert_rel(us[0].grad, us64[0].grad.to(DEV), TOL["grad"], "grad u")


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_bf16_inputs(backend):
    loss, _, us, ps, ref, _, _, ps64 = _loss_case(backend, False, dtype=torch.bfloat16)
    assert_rel(loss, ref.to(DEV), TOL["bf16"], "loss")
    for a, b in zip(ps, ps64):
        assert a.grad.dtype == torch.bfloat16
        assert_rel(a.grad, b.grad.to(DEV), TOL["bf16"], "grad p")


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_identical_inputs_is_zero(backend):
    pri, _, uts = make_levels([0, 1, 1], dims=((6, 5, 4),))
    p = pri[0].clone().requires_grad_(True)
    loss, _ = kernels.decompression_loss(pri, [p], uts, backend=backend)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-12 and torch.isfinite(p.grad).all()
    assert float(p.grad.abs().max()) < 1e-9


def test_loss_ops_registration_and_gradcheck():
    u = torch.randn(3, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.unimmad.focal_cosine.default, (u, p, 2.0, "torch"))
    # γ = 0: without the stopped focal factor the loss is plain A, so finite differences
    # agree with the explicit backward
    assert torch.autograd.gradcheck(
        lambda a, b: torch.ops.unimmad.focal_cosine.default(a, b, 0.0, "torch")[0], (u, p))
    g, coef = torch.rand(3, dtype=torch.float64), torch.randn(2, 3, 2, 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.unimmad.focal_cosine_grad.default,
                          (g, coef[0], coef[1], u.detach(), p.detach(), "torch"))
    torch.library.opcheck(torch.ops.unimmad.image_score.default,
                          (torch.rand(2, 5, 6), 3, "torch"))
    torch.library.opcheck(torch.ops.unimmad.anomaly_map.default,
                          ([u.detach()], [p.detach()], torch.tensor([0, 1, 1]), 2, 7, 5, "mean",
                           4.0, 15, "torch"))


# ----------------------------------------------------------------------------- accelerate
def test_accelerated_tiny_model_matches_reference():
    torch.manual_seed(0)
    cfg = unimmad.UniMMADConfig.tiny()
    model, ref = unimmad.UniMMAD(cfg).eval(), unimmad.UniMMAD(cfg).eval()
    ref.load_state_dict(model.state_dict())
    kernels.accelerate(model, backend="torch")
    assert model.anomaly_map_fn.func is kernels.anomaly_map
    assert model.image_score_fn.func is kernels.image_score
    assert model.decompression_loss_fn.keywords == {"backend": "torch"}
    images = torch.randn(2, cfg.max_modalities, 3, cfg.image_size, cfg.image_size)
    nm = torch.tensor([1, 3])
    with torch.no_grad():
        a, b = model(images, nm), ref(images, nm)
    assert_rel(a.anomaly_map, b.anomaly_map, 1e-4, "map")
    assert_rel(a.pred_score, b.pred_score, 1e-4, "score")
    model.train(), ref.train()
    w = torch.tensor([10.0, 0.5])
    la, pa = model.loss(images, nm, w)
    lb, pb = ref.loss(images, nm, w)
    assert_rel(pa["dec"], pb["dec"], 1e-4, "L_Dec")
    assert_rel(la, lb, 1e-4, "loss")
    # gradients of the C-MoE weights (L_Dec reaches them through the predictions); only
    # the C-MoE part of the graph runs backward
    names = [n for n, q in model.cmoe.named_parameters() if q.requires_grad]
    ga = torch.autograd.grad(la, [dict(model.cmoe.named_parameters())[n] for n in names],
                             allow_unused=True)
    gb = torch.autograd.grad(lb, [dict(ref.cmoe.named_parameters())[n] for n in names],
                             allow_unused=True)
    checked = 0
    for name, x, y in zip(names, ga, gb):
        if x is not None and y is not None and float(y.norm()) > 0:
            assert_rel(x, y, 1e-4, name)
            checked += 1
    assert checked > len(names) // 2


def test_accelerate_keeps_errors_for_other_modules():
    with pytest.raises(ValueError, match="no unimmad.CMoE"):
        kernels.accelerate(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="backend"):
        kernels.accelerate(torch.nn.Linear(2, 2), backend="cuda")


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    pri, pre, uts = make_levels([0, 1], dims=((6, 5, 4), (8, 3, 3)))
    with pytest.raises(ValueError, match="equal length"):
        kernels.anomaly_map(pri, pre[:1], uts, 8)
    with pytest.raises(ValueError, match="equal"):
        kernels.anomaly_map(pri, [pre[0], pre[1][:, :4]], uts, 8)
    with pytest.raises(ValueError, match="units but unit_to_sample"):
        kernels.anomaly_map(pri, pre, uts[:1], 8)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        kernels.anomaly_map(pri, pre, uts, 8, num_samples=1)
    with pytest.raises(TypeError, match="floating"):
        kernels.anomaly_map([pri[0].long()], [pre[0]], uts, 8)
    with pytest.raises(TypeError, match="int64"):
        kernels.anomaly_map(pri, pre, uts.float(), 8)
    with pytest.raises(TypeError, match="list"):
        kernels.anomaly_map(pri[0], pre[0], uts, 8)
    with pytest.raises(ValueError, match="device"):
        kernels.anomaly_map(pri, [pre[0].to("meta"), pre[1]], uts, 8)
    with pytest.raises(ValueError, match="mode"):
        kernels.anomaly_map(pri, pre, uts, 8, mode="max")
    with pytest.raises(ValueError, match="kernel_size"):
        kernels.anomaly_map(pri, pre, uts, 8, kernel_size=4)
    with pytest.raises(ValueError, match="sigma"):
        kernels.anomaly_map(pri, pre, uts, 8, sigma=0)
    with pytest.raises(ValueError, match="backend"):
        kernels.anomaly_map(pri, pre, uts, 8, backend="cuda")
    with pytest.raises(ValueError, match="B, H, W"):
        kernels.image_score(torch.rand(4, 4))
    with pytest.raises(ValueError, match="top_fraction"):
        kernels.image_score(torch.rand(1, 4, 4), 0.0)
    with pytest.raises(ValueError, match="sample_weight"):
        kernels.decompression_loss(pri, pre, uts, torch.ones(2, 1))
    with pytest.raises(ValueError, match="sample_weight has 1 entries"):
        kernels.decompression_loss(pri, pre, uts, torch.ones(1))
    with pytest.raises(ValueError, match="gamma"):
        kernels.decompression_loss(pri, pre, uts, gamma=-1.0)


@pytest.mark.interpreter
def test_triton_rejects_float64():
    pri, pre, uts = make_levels([0], dims=((4, 3, 3),), dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        kernels.anomaly_map(pri, pre, uts, 8, backend="triton")


@pytest.mark.skipif(torch.cuda.is_available() or kernels.backend.INTERPRET,
                    reason="only where Triton cannot run")
def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    pri, pre, uts = make_levels([0], dims=((4, 3, 3),))
    with pytest.raises(RuntimeError, match="CUDA"):
        kernels.anomaly_map(pri, pre, uts, 8, backend="triton")


# ----------------------------------------------------------------------------- GPU
PAPER_DIMS = ((256, 64, 64), (512, 32, 32), (1024, 16, 16))


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mean", "joint"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_map_and_score_at_paper_shapes(mode, dtype, channels_last):
    uts = [b for b in range(4) for _ in range(b + 1)]          # 1..4 units per sample
    pri, pre, uts = make_levels(uts, dims=PAPER_DIMS, dtype=dtype, channels_last=channels_last)
    ref = ref_map(pri, pre, uts, 256, 4, mode)
    tol = TOL["fp32"] if dtype == torch.float32 else TOL["bf16"]
    for backend in ("triton", "torch"):
        out = kernels.anomaly_map(pri, pre, uts, 256, 4, mode, backend=backend)
        assert_rel(out, ref.to(DEV), tol, f"{backend} map")
        assert_rel(kernels.image_score(out, backend=backend),
                   unimmad.image_score(ref).to(DEV), tol, f"{backend} score")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_loss_at_paper_shapes(channels_last, no_tf32):
    uts = [b for b in range(4) for _ in range(b + 1)]
    pri, pre, uts = make_levels(uts, dims=PAPER_DIMS, channels_last=channels_last)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    for backend in ("triton", "torch"):
        ps = [t.clone().requires_grad_(True) for t in pre]
        loss, _ = kernels.decompression_loss(pri, ps, uts, w.to(DEV, torch.float32),
                                             backend=backend)
        loss.backward()
        ps64 = [t.detach().cpu().double().requires_grad_(True) for t in pre]
        ref, _ = safe_reference_loss([t.cpu().double() for t in pri], ps64, uts.cpu(), w)
        ref.backward()
        assert_rel(loss, ref.to(DEV), TOL["fp32"], f"{backend} loss")
        for a, b in zip(ps, ps64):
            assert_rel(a.grad, b.grad.to(DEV), TOL["grad"], f"{backend} grad p")
