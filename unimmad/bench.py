"""``unimmad bench``: end-to-end inference benchmark on generated inputs.

Each (provider, setting) is measured in a fresh spawned process so that its peak resident
memory (CPU) or CUDA max-allocated memory belongs to it alone.  Results are printed as a
table and written as JSON (and Markdown) with the machine, versions and commit.
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
from typing import Dict, List, Optional

import torch

from .benchmeta import environment
from .config import UniMMADConfig

__all__ = ["add_arguments", "run", "main", "make_inputs"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def build_model(cfg: UniMMADConfig, seed: int, dtype, device):
    """The benchmarked model: same weights in every process (seeded init)."""
    from .models.model import UniMMAD
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone init is expected here
        model = UniMMAD(cfg)
    return model.to(device=device, dtype=dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure_model(job: Dict) -> Dict:
    """Runs in a spawned process: build, warm up, time ``iters`` forward passes."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    dtype = DTYPES[job["dtype"]]
    cfg = UniMMADConfig.from_dict(job["config"])
    model = build_model(cfg, job["seed"], dtype, device)
    images, nm = make_inputs(cfg, job["batch"], job["modalities"], job["seed"] + 1, dtype, device)
    counts = model.parameter_counts()
    times: List[float] = []
    show = job.get("progress", True)
    try:
        from tqdm import tqdm
        bar = tqdm(total=job["warmup"] + job["iters"], desc=job["label"], leave=False,
                   disable=not show, file=sys.stderr)
    except ImportError:  # pragma: no cover
        bar = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        out = None
        for i in range(job["warmup"] + job["iters"]):
            _sync(device)
            t0 = time.perf_counter()
            out = model(images, nm)
            _sync(device)
            if i >= job["warmup"]:
                times.append(time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
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
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, (job,))


def summarize(times: List[float], batch: int) -> Dict[str, float]:
    med = statistics.median(times)
    return {
        "latency_median_ms": med * 1e3,
        "latency_min_ms": min(times) * 1e3,
        "latency_max_ms": max(times) * 1e3,
        "latency_iqr_ms": (_quantile(times, 0.75) - _quantile(times, 0.25)) * 1e3,
        "samples_per_s": batch / med,
    }


def _quantile(xs: List[float], q: float) -> float:
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


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
    p.add_argument("--warmup", type=int, default=1, help="untimed forward passes")
    p.add_argument("--iters", type=int, default=3, help="timed forward passes")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    p.add_argument("--out", default="bench_out",
                   help="folder for bench.json and bench.md")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure in this process (peak memory then includes setup)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("unimmad bench: --device cuda requested but CUDA is not available")
    return dev


def run(args: argparse.Namespace) -> Dict:
    """Measure and return the result record (also written to ``args.out``)."""
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
    base_job = {
        "config": cfg.to_dict(), "batch": args.batch, "modalities": args.modalities,
        "dtype": args.dtype, "device": str(device), "warmup": args.warmup,
        "iters": args.iters, "seed": args.seed, "threads": threads,
        "progress": not args.quiet,
    }
    rows = []
    job = dict(base_job, label="model/reference")
    print(f"[unimmad bench] {job['label']}: preset={args.preset} B={args.batch} "
          f"M={args.modalities} {cfg.image_size}² {args.dtype} on {device}", file=sys.stderr)
    res = run_isolated(_measure_model, job, isolate=not args.no_isolate)
    row = {"section": "model", "provider": "reference", "batch": args.batch,
           "modalities": args.modalities, "units": args.batch * args.modalities,
           "image_size": cfg.image_size, "dtype": args.dtype}
    row.update(summarize(res["times_s"], args.batch))
    row.update({k: res[k] for k in ("peak_memory_mb", "peak_memory_kind", "params",
                                    "params_trainable", "params_mb", "times_s")})
    rows.append(row)
    record = {"meta": environment(device), "preset": args.preset, "config": cfg.to_dict(),
              "args": {k: v for k, v in vars(args).items() if k != "func"}, "results": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(record, f, indent=2)
    md = to_markdown(record)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"[unimmad bench] wrote {os.path.join(args.out, 'bench.json')} and bench.md",
          file=sys.stderr)
    return record


COLUMNS = [
    ("section", "section", "{}"), ("provider", "provider", "{}"), ("batch", "B", "{}"),
    ("units", "units", "{}"), ("dtype", "dtype", "{}"),
    ("samples_per_s", "samples/s", "{:.3f}"), ("latency_median_ms", "median ms", "{:.1f}"),
    ("latency_iqr_ms", "IQR ms", "{:.1f}"), ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("params", "params", "{:,}"), ("params_mb", "params MB", "{:.2f}"),
]


def to_markdown(record: Dict) -> str:
    m = record["meta"]
    lines = [f"# unimmad bench — {m['device_name']} ({m['device']}), torch {m['torch']}, "
             f"commit {str(m['commit'])[:10]}, {m['date']}", "",
             "| " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in record["results"]:
        cells = []
        for key, _, fmt in COLUMNS:
            v = r.get(key)
            cells.append("—" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Peak memory: CUDA max allocated on GPU, the measuring process's peak "
                 "resident set on CPU. params MB = parameters × element size / 2^20.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="unimmad bench", description=__doc__)
    add_arguments(p)
    run(p.parse_args(argv))
    return 0
