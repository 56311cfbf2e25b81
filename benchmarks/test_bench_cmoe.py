"""C-MoE benchmarks at paper dimensions: one C-MoE per level, providers reference (the
paper's grouped dynamic filtering) / torch (collapse + fold in stock torch) / triton
(fused kernels, CUDA) / compile (``torch.compile`` of the reference), inference and
forward + backward.  Units come one per sample (the issue's "U units from U samples").

Run: ``python -m pytest benchmarks/test_bench_cmoe.py --benchmark-enable
--benchmark-json=benchmarks/results/<name>.json`` (CI runs each case once as a smoke test).
FLOPs are counted analytically (2 FLOPs per multiply-add) from SPEC §2.
"""
import pytest
import torch

from unimmad.bench.cases import PAPER_LEVELS, cmoe_module, level_case
from unimmad.bench.meta import peak_memory_mb
from unimmad.bench.timing import timed
from unimmad.flops import cmoe_gflop

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
UNITS = [1, 8, 32] if HAS_CUDA else [1, 4]
PROVIDERS = ["reference", "torch", "triton", "compile"]


def build(level, units, provider, mode):
    reference, general, prior, uts = level_case(level, units, device=DEVICE)
    reference.train(mode == "train")
    fn_module = cmoe_module(reference, provider)
    module = reference if provider == "compile" else fn_module
    if mode == "inference":
        def run():
            with torch.inference_mode():
                return fn_module(general, prior, uts)[0]
    else:
        general.requires_grad_(True)

        def run():
            module.zero_grad(set_to_none=True)
            general.grad = None
            p, aux = fn_module(general, prior, uts)
            (p.float().square().mean() + aux.balance_loss).backward()
            return p
    return run


@pytest.mark.parametrize("mode", ["inference", "train"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("units", UNITS)
@pytest.mark.parametrize("level", [1, 2, 3])
def test_cmoe(benchmark, bench_env, benchmarks_enabled, level, units, provider, mode):
    if provider == "triton" and not HAS_CUDA:
        pytest.skip("the Triton provider is timed on CUDA only (the CPU interpreter is a "
                    "correctness tool)")
    if provider == "compile" and mode == "train":
        pytest.skip("torch.compile of the reference's training step aborts the process in "
                    "inductor's generated backward (torch 2.13, CPU): only inference is timed")
    if provider == "compile" and not benchmarks_enabled:
        pytest.skip("torch.compile needs ~30 s of compilation per shape on a CPU: not part "
                    "of the once-through smoke run (use --benchmark-enable)")
    run = timed(build(level, units, provider, mode), DEVICE)
    if benchmarks_enabled:
        run()  # warm-up (compilation, autotuning, folded-kernel cache)
    benchmark.group = f"cmoe-L{level}-U{units}-{mode}"
    benchmark.pedantic(run, rounds=5 if HAS_CUDA else 3, iterations=1, warmup_rounds=0)
    form = "reference" if provider in ("reference", "compile") else "folded"
    gflop = cmoe_gflop(*PAPER_LEVELS[level], units=units, form=form)
    gflop *= 3 if mode == "train" else 1  # backward ≈ 2× forward
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None else None
    benchmark.extra_info.update({
        "level": level, "units": units, "samples": units, "provider": provider,
        "mode": mode, "device": DEVICE, "gflop": gflop, "flop_convention": "2 per MAC",
        "peak_memory_mb": peak_memory_mb(run, DEVICE) if benchmarks_enabled else None,
        "units_per_s": units / median if median else None,
        "gflop_per_s": gflop / median if median else None,
        "env": bench_env,
    })
