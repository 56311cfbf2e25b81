"""The measured sections of ``unimmad bench``: ``model`` (end to end, each provider in its
own process), ``cmoe`` (one C-MoE per level) and ``map`` (anomaly map + image score).
Every fast-path row is checked against the reference output of the same run
(:func:`unimmad.bench.parity.judge`)."""
from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List

import torch

from ..config import UniMMADConfig
from ..flops import activated_parameters, cmoe_gflop, fvcore_macs
from .cases import (amap_case, build_model, cmoe_case, cmoe_module, feature_bytes,
                    map_and_score, model_inputs)
from .meta import peak_memory_mb, peak_rss_mb
from .parity import judge, rel_err, tolerance
from .timing import summarize, time_calls

__all__ = ["DTYPES", "SECTIONS", "model_section", "cmoe_section", "map_section",
           "run_isolated", "log"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SECTIONS = ("model", "cmoe", "map")


def log(msg: str) -> None:
    print(f"[unimmad bench] {msg}", file=sys.stderr, flush=True)


def _memory_kind(device: torch.device, per_process: bool) -> str:
    if device.type == "cuda":
        return "cuda_max_allocated"
    return "process_peak_rss" if per_process else "tensor_allocations"


# ----------------------------------------------------------------------------- model
def _measure_model(job: Dict) -> Dict:
    """Runs in a spawned process: build, warm up, time forward passes."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    dtype = DTYPES[job["dtype"]]
    cfg = UniMMADConfig.from_dict(job["config"])
    model = build_model(cfg, job["seed"], dtype, device, job["provider"])
    images, nm = model_inputs(cfg, job["batch"], job["modalities"], job["seed"] + 1, dtype,
                              device)
    counts = model.parameter_counts()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def call():
        with torch.inference_mode():
            return model(images, nm)

    times, out = time_calls(call, device, job["warmup"], job["iters"], job["label"],
                            job.get("progress", True))
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
            else peak_rss_mb())
    elem = torch.finfo(dtype).bits // 8
    flops = {}
    if job.get("flops"):  # on the model just timed: no second model, no second cache build
        log(f"{job['label']}: counting FLOPs with fvcore (one traced forward)")
        with torch.no_grad():
            macs = fvcore_macs(_MapAndScore(model), (images, nm))
        flops = {"gflops_fvcore_per_sample": macs / job["batch"] / 1e9,
                 "activated_params_per_unit": activated_parameters(model)}
    return {**flops,
        "times_s": times,
        "peak_memory_mb": peak,
        "peak_memory_kind": _memory_kind(device, per_process=True),
        "params": counts["total"],
        "params_trainable": counts["trainable"],
        "params_mb": counts["total"] * elem / 2 ** 20,
        "anomaly_map": out.anomaly_map.float().cpu(),
        "pred_score": out.pred_score.float().cpu(),
    }


def run_isolated(fn, job: Dict, isolate: bool = True) -> Dict:
    """Run ``fn(job)`` in a fresh spawned process (or inline with ``isolate=False``)."""
    if not isolate:
        return fn(job)
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, job).result()


class _MapAndScore(torch.nn.Module):
    """Tensor-only view of a UniMMAD forward, for tracing by fvcore."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, num_modalities):
        out = self.model(images, num_modalities)
        return out.anomaly_map, out.pred_score


def model_flops(cfg: UniMMADConfig, args, device, provider: str) -> Dict[str, float]:
    """fvcore multiply-adds per sample (fvcore's FLOP = one multiply-add) and activated
    parameters per unit, for one provider (fresh model, same seed as the timed ones).
    ``unimmad bench`` counts inside the measuring process instead (``job["flops"]``)."""
    dtype = DTYPES[args.dtype]
    model = build_model(cfg, args.seed, dtype, device, provider)
    images, nm = model_inputs(cfg, args.batch, args.modalities, args.seed + 1, dtype, device)
    with torch.no_grad():
        model(images, nm)  # builds the accelerated model's folded-kernel cache: not counted
        macs = fvcore_macs(_MapAndScore(model), (images, nm))
    return {"gflops_fvcore_per_sample": macs / args.batch / 1e9,
            "activated_params_per_unit": activated_parameters(model)}


def _row(section: str, provider: str, args, cfg: UniMMADConfig, times, **extra) -> Dict:
    row = {"section": section, "provider": provider, "batch": args.batch,
           "modalities": args.modalities, "units": args.batch * args.modalities,
           "image_size": cfg.image_size, "dtype": args.dtype, **extra}
    row.update(summarize(times, args.batch))
    return row


def model_section(args, cfg: UniMMADConfig, device: torch.device, base_job: Dict) -> List[Dict]:
    rows, outputs, ref_ms = [], {}, None
    tol = tolerance(DTYPES[args.dtype], device)
    for provider in args.providers:
        job = dict(base_job, provider=provider, label=f"model/{provider}", flops=args.flops)
        log(f"{job['label']}: preset={args.preset} B={args.batch} M={args.modalities} "
            f"{cfg.image_size}² {args.dtype} on {device}")
        res = run_isolated(_measure_model, job, isolate=not args.no_isolate)
        row = _row("model", provider, args, cfg, res["times_s"])
        row.update({k: res[k] for k in ("peak_memory_mb", "peak_memory_kind", "params",
                                        "params_trainable", "params_mb", "times_s")})
        if args.flops:
            row.update({k: res[k] for k in ("gflops_fvcore_per_sample",
                                            "activated_params_per_unit")})
            row["activated_params_mb"] = (row["activated_params_per_unit"] * row["params_mb"]
                                          / row["params"])
        outputs[provider] = res
        err = None
        if provider != "reference" and "reference" in outputs:
            ref = outputs["reference"]
            err = max(rel_err(res["anomaly_map"], ref["anomaly_map"]),
                      rel_err(res["pred_score"], ref["pred_score"]))
        if provider == "reference":
            ref_ms = row["latency_median_ms"]
        judge(row, err, tol, ref_ms)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- C-MoE
def cmoe_section(args, cfg: UniMMADConfig, device: torch.device, fast: str) -> List[Dict]:
    """One C-MoE per level on ``batch × modalities`` units of ``batch`` samples: the
    reference against the ``fast`` provider, and a row summing the three levels."""
    dtype = DTYPES[args.dtype]
    rows: List[Dict] = []
    units, samples = args.batch * args.modalities, args.batch
    tol = tolerance(dtype, device)
    for level in (1, 2, 3):
        ref, general, prior, uts = cmoe_case(cfg, level, units, samples, args.seed + level,
                                             dtype, device)
        ref.eval()
        ref_out, ref_ms = None, None
        for provider in ("reference", fast):
            module = cmoe_module(ref, provider)

            def call(module=module):
                with torch.inference_mode():
                    return module(general, prior, uts)[0]
            times, out = time_calls(call, device, args.warmup, args.iters,
                                    f"cmoe/L{level}/{provider}", not args.quiet)
            row = _row("cmoe", provider, args, cfg, times, level=level, times_s=times)
            row["units_per_s"] = units / statistics.median(times)
            row["gflop"] = cmoe_gflop(ref.in_channels, general.shape[-1], units, samples,
                                      cfg.embed_dim, cfg.cmoe_kernel_sizes, cfg.top_k,
                                      "reference" if provider == "reference" else "folded")
            row["peak_memory_mb"] = peak_memory_mb(call, device)
            row["peak_memory_kind"] = _memory_kind(device, per_process=False)
            if provider == "reference":
                ref_out, ref_ms = out.float().cpu(), row["latency_median_ms"]
                judge(row, None, tol, ref_ms)
            else:
                judge(row, rel_err(out.float().cpu(), ref_out), tol, ref_ms)
            rows.append(row)
            del module
        log(f"cmoe level {level}: {fast} {rows[-1].get('speedup') or 0:.2f}× the reference")
    total = {p: sum(r["latency_median_ms"] for r in rows if r["provider"] == p)
             for p in ("reference", fast)}
    ok = all(r["status"] == "ok" for r in rows)
    rows.append({"section": "cmoe", "provider": fast, "level": "all", "units": units,
                 "batch": samples, "dtype": args.dtype, "latency_median_ms": total[fast],
                 "status": "ok" if ok else "FAIL parity",
                 "speedup": total["reference"] / total[fast] if ok else None})
    return rows


# ----------------------------------------------------------------------------- map
def map_section(args, cfg: UniMMADConfig, device: torch.device, fast: str) -> List[Dict]:
    """Anomaly map + image score of ``batch × modalities`` units, reference vs ``fast``."""
    dtype = DTYPES[args.dtype]
    samples = args.batch
    levels = list(zip(cfg.level_channels, cfg.level_sizes))
    priors, preds, uts = amap_case(samples, args.modalities, levels, dtype, device,
                                   seed=args.seed)
    nbytes = feature_bytes(priors, preds)
    rows, ref_out, ref_ms = [], None, None
    tol = tolerance(dtype, device)
    for provider in ("reference", fast):
        def call(provider=provider):
            with torch.inference_mode():
                return map_and_score(provider, priors, preds, uts, cfg.image_size, samples,
                                     cfg.map_mode, cfg.blur_sigma, cfg.blur_kernel_size,
                                     cfg.top_fraction)
        times, out = time_calls(call, device, args.warmup, args.iters, f"map/{provider}",
                                not args.quiet)
        row = _row("map", provider, args, cfg, times, times_s=times)
        row["gbps"] = nbytes / (row["latency_median_ms"] * 1e-3) / 1e9
        row["peak_memory_mb"] = peak_memory_mb(call, device)
        row["peak_memory_kind"] = _memory_kind(device, per_process=False)
        out = [t.float().cpu() for t in out]
        if provider == "reference":
            ref_out, ref_ms = out, row["latency_median_ms"]
            judge(row, None, tol, ref_ms)
        else:
            judge(row, max(rel_err(a, b) for a, b in zip(out, ref_out)), tol, ref_ms)
        rows.append(row)
    return rows
