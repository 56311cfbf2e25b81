"""GPU benchmark of the C-MoE (H200 suite): ``python -m benchmarks.gpu_cmoe --out DIR``.

Per level and U ∈ {1, 8, 32} (one unit per sample), inference:
  reference  the paper's formulation, fp32 (PyTorch's default cuDNN TF32 setting, recorded)
  torch      collapse + fold in stock torch, bf16, channels_last, cudnn.benchmark
  triton     the fused kernels, bf16, channels_last
plus forward + backward at U = 8 (fp32 reference / torch / triton), the bf16 tensor-core
throughput of a 8192³ matmul, and the level-1 k = 5 folded convolution alone at U = 32
against it.  Times from ``triton.testing.do_bench`` (median, ms).  Writes
``DIR/gpu_cmoe.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from kernels import cmoe_ops
from unimmad.bench.cases import PAPER_LEVELS, cmoe_module, level_case
from unimmad.bench.meta import environment
from unimmad.bench.timing import do_bench_ms as bench
from unimmad.flops import cmoe_gflop




def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: a @ b)
    return 2 * 8192 ** 3 / (ms * 1e-3) / 1e12


def copy_gbps() -> float:
    x = torch.empty(2 ** 30, device="cuda", dtype=torch.uint8)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3) / 1e9


def make(level, units, provider, dtype, channels_last):
    module, general, prior, uts = level_case(level, units, device="cuda")
    module = cmoe_module(module, provider).to(dtype)
    general, prior = general.to(dtype), prior.to(dtype)
    if channels_last:
        general = general.contiguous(memory_format=torch.channels_last)
        prior = prior.contiguous(memory_format=torch.channels_last)
    return module, general, prior, uts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--units", default="1,8,32")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_cmoe: needs CUDA")
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    t_start = time.time()
    record = {"meta": environment("cuda"), "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
              "matmul_bf16_tflops": matmul_tflops(), "copy_gbps": copy_gbps(), "rows": []}
    rows = record["rows"]
    units_list = [int(u) for u in args.units.split(",")]
    configs = [("reference", torch.float32, False), ("torch", torch.bfloat16, True),
               ("triton", torch.bfloat16, True)]
    for level in (1, 2, 3):
        for units in units_list:
            for provider, dtype, cl in configs:
                module, general, prior, uts = make(level, units, provider, dtype, cl)
                module.eval()

                def run():
                    with torch.inference_mode():
                        return module(general, prior, uts)[0]
                try:
                    ms = bench(run)
                    err = None
                except Exception as exc:  # record and go on: one failure must not hide the rest
                    ms, err = None, f"{type(exc).__name__}: {exc}"[:500]
                gf = cmoe_gflop(*PAPER_LEVELS[level], units=units,
                                form="reference" if provider == "reference" else "folded")
                rows.append({"kind": "cmoe_inference", "level": level, "units": units,
                             "provider": provider, "dtype": str(dtype).split(".")[-1],
                             "channels_last": cl, "ms": ms, "gflop": gf,
                             "tflops": gf / ms if ms else None,
                             "units_per_s": units / (ms * 1e-3) if ms else None, "error": err})
                print(json.dumps(rows[-1]), flush=True)
                del module, general, prior
                torch.cuda.empty_cache()
    for level in (1, 2, 3):
        for provider in ("reference", "torch", "triton"):
            module, general, prior, uts = make(level, 8, provider, torch.float32, provider != "reference")
            module.train()
            general.requires_grad_(True)

            def step():
                p, aux = module(general, prior, uts)
                (p.square().mean() + aux.balance_loss).backward()
            try:
                ms, err = bench(step, rep=50), None
            except Exception as exc:
                ms, err = None, f"{type(exc).__name__}: {exc}"[:500]
            rows.append({"kind": "cmoe_train", "level": level, "units": 8, "provider": provider,
                         "dtype": "float32", "ms": ms, "error": err})
            print(json.dumps(rows[-1]), flush=True)
            del module, general, prior
            torch.cuda.empty_cache()
    # The level-1 k = 5 folded convolution alone, U = 32, bf16.
    x = torch.randn(32, 256, 64, 64, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 256, 25 * 256, device="cuda", dtype=torch.bfloat16) * 0.01
    jobs = torch.arange(32, device="cuda")
    conv_gf = 2.0 * 32 * 256 * 256 * 25 * 64 * 64 / 1e9
    for backend in ("triton", "torch"):
        ms = bench(lambda: cmoe_ops.dyn_conv(x, w, jobs, jobs, 5, backend, same_samples=True,
                                        same_weights=True))
        rows.append({"kind": "conv_k5_level1_u32_bf16", "provider": backend, "ms": ms,
                     "tflops": conv_gf / ms,
                     "fraction_of_matmul": conv_gf / ms / record["matmul_bf16_tflops"]})
        print(json.dumps(rows[-1]), flush=True)
    record["wall_s"] = time.time() - t_start
    with open(os.path.join(args.out, "gpu_cmoe.json"), "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
