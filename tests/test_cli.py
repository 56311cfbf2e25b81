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
          "--iters", "2", "--out", str(tmp_path), "--no-isolate", "--quiet"])
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
    assert "| model | reference |" in capsys.readouterr().out


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
                                  ["bench", "--providers", "triton"],
                                  ["bench", "--cache", "some"],
                                  ["bench", "--cache", "all", "--cache-mb", "10"],
                                  ["bench", "--cache", "bounded", "--cache-mb", "-1"]])
def test_bench_rejects_bad_options(argv, tmp_path):
    with pytest.raises(SystemExit):
        main(argv + ["--out", str(tmp_path), "--no-isolate", "--quiet"])


def test_bench_rows_per_memory_policy_and_train_section(tmp_path):
    rec = main_record(["bench", "--preset", "tiny", "--batch", "1", "--modalities", "2",
                       "--warmup", "0", "--iters", "1", "--out", str(tmp_path), "--no-isolate",
                       "--quiet", "--no-flops", "--sections", "model,train",
                       "--cache", "none,bounded,all", "--cache-mb", "0.5"])
    rows = {(r["section"], r["provider"], r["cache"]): r for r in rec["results"]}
    assert len(rows) == len(rec["results"]) == 8
    for section in ("model", "train"):
        ref = rows[(section, "reference", None)]
        for policy in ("none", "bounded", "all"):
            row = rows[(section, "torch", policy)]
            assert row["status"] == "ok" and row["ref_peak_memory_mb"] == ref["peak_memory_mb"]
    model = {p: rows[("model", "torch", p)] for p in ("none", "bounded", "all")}
    assert model["none"]["cache_mb"] == 0 and 0 < model["bounded"]["cache_mb"] <= 0.5
    assert model["bounded"]["cache_budget_mb"] == 0.5 and model["all"]["cache_mb"] > 0.5
    # training folds inside autograd under every policy: nothing is cached
    assert all(rows[("train", "torch", p)]["cache_mb"] == 0 for p in ("none", "bounded", "all"))
    md = (tmp_path / "bench.md").read_text()
    assert "| cache |" in md and "| ref. peak MB |" in md and "| cache MB |" in md


def main_record(argv):
    from unimmad.bench import run
    return run(build_parser().parse_args(argv))


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
