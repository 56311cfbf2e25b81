"""Stage ``cmoe`` of the GPU suite: the whole C-MoE layer.

    python -m benchmarks.gpu_cmoe --out DIR [--budget-s S] [--units 32,1]

Rows (``DIR/cmoe.json``, rewritten after every row), most important first:

* ``cmoe_inference`` per U in ``--units`` (one unit per sample) and level 1–3:
  ``reference`` (the paper's formulation, fp32; PyTorch's default TF32 setting, recorded),
  ``torch`` (collapse + fold in stock torch, bf16, channels-last, ``cudnn.benchmark``) and
  ``triton`` (the fused kernels, bf16, channels-last), with the relative difference of
  each output from the reference's (information: bf16 may route near-tied units
  differently; parity is the ``parity`` stage's job);
* ``cmoe_train``: forward + backward at U = 8, fp32, every provider;
* ``summary``: at U = 32, the Triton layer's speedup over the fp32 reference (target ≥ 4×)
  and over the torch path (target ≥ 1.2×), per level.

Times: ``triton.testing.do_bench`` medians (ms); FLOPs from :func:`unimmad.flops.cmoe_gflop`.
"""
from __future__ import annotations

import torch

from unimmad.bench.cases import cmoe_case, cmoe_module
from unimmad.bench.parity import rel_err
from unimmad.bench.record import ms_fields, open_record, run_script, script_parser
from unimmad.bench.timing import do_bench_ms
from unimmad.config import UniMMADConfig
from unimmad.flops import cmoe_gflop

#: Where and at which dimensions it runs (the CPU smoke test shrinks them).
DEVICE = "cuda"
CFG = UniMMADConfig()
LEVELS = (1, 2, 3)

PROVIDERS = [("reference", torch.float32), ("torch", torch.bfloat16),
             ("triton", torch.bfloat16)]
TRAIN_PROVIDERS = ("reference", "torch", "triton")
TARGETS = {"vs_reference_fp32": 4.0, "vs_torch": 1.2}


def _inputs(provider, dtype, general, prior):
    if provider == "reference":
        return general, prior
    fmt = torch.channels_last
    return (general.to(dtype).contiguous(memory_format=fmt),
            prior.to(dtype).contiguous(memory_format=fmt))


def inference_rows(rec, units: int) -> None:
    for level in LEVELS:
        what = {"kind": "cmoe_inference", "level": level, "units": units}
        if rec.over_budget():
            rec.skip(what)
            continue
        ref_module, general, prior, uts = cmoe_case(CFG, level, units, device=DEVICE)
        ref_module.eval()
        ref_out = {}
        for provider, dtype in PROVIDERS:
            def measure(provider=provider, dtype=dtype):
                module = cmoe_module(ref_module, provider).to(dtype).eval()
                g, p = _inputs(provider, dtype, general, prior)

                def run():
                    with torch.inference_mode():
                        return module(g, p, uts)[0]
                out = run().float()
                if provider == "reference":
                    ref_out["p"] = out
                gf = cmoe_gflop(CFG.level_channels[level - 1], CFG.level_sizes[level - 1],
                                units=units, embed_dim=CFG.embed_dim,
                                kernel_sizes=CFG.cmoe_kernel_sizes, top_k=CFG.top_k,
                                form="reference" if provider == "reference" else "folded")
                ms = do_bench_ms(run)
                row = {**ms_fields(ms, flop=gf * 1e9), "gflop": gf,
                       "units_per_s": units / (ms * 1e-3)}
                if provider != "reference" and "p" in ref_out:
                    row["rel_diff_vs_reference"] = rel_err(out, ref_out["p"])
                return row
            rec.row({**what, "provider": provider, "dtype": str(dtype)[6:],
                     "channels_last": provider != "reference"}, measure)
            torch.cuda.empty_cache()
        del ref_module, general, prior, ref_out
        torch.cuda.empty_cache()


def train_rows(rec, units: int = 8) -> None:
    for level in LEVELS:
        what = {"kind": "cmoe_train", "level": level, "units": units, "dtype": "float32"}
        if rec.over_budget():
            rec.skip(what)
            continue
        ref_module, general, prior, uts = cmoe_case(CFG, level, units, device=DEVICE)
        for provider in TRAIN_PROVIDERS:
            def measure(provider=provider):
                module = cmoe_module(ref_module, provider).train()
                g = general.clone().requires_grad_(True)

                def step():
                    p, aux = module(g, prior, uts)
                    (p.square().mean() + aux.balance_loss).backward()
                return {"ms": do_bench_ms(step, rep=50)}
            rec.row({**what, "provider": provider}, measure)
            torch.cuda.empty_cache()
        del ref_module, general, prior
        torch.cuda.empty_cache()


def summary(rows, units: int = 32):
    """Speedups of the Triton layer at ``units`` per level, with the targets."""
    out = {}
    for level in LEVELS:
        ms = {r["provider"]: r.get("ms") for r in rows if r["kind"] == "cmoe_inference"
              and r["level"] == level and r["units"] == units}
        if ms.get("triton"):
            ratio = lambda other: ms[other] / ms["triton"] if ms.get(other) else None
            out[f"level{level}"] = {"vs_reference_fp32": ratio("reference"),
                                    "vs_torch": ratio("torch")}
    return {"units": units, "speedup": out, "targets": TARGETS}


def main(argv=None):
    ap = script_parser(__doc__)
    ap.add_argument("--units", default="32,1", help="units per inference row set (32,1)")
    args = ap.parse_args(argv)
    with open_record(args, "cmoe.json", DEVICE) as rec:
        units_list = [int(u) for u in args.units.split(",")]
        for units in units_list:
            inference_rows(rec, units)
            rec.set("summary", summary(rec.data["rows"], max(units_list)))
        train_rows(rec)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
