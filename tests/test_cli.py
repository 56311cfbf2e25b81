import json
import os
import re
import subprocess
import sys
import types

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
    # in-process rows measure tensor allocations (the process's peak RSS would count every
    # earlier row); own-process model rows the process peak (test below)
    assert {r["peak_memory_kind"] for r in rec["results"]
            if r["section"] in ("cmoe", "map")} == {"tensor_allocations"}
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
                                  ["bench", "--providers", "triton"],
                                  ["bench", "--cache", "some"],
                                  ["bench", "--cache", "all", "--cache-mb", "10"],
                                  ["bench", "--cache", "bounded", "--cache-mb", "-1"],
                                  ["bench", "--shapes", "1x5"], ["bench", "--shapes", "0x1"],
                                  ["bench", "--shapes", "2"], ["bench", "--shapes", "1x2,"]])
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
    # model and train sessions measure their process's peak (their own process when isolated)
    assert {r["peak_memory_kind"] for r in rec["results"]} == {"process_peak_rss"}
    md = (tmp_path / "bench.md").read_text()
    assert "| cache |" in md and "| ref. peak MB |" in md and "| cache MB |" in md


def test_bench_shapes_in_one_run(tmp_path):
    rec = main_record(["bench", "--preset", "tiny", "--shapes", "1x1,2x3", "--warmup", "0",
                       "--iters", "1", "--out", str(tmp_path), "--no-isolate", "--quiet",
                       "--no-flops", "--sections", "model", "--cache", "none,all"])
    rows = rec["results"]
    assert [(r["batch"], r["modalities"], r["units"], r["provider"], r["cache"]) for r in rows] == [
        (1, 1, 1, "reference", None), (1, 1, 1, "torch", "none"), (1, 1, 1, "torch", "all"),
        (2, 3, 6, "reference", None), (2, 3, 6, "torch", "none"), (2, 3, 6, "torch", "all")]
    for ref, fast in ((rows[0], rows[1:3]), (rows[3], rows[4:6])):
        for row in fast:      # judged against the reference of its own shape
            assert row["ref_peak_memory_mb"] == ref["peak_memory_mb"] and row["status"] == "ok"
    assert rec["args"]["shapes"] == [[1, 1], [2, 3]] or rec["args"]["shapes"] == [(1, 1), (2, 3)]
    assert rec["complete"] is True
    assert len(rec["meta"]["load_avg_start"]) == 3 and "load (1 min)" in (
        tmp_path / "bench.md").read_text()


def test_bench_keeps_what_it_measured_when_interrupted(monkeypatch, tmp_path):
    from unimmad.bench import sections
    real = sections._measure

    def measure(kind, job):
        if job["batch"] == 2:
            raise KeyboardInterrupt
        return real(kind, job)
    monkeypatch.setattr(sections, "_measure", measure)
    with pytest.raises(KeyboardInterrupt):
        main_record(["bench", "--preset", "tiny", "--shapes", "1x2,2x1", "--warmup", "0",
                     "--iters", "1", "--out", str(tmp_path), "--no-isolate", "--quiet",
                     "--no-flops", "--sections", "model"])
    rec = json.loads((tmp_path / "bench.json").read_text())
    assert rec["complete"] is False
    assert [(r["batch"], r["provider"]) for r in rec["results"]] == [(1, "reference"),
                                                                      (1, "torch")]


def _tiny_job(provider, cache, label):
    from unimmad import UniMMADConfig
    return {"config": UniMMADConfig.tiny().to_dict(), "batch": 1, "modalities": 2,
            "dtype": "float32", "device": "cpu", "warmup": 0, "iters": 1, "seed": 0,
            "threads": 1, "progress": False, "provider": provider, "cache": cache,
            "cache_mb": None, "label": label}


