"""Stage ``amap`` of the GPU suite: the fused anomaly map, image score and decompression
loss (issue 4) against the stock-torch path and the reference.

    python -m benchmarks.gpu_anomaly_map --out DIR [--budget-s S] [--quick]

Writes ``DIR/amap.json`` after every row (``triton.testing.do_bench``, L2 flushed, ms):

* ``ceilings.copy``: device-to-device copy bandwidth (read + write bytes);
* rows: map + score and loss forward + backward for B ∈ {32, 1} × modalities ∈ {2, 1, 4}
  and every provider (reference, torch, triton), fp32, with the relative error of each
  map and score against a float64 map of the same inputs;
* ``floor``: map + score at B = 32, 2 modalities against the time floor of the bytes that
  must be read (u and p once), at the measured copy bandwidth and at the nominal 4.8 TB/s
  (target ≤ 1.5×).  The cosine stage alone is measured by the ``kernels`` stage.

The case factory and byte counts come from :mod:`unimmad.bench.cases` (shared with the CPU
benchmarks and ``unimmad bench``).
"""
from __future__ import annotations

from typing import Dict, List

import torch

import kernels
from unimmad.bench.cases import (PAPER_LEVELS, amap_case, feature_bytes, loss_bytes, loss_step,
                                 map_and_score)
from unimmad.bench.parity import rel_err
from unimmad.bench.record import open_record, run_script, script_parser
from unimmad.bench.timing import copy_ceiling, do_bench_ms

IMAGE_SIZE = 256
H200_PEAK_GBPS = 4800.0
#: Where and at which level dimensions it runs (the CPU smoke test shrinks them).
DEVICE = "cuda"
LEVELS = list(PAPER_LEVELS.values())
CEILINGS = {"copy": copy_ceiling}
#: (batch, modalities) of the rows; the first is the floor's case.
CASES = [(32, 2), (1, 1), (1, 2), (1, 4), (32, 1), (32, 4)]


def _floor(rows: List[Dict], copy_gbps: float) -> Dict[str, object]:
    """Map + score of the first case (B = 32, 2 modalities; triton) against the byte
    floor."""
    batch, mods = CASES[0]
    row = next((r for r in rows if r["batch"] == batch and r["modalities"] == mods
                and r["provider"] == "triton" and r.get("map_score_ms")), None)
    nbytes = 2 * batch * mods * 4 * sum(c * s * s for c, s in LEVELS)  # fp32 u and p, once
    ms = row["map_score_ms"] if row else float("nan")
    at_copy = nbytes / (copy_gbps * 1e9) * 1e3
    at_peak = nbytes / (H200_PEAK_GBPS * 1e9) * 1e3
    return {"case": f"B={batch}, {mods} modalities, fp32, map + score (triton)",
            "map_score_ms": ms,
            "bytes": nbytes, "floor_ms_at_copy_bandwidth": at_copy,
            "floor_ms_at_4.8TBps": at_peak, "ratio_to_copy_floor": ms / at_copy,
            "ratio_to_peak_floor": ms / at_peak, "target": "ratio <= 1.5"}


def _measure(provider, pri, pre, uts, batch, ref_map, ref_score):
    nbytes, lbytes = feature_bytes(pri, pre), loss_bytes(pri, pre)
    _, score = map_and_score(provider, pri, pre, uts, IMAGE_SIZE, batch)        # warm-up
    t_map = do_bench_ms(lambda: map_and_score(provider, pri, pre, uts, IMAGE_SIZE, batch))
    m = (kernels.anomaly_map(pri, pre, uts, IMAGE_SIZE, batch, backend=provider)
         if provider != "reference" else None)
    row = {"map_score_ms": t_map, "map_gbps": nbytes / (t_map * 1e-3) / 1e9,
           "map_rel_err": rel_err(m, ref_map) if m is not None else None,
           "score_rel_err": rel_err(score, ref_score)}
    ps = [t.detach().clone().requires_grad_(True) for t in pre]
    loss_step(provider, pri, ps, uts)
    t_loss = do_bench_ms(lambda: loss_step(provider, pri, ps, uts), rep=40, warmup=10,
                         grad_to_none=ps)
    row.update({"loss_fwd_bwd_ms": t_loss, "loss_gbps": lbytes / (t_loss * 1e-3) / 1e9})
    return row


def main(argv=None):
    ap = script_parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="the first case only (B = 32, 2 "
                    "modalities)")
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with open_record(args, "amap.json", DEVICE) as rec:
        copy = CEILINGS["copy"]()
        rec.set("ceilings", {"copy": copy})
        for batch, mods in (CASES[:1] if args.quick else CASES):
            what = {"batch": batch, "modalities": mods, "dtype": "float32"}
            if rec.over_budget():
                rec.skip(what)
                continue
            pri, pre, uts = amap_case(batch, mods, LEVELS, dtype=torch.float32, device=DEVICE)
            ref_map = kernels.anomaly_map([t.double() for t in pri], [t.double() for t in pre],
                                          uts, IMAGE_SIZE, batch, backend="torch")
            ref_score = kernels.image_score(ref_map, backend="torch")
            for provider in ("triton", "torch", "reference"):
                rec.row({**what, "provider": provider},
                        lambda provider=provider: _measure(provider, pri, pre, uts, batch,
                                                           ref_map, ref_score))
                if (batch, mods) == CASES[0]:
                    rec.set("floor", _floor(rec.data["rows"], copy["gbps"]))
            del pri, pre, ref_map
            torch.cuda.empty_cache()


if __name__ == "__main__":
    raise SystemExit(run_script(main))
