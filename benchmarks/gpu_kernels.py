"""Stage ``kernels`` of the GPU suite: the ceilings and the kernels alone.

    python -m benchmarks.gpu_kernels --out DIR [--budget-s S]

Writes ``DIR/kernels.json`` after every row:

* ``ceilings``: device-to-device copy bandwidth (1 GiB of random bytes, read + write) and an
  8192³ bf16 matrix product of random data (cuBLAS) — what the kernels are measured against;
* ``dyn_conv`` rows: the C-MoE's per-unit convolution at paper dimensions, U = 32 units of
  one sample each, E = 256 channels, every level (64², 32², 16² pixels) and kernel size
  (1, 3, 5), bf16, channels-last and NCHW inputs, the Triton kernel against the torch
  path (cuDNN grouped convolution, ``cudnn.benchmark``); each row with its relative error
  against an fp32 reference with TF32 off (from the same bf16 values), the autotune
  configuration chosen, TFLOP/s and the fraction of the measured matmul.  The Triton NCHW
  row includes the launcher's conversion to channels-last;
* ``cosine`` rows: the cosine stage of the anomaly map (kernel 1: u and p read once) at
  B = 32 with 2 modalities, fp32 and bf16, NCHW and channels-last, as GB/s and the
  fraction of the measured copy bandwidth, with its error against float64 and the chosen
  configuration per level.

Targets (issue 14): the level-1 k = 5 convolution ≥ 60 % of the matmul; the cosine stage
≥ 80 % of the copy bandwidth.  Times: ``triton.testing.do_bench`` medians (ms).
"""
from __future__ import annotations

import torch

from kernels import amap_triton, cmoe_ops, cmoe_torch, cmoe_triton
from unimmad.bench.cases import amap_case, feature_bytes
from unimmad.bench.parity import rel_err
from unimmad.bench.record import ms_fields, open_record, run_script, script_parser
from unimmad.bench.timing import copy_ceiling, do_bench_ms, matmul_ceiling
from unimmad.config import UniMMADConfig
from unimmad.scoring import cosine_anomaly

#: Where and at which dimensions it runs (the CPU smoke test shrinks them).
DEVICE = "cuda"
CFG = UniMMADConfig()
UNITS = 32
AMAP_BATCH, AMAP_MODALITIES = 32, 2
CONV_TARGET = 0.6      # level-1 k = 5 conv: fraction of the bf16 matmul
COSINE_TARGET = 0.8    # cosine stage: fraction of the copy bandwidth
CEILINGS = {"copy": copy_ceiling, "matmul": matmul_ceiling}


def _conv_case(side: int, k: int, E: int, gen: torch.Generator):
    """bf16 values ``[U, E, side, side]`` (channels-last and NCHW), kernels ``[U, E, E, k,
    k]`` in both banks' layouts, and the fp32 TF32-off reference output."""
    x = torch.randn(UNITS, E, side, side, generator=gen).to(DEVICE, torch.bfloat16)
    w = torch.randn(UNITS, E, E, k, k, generator=gen) / (k * E ** 0.5)
    w = w.to(DEVICE, torch.bfloat16)
    banks = {"triton": cmoe_triton.to_bank(w).contiguous(), "torch": cmoe_torch.to_bank(w)}
    jobs = torch.arange(UNITS, device=DEVICE)
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = cmoe_torch.dyn_conv(x.float(), banks["torch"].float(), jobs, jobs, k,
                                  same_samples=True, same_weights=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    layouts = {"channels_last": x.contiguous(memory_format=torch.channels_last),
               "nchw": x.contiguous()}
    return layouts, banks, jobs, ref


def conv_rows(rec, matmul_tflops: float) -> None:
    E = CFG.embed_dim
    gen = torch.Generator().manual_seed(0)
    for level, side in enumerate(CFG.level_sizes, start=1):
        for k in CFG.cmoe_kernel_sizes:
            what = {"kind": "dyn_conv", "level": level, "side": side, "k": k, "units": UNITS,
                    "channels": E, "dtype": "bfloat16"}
            if rec.over_budget():
                rec.skip(what)
                continue
            layouts, banks, jobs, ref = _conv_case(side, k, E, gen)
            flop = 2.0 * UNITS * E * E * k * k * side * side
            for layout, x in layouts.items():
                for provider in ("triton", "torch"):
                    def measure(x=x, provider=provider):
                        run = lambda: cmoe_ops.dyn_conv(x, banks[provider], jobs, jobs, k,
                                                        provider, same_samples=True,
                                                        same_weights=True)
                        err = rel_err(run().float(), ref)
                        ms = do_bench_ms(run)
                        out = {**ms_fields(ms, flop=flop, ceiling_tflops=matmul_tflops),
                               "rel_err_vs_fp32": err}
                        if provider == "triton":
                            out["config"] = str(cmoe_triton.CONV["tf32"].best_config)
                            if layout == "nchw":
                                out["note"] = "includes the NCHW to channels-last copy"
                        if level == 1 and k == 5 and layout == "channels_last":
                            out["target_fraction_of_matmul"] = CONV_TARGET
                        return out
                    rec.row({**what, "layout": layout, "provider": provider}, measure)
            del layouts, banks, ref
            torch.cuda.empty_cache()


def _chosen(autotuner) -> dict:
    """The configuration the autotuner chose per tuning key so far (its one configuration
    when tuning is off)."""
    if autotuner.cache:
        return {str(key): str(cfg) for key, cfg in autotuner.cache.items()}
    return {"untuned": str(autotuner.configs[0])}


def cosine_rows(rec, copy_gbps: float) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            what = {"kind": "cosine", "batch": AMAP_BATCH, "modalities": AMAP_MODALITIES,
                    "dtype": str(dtype).replace("torch.", ""),
                    "layout": "channels_last" if channels_last else "nchw"}

            def measure(dtype=dtype, channels_last=channels_last):
                pri, pre, _ = amap_case(AMAP_BATCH, AMAP_MODALITIES,
                                        zip(CFG.level_channels, CFG.level_sizes), dtype=dtype,
                                        device=DEVICE, channels_last=channels_last)
                a, _ = amap_triton.cosine_maps(pri, pre)                # compile + tune
                ref = torch.cat([cosine_anomaly(u.double(), p.double()).reshape(-1)
                                 for u, p in zip(pri, pre)])
                ms = do_bench_ms(lambda: amap_triton.cosine_maps(pri, pre))
                return {**ms_fields(ms, nbytes=feature_bytes(pri, pre), ceiling_gbps=copy_gbps),
                        "rel_err_vs_float64": rel_err(a, ref),
                        "configs": _chosen(amap_triton._cos_kernel),
                        "target_fraction_of_copy": COSINE_TARGET}
            rec.row(what, measure)
            torch.cuda.empty_cache()


def main(argv=None):
    args = script_parser(__doc__).parse_args(argv)
    with open_record(args, "kernels.json", DEVICE) as rec:
        copy, matmul = CEILINGS["copy"](), CEILINGS["matmul"]()
        rec.set("ceilings", {"copy": copy, "matmul_bf16": matmul})
        print(f"copy {copy['gbps']:.0f} GB/s, bf16 matmul {matmul['tflops']:.0f} TFLOP/s",
              flush=True)
        conv_rows(rec, matmul["tflops"])
        cosine_rows(rec, copy["gbps"])


if __name__ == "__main__":
    raise SystemExit(run_script(main))
