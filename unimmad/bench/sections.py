"""The measured sections of ``unimmad bench``: ``model`` (end-to-end inference, each
provider in its own process), ``train`` (one training step, likewise), ``cmoe`` (one C-MoE
per level) and ``map`` (anomaly map + image score).  Every fast-path row is checked against
the reference output of the same run (:func:`unimmad.bench.parity.judge`).  Fast providers
are measured once per folded-kernel memory policy asked for (``cache`` column: ``none``,
``bounded``, ``all``; :mod:`kernels.cmoe_cache`), with the bytes their caches hold
(``cache_mb``) next to their peak memory and the reference's (``ref_peak_memory_mb``)."""
from __future__ import annotations

import copy
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

import kernels

from ..config import UniMMADConfig
from ..flops import activated_parameters, cmoe_gflop, fvcore_macs
from .cases import (FAST_PROVIDERS, amap_case, build_model, cmoe_case, cmoe_module,
                    feature_bytes, map_and_score, model_inputs)
from .meta import peak_memory_mb, peak_rss_mb
from .parity import judge, rel_err, tolerance
from .timing import summarize, sync, time_calls

__all__ = ["DTYPES", "SECTIONS", "DEFAULT_SECTIONS", "model_section", "train_section",
           "cmoe_section", "map_section", "measure_model", "measure_train_step",
           "run_isolated", "run_interleaved", "load_average", "variants", "log"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SECTIONS = ("model", "train", "cmoe", "map")
#: What ``unimmad bench`` measures unless ``--sections`` says otherwise.
DEFAULT_SECTIONS = ("model", "cmoe", "map")


def log(msg: str) -> None:
    print(f"[unimmad bench] {msg}", file=sys.stderr, flush=True)


def _memory_kind(device: torch.device, per_process: bool) -> str:
    if device.type == "cuda":
        return "cuda_max_allocated"
    return "process_peak_rss" if per_process else "tensor_allocations"


# ----------------------------------------------------------------------------- model
def variants(providers, policies) -> Iterator[Tuple[str, Optional[str]]]:
    """``(provider, policy)`` pairs measured: each fast provider once per memory policy,
    the others once (policy ``None``)."""
    for provider in providers:
        if provider in FAST_PROVIDERS:
            for policy in policies:
                yield provider, policy
        else:
            yield provider, None


def _job_model(job: Dict):
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    dtype = DTYPES[job["dtype"]]
    cfg = UniMMADConfig.from_dict(job["config"])
    policy = job.get("cache") or "none"
    model = build_model(cfg, job["seed"], dtype, device, job["provider"], policy,
                        job.get("cache_mb") if policy == "bounded" else None)
    images, nm = model_inputs(cfg, job["batch"], job["modalities"], job["seed"] + 1, dtype,
                              device)
    return device, dtype, model, images, nm


def _peak(device: torch.device) -> float:
    return (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
            else peak_rss_mb())


def _cache_fields(model, provider: str) -> Dict:
    if provider not in FAST_PROVIDERS:
        return {"cache": None, "cache_budget_mb": None, "cache_mb": None}
    info = kernels.cache_info(model)
    return {"cache": info["policy"], "cache_budget_mb": info["budget_mb"],
            "cache_mb": info["bytes"] / 2 ** 20}


def _model_session(job: Dict):
    """``(call, finish)`` of one inference provider: ``call()`` one forward pass under
    ``torch.inference_mode``; ``finish(times, out)`` the result record."""
    device, dtype, model, images, nm = _job_model(job)
    counts = model.parameter_counts()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def call():
        with torch.inference_mode():
            return model(images, nm)

    def finish(times, out):
        elem = torch.finfo(dtype).bits // 8
        return {
            "times_s": times,
            "peak_memory_mb": _peak(device),
            "peak_memory_kind": _memory_kind(device, per_process=True),
            "params": counts["total"],
            "params_trainable": counts["trainable"],
            "params_mb": counts["total"] * elem / 2 ** 20,
            "anomaly_map": out.anomaly_map.float().cpu(),
            "pred_score": out.pred_score.float().cpu(),
            **_cache_fields(model, job["provider"]),
        }
    return call, finish, device


def _train_session(job: Dict):
    """``(call, finish)`` of one training provider: ``call()`` one step (``model.loss``
    forward + backward + Adam); ``finish(times, out)`` the result record with the first
    step's loss (computed before any update, so every provider's can be compared)."""
    device, dtype, model, images, nm = _job_model(job)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses: List[torch.Tensor] = []

    def call():
        opt.zero_grad(set_to_none=True)
        total, _ = model.loss(images, nm)
        total.backward()
        opt.step()
        losses.append(total.detach().float().cpu())
        return total

    def finish(times, out):
        return {"times_s": times, "peak_memory_mb": _peak(device),
                "peak_memory_kind": _memory_kind(device, per_process=True),
                "first_loss": losses[0].reshape(1), **_cache_fields(model, job["provider"])}
    return call, finish, device


_SESSIONS = {"model": _model_session, "train": _train_session}


def _measure(kind: str, job: Dict) -> Dict:
    call, finish, device = _SESSIONS[kind](job)
    times, out = time_calls(call, device, job["warmup"], job["iters"], job["label"],
                            job.get("progress", True))
    return finish(times, out)


def measure_model(job: Dict) -> Dict:
    """Inference of one provider (meant to run in its own spawned process): build, warm up,
    time forward passes; peak memory of the process (CPU resident set, CUDA max allocated)
    and the bytes held by the folded-kernel caches at the end."""
    return _measure("model", job)


def measure_train_step(job: Dict) -> Dict:
    """Training steps of one provider (meant to run in its own spawned process): the
    model in train mode, ``model.loss`` forward + backward + an Adam step per call; peak
    memory of the process (optimizer state included) and the first step's loss."""
    return _measure("train", job)


def run_isolated(fn, job: Dict, isolate: bool = True) -> Dict:
    """Run ``fn(job)`` in a fresh spawned process (or inline with ``isolate=False``)."""
    if not isolate:
        return fn(job)
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, job).result()


