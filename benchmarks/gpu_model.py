"""Stage ``model`` of the GPU suite: the whole model end to end.

    python -m benchmarks.gpu_model --out DIR [--budget-s S] [--batches 32,1]

The reference model against ``unimmad.accelerate(model, backend="triton")`` at paper
dimensions, per batch (``--batches``, B = 32 first), dtype (fp32, bf16) and 2 then 1
modalities per sample; the accelerated model also replayed as a CUDA graph (input
validation off, units precomputed).  Each accelerated row records its output's relative error against the
reference output of the same inputs, judged with the SPEC §3 tolerance.  Rows go to
``DIR/model.json`` as they are measured.
"""
from __future__ import annotations

import torch

from unimmad.bench.cases import build_model, model_inputs, preset_config
from unimmad.bench.parity import rel_err, tolerance
from unimmad.bench.record import open_record, run_script, script_parser
from unimmad.bench.timing import do_bench_ms
from unimmad.models.model import pack_units

#: Where and at which preset it runs (the CPU smoke test uses "cpu" and "tiny").
DEVICE = "cuda"
PRESET = "paper"
FAST = "triton"        # the accelerated provider (the CPU smoke test uses "torch")
DTYPES = (torch.float32, torch.bfloat16)


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


def _parity(row, out, ref, tol):
    row["parity_rel_err"] = rel_err(out, ref)
    row["parity_tol"] = tol
    row["parity_ok"] = row["parity_rel_err"] <= tol


def case_rows(rec, models, cfg, batch: int, modalities: int, dtype, device) -> None:
    """Reference, accelerated and CUDA-graph rows of one (batch, modalities, dtype)."""
    tol = tolerance(dtype, device)
    images, nm = model_inputs(cfg, batch, modalities, 1, dtype, device)
    what = {"batch": batch, "modalities": modalities, "dtype": str(dtype).replace("torch.", "")}
    on_gpu = device.type == "cuda"
    ref = {}
    for provider, model in models.items():
        def measure(model=model, provider=provider):
            model.validate_inputs = True

            def call():
                with torch.inference_mode():
                    return model(images, nm)
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            out = call().anomaly_map.float()
            row = {"ms": do_bench_ms(call), "peak_memory_mb": (
                torch.cuda.max_memory_allocated() / 2 ** 20 if on_gpu else None)}
            row["samples_per_s"] = batch / (row["ms"] * 1e-3)
            if provider == "reference":
                ref["map"] = out
            elif "map" in ref:
                _parity(row, out, ref["map"], tol)
            return row
        rec.row({**what, "provider": provider}, measure)

    def graph_row():
        try:
            replay, static = graph_of(models[FAST], images, nm)
            replay()
            torch.cuda.synchronize()
            row = {"ms": do_bench_ms(replay)}
            if "map" in ref:
                _parity(row, static.anomaly_map.float(), ref["map"], tol)
        finally:
            models[FAST].validate_inputs = True
        row["samples_per_s"] = batch / (row["ms"] * 1e-3)
        return row
    rec.row({**what, "provider": f"{FAST}+graph"}, graph_row)


def main(argv=None):
    ap = script_parser(__doc__)
    ap.add_argument("--batches", default="32,1")
    args = ap.parse_args(argv)
    cfg = preset_config(PRESET)
    device = torch.device(DEVICE)
    models = {}          # per dtype, built once: the rows run batch by batch, B = 32 first
    with open_record(args, "model.json", DEVICE) as rec:
        for batch in (int(b) for b in args.batches.split(",")):
            for dtype in DTYPES:
                for modalities in (2, 1):
                    what = {"batch": batch, "modalities": modalities,
                            "dtype": str(dtype).replace("torch.", "")}
                    if rec.over_budget():
                        rec.skip(what)
                        continue
                    if dtype not in models:
                        models[dtype] = {p: build_model(cfg, 0, dtype, device, p)
                                         for p in ("reference", FAST)}
                    case_rows(rec, models[dtype], cfg, batch, modalities, dtype, device)
                    torch.cuda.empty_cache()

if __name__ == "__main__":
    raise SystemExit(run_script(main))
