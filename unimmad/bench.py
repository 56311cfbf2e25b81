"""``unimmad bench``: inference benchmark on generated inputs, reference vs accelerated.

Sections (``--sections``):

* ``model`` — end-to-end inference of the reference model and of
  ``unimmad.accelerate(model)``; each provider is measured in a fresh spawned process, so
  its peak memory (resident set on CPU, CUDA max-allocated on GPU) is its own.  The
  accelerated output is compared with the reference output of the same run; a provider
  that fails the SPEC §3 tolerance is reported as FAIL, never with a speedup.
* ``cmoe`` — one C-MoE per level (paper formulation vs the fused path) on the units of the
  same batch shape; peak tensor memory from the allocator (GPU) or profiler (CPU).
* ``map`` — anomaly map + image score alone (``unimmad.anomaly_map`` vs
  ``kernels.anomaly_map``) on the three levels' features of the same units, with the
  achieved bandwidth against the bytes that must move (u and p read once).

Output: a printed table, ``bench.json`` and ``bench.md`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

import torch

from .benchmeta import environment, peak_memory_mb, sync
from .config import UniMMADConfig

__all__ = ["add_arguments", "run", "main", "make_inputs", "parity_tolerance"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SECTIONS = ("model", "cmoe", "map")
MODEL_PROVIDERS = ("reference", "accelerated")


def make_inputs(cfg: UniMMADConfig, batch: int, modalities: int, seed: int = 0,
                dtype=torch.float32, device="cpu"):
    """Generated images ``[B, M_max, 3, S, S]`` (zero past ``modalities``) and counts."""
    g = torch.Generator().manual_seed(seed)
    S, M = cfg.image_size, cfg.max_modalities
    images = torch.zeros(batch, M, 3, S, S)
    images[:, :modalities] = torch.randn(batch, modalities, 3, S, S, generator=g)
    nm = torch.full((batch,), modalities, dtype=torch.long)
    return images.to(device=device, dtype=dtype), nm.to(device)


def preset_config(name: str, image_size: Optional[int] = None) -> UniMMADConfig:
    if name == "paper":
        cfg = UniMMADConfig()
    elif name == "tiny":
        cfg = UniMMADConfig.tiny()
    else:
        raise ValueError(f"unknown preset {name!r} (paper | tiny)")
    return cfg.replace(image_size=image_size) if image_size else cfg


def parity_tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """SPEC §3 relative tolerance for comparing two paths at ``dtype`` on ``device``
    (CUDA fp32 convolutions use TF32 under PyTorch's default cuDNN setting)."""
    if dtype != torch.float32:
        return 2e-2
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return 2e-3
    return 1e-5


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not bool(torch.isfinite(out).all()):
        return float("inf")
    den = float(ref.norm())
    return float((out - ref).norm()) / den if den > 0 else float((out - ref).norm())


def build_model(cfg: UniMMADConfig, seed: int, dtype, device, provider: str = "reference"):
    """The benchmarked model: same weights in every process (seeded init)."""
    from .models.model import UniMMAD
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone init is expected here
        model = UniMMAD(cfg)
    model = model.to(device=device, dtype=dtype).eval()
    if provider == "accelerated":
        from . import accelerate
        accelerate(model)
    elif provider != "reference":
        raise ValueError(f"unknown model provider {provider!r}")
    return model


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _progress(total: int, label: str, show: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=label, leave=False, disable=not show, file=sys.stderr)


def _time_calls(fn: Callable[[], object], device, warmup: int, iters: int, label: str,
                show: bool):
    bar = _progress(warmup + iters, label, show)
    times, out = [], None
    for i in range(warmup + iters):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return times, out


def _measure_model(job: Dict) -> Dict:
    """Runs in a spawned process: build, warm up, time forward passes."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    dtype = DTYPES[job["dtype"]]
    cfg = UniMMADConfig.from_dict(job["config"])
    model = build_model(cfg, job["seed"], dtype, device, job["provider"])
    images, nm = make_inputs(cfg, job["batch"], job["modalities"], job["seed"] + 1, dtype, device)
    counts = model.parameter_counts()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def call():
        with torch.inference_mode():
            return model(images, nm)

    times, out = _time_calls(call, device, job["warmup"], job["iters"], job["label"],
                             job.get("progress", True))
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
            else _peak_rss_mb())
    elem = torch.finfo(dtype).bits // 8
    return {
        "times_s": times,
        "peak_memory_mb": peak,
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
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
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, job).result()


def _quantile(xs: List[float], q: float) -> float:
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times: List[float], batch: int) -> Dict[str, float]:
    """Median latency, spread and throughput (``batch`` items per call)."""
    med = statistics.median(times)
    return {
        "latency_median_ms": med * 1e3,
        "latency_min_ms": min(times) * 1e3,
        "latency_max_ms": max(times) * 1e3,
        "latency_iqr_ms": (_quantile(times, 0.75) - _quantile(times, 0.25)) * 1e3,
        "samples_per_s": batch / med,
    }


def _judge(row: Dict, err: Optional[float], tol: float, ref_median_ms: Optional[float]) -> None:
    """Set parity status and (only when parity holds) the speedup over the reference."""
    row["parity_rel_err"] = err
    row["parity_tol"] = tol
    if err is None:
        row["status"] = "ok"
        row["speedup"] = 1.0 if ref_median_ms else None
        return
    row["status"] = "ok" if err <= tol else "FAIL parity"
    row["speedup"] = (ref_median_ms / row["latency_median_ms"]
                      if row["status"] == "ok" and ref_median_ms else None)


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
    parameters per unit, for one provider (fresh model, same seed as the timed ones)."""
    from .flops import activated_parameters, fvcore_macs
    dtype = DTYPES[args.dtype]
    model = build_model(cfg, args.seed, dtype, device, provider)
    images, nm = make_inputs(cfg, args.batch, args.modalities, args.seed + 1, dtype, device)
    with torch.no_grad():
        model(images, nm)  # builds the accelerated model's folded-kernel cache: not counted
        macs = fvcore_macs(_MapAndScore(model), (images, nm))
    return {"gflops_fvcore_per_sample": macs / args.batch / 1e9,
            "activated_params_per_unit": activated_parameters(model)}


def model_section(args, cfg, device, base_job) -> List[Dict]:
    rows, outputs, ref_ms = [], {}, None
    tol = parity_tolerance(DTYPES[args.dtype], device)
    for provider in args.providers:
        job = dict(base_job, provider=provider, label=f"model/{provider}")
        _log(f"{job['label']}: preset={args.preset} B={args.batch} M={args.modalities} "
             f"{cfg.image_size}² {args.dtype} on {device}")
        res = run_isolated(_measure_model, job, isolate=not args.no_isolate)
        row = {"section": "model", "provider": provider, "batch": args.batch,
               "modalities": args.modalities, "units": args.batch * args.modalities,
               "image_size": cfg.image_size, "dtype": args.dtype}
        row.update(summarize(res["times_s"], args.batch))
        row.update({k: res[k] for k in ("peak_memory_mb", "peak_memory_kind", "params",
                                        "params_trainable", "params_mb", "times_s")})
        if args.flops:
            _log(f"{job['label']}: counting FLOPs with fvcore")
            row.update(model_flops(cfg, args, device, provider))
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
        _judge(row, err, tol, ref_ms)
        rows.append(row)
    return rows


def cmoe_section(args, cfg, device, dtype) -> List[Dict]:
    """One C-MoE per level on ``batch × modalities`` units of ``batch`` samples."""
    from .models.cmoe import CMoE
    from kernels import FastCMoE
    from .flops import cmoe_gflop

    rows = []
    units, samples = args.batch * args.modalities, args.batch
    tol = parity_tolerance(dtype, device)
    g = torch.Generator().manual_seed(args.seed)
    for level, (C, S) in enumerate(zip(cfg.level_channels, cfg.level_sizes), start=1):
        torch.manual_seed(args.seed + level)
        ref = CMoE(C, cfg.embed_dim, cfg.num_base_experts, cfg.num_leaders, cfg.top_k,
                   cfg.cmoe_kernel_sizes).to(device=device, dtype=dtype).eval()
        general = torch.randn(samples, C, S, S, generator=g).to(device=device, dtype=dtype)
        prior = torch.randn(units, C, S, S, generator=g).to(device=device, dtype=dtype)
        uts = torch.arange(samples, device=device).repeat_interleave(args.modalities)
        ref_out, ref_ms = None, None
        for provider in ("reference", "fast"):
            module = ref if provider == "reference" else FastCMoE.from_reference(ref)

            def call(module=module):
                with torch.inference_mode():
                    return module(general, prior, uts)[0]
            label = f"cmoe/L{level}/{provider}"
            times, out = _time_calls(call, device, args.warmup, args.iters, label,
                                     not args.quiet)
            row = {"section": "cmoe", "provider": provider if provider == "reference" else
                   f"fast ({module.resolved_backend(device)})", "level": level,
                   "batch": samples, "modalities": args.modalities, "units": units,
                   "dtype": args.dtype, "times_s": times}
            row.update(summarize(times, samples))
            row["units_per_s"] = units / statistics.median(times)
            row["gflop"] = cmoe_gflop(C, S, units, samples, cfg.embed_dim, cfg.cmoe_kernel_sizes,
                                      cfg.top_k, "reference" if provider == "reference"
                                      else "folded")
            row["peak_memory_mb"] = peak_memory_mb(call, device)
            row["peak_memory_kind"] = ("cuda_max_allocated" if device.type == "cuda"
                                       else "tensor_allocations")
            if provider == "reference":
                ref_out, ref_ms = out.float().cpu(), row["latency_median_ms"]
                _judge(row, None, tol, ref_ms)
            else:
                _judge(row, rel_err(out.float().cpu(), ref_out), tol, ref_ms)
            rows.append(row)
            del module
        if len(rows) >= 2:
            _log(f"cmoe level {level}: fast path {rows[-1].get('speedup') or 0:.2f}× the reference")
    total = {p: sum(r["latency_median_ms"] for r in rows if r["provider"].startswith(p))
             for p in ("reference", "fast")}
    ok = all(r["status"] == "ok" for r in rows)
    rows.append({"section": "cmoe", "provider": "all levels: fast", "units": units,
                 "batch": samples, "dtype": args.dtype, "latency_median_ms": total["fast"],
                 "status": "ok" if ok else "FAIL parity",
                 "speedup": total["reference"] / total["fast"] if ok else None})
    return rows


def map_section(args, cfg, device, dtype) -> List[Dict]:
    """Anomaly map + image score of ``batch × modalities`` units, reference vs fused."""
    import kernels
    from .scoring import anomaly_map, image_score

    units, samples = args.batch * args.modalities, args.batch
    g = torch.Generator().manual_seed(args.seed)
    uts = torch.arange(samples, device=device).repeat_interleave(args.modalities)
    feats = [[torch.randn(units, C, S, S, generator=g).relu().to(device=device, dtype=dtype)
              for C, S in zip(cfg.level_channels, cfg.level_sizes)] for _ in range(2)]
    priors, preds = feats
    nbytes = sum(t.numel() * t.element_size() for t in priors + preds)
    kw = dict(num_samples=samples, mode=cfg.map_mode, sigma=cfg.blur_sigma,
              kernel_size=cfg.blur_kernel_size)
    def pair(map_fn, score_fn):
        def run():
            amap = map_fn(priors, preds, uts, cfg.image_size, **kw)
            return amap, score_fn(amap, cfg.top_fraction)
        return run
    providers = {"reference": pair(anomaly_map, image_score),
                 "fast": pair(kernels.anomaly_map, kernels.image_score)}
    rows, ref_out, ref_ms = [], None, None
    tol = parity_tolerance(dtype, device)
    for name, fn in providers.items():
        def call(fn=fn):
            with torch.inference_mode():
                return fn()
        times, out = _time_calls(call, device, args.warmup, args.iters, f"map/{name}",
                                 not args.quiet)
        row = {"section": "map", "provider": name if name == "reference" else
               f"fast ({kernels.ops.resolve_backend('auto', device)})", "batch": samples,
               "modalities": args.modalities, "units": units, "dtype": args.dtype,
               "times_s": times}
        row.update(summarize(times, samples))
        row["gbps"] = nbytes / (row["latency_median_ms"] * 1e-3) / 1e9
        row["peak_memory_mb"] = peak_memory_mb(call, device)
        row["peak_memory_kind"] = ("cuda_max_allocated" if device.type == "cuda"
                                   else "tensor_allocations")
        out = [t.float().cpu() for t in out]
        if name == "reference":
            ref_out, ref_ms = out, row["latency_median_ms"]
            _judge(row, None, tol, ref_ms)
        else:
            _judge(row, max(rel_err(a, b) for a, b in zip(out, ref_out)), tol, ref_ms)
        rows.append(row)
    return rows


def _log(msg: str) -> None:
    print(f"[unimmad bench] {msg}", file=sys.stderr, flush=True)


def _csv(kind):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        allowed = SECTIONS if kind == "sections" else MODEL_PROVIDERS
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"--{kind} takes a comma list of {allowed}")
        return items
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"],
                   help="model size: the paper's dimensions or the tiny test preset")
    p.add_argument("--batch", type=int, default=1, help="samples per forward pass")
    p.add_argument("--modalities", type=int, default=2,
                   help="modalities per sample (1-4); units per batch = batch x modalities")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side (multiple of 32; default: the preset's)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="parameter and input dtype")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--sections", type=_csv("sections"), default=list(SECTIONS),
                   help="comma list of: model (end-to-end), cmoe (one C-MoE per level), "
                   "map (anomaly map + image score)")
    p.add_argument("--providers", type=_csv("providers"), default=list(MODEL_PROVIDERS),
                   help="model providers: reference, accelerated (unimmad.accelerate)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per measurement")
    p.add_argument("--iters", type=int, default=3, help="timed calls per measurement")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    p.add_argument("--out", default="bench_out", help="folder for bench.json and bench.md")
    p.add_argument("--no-flops", dest="flops", action="store_false",
                   help="skip the fvcore FLOP count (one extra traced forward per provider)")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure the model in this process (peak memory then includes setup)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("unimmad bench: --device cuda requested but CUDA is not available")
    return dev


