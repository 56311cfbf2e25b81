"""Peak memory of the reference and the accelerated model per folded-kernel memory policy
(``none`` — the default —, ``bounded``, ``all``; :mod:`kernels.cmoe_cache`), CPU.

* inference: B ∈ {1, 2, 4} × M ∈ {1, 2, 4} modalities, one test per (B, M, variant)
  (the smoke run: (B, M) = (1, 2) only);
* training: one step (loss, backward, Adam) at B = 2, M = 2.

With ``--benchmark-enable`` each measurement runs at paper dimensions in its own spawned
process (the ``unimmad bench`` job, :func:`unimmad.bench.sections.measure_model` /
``measure_train_step``), so its peak resident set is that of the model alone; the
reference runs first for each (B, M) and every accelerated variant is checked against it
(SPEC §3).  The timed quantity of each benchmark is that whole isolated measurement
(process start, build, one call — which builds any cache, so the peak includes it); the model's
own latency is ``extra_info["latency_median_ms"]`` (what ``benchmarks/report.py`` shows) —
one call, alone in its process, so on a shared machine it is no speed measurement: speed
ratios come from ``unimmad bench``, which interleaves the providers' calls.  The smoke run
(CI's ``--benchmark-disable``) measures the tiny preset in this process at one grid point:
peak figures are not recorded there.

Run: ``python -m pytest benchmarks/test_bench_memory.py --benchmark-enable
--benchmark-json=benchmarks/results/cpu_memory.json``.
"""
import statistics

import pytest
import torch

from unimmad.bench.cases import preset_config
from unimmad.bench.parity import rel_err, tolerance
from unimmad.bench.sections import measure_model, measure_train_step, run_isolated

VARIANTS = [("reference", None), ("torch", "none"), ("torch", "bounded"), ("torch", "all")]
IDS = ["reference", "torch-none", "torch-bounded", "torch-all"]
SMOKE_POINT = (1, 2)
_REFERENCE = {}          # (mode, B, M) -> the reference's result in this session


def _enabled(config) -> bool:
    return bool(config.getoption("benchmark_enable", False)) or not config.getoption(
        "benchmark_disable", False)


def pytest_generate_tests(metafunc):
    """The (B, M) grid with --benchmark-enable; one point in the smoke run."""
    if "grid_point" in metafunc.fixturenames:
        grid = ([(b, m) for b in (1, 2, 4) for m in (1, 2, 4)] if _enabled(metafunc.config)
                else [SMOKE_POINT])
        metafunc.parametrize("grid_point", grid, ids=[f"B{b}-M{m}" for b, m in grid])


def _measure(benchmark, bench_env, enabled, mode, batch, modalities, variant):
    provider, policy = variant
    cfg = preset_config("paper" if enabled else "tiny")
    job = {"config": cfg.to_dict(), "batch": batch, "modalities": modalities,
           "dtype": "float32", "device": "cpu", "warmup": 0, "iters": 1,
           "seed": 0, "threads": torch.get_num_threads(), "progress": False,
           "provider": provider, "cache": policy, "cache_mb": None,
           "label": f"{mode}/{provider}[{policy}]"}
    fn = measure_model if mode == "inference" else measure_train_step
    res = benchmark.pedantic(lambda: run_isolated(fn, job, isolate=enabled),
                             rounds=1, iterations=1, warmup_rounds=0)
    key = (mode, batch, modalities)
    err = None
    if provider == "reference":
        _REFERENCE[key] = res
    elif key in _REFERENCE:
        ref = _REFERENCE[key]
        if mode == "inference":
            err = max(rel_err(res["anomaly_map"], ref["anomaly_map"]),
                      rel_err(res["pred_score"], ref["pred_score"]))
        else:
            err = rel_err(res["first_loss"], ref["first_loss"])
        tol = tolerance(torch.float32, "cpu")
        assert err <= tol, f"{provider}[{policy}] differs from the reference: {err:.2e} > {tol}"
    ref = _REFERENCE.get(key)
    median = statistics.median(res["times_s"])
    benchmark.group = f"memory-{mode}-B{batch}-M{modalities}"
    benchmark.extra_info.update({
        "provider": provider if policy is None else f"{provider}[{policy}]",
        "cache": policy, "mode": mode, "batch": batch, "modalities": modalities,
        "units": batch * modalities, "preset": "paper" if enabled else "tiny",
        "device": "cpu", "latency_median_ms": median * 1e3,
        "samples_per_s": batch / median if enabled and mode == "inference" else None,
        "peak_memory_mb": res["peak_memory_mb"] if enabled else None,
        "peak_memory_kind": res["peak_memory_kind"] if enabled else None,
        "ref_peak_memory_mb": ref["peak_memory_mb"] if enabled and ref else None,
        "cache_mb": res["cache_mb"], "cache_budget_mb": res["cache_budget_mb"],
        "parity_rel_err": err, "env": bench_env,
    })


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_inference_memory(benchmark, bench_env, benchmarks_enabled, grid_point, variant):
    _measure(benchmark, bench_env, benchmarks_enabled, "inference", *grid_point, variant)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_train_step_memory(benchmark, bench_env, benchmarks_enabled, variant):
    _measure(benchmark, bench_env, benchmarks_enabled, "train", 2, 2, variant)
