"""GPU end-to-end benchmark (H200 suite): ``python -m benchmarks.gpu_model --out DIR``.

Reference model vs ``unimmad.accelerate(model, backend="triton")``, B ∈ {1, 32}, 1 and 2 modalities per
sample, fp32 and bf16, paper dimensions; the accelerated model also replayed as a CUDA
graph (input validation off, units precomputed).  Each row records the parity error of the
accelerated output against the reference output of the same run.  Writes
``DIR/gpu_model.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from unimmad.bench.cases import build_model, model_inputs, preset_config
from unimmad.bench.meta import environment
from unimmad.bench.parity import rel_err, tolerance
from unimmad.bench.timing import do_bench_ms as bench
from unimmad.models.model import pack_units




def graph_of(model, images, nm):
    """Capture one accelerated forward as a CUDA graph; returns (replay, static output)."""
    units = pack_units(nm, images.shape[1])
    model.validate_inputs = False
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(2):  # warm-up on a side stream: autotuning, folded-kernel cache
            model(images, nm, units)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = model(images, nm, units)
    return graph.replay, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="1,32")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_model: needs CUDA")
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    start = time.time()
    cfg = preset_config("paper")
    device = torch.device("cuda")
    record = {"meta": environment(device), "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
              "rows": []}
    for dtype in (torch.float32, torch.bfloat16):
        tol = tolerance(dtype, device)
        models = {p: build_model(cfg, 0, dtype, device, p) for p in ("reference", "triton")}
        for batch in (int(b) for b in args.batches.split(",")):
            for modalities in (1, 2):
                images, nm = model_inputs(cfg, batch, modalities, 1, dtype, device)
                outs = {}
                for provider, model in models.items():
                    model.validate_inputs = True

                    def call(model=model):
                        with torch.inference_mode():
                            return model(images, nm)
                    row = {"batch": batch, "modalities": modalities, "provider": provider,
                           "dtype": str(dtype).split(".")[-1], "error": None}
                    try:
                        torch.cuda.reset_peak_memory_stats()
                        outs[provider] = call().anomaly_map.float()
                        row["ms"] = bench(call)
                        row["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
                        row["samples_per_s"] = batch / (row["ms"] * 1e-3)
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    if provider != "reference" and "reference" in outs and provider in outs:
                        row["parity_rel_err"] = rel_err(outs[provider], outs["reference"])
                        row["parity_ok"] = row["parity_rel_err"] <= tol
                    record["rows"].append(row)
                    print(json.dumps(row), flush=True)
                # CUDA graph replay of the accelerated model
                row = {"batch": batch, "modalities": modalities, "provider": "triton+graph",
                       "dtype": str(dtype).split(".")[-1], "error": None}
                try:
                    replay, static = graph_of(models["triton"], images, nm)
                    replay()
                    torch.cuda.synchronize()
                    if "reference" in outs:
                        row["parity_rel_err"] = rel_err(static.anomaly_map.float(), outs["reference"])
                        row["parity_ok"] = row["parity_rel_err"] <= tol
                    row["ms"] = bench(replay)
                    row["samples_per_s"] = batch / (row["ms"] * 1e-3)
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                finally:
                    models["triton"].validate_inputs = True
                record["rows"].append(row)
                print(json.dumps(row), flush=True)
                del images, outs
                torch.cuda.empty_cache()
        del models
        torch.cuda.empty_cache()
    record["wall_s"] = time.time() - start
    with open(os.path.join(args.out, "gpu_model.json"), "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
