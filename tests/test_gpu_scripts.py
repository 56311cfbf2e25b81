"""Smoke tests of the GPU suite's benchmark scripts on the CPU (Triton on the interpreter),
so that their first run on a GPU does not fail on a Python error: each ``main`` runs at
tiny dimensions with a one-call timer in place of ``do_bench`` and stand-in ceilings, and
must leave a complete JSON file whose rows carry no error.  Numbers mean nothing here;
only the structure is checked (the rows a stage writes, their fields)."""
import importlib
import json
import os
import types

import pytest
import torch

from unimmad.config import UniMMADConfig

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or os.environ.get(
    "TRITON_INTERPRET") != "1", reason="on a GPU the suite runs these scripts for real")

TINY = UniMMADConfig.tiny().replace(image_size=32, embed_dim=8, num_base_experts=2,
                                    num_leaders=4)


def _once(fn, **kw):
    fn()
    return 1.0


def _run(monkeypatch, tmp_path, name, filename, argv=(), **constants):
    mod = importlib.import_module(f"benchmarks.{name}")
    monkeypatch.setattr(mod, "DEVICE", "cpu")
    monkeypatch.setattr(mod, "do_bench_ms", _once)
    for key, value in constants.items():
        monkeypatch.setattr(mod, key, value)
    mod.main(["--out", str(tmp_path), *argv])
    with open(tmp_path / filename) as f:
        data = json.load(f)
    assert data["status"] == "complete" and data["meta"]["device"] == "cpu"
    return data


def test_kernels_script(monkeypatch, tmp_path):
    cfg = types.SimpleNamespace(embed_dim=8, level_sizes=(5, 3), level_channels=(8, 16),
                                cmoe_kernel_sizes=(1, 5))
    data = _run(monkeypatch, tmp_path, "gpu_kernels", "kernels.json", CFG=cfg, UNITS=2,
                AMAP_BATCH=2, AMAP_MODALITIES=2,
                CEILINGS={"copy": lambda: {"gbps": 1000.0}, "matmul": lambda: {"tflops": 100.0}})
    rows = data["rows"]
    assert not [r for r in rows if r["error"]], rows
    conv = [r for r in rows if r["kind"] == "dyn_conv"]
    assert len(conv) == 2 * 2 * 2 * 2                      # level × k × layout × provider
    for r in conv:
        assert r["rel_err_vs_fp32"] < 2e-2 and r["fraction_of_matmul"] > 0
        assert ("config" in r) == (r["provider"] == "triton")
    cos = [r for r in rows if r["kind"] == "cosine"]
    assert len(cos) == 4 and all(r["rel_err_vs_float64"] < 2e-2 and r["configs"] for r in cos)


def test_cmoe_script(monkeypatch, tmp_path):
    data = _run(monkeypatch, tmp_path, "gpu_cmoe", "cmoe.json", ["--units", "2"], CFG=TINY,
                LEVELS=(3,), TRAIN_PROVIDERS=("reference", "torch"))   # interpreter: slow
    rows = data["rows"]
    assert not [r for r in rows if r["error"]], rows
    assert {(r["kind"], r["provider"]) for r in rows} == {
        *(("cmoe_inference", p) for p in ("reference", "torch", "triton")),
        ("cmoe_train", "reference"), ("cmoe_train", "torch")}
    assert set(data["summary"]["speedup"]["level3"]) == {"vs_reference_fp32", "vs_torch"}


def test_model_script(monkeypatch, tmp_path):
    data = _run(monkeypatch, tmp_path, "gpu_model", "model.json", ["--batches", "1"],
                PRESET="tiny", FAST="torch", DTYPES=(torch.float32,))
    rows = data["rows"]
    graph = [r for r in rows if r["provider"].endswith("+graph")]
    assert len(rows) == 2 * 3 and len(graph) == 2      # modalities × (ref, fast, graph)
    assert all("CUDA" in r["error"] or "cuda" in r["error"] for r in graph)  # CPU: no graphs
    rest = [r for r in rows if r not in graph]
    assert not [r for r in rest if r["error"]], rest
    assert all(r["parity_ok"] for r in rest if r["provider"] == "torch")


def test_anomaly_map_script(monkeypatch, tmp_path):
    data = _run(monkeypatch, tmp_path, "gpu_anomaly_map", "amap.json", LEVELS=[(8, 6), (16, 3)],
                IMAGE_SIZE=12, CASES=[(2, 2), (1, 1)],
                CEILINGS={"copy": lambda: {"gbps": 1000.0}})
    rows = data["rows"]
    assert len(rows) == 2 * 3 and not [r for r in rows if r["error"]], rows
    assert all(r["map_rel_err"] < 1e-4 for r in rows if r["provider"] != "reference")
    assert data["floor"]["case"].startswith("B=2, 2 modalities")