def run(args: argparse.Namespace) -> Dict:
    """Measure, print and write the result record (``bench.json`` + ``bench.md``)."""
    if not 1 <= args.modalities <= 4:
        raise SystemExit("unimmad bench: --modalities must be 1..4")
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        raise SystemExit("unimmad bench: --batch and --iters must be >= 1, --warmup >= 0")
    device = _resolve_device(args.device)
    try:
        cfg = preset_config(args.preset, args.image_size)
    except ValueError as exc:
        raise SystemExit(f"unimmad bench: {exc}")
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    base_job = {
        "config": cfg.to_dict(), "batch": args.batch, "modalities": args.modalities,
        "dtype": args.dtype, "device": str(device), "warmup": args.warmup,
        "iters": args.iters, "seed": args.seed, "threads": threads,
        "progress": not args.quiet,
    }
    rows: List[Dict] = []
    if "model" in args.sections:
        rows += model_section(args, cfg, device, base_job)
    if "cmoe" in args.sections:
        rows += cmoe_section(args, cfg, device, DTYPES[args.dtype])
    if "map" in args.sections:
        rows += map_section(args, cfg, device, DTYPES[args.dtype])
    record = {"meta": environment(device), "preset": args.preset, "config": cfg.to_dict(),
              "args": {k: v for k, v in vars(args).items() if k != "func"}, "results": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(record, f, indent=2)
    md = to_markdown(record)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(md)
    print(md)
    _log(f"wrote {os.path.join(args.out, 'bench.json')} and bench.md")
    return record


COLUMNS = [
    ("section", "section", "{}"), ("provider", "provider", "{}"), ("level", "level", "{}"),
    ("batch", "B", "{}"), ("units", "units", "{}"), ("dtype", "dtype", "{}"),
    ("samples_per_s", "samples/s", "{:.3f}"), ("latency_median_ms", "median ms", "{:.1f}"),
    ("latency_iqr_ms", "IQR ms", "{:.1f}"), ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("params", "params", "{:,}"), ("params_mb", "params MB", "{:.2f}"),
    ("activated_params_per_unit", "active params/unit", "{:,}"),
    ("gflops_fvcore_per_sample", "GFLOPs/sample (fvcore)", "{:.1f}"),
    ("gflop", "GFLOP", "{:.1f}"), ("gbps", "GB/s", "{:.1f}"),
    ("parity_rel_err", "rel. err", "{:.1e}"),
    ("status", "status", "{}"), ("speedup", "speedup", "{:.2f}×"),
]


def to_markdown(record: Dict) -> str:
    m = record["meta"]
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in record["results"])]
    lines = [f"# unimmad bench — {m['device_name']} ({m['device']}), torch {m['torch']}, "
             f"commit {str(m['commit'])[:10]}, {m['date']}", "",
             "| " + " | ".join(c[1] for c in cols) + " |",
             "|" + "---|" * len(cols)]
    for r in record["results"]:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append("—" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["",
              "Peak memory: model rows — CUDA max allocated on GPU, the measuring process's "
              "peak resident set on CPU; cmoe rows — peak tensor allocations of one call. "
              "params MB = parameters × element size / 2^20. Active params/unit: all "
              "parameters except, per C-MoE branch, N − K base-expert-sized kernels (a unit "
              "uses K composed leader kernels where N base experts are stored; the paper's "
              "Table 6 convention). GFLOPs/sample (fvcore): fvcore's count, one multiply-add "
              "= one FLOP, fused ops counted by their multiply-adds. GFLOP (cmoe rows): 2 FLOPs "
              "per multiply-add (analytic, SPEC §2). GB/s (map rows): bytes of u and p (read once) "
              "per second. Speedups are shown only where the output matches the "
              "reference of the same run within SPEC §3 (rel. err ≤ tolerance)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="unimmad bench", description=__doc__)
    add_arguments(p)
    run(p.parse_args(argv))
    return 0