def test_run_interleaved_own_processes_one_call_at_a_time(monkeypatch):
    import tqdm

    import unimmad.bench.sections as S
    from unimmad.bench.parity import rel_err
    from unimmad.bench.sections import run_interleaved
    bars, contexts, procs = [], [], []
    monkeypatch.setattr(S, "tqdm", lambda **kw: bars.append(kw) or tqdm.tqdm(**kw))
    real_context = S.mp.get_context

    def get_context(method):               # records the processes it starts
        ctx = real_context(method)
        contexts.append(method)

        def process(*a, **k):
            procs.append(ctx.Process(*a, **k))
            return procs[-1]
        return types.SimpleNamespace(Pipe=ctx.Pipe, Process=process)
    monkeypatch.setattr(S.mp, "get_context", get_context)
    jobs = [_tiny_job("reference", None, "ref"), _tiny_job("torch", "all", "fast")]
    ref, fast = run_interleaved("model", jobs, warmup=1, iters=3, progress=False)
    # fresh interpreters (spawned), one per provider, daemons (they cannot outlive an
    # interrupted bench), all ended when the run returns
    assert contexts == ["spawn"] and len(procs) == 2
    assert all(p.daemon and not p.is_alive() for p in procs)
    # one bar over every call of every round, hidden here, cleared when done
    assert [(b["total"], b["desc"], b["disable"], b["leave"]) for b in bars] == [
        (8, "model (interleaved)", True, False)]
    for res in (ref, fast):
        assert len(res["times_s"]) == len(res["cpu_s"]) == 3 and len(res["call_spans"]) == 4
        assert res["peak_memory_kind"] == "process_peak_rss" and res["peak_memory_mb"] > 0
    assert fast["cache"] == "all" and fast["cache_mb"] > 0 and ref["cache"] is None
    assert rel_err(fast["anomaly_map"], ref["anomaly_map"]) <= 1e-5
    # calls never overlap and alternate between the processes, the order rotating per round
    spans = sorted((s, e, who) for who, res in enumerate((ref, fast))
                   for s, e in res["call_spans"])
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert [who for _, _, who in spans] == [0, 1, 1, 0, 0, 1, 1, 0]


def test_run_interleaved_reports_a_failing_process():
    from unimmad.bench.sections import run_interleaved
    with pytest.raises(RuntimeError, match="(?s)broken failed in its process.*provider must be"):
        run_interleaved("train", [_tiny_job("nonsense", None, "broken")], 0, 1, False)


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


def test_cmoe_summary_row_adds_up_its_levels_per_policy(tmp_path):
    """The C-MoE section's ``level: all`` row of each policy: latencies and cache sizes
    summed over the three levels, peaks the largest, the policy's budget, speedup against
    the summed reference latencies."""
    rec = main_record(["bench", "--preset", "tiny", "--batch", "1", "--modalities", "2",
                       "--warmup", "0", "--iters", "1", "--out", str(tmp_path), "--no-isolate",
                       "--quiet", "--no-flops", "--sections", "cmoe",
                       "--cache", "bounded,all", "--cache-mb", "0.25"])
    rows = rec["results"]
    refs = [r for r in rows if r["provider"] == "reference"]
    assert sorted(r["level"] for r in refs) == [1, 2, 3]
    for policy, budget in (("bounded", 0.25), ("all", None)):
        levels = [r for r in rows if r["provider"] == "torch" and r["cache"] == policy
                  and r["level"] != "all"]
        (total,) = [r for r in rows if r["cache"] == policy and r["level"] == "all"]
        assert sorted(r["level"] for r in levels) == [1, 2, 3]
        assert all(r["cache_budget_mb"] == budget for r in levels + [total])
        assert total["latency_median_ms"] == pytest.approx(sum(r["latency_median_ms"] for r in levels))
        assert total["cache_mb"] == pytest.approx(sum(r["cache_mb"] for r in levels))
        assert total["peak_memory_mb"] == max(r["peak_memory_mb"] for r in levels)
        assert total["ref_peak_memory_mb"] == max(r["peak_memory_mb"] for r in refs)
        ref_ms = sum(r["latency_median_ms"] for r in refs)
        assert total["speedup"] == pytest.approx(ref_ms / total["latency_median_ms"])
        assert total["units"] == 2 and total["batch"] == 1 and total["status"] == "ok"


