import json

from benchmarks.report import build


def test_report_from_all_formats(tmp_path):
    meta = {"device_name": "Test CPU", "device": "cpu", "torch": "2.13.0", "commit": "abc123",
            "date": "2026-11-28"}
    (tmp_path / "bench.json").write_text(json.dumps({"meta": meta, "results": [
        {"section": "model", "provider": "reference", "batch": 1, "units": 2,
         "latency_median_ms": 100.0, "samples_per_s": 10.0, "status": "ok", "speedup": 1.0},
        {"section": "model", "provider": "torch", "batch": 1, "units": 2,
         "latency_median_ms": 50.0, "samples_per_s": 20.0, "parity_rel_err": 1e-7,
         "status": "ok", "speedup": 2.0}]}))
    stats = lambda m: {"median": m, "iqr": 0.01, "rounds": 3}
    (tmp_path / "pb.json").write_text(json.dumps({"benchmarks": [
        {"name": "a", "group": "model-B2", "stats": stats(0.4),
         "extra_info": {"provider": "reference", "batch": 2, "samples_per_s": 5.0, "device": "cpu",
                        "env": meta}},
        {"name": "b", "group": "model-B2", "stats": stats(0.2),
         "extra_info": {"provider": "torch", "batch": 2, "samples_per_s": 10.0,
                        "device": "cpu"}}]}))
    (tmp_path / "gpu_model.json").write_text(json.dumps({"meta": dict(meta, device="cuda"), "rows": [
        {"provider": "torch", "batch": 32, "modalities": 2, "dtype": "bfloat16", "ms": 8.0,
         "samples_per_s": 4000.0, "error": None}]}))
    (tmp_path / "kernels.json").write_text(json.dumps({
        "meta": dict(meta, device="cuda"), "ceilings": {"copy": {"gbps": 4300.0}},
        "skipped": [{"kind": "cosine", "why": "time budget"}],
        "rows": [{"kind": "dyn_conv", "provider": "triton", "ms": 0.5, "tflops": 600.0,
                  "error": None}]}))
    (tmp_path / "suite.json").write_text(json.dumps({
        "plan": [{"stage": "kernels"}], "gpu": "NVIDIA H200", "status": "failed",
        "source": {"commit": "abc123def", "commit_from": "benchmarks/suite_source.json"},
        "stages": [{"stage": "kernels", "status": "timeout", "seconds": 70.0, "budget_s": 70,
                    "returncode": 130}]}))
    (tmp_path / "junk.json").write_text("{}")
    md, png = tmp_path / "RESULTS.md", tmp_path / "throughput.png"
    text = build(str(tmp_path), str(md), str(png))
    assert md.exists() and png.exists() and png.stat().st_size > 1000
    assert "Test CPU" in text and "abc123" in text and "2.00×" in text
    assert "(skipped:" in text  # junk.json is reported, not silently dropped
    assert '"gbps": 4300.0' in text and "skipped (time budget): 1 rows" in text
    assert "| kernels | timeout | 70.0 | 70 | 130 |" in text and "NVIDIA H200" in text


def test_report_uses_latency_measured_in_the_isolated_process(tmp_path):
    """Memory benchmarks time a whole isolated measurement; the model's own latency is in
    extra_info and is what the table shows and compares."""
    stats = {"median": 30.0, "iqr": 0.5, "rounds": 1}
    (tmp_path / "mem.json").write_text(json.dumps({"benchmarks": [
        {"name": "a", "group": "memory-inference-B1-M2", "stats": stats,
         "extra_info": {"provider": "reference", "latency_median_ms": 2000.0,
                        "peak_memory_mb": 1300.0, "cache_mb": None}},
        {"name": "b", "group": "memory-inference-B1-M2", "stats": stats,
         "extra_info": {"provider": "torch[all]", "latency_median_ms": 1000.0,
                        "peak_memory_mb": 2100.0, "cache_mb": 866.0}}]}))
    text = build(str(tmp_path), str(tmp_path / "R.md"), str(tmp_path / "p.png"))
    assert "| memory-inference-B1-M2 | torch[all] | 1000.0 | — | 1 | 2.00× | 2100 | 866 |" in text
    assert "cache MB" in text


def test_tables_write_fractions_as_percent_or_plain_numbers():
    """Markdown: percent with 2 decimals by default ("–" for NaN); CSV: plain fractions with
    6 decimals ("nan"), or percent when asked; counts stay integers; means skip NaN."""
    from unimmad.metrics.report import MetricsReport
    rep = MetricsReport.from_results(
        {("mvtec", "bottle_mvtec"): {"image_AUROC": 0.934568, "pixel_AUROC": float("nan")},
         ("mvtec", "cable_mvtec"): {"image_AUROC": 0.5, "pixel_AUROC": 0.25}},
        num_images={("mvtec", "bottle_mvtec"): 5, ("mvtec", "cable_mvtec"): 7})
    md = rep.to_markdown().splitlines()
    assert md[0].endswith("; values in %")
    assert md[2] == "| dataset | class | n | image_AUROC | pixel_AUROC |"
    assert md[4] == "| mvtec | bottle_mvtec | 5 | 93.46 | – |"
    assert md[5] == "| mvtec | cable_mvtec | 7 | 50.00 | 25.00 |"
    assert md[6] == "| mvtec | **mean** | 2 | 71.73 | 25.00 |"     # (93.4568 + 50) / 2
    plain = rep.to_markdown(percent=False, digits=3).splitlines()
    assert "values in %" not in plain[0]
    assert plain[4] == "| mvtec | bottle_mvtec | 5 | 0.934568 | nan |"   # at least 6 decimals
    csv_rows = rep.to_csv().splitlines()
    assert csv_rows[1].startswith("mvtec,bottle_mvtec,5,0.934568,nan,")
    assert csv_rows[3].startswith("mvtec,mean,2,0.717284,0.250000,")
    assert rep.to_csv(percent=True, digits=1).splitlines()[1].startswith(
        "mvtec,bottle_mvtec,5,93.5,–,")
