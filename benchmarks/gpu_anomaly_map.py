"""GPU check of the fused anomaly map, image score and decompression loss (issue 4), for an
H200 (any CUDA device works):

    python -m benchmarks.gpu_anomaly_map --out DIR

Times the providers reference (``unimmad``), torch (the stock-torch fast path) and triton
(the fused kernels) with ``triton.testing.do_bench`` (L2 flushed between runs, times in
ms) and writes ``DIR/gpu_anomaly_map.json``:

* ``copy``: device-to-device copy bandwidth of a 1 GiB fp32 tensor (read + write bytes);
* ``cosine_stage``: kernel 1 alone (u and p read once → low-resolution 1 − cos maps) at
  B = 32, 2 modalities, fp32 and bf16 (NCHW), as GB/s and as a fraction of the copy bandwidth
  (target ≥ 0.8);
* ``floor``: map + score at B = 32, 2 modalities against the time floor of the bytes that
  must be read (u and p once), at the measured copy bandwidth and at the nominal
  4.8 TB/s (target ≤ 1.5×);
* ``rows``: map + score and loss forward + backward for B ∈ {1, 32} × modalities ∈
  {1, 2, 4} and every provider, with the relative error of each map and score against a
  float64 map of the same inputs.

The JSON is rewritten after every section, so a timeout keeps what was measured; no new
case starts after ``--budget-s`` seconds (38 by default: the GPU suite allows 45).  The
shape factory and byte counts here are shared with the CPU benchmarks
(``benchmarks/test_bench_anomaly_map.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List, Tuple

import torch

# paper dimensions (SPEC §1): level channels and side at 256² input
PAPER_LEVELS: Tuple[Tuple[int, int], ...] = ((256, 64), (512, 32), (1024, 16))
IMAGE_SIZE = 256
H200_PEAK_GBPS = 4800.0
DEVICE = "cuda"
COPY_ELEMENTS = 1 << 28      # 1 GiB of fp32 for the copy-bandwidth measurement


def make_case(batch: int, modalities: int, dtype=torch.float32, device="cpu",
              channels_last: bool = False, seed: int = 0):
    """Priors, predictions (``p = u + noise``, as after training) and ``unit_to_sample``
    for ``batch`` samples of ``modalities`` units each, at paper dimensions."""
    gen = torch.Generator(device=device).manual_seed(seed)
    U = batch * modalities
    pri, pre = [], []
    for c, s in PAPER_LEVELS:
        u = torch.randn(U, c, s, s, generator=gen, device=device)
        p = (u + 0.5 * torch.randn(U, c, s, s, generator=gen, device=device)).to(dtype)
        u = u.to(dtype)
        if channels_last:
            u = u.contiguous(memory_format=torch.channels_last)
            p = p.contiguous(memory_format=torch.channels_last)
        pri.append(u)
        pre.append(p)
    uts = torch.arange(batch, device=device).repeat_interleave(modalities)
    return pri, pre, uts


def feature_bytes(priors, predictions) -> int:
    """Bytes of u and p at their dtype: what the map must read (once)."""
    return sum(t.numel() * t.element_size() for t in list(priors) + list(predictions))


def loss_bytes(priors, predictions) -> int:
    """Bytes a fused loss forward + backward must move: u and p read in the forward and
    again in the backward, the gradient of p written once (5 tensor volumes of one side)."""
    return feature_bytes(priors, predictions) * 2 + sum(
        t.numel() * t.element_size() for t in predictions)


def map_and_score(provider: str, priors, predictions, uts, batch: int):
    """One map + score call of ``provider`` (the same call the benchmarks time)."""
    import kernels
    import unimmad
    if provider == "reference":
        m = unimmad.anomaly_map(priors, predictions, uts, IMAGE_SIZE, batch)
        return unimmad.image_score(m)
    m = kernels.anomaly_map(priors, predictions, uts, IMAGE_SIZE, batch, backend=provider)
    return kernels.image_score(m, backend=provider)


def loss_step(provider: str, priors, predictions, uts):
    """Loss forward + backward of ``provider``; ``predictions`` must require grad."""
    import kernels
    import unimmad
    fn = unimmad.decompression_loss if provider == "reference" else (
        lambda *a: kernels.decompression_loss(*a, backend=provider))
    loss, _ = fn(priors, predictions, uts)
    loss.backward()
    return loss


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if not bool(torch.isfinite(out).all()):
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def _floor(rows, copy_gbps) -> Dict[str, object]:
    """Map + score at B = 32, 2 modalities (triton) against the byte floor."""
    row = next((r for r in rows if r["batch"] == 32 and r["modalities"] == 2
                and r["provider"] == "triton" and "map_score_ms" in r), None)
    nbytes = 2 * 32 * 2 * 4 * sum(c * s * s for c, s in PAPER_LEVELS)   # fp32 u and p
    ms = row["map_score_ms"] if row else float("nan")
    at_copy = nbytes / (copy_gbps * 1e9) * 1e3
    at_peak = nbytes / (H200_PEAK_GBPS * 1e9) * 1e3
    return {"case": "B=32, 2 modalities, fp32, map + score (triton)", "map_score_ms": ms,
            "bytes": nbytes, "floor_ms_at_copy_bandwidth": at_copy,
            "floor_ms_at_4.8TBps": at_peak, "ratio_to_copy_floor": ms / at_copy,
            "ratio_to_peak_floor": ms / at_peak,
            "target": "ratio <= 1.5; cosine stage >= 0.8 of copy bandwidth"}


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(
        description="Time the fused anomaly map, score and loss on a CUDA device (issue 4).")
    parser.add_argument("--out", required=True, help="directory for gpu_anomaly_map.json")
    parser.add_argument("--quick", action="store_true", help="B = 32, 2 modalities only")
    parser.add_argument("--budget-s", type=float, default=38.0,
                        help="start no new case after this many seconds (default 38: the "
                             "GPU suite gives this script 45 s)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_anomaly_map needs a CUDA device")
    from triton.testing import do_bench

    import kernels
    from kernels import amap_triton
    from unimmad.benchmeta import environment

    t_start = time.time()
    dev = DEVICE
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    bench = lambda fn, **kw: float(do_bench(fn, warmup=10, rep=40, **kw))
    result: Dict[str, object] = {"env": environment(dev), "unit": "ms",
                                 "timer": "triton.testing.do_bench (mean, L2 flushed)"}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_anomaly_map.json")

    def save():   # after every section: a timeout keeps what was measured
        result["wall_s"] = time.time() - t_start
        with open(path, "w") as f:
            json.dump(result, f, indent=2)

    # ------------------------------------------------------------ copy bandwidth
    x = torch.empty(COPY_ELEMENTS, dtype=torch.float32, device=dev).normal_()
    y = torch.empty_like(x)
    t_copy = bench(lambda: y.copy_(x))
    copy_gbps = 2 * x.numel() * 4 / (t_copy * 1e-3) / 1e9
    result["copy"] = {"bytes": 2 * x.numel() * 4, "ms": t_copy, "gbps": copy_gbps}
    del x, y
    print(f"copy {copy_gbps:.0f} GB/s", flush=True)
    save()

    # ------------------------------------------------------------ cosine stage (kernel 1)
    stage: Dict[str, object] = {}
    result["cosine_stage"] = stage
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype)[6:]
        pri, pre, uts = make_case(32, 2, dtype, dev)
        nbytes = feature_bytes(pri, pre)
        try:
            amap_triton.cosine_maps(pri, pre)                      # compile + autotune
            t = bench(lambda: amap_triton.cosine_maps(pri, pre))
            gbps = nbytes / (t * 1e-3) / 1e9
            stage[name] = {"bytes": nbytes, "ms": t, "gbps": gbps,
                           "fraction_of_copy": gbps / copy_gbps}
            print(f"cosine stage {name}: {t * 1e3:.1f} us, {gbps:.0f} GB/s "
                  f"({gbps / copy_gbps:.0%} of copy)", flush=True)
        except Exception as e:  # record and go on: one failure must not lose the rest
            stage[name] = {"error": repr(e)}
            print(f"cosine stage {name}: ERROR {e!r}", flush=True)
        del pri, pre
        save()

    # ------------------------------------------------------------ provider matrix
    rows: List[Dict[str, object]] = []
    result["rows"] = rows
    cases = [(32, 2)] if args.quick else [(32, 2), (1, 1), (1, 2), (1, 4), (32, 1), (32, 4)]
    for batch, mods in cases:
        if time.time() - t_start > args.budget_s:
            result.setdefault("skipped", []).append(
                {"batch": batch, "modalities": mods, "why": "time budget"})
            continue
        pri, pre, uts = make_case(batch, mods, torch.float32, dev)
        nbytes, lbytes = feature_bytes(pri, pre), loss_bytes(pri, pre)
        ref_map = kernels.anomaly_map([t.double() for t in pri], [t.double() for t in pre],
                                      uts, IMAGE_SIZE, batch, backend="torch")
        ref_score = kernels.image_score(ref_map, backend="torch")
        for provider in ("triton", "torch", "reference"):
            row = {"batch": batch, "modalities": mods, "provider": provider,
                   "dtype": "float32", "map_bytes": nbytes, "loss_bytes": lbytes}
            try:
                score = map_and_score(provider, pri, pre, uts, batch)   # warm-up / autotune
                t_map = bench(lambda: map_and_score(provider, pri, pre, uts, batch))
                m = (kernels.anomaly_map(pri, pre, uts, IMAGE_SIZE, batch, backend=provider)
                     if provider != "reference" else None)
                row.update({"map_score_ms": t_map, "map_gbps": nbytes / (t_map * 1e-3) / 1e9,
                            "map_rel_err": _rel(m, ref_map) if m is not None else None,
                            "score_rel_err": _rel(score, ref_score)})
                ps = [t.detach().clone().requires_grad_(True) for t in pre]
                loss_step(provider, pri, ps, uts)
                t_loss = bench(lambda: loss_step(provider, pri, ps, uts), grad_to_none=ps)
                row.update({"loss_fwd_bwd_ms": t_loss,
                            "loss_gbps": lbytes / (t_loss * 1e-3) / 1e9})
                del ps
                print(f"B={batch:>2} M={mods} {provider:>9}: map+score {t_map:.3f} ms "
                      f"({row['map_gbps']:.0f} GB/s, err {row['map_rel_err']}), loss f+b "
                      f"{t_loss:.3f} ms ({row['loss_gbps']:.0f} GB/s)", flush=True)
            except Exception as e:  # record and go on
                row["error"] = repr(e)
                print(f"B={batch:>2} M={mods} {provider:>9}: ERROR {e!r}", flush=True)
            rows.append(row)
            if batch == 32 and mods == 2:
                result["floor"] = _floor(rows, copy_gbps)
            save()
        del pri, pre, ref_map
        torch.cuda.empty_cache()

    fl = result.get("floor") or _floor(rows, copy_gbps)
    result["floor"] = fl
    save()
    print(f"floor B=32 M=2: {fl['map_score_ms']:.3f} ms = {fl['ratio_to_copy_floor']:.2f}x the "
          f"copy-bandwidth floor, {fl['ratio_to_peak_floor']:.2f}x the 4.8 TB/s floor; "
          f"wrote {path} in {result['wall_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
