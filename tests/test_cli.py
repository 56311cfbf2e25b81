import json
import os
import re
import subprocess
import sys

import pytest

from unimmad.cli import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_in_process_writes_json_and_markdown(tmp_path, capsys):
    main(["bench", "--preset", "tiny", "--batch", "2", "--modalities", "3", "--warmup", "0",
          "--iters", "2", "--out", str(tmp_path), "--no-isolate", "--quiet",
          "--sections", "model,cmoe,map"])
    rec = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["section"], r["provider"], r.get("level")): r for r in rec["results"]}
    ref, acc = rows[("model", "reference", None)], rows[("model", "torch", None)]
    assert ref["units"] == 6 and len(ref["times_s"]) == 2 and ref["samples_per_s"] > 0
    from unimmad import UniMMAD, UniMMADConfig
    n_params = sum(p.numel() for p in UniMMAD(UniMMADConfig.tiny()).parameters())
    assert ref["params"] == acc["params"] == n_params and ref["peak_memory_mb"] > 0
    # fvcore counts both paths (the fused ops through their handles); folding needs fewer
    assert 0 < acc["gflops_fvcore_per_sample"] < ref["gflops_fvcore_per_sample"]
    assert acc["activated_params_per_unit"] < n_params
    # the accelerated model is checked against the reference in the same run
    assert acc["parity_rel_err"] <= acc["parity_tol"] and acc["status"] == "ok"
    assert acc["speedup"] > 0
    for level in (1, 2, 3):
        fast = rows[("cmoe", "torch", level)]
        assert fast["status"] == "ok" and fast["gflop"] < rows[("cmoe", "reference", level)]["gflop"]
    assert rows[("cmoe", "torch", "all")]["speedup"] > 0
    amap = rows[("map", "torch", None)]
    assert amap["status"] == "ok" and amap["gbps"] > 0 and amap["parity_rel_err"] <= amap["parity_tol"]
    assert rec["meta"]["torch"] and rec["config"]["image_size"] == 64
    assert "samples/s" in (tmp_path / "bench.md").read_text()
    out = capsys.readouterr().out
    assert "| model | reference |" not in out          # Markdown goes to bench.md only
    assert "| model | reference |" in (tmp_path / "bench.md").read_text()
    lines = out.splitlines()
    assert max(len(l) for l in lines[:-1]) < 100       # a table that does not wrap
    head = lines[1].split()
    assert head[:2] == ["section", "provider"] and "speedup" in head
    assert sum(l.startswith("model ") for l in lines) == 2
    assert sum(l.startswith("cmoe ") for l in lines) == 7


def test_bench_cpu_default_sections_and_noisy_rows(tmp_path, capsys, monkeypatch):
    from unimmad.bench import cli as bcli
    rows = [{"latency_median_ms": 8.2, "latency_iqr_ms": 197.0},
            {"latency_median_ms": 100.0, "latency_iqr_ms": 20.0},
            {"latency_median_ms": 100.0, "latency_iqr_ms": 30.0}]
    bcli.mark_noisy(rows)
    assert [r["noisy"] for r in rows] == [True, False, True]
    # the default run on a CPU: model and map sections, noisy rows said to be so
    real = bcli.mark_noisy
    monkeypatch.setattr(bcli, "mark_noisy", lambda rows: [real(rows), rows[0].update(
        noisy=True)])
    main(["bench", "--preset", "tiny", "--warmup", "0", "--iters", "1", "--out",
          str(tmp_path), "--no-isolate", "--no-flops", "--device", "cpu"])
    rec = json.loads((tmp_path / "bench.json").read_text())
    assert {r["section"] for r in rec["results"]} == {"model", "map"}
    cap = capsys.readouterr()
    assert "--sections model,cmoe,map" in cap.err
    assert "marked noisy" in cap.err and "--threads" in cap.err
    assert "ok noisy" in cap.out or "FAIL parity noisy" in cap.out
    assert "(noisy)" in (tmp_path / "bench.md").read_text()


def test_bench_help_is_plain_text():
    from unimmad.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    text = sub.choices["bench"].format_help()
    assert "``" not in text and ":func:" not in text and ":mod:" not in text
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "(default: paper)" in text


def test_bench_reports_failing_parity_without_speedup(monkeypatch, tmp_path):
    from unimmad.bench import run, sections
    monkeypatch.setattr(sections, "tolerance", lambda dtype, device: 0.0)
    rec = run(build_parser().parse_args(
        ["bench", "--preset", "tiny", "--sections", "model", "--warmup", "0", "--iters", "1",
         "--out", str(tmp_path), "--no-isolate", "--quiet", "--no-flops"]))
    acc = rec["results"][1]
    assert acc["status"] == "FAIL parity" and acc["speedup"] is None


def test_python_m_unimmad_bench_isolated(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "unimmad", "bench", "--preset", "tiny", "--warmup", "0",
         "--iters", "1", "--out", str(tmp_path), "--quiet", "--no-flops",
         "--sections", "model,cmoe"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "bench.json").read_text())
    assert rec["results"][0]["peak_memory_kind"] == "process_peak_rss"
    assert [r["section"] for r in rec["results"]].count("cmoe") == 7


@pytest.mark.parametrize("argv", [["bench", "--modalities", "5"], ["bench", "--batch", "0"],
                                  ["bench", "--image-size", "100"],
                                  ["bench", "--sections", "gpu"],
                                  ["bench", "--providers", "triton"]])
def test_bench_rejects_bad_options(argv, tmp_path):
    with pytest.raises(SystemExit):
        main(argv + ["--out", str(tmp_path), "--no-isolate", "--quiet"])


def test_help_lists_bench():
    assert "bench" in build_parser().format_help()


def test_readme_quickstart_is_what_ci_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [l for l in block.splitlines() if l and not l.startswith("#")]
    assert len(commands) == 2
    assert "unimmad bench" in commands[0] and "pytest" in commands[1]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "# 2. install, then run the tests" in readme and "README.md" in ci
