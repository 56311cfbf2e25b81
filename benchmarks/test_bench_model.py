"""End-to-end inference benchmark: the reference model vs ``unimmad.accelerate(model)`` at
paper dimensions, with setup shared with ``unimmad bench`` (same seeded weights and
generated inputs).  CPU: B ∈ {1, 2}, 2 modalities; CUDA: B ∈ {1, 32}, 1 and 2 modalities.
Providers: ``reference`` and the fast path of the device (``torch`` on CPU, ``triton``
on CUDA).
"""
import pytest
import torch

from unimmad.bench.cases import build_model, fast_provider, model_inputs, preset_config
from unimmad.bench.meta import peak_memory_mb
from unimmad.bench.timing import timed

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
BATCHES = [1, 32] if HAS_CUDA else [1, 2]
MODALITIES = [1, 2] if HAS_CUDA else [2]


@pytest.mark.parametrize("provider", ["reference", fast_provider(DEVICE)])
@pytest.mark.parametrize("modalities", MODALITIES)
@pytest.mark.parametrize("batch", BATCHES)
def test_model_inference(benchmark, bench_env, benchmarks_enabled, batch, modalities, provider):
    cfg = preset_config("paper" if benchmarks_enabled else "tiny")
    model = build_model(cfg, 0, torch.float32, DEVICE, provider)
    images, nm = model_inputs(cfg, batch, modalities, 1, torch.float32, DEVICE)

    def call():
        with torch.inference_mode():
            return model(images, nm).anomaly_map
    run = timed(call, DEVICE)
    if benchmarks_enabled:
        run()  # warm-up: folded-kernel cache, autotuning
    benchmark.group = f"model-B{batch}-M{modalities}"
    benchmark.pedantic(run, rounds=5 if HAS_CUDA else 3, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None else None
    benchmark.extra_info.update({
        "provider": provider, "batch": batch, "modalities": modalities,
        "units": batch * modalities, "preset": "paper" if benchmarks_enabled else "tiny",
        "device": str(DEVICE), "samples_per_s": batch / median if median else None,
        "peak_memory_mb": peak_memory_mb(run, DEVICE) if benchmarks_enabled else None,
        "env": bench_env,
    })