def _worker(conn, kind: str, job: Dict) -> None:
    """A provider's own process for :func:`run_interleaved`: build, then answer ``"call"``
    with the wall-clock and process CPU seconds of one synchronised call and ``"finish"`` with the result record
    (tensors sent as NumPy arrays: a tensor would travel as shared memory that vanishes
    when this process exits)."""
    try:
        call, finish, device = _SESSIONS[kind](job)
        conn.send(("ready", None))
        out = None
        while True:
            cmd, times = conn.recv()
            if cmd == "call":
                sync(device)
                m0, t0, c0 = time.monotonic(), time.perf_counter(), time.process_time()
                out = call()
                sync(device)
                conn.send(("time", (time.perf_counter() - t0, time.process_time() - c0,
                                    (m0, time.monotonic()))))
            else:
                res = finish(times, out)
                conn.send(("result", {k: v.numpy() if isinstance(v, torch.Tensor) else v
                                      for k, v in res.items()}))
                return
    except EOFError:                                       # the parent went away
        return
    except BaseException:                                  # reported to the parent
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        conn.close()


def _answer(conn, label: str, expected: str):
    try:
        what, value = conn.recv()
    except EOFError:
        raise RuntimeError(f"{label}: the measuring process died (out of memory?)") from None
    if what == "error":
        raise RuntimeError(f"{label} failed in its process:\n{value}")
    if what != expected:
        raise RuntimeError(f"{label}: expected {expected!r} from its process, got {what!r}")
    if what == "result":
        value = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                 for k, v in value.items()}
    return value


