"""Every autotune configuration of every autotuned Triton kernel, forced in turn (no tuning:
``kernels.backend.forced_config``), against float64 references at shapes that leave a
partial tile in every dimension (``unimmad.bench.cases.TILE_CASE``: 143 pixels, 24 → 40
channels) with k = 5: the convolution forward and its input gradient, the weight gradient,
the cosine stage (map and loss forward) and the loss backward, NCHW and channels-last.

On the CPU interpreter (CI) this checks each configuration's tile arithmetic (partial tiles,
the flat tap × channel-block loop of the convolution, its last channel block); on a GPU (the
suite's parity stage) each configuration's compiled code, ``num_warps = 8`` included — a
public Triton convolution once gave wrong results for non-1×1 kernels at 8 warps."""
import pytest
import torch

import kernels
from kernels import amap_triton, cmoe_triton
from kernels.backend import forced_config
from unimmad.bench.cases import conv_tile_case, stream_tile_case
from unimmad.losses import decompression_loss
from unimmad.scoring import cosine_anomaly

from cmoe_cases import dyn_conv_reference
from helpers import TOL, assert_rel

pytestmark = pytest.mark.interpreter
GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
K = 5


def _cfg_id(cfg) -> str:
    tile = "x".join(str(v) for v in cfg.kwargs.values())
    return f"{tile}-w{cfg.num_warps}-s{cfg.num_stages}"


def _dtypes(precision):
    """fp32 with the precision's dot; bf16 (tensor-core configurations) on a GPU only: the
    interpreter upcasts bf16, so it adds nothing there."""
    return [torch.float32] + ([torch.bfloat16] if GPU and precision == "tf32" else [])


CONV = [pytest.param(prec, cfg, dt, id=f"{prec}-{_cfg_id(cfg)}-{str(dt)[6:]}")
        for prec, cfgs in cmoe_triton.TUNED["_dyn_conv_kernel"].items() for cfg in cfgs
        for dt in _dtypes(prec)]
WGRAD = [pytest.param(cfg, dt, id=f"{_cfg_id(cfg)}-{str(dt)[6:]}")
         for cfg in cmoe_triton.TUNED["_wgrad_kernel"] for dt in _dtypes("tf32")]


def _tol(dtype, precision, grad=False):
    if dtype != torch.float32:
        return TOL["bf16"]
    if precision == "tf32" and GPU:
        return TOL["tf32"]
    return TOL["grad"] if grad else TOL["fp32"]


@pytest.mark.parametrize("precision, config, dtype", CONV)
def test_conv_configuration_forward_and_input_gradient(precision, config, dtype):
    x, bank, js, jw, gy = conv_tile_case(K, dtype, DEV)
    y_out = torch.full((2, bank.shape[1], *x.shape[2:]), float("nan"), device=DEV, dtype=dtype)
    with forced_config(cmoe_triton.CONV[precision], config):
        y = cmoe_triton.dyn_conv(x, bank, js, jw, K, precision, out=y_out)
        dx, _ = cmoe_triton.dyn_conv_backward(gy, x, bank, js, jw, K, precision, True, False)
    x64 = x.cpu().double().requires_grad_(True)
    ref = dyn_conv_reference(x64, bank.cpu(), js.cpu(), jw.cpu(), K, "triton")
    (dx_ref,) = torch.autograd.grad(ref, x64, gy.cpu().double())
    assert_rel(y.float(), ref.to(DEV), _tol(dtype, precision), f"y {config}")
    assert_rel(dx.float(), dx_ref.to(DEV), _tol(dtype, precision, grad=True), f"dx {config}")


@pytest.mark.parametrize("config, dtype", WGRAD)
def test_weight_gradient_configuration(config, dtype):
    x, bank, js, jw, gy = conv_tile_case(K, dtype, DEV)
    precision = "ieee" if dtype == torch.float32 else "tf32"
    with forced_config(cmoe_triton._wgrad_kernel, config):
        _, dw = cmoe_triton.dyn_conv_backward(gy, x, bank, js, jw, K, precision, False, True)
    w64 = bank.cpu().double().requires_grad_(True)
    ref = dyn_conv_reference(x.cpu(), w64, js.cpu(), jw.cpu(), K, "triton")
    (dw_ref,) = torch.autograd.grad(ref, w64, gy.cpu().double())
    assert_rel(dw.float(), dw_ref.to(DEV), _tol(dtype, precision, grad=True), f"dw {config}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("config", amap_triton.TUNED["_cos_kernel"], ids=_cfg_id)
def test_cosine_stage_configuration(config, channels_last):
    pri, pre, uts = stream_tile_case(device=DEV, channels_last=channels_last)
    with forced_config(amap_triton._cos_kernel, config):
        a, _ = amap_triton.cosine_maps(pri, pre)
        loss, _ = kernels.decompression_loss(pri, pre, uts, backend="triton")
    ref = torch.cat([cosine_anomaly(u.cpu().double(), p.cpu().double()).reshape(-1)
                     for u, p in zip(pri, pre)])
    loss_ref, _ = decompression_loss([u.cpu().double() for u in pri],
                                     [p.cpu().double() for p in pre], uts.cpu())
    assert_rel(a, ref.to(DEV), TOL["fp32"], f"1 - cos {config}")
    assert_rel(loss, loss_ref.to(DEV), TOL["fp32"], f"loss {config}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("config", amap_triton.TUNED["_focal_grad_kernel"], ids=_cfg_id)
def test_loss_backward_configuration(config, channels_last):
    pri, pre, uts = stream_tile_case(device=DEV, channels_last=channels_last)
    pre = [p.requires_grad_(True) for p in pre]
    with forced_config(amap_triton._focal_grad_kernel, config):
        loss, _ = kernels.decompression_loss(pri, pre, uts, backend="triton")
        grads = torch.autograd.grad(loss, pre)
    pre64 = [p.detach().cpu().double().requires_grad_(True) for p in pre]
    loss_ref, _ = decompression_loss([u.cpu().double() for u in pri], pre64, uts.cpu())
    refs = torch.autograd.grad(loss_ref, pre64)
    for i, (g, r) in enumerate(zip(grads, refs)):
        assert g.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert_rel(g, r.to(DEV), TOL["grad"], f"grad level {i} {config}")
