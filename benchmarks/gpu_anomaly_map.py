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
case factory and byte counts come from :mod:`unimmad.bench.cases` (shared with the CPU
benchmarks and ``unimmad bench``).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List, Tuple

import torch
from triton.testing import do_bench

import kernels
from kernels import amap_triton
from unimmad.bench.cases import (PAPER_LEVELS, amap_case, feature_bytes, loss_bytes, loss_step,
                                 map_and_score)
from unimmad.bench.meta import environment
from unimmad.bench.parity import rel_err

IMAGE_SIZE = 256
H200_PEAK_GBPS = 4800.0
DEVICE = "cuda"
COPY_ELEMENTS = 1 << 28      # 1 GiB of fp32 for the copy-bandwidth measurement


def _floor(rows, copy_gbps) -> Dict[str, object]:
    """Map + score at B = 32, 2 modalities (triton) against the byte floor."""
    row = next((r for r in rows if r["batch"] == 32 and r["modalities"] == 2
                and r["provider"] == "triton" and "map_score_ms" in r), None)
    nbytes = 2 * 32 * 2 * 4 * sum(c * s * s for c, s in PAPER_LEVELS.values())  # fp32 u, p
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
        pri, pre, uts = amap_case(32, 2, dtype=dtype, device=dev)
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
        pri, pre, uts = amap_case(batch, mods, dtype=torch.float32, device=dev)
        nbytes, lbytes = feature_bytes(pri, pre), loss_bytes(pri, pre)
        ref_map = kernels.anomaly_map([t.double() for t in pri], [t.double() for t in pre],
                                      uts, IMAGE_SIZE, batch, backend="torch")
        ref_score = kernels.image_score(ref_map, backend="torch")
        for provider in ("triton", "torch", "reference"):
            row = {"batch": batch, "modalities": mods, "provider": provider,
                   "dtype": "float32", "map_bytes": nbytes, "loss_bytes": lbytes}
            try:
                _, score = map_and_score(provider, pri, pre, uts, IMAGE_SIZE, batch)  # warm-up
                t_map = bench(lambda: map_and_score(provider, pri, pre, uts, IMAGE_SIZE, batch))
                m = (kernels.anomaly_map(pri, pre, uts, IMAGE_SIZE, batch, backend=provider)
                     if provider != "reference" else None)
                row.update({"map_score_ms": t_map, "map_gbps": nbytes / (t_map * 1e-3) / 1e9,
                            "map_rel_err": rel_err(m, ref_map) if m is not None else None,
                            "score_rel_err": rel_err(score, ref_score)})
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