def run_interleaved(kind: str, jobs: List[Dict], warmup: int, iters: int,
                    progress: bool = True) -> List[Dict]:
    """Measure several providers side by side, each in its own spawned process (so each
    peak memory is its own): all are built, then each round calls every provider once, one
    after the other (never two at a time; the order rotates from round to round), so a
    change of machine load between rounds hits every provider alike and the ratios of
    their medians stay fair on a shared machine.  ``kind`` is ``"model"`` (inference) or
    ``"train"`` (one training step per call); ``warmup`` rounds are not timed.  Returns
    one result record per job, in order (as :func:`measure_model` /
    :func:`measure_train_step`, plus ``cpu_s``: the process CPU seconds of each timed call,
    all threads — less sensitive to other processes' load than wall-clock time — and
    ``call_spans``: ``time.monotonic()`` start and end of every call, warm-up included)."""
    if not jobs:
        raise ValueError("run_interleaved: no jobs to measure")
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    try:
        for job in jobs:                     # built one after the other: no build overlaps
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, kind, job), daemon=True)
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)
            _answer(parent, job["label"], "ready")
        times: List[List[float]] = [[] for _ in jobs]
        cpu: List[List[float]] = [[] for _ in jobs]
        spans: List[List[Tuple[float, float]]] = [[] for _ in jobs]
        rounds = warmup + iters
        bar = tqdm(total=rounds * len(jobs), desc=f"{kind} (interleaved)", leave=False,
                   disable=not progress, file=sys.stderr)
        for r in range(rounds):
            for i in (list(range(r % len(jobs), len(jobs))) + list(range(r % len(jobs)))):
                conns[i].send(("call", None))
                wall, cpu_s, span = _answer(conns[i], jobs[i]["label"], "time")
                spans[i].append(span)
                if r >= warmup:
                    times[i].append(wall)
                    cpu[i].append(cpu_s)
                bar.update(1)
        bar.close()
        results = []
        for i, job in enumerate(jobs):
            conns[i].send(("finish", times[i]))
            results.append(dict(_answer(conns[i], job["label"], "result"), cpu_s=cpu[i],
                                call_spans=spans[i]))
        return results
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


class _MapAndScore(torch.nn.Module):
    """Tensor-only view of a UniMMAD forward, for tracing by fvcore."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, num_modalities):
        out = self.model(images, num_modalities)
        return out.anomaly_map, out.pred_score


def model_flops(cfg: UniMMADConfig, args, device, provider: str, cache: str = "none",
                cache_mb: Optional[float] = None) -> Dict[str, float]:
    """fvcore multiply-adds per sample (fvcore's FLOP = one multiply-add) and activated
    parameters per unit, for one provider and memory policy (fresh model, same seed as
    the timed ones).  Folds done on the fly (policy ``none``) are counted; a cache's build
    (first call) is not."""
    dtype = DTYPES[args.dtype]
    model = build_model(cfg, args.seed, dtype, device, provider, cache, cache_mb)
    images, nm = model_inputs(cfg, args.batch, args.modalities, args.seed + 1, dtype, device)
    with torch.no_grad():
        model(images, nm)  # builds a cached policy's folded kernels: not counted
        macs = fvcore_macs(_MapAndScore(model), (images, nm))
    return {"gflops_fvcore_per_sample": macs / args.batch / 1e9,
            "activated_params_per_unit": activated_parameters(model)}


def _row(section: str, provider: str, args, cfg: UniMMADConfig, times, **extra) -> Dict:
    row = {"section": section, "provider": provider, "batch": args.batch,
           "modalities": args.modalities, "units": args.batch * args.modalities,
           "image_size": cfg.image_size, "dtype": args.dtype, **extra}
    row.update(summarize(times, args.batch))
    return row


def load_average() -> Optional[Tuple[float, float, float]]:
    """The machine's 1, 5 and 15 minute load averages (``uptime``'s; ``None`` where the
    platform has none) — recorded with every model / train measurement, since on a shared
    machine the load says how far absolute times can be trusted."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except (AttributeError, OSError):
        return None


def _shape_args(args, batch: int, modalities: int):
    shaped = copy.copy(args)
    shaped.batch, shaped.modalities = batch, modalities
    return shaped


