"""Stage ``memcheck`` of the GPU suite: every Triton kernel, every autotune configuration
forced in turn, launched once on shapes with partial tiles, for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \\
        python -m benchmarks.gpu_memcheck

With the caching allocator off every tensor is its own allocation, so a read or write past
a tensor's end is an error the sanitizer sees (inside a cached segment it would not be),
and ``--error-exitcode`` makes any reported error fail the stage.  Launched: the
convolution forward and input gradient per configuration (bf16 and fp32 with TF32 on the
tensor-core list, fp32 IEEE on its own), the weight gradient per configuration, the
cosine stage (map and loss) and the loss backward per configuration in NCHW and
channels-last, then one fused C-MoE training step and inference call and the anomaly map
(both modes) with its score.  Prints one line per launch group; writes no file.
"""
from __future__ import annotations

import sys

import torch

import kernels
from kernels import FastCMoE, amap_triton, cmoe_triton
from kernels.backend import forced_config
from unimmad.bench.cases import conv_tile_case, stream_tile_case
from unimmad.models.cmoe import CMoE

#: Output side of the anomaly map launches; channels, embedding and pixels of the C-MoE
#: step (3 units of 2 samples, kernels 1/3/5: partial tiles everywhere).
MAP_SIZE = 40
CMOE = {"channels": 20, "embed": 24, "pixels": (7, 9)}


def _done(what: str, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"ok {what}", flush=True)


def launch_all(device: str = "cuda") -> None:
    """Every launch group of the module docstring, on ``device`` (``"cpu"`` runs them on
    the Triton interpreter: a smoke test of this script in CI)."""
    for prec, cfgs in cmoe_triton.TUNED["_dyn_conv_kernel"].items():
        dtypes = (torch.float32, torch.bfloat16) if prec == "tf32" else (torch.float32,)
        for cfg in cfgs:
            for dt in dtypes:
                x, bank, js, jw, gy = conv_tile_case(5, dt, device)
                with forced_config(cmoe_triton.CONV[prec], cfg):
                    cmoe_triton.dyn_conv(x, bank, js, jw, 5, prec)
                    cmoe_triton.dyn_conv_backward(gy, x, bank, js, jw, 5, prec, True, False)
                _done(f"dyn_conv {prec} {dt} {cfg}", device)
    for cfg in cmoe_triton.TUNED["_wgrad_kernel"]:
        x, bank, js, jw, gy = conv_tile_case(5, torch.bfloat16, device)
        with forced_config(cmoe_triton._wgrad_kernel, cfg):
            cmoe_triton.dyn_conv_backward(gy, x, bank, js, jw, 5, "tf32", False, True)
        _done(f"wgrad {cfg}", device)
    for channels_last in (False, True):
        for kernel, name in ((amap_triton._cos_kernel, "_cos_kernel"),
                             (amap_triton._focal_grad_kernel, "_focal_grad_kernel")):
            for cfg in amap_triton.TUNED[name]:
                pri, pre, uts = stream_tile_case(device=device, channels_last=channels_last)
                pre = [p.requires_grad_(True) for p in pre]
                with forced_config(kernel, cfg):
                    amap_triton.cosine_maps(pri, pre)
                    loss, _ = kernels.decompression_loss(pri, pre, uts, backend="triton")
                    loss.backward()
                _done(f"{name} channels_last={channels_last} {cfg}", device)
    torch.manual_seed(0)
    c, e = CMOE["channels"], CMOE["embed"]
    fast = FastCMoE.from_reference(CMoE(c, e, 3, 5, 2, (1, 3, 5)), backend="triton")
    fast = fast.to(device).train()
    general = torch.randn(2, c, *CMOE["pixels"], device=device)
    prior = torch.randn(3, c, *CMOE["pixels"], device=device)
    uts = torch.tensor([0, 1, 1], device=device)
    g = general.clone().requires_grad_(True)
    out, aux = fast(g, prior, uts)
    (out.square().mean() + aux.balance_loss).backward()
    fast.eval()
    with torch.no_grad():
        fast(general, prior, uts)
    _done("FastCMoE train step + inference", device)
    pri, pre, uts = stream_tile_case(device=device)
    for mode in ("mean", "joint"):
        m = kernels.anomaly_map(pri, pre, uts, MAP_SIZE, num_samples=2, mode=mode,
                                backend="triton")
        kernels.image_score(m, backend="triton")
    _done("anomaly map (mean, joint) + score", device)


def main() -> int:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_memcheck: needs a CUDA device")
    launch_all("cuda")
    print("memcheck run finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