@pytest.mark.parametrize("quiet", [True, False])
def test_cmoe_timing_bars_follow_quiet(tmp_path, capsys, quiet):
    """Each C-MoE level's timing bar (``cmoe/L<level>/<provider>``) is drawn on stderr
    unless ``--quiet``."""
    main(["bench", "--preset", "tiny", "--batch", "1", "--modalities", "1", "--warmup", "0",
          "--iters", "1", "--out", str(tmp_path), "--no-isolate", "--no-flops",
          "--sections", "cmoe", "--cache", "all"] + (["--quiet"] if quiet else []))
    err = capsys.readouterr().err
    assert ("cmoe/L1/" in err) is not quiet and ("cmoe/L3/" in err) is not quiet
    if not quiet:        # the reference by its name, the fast path with its memory policy
        assert "cmoe/L1/reference:" in err and "cmoe/L1/torch[all]:" in err
        assert "[None]" not in err
    # the log line of each fast level names the policy too, also when quiet
    assert re.search(r"cmoe level 2: torch\[all\] \d+\.\d\d× the reference", err)


@pytest.mark.parametrize("quiet", [True, False])
def test_model_and_train_timing_bars_follow_quiet(tmp_path, capsys, quiet):
    """The model and training sections draw one timing bar per provider
    (``<section>/B<b>-M<m>/<provider>``) on stderr unless ``--quiet``."""
    main(["bench", "--preset", "tiny", "--batch", "1", "--modalities", "1", "--warmup", "0",
          "--iters", "1", "--out", str(tmp_path), "--no-isolate", "--no-flops",
          "--sections", "model,train", "--cache", "none"] + (["--quiet"] if quiet else []))
    err = capsys.readouterr().err
    for bar in ("model/B1-M1/reference", "model/B1-M1/torch", "train/B1-M1/reference"):
        assert (bar in err) is not quiet, bar


@pytest.mark.parametrize("quiet", [True, False])
def test_isolated_sections_pass_rounds_and_quiet_to_the_interleaved_run(tmp_path, monkeypatch,
                                                                        quiet):
    """Without ``--no-isolate`` each shape's providers are measured by one
    :func:`run_interleaved` call with the run's warm-up and timed rounds, and its progress
    bar drawn unless ``--quiet`` (stand-in measuring in-process, to stay fast)."""
    import unimmad.bench.sections as S
    seen = []

    def interleaved(kind, jobs, warmup, iters, progress=True):
        seen.append((kind, [j["label"] for j in jobs], warmup, iters, progress))
        return [S._measure(kind, dict(j, progress=False)) for j in jobs]
    monkeypatch.setattr(S, "run_interleaved", interleaved)
    main(["bench", "--preset", "tiny", "--batch", "1", "--modalities", "1", "--warmup", "2",
          "--iters", "3", "--out", str(tmp_path), "--no-flops", "--sections", "model,train",
          "--cache", "none"] + (["--quiet"] if quiet else []))
    assert seen == [(kind, [f"{kind}/B1-M1/reference", f"{kind}/B1-M1/torch[none]"], 2, 3,
                     not quiet) for kind in ("model", "train")]


@pytest.mark.parametrize("loads, shown", [
    ([(1.25, 1.0, 1.0), (2.5, 1.0, 1.0)], "1.2→2.5"),
    ([(1.0, 1.0, 1.0), None], None),
    ([None, (1.0, 1.0, 1.0)], None),
])
def test_rows_record_the_load_and_show_it_only_when_both_ends_are_known(tmp_path, monkeypatch,
                                                                         loads, shown):
    """Each model row records the 1/5/15-minute load before and after it; the table's
    ``load_1m`` text needs both (a platform without load averages gives None)."""
    import itertools
    import json

    import unimmad.bench.sections as S
    seq = itertools.cycle(loads)
    monkeypatch.setattr(S, "load_average", lambda: next(seq))
    main(["bench", "--preset", "tiny", "--batch", "1", "--modalities", "1", "--warmup", "0",
          "--iters", "1", "--out", str(tmp_path), "--no-isolate", "--quiet", "--no-flops",
          "--sections", "model", "--providers", "reference"])
    (row,) = [r for r in json.load(open(tmp_path / "bench.json"))["results"]
              if r["section"] == "model"]
    assert (row["load_avg_start"], row["load_avg_end"]) == tuple(
        None if v is None else list(v) for v in loads)
    assert row.get("load_1m") == shown