def _isolated_rows(section: str, args, cfg: UniMMADConfig, device: torch.device,
                   base_job: Dict, compare, on_shape=None) -> List[Dict]:
    """Per shape ``(B, M)`` of ``args.shapes``: one measurement per (provider, policy),
    each provider in its own process, their calls interleaved (:func:`run_interleaved`;
    in this process one after the other with ``--no-isolate``), judged against the
    reference of the same shape and run with ``compare(result, reference_result)``.
    ``on_shape(rows)`` (optional) receives the rows measured so far after each shape."""
    rows: List[Dict] = []
    tol = tolerance(DTYPES[args.dtype], device)
    for batch, modalities in args.shapes:
        sargs = _shape_args(args, batch, modalities)
        jobs = []
        for provider, policy in variants(args.providers, args.cache):
            budget = args.cache_mb if policy == "bounded" else None
            tag = provider if policy is None else f"{provider}[{policy}]"
            jobs.append(dict(base_job, batch=batch, modalities=modalities, provider=provider,
                             cache=policy, cache_mb=budget,
                             label=f"{section}/B{batch}-M{modalities}/{tag}"))
        log(f"{section}: preset={args.preset} B={batch} M={modalities} {cfg.image_size}² "
            f"{args.dtype} on {device}: {', '.join(j['label'].rsplit('/', 1)[1] for j in jobs)}"
            + ("" if args.no_isolate else ", each in its own process, calls interleaved"))
        load_start = load_average()
        if args.no_isolate:
            results = [_measure(section, job) for job in jobs]
        else:
            results = run_interleaved(section, jobs, args.warmup, args.iters,
                                      not args.quiet)
        load_end = load_average()
        ref, ref_ms, ref_peak, ref_row = None, None, None, None
        for job, res in zip(jobs, results):
            provider, policy = job["provider"], job["cache"]
            row = _row(section, provider, sargs, cfg, res["times_s"])
            row.update({k: res[k] for k in ("peak_memory_mb", "peak_memory_kind", "times_s",
                                            "cache", "cache_budget_mb", "cache_mb")})
            row.update({k: res[k] for k in ("params", "params_trainable", "params_mb")
                        if k in res})
            row["timing"] = "sequential" if args.no_isolate else "interleaved"
            if res.get("cpu_s"):
                row["cpu_s"] = res["cpu_s"]
                row["cpu_median_ms"] = statistics.median(res["cpu_s"]) * 1e3
            row["load_avg_start"], row["load_avg_end"] = load_start, load_end
            if load_start and load_end:
                row["load_1m"] = f"{load_start[0]:.1f}→{load_end[0]:.1f}"
            if section == "model" and args.flops:
                log(f"{job['label']}: counting FLOPs with fvcore")
                row.update(model_flops(cfg, sargs, device, provider, policy or "none",
                                       job["cache_mb"]))
                row["activated_params_mb"] = (row["activated_params_per_unit"]
                                              * row["params_mb"] / row["params"])
            err = None
            if provider == "reference":
                ref, ref_ms, ref_peak = res, row["latency_median_ms"], row["peak_memory_mb"]
            elif ref is not None:
                err = compare(res, ref)
                row["ref_peak_memory_mb"] = ref_peak
            judge(row, err, tol, ref_ms)
            ref_cpu = ref_row.get("cpu_median_ms") if provider != "reference" and ref_row else None
            if row["speedup"] is not None and ref_cpu and row.get("cpu_median_ms"):
                row["speedup_cpu"] = ref_cpu / row["cpu_median_ms"]
            if provider == "reference":
                ref_row = row
            rows.append(row)
        if on_shape is not None:
            on_shape(rows)
    return rows


def model_section(args, cfg: UniMMADConfig, device: torch.device, base_job: Dict,
                  on_shape=None) -> List[Dict]:
    """End-to-end inference, each (provider, policy) in its own process (``on_shape``: see
    :func:`_isolated_rows`)."""
    def compare(res, ref):
        return max(rel_err(res["anomaly_map"], ref["anomaly_map"]),
                   rel_err(res["pred_score"], ref["pred_score"]))
    return _isolated_rows("model", args, cfg, device, base_job, compare, on_shape)


def train_section(args, cfg: UniMMADConfig, device: torch.device, base_job: Dict,
                  on_shape=None) -> List[Dict]:
    """One training step (loss, backward, Adam), each (provider, policy) in its own
    process; parity on the first step's loss.  Under every policy the branch weights need
    gradients here, so the fast path folds inside autograd and holds no cache."""
    return _isolated_rows("train", args, cfg, device, base_job,
                          lambda res, ref: rel_err(res["first_loss"], ref["first_loss"]),
                          on_shape)


# ----------------------------------------------------------------------------- C-MoE
def cmoe_section(args, cfg: UniMMADConfig, device: torch.device, fast: str) -> List[Dict]:
    """One C-MoE per level on ``batch × modalities`` units of ``batch`` samples: the
    reference against the ``fast`` provider under each memory policy of ``args.cache``,
    and a row per policy over the three levels (summed latency; the largest per-call peak
    and the summed cache bytes, next to the reference's)."""
    dtype = DTYPES[args.dtype]
    rows: List[Dict] = []
    units, samples = args.batch * args.modalities, args.batch
    tol = tolerance(dtype, device)
    for level in (1, 2, 3):
        ref, general, prior, uts = cmoe_case(cfg, level, units, samples, args.seed + level,
                                             dtype, device)
        ref.eval()
        ref_out, ref_ms, ref_peak = None, None, None
        for provider, policy in variants(("reference", fast), args.cache):
            budget = args.cache_mb if policy == "bounded" else None
            module = cmoe_module(ref, provider, policy or "none", budget)
            tag = provider if policy is None else f"{provider}[{policy}]"

            def call(module=module):
                with torch.inference_mode():
                    return module(general, prior, uts)[0]
            times, out = time_calls(call, device, args.warmup, args.iters,
                                    f"cmoe/L{level}/{tag}", not args.quiet)
            row = _row("cmoe", provider, args, cfg, times, level=level, times_s=times)
            row["units_per_s"] = units / statistics.median(times)
            row["gflop"] = cmoe_gflop(ref.in_channels, general.shape[-1], units, samples,
                                      cfg.embed_dim, cfg.cmoe_kernel_sizes, cfg.top_k,
                                      "reference" if provider == "reference" else "folded")
            row["peak_memory_mb"] = peak_memory_mb(call, device)
            row["peak_memory_kind"] = _memory_kind(device, per_process=False)
            row["cache"] = policy
            row["cache_budget_mb"] = budget
            row["cache_mb"] = module.cache_bytes() / 2 ** 20 if policy else None
            if provider == "reference":
                ref_out, ref_ms = out.float().cpu(), row["latency_median_ms"]
                ref_peak = row["peak_memory_mb"]
                judge(row, None, tol, ref_ms)
            else:
                row["ref_peak_memory_mb"] = ref_peak
                judge(row, rel_err(out.float().cpu(), ref_out), tol, ref_ms)
            rows.append(row)
            del module
            if policy is not None:
                log(f"cmoe level {level}: {tag} {row.get('speedup') or 0:.2f}× the reference")
    refs = [r for r in rows if r["provider"] == "reference"]
    for policy in args.cache:
        mine = [r for r in rows if r["provider"] == fast and r["cache"] == policy]
        ok = all(r["status"] == "ok" for r in refs + mine)
        total = sum(r["latency_median_ms"] for r in mine)
        ref_total = sum(r["latency_median_ms"] for r in refs)
        rows.append({"section": "cmoe", "provider": fast, "level": "all", "units": units,
                     "batch": samples, "dtype": args.dtype, "latency_median_ms": total,
                     "cache": policy, "cache_budget_mb": mine[0]["cache_budget_mb"],
                     "cache_mb": sum(r["cache_mb"] for r in mine),
                     "peak_memory_mb": max(r["peak_memory_mb"] for r in mine),
                     "ref_peak_memory_mb": max(r["peak_memory_mb"] for r in refs),
                     "peak_memory_kind": mine[0]["peak_memory_kind"],
                     "status": "ok" if ok else "FAIL parity",
                     "speedup": ref_total / total if ok else None})
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
