"""The CPU timing helper of unimmad.bench: each timed call's duration, not a clock reading."""
import os
import time

import pytest

from unimmad.bench.timing import time_calls


def test_time_calls_measures_each_timed_call():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.02)
        return len(calls)

    t0 = time.perf_counter()
    times, out = time_calls(fn, "cpu", warmup=2, iters=3)
    wall = time.perf_counter() - t0
    assert len(calls) == 5 and out == 5 and len(times) == 3  # warm-up calls are not timed
    assert all(0.02 <= t <= wall for t in times)
    assert sum(times) <= wall


def test_summary_statistics_of_known_times():
    from unimmad.bench.timing import quantile, summarize
    times = [0.004, 0.001, 0.003, 0.002, 0.010]             # seconds
    s = summarize(times, batch=4)
    assert s["latency_median_ms"] == pytest.approx(3.0)
    assert s["latency_min_ms"] == pytest.approx(1.0)
    assert s["latency_max_ms"] == pytest.approx(10.0)
    # linear-interpolation quartiles of [1, 2, 3, 4, 10] ms: 2 and 4
    assert s["latency_iqr_ms"] == pytest.approx(2.0)
    assert s["samples_per_s"] == pytest.approx(4 / 0.003)
    assert quantile([1.0, 2.0], 0.25) == pytest.approx(1.25)
    assert quantile([5.0], 0.9) == 5.0


def test_cpu_peak_memory_counts_live_bytes_from_zero():
    """The CPU peak is the largest sum of live allocations during the call, in MiB: nothing
    allocated is 0 exactly; 1 MiB + 1 MiB live, then one freed and 0.5 MiB more, is 2 MiB."""
    import torch

    from unimmad.bench.meta import peak_memory_mb
    cpu = torch.device("cpu")
    assert peak_memory_mb(lambda: None, cpu) == 0.0
    assert peak_memory_mb(lambda: torch.empty(262144), cpu) == 1.0       # 2^18 float32

    def two_then_half():
        a = torch.empty(262144)
        b = torch.empty(262144)
        del a
        c = torch.empty(131072)
        return b, c
    assert peak_memory_mb(two_then_half, cpu) == 2.0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_process_peak_rss_is_the_kernels_high_water_mark_in_mib():
    # Linux's VmHWM (kB) is the same peak as getrusage's ru_maxrss (KiB)
    from unimmad.bench.meta import peak_rss_mb
    got = peak_rss_mb()
    with open("/proc/self/status") as f:
        hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    assert got == pytest.approx(hwm_kb / 1024, rel=0.05)
    assert 20 < got < 64 * 1024                       # MiB of a Python process with torch


def test_cuda_timer_defaults_are_tritons():
    """``do_bench_ms`` keeps ``triton.testing.do_bench``'s warm-up and repetition times."""
    import inspect

    triton = pytest.importorskip("triton")
    from unimmad.bench.timing import do_bench_ms
    ours = inspect.signature(do_bench_ms).parameters
    theirs = inspect.signature(triton.testing.do_bench).parameters
    assert ours["rep"].default == theirs["rep"].default == 100
    assert ours["warmup"].default == theirs["warmup"].default == 25


def test_run_script_exit_statuses(capsys):
    """A GPU script's status: 0 when ``main`` returns, 130 (with one line, no traceback)
    on Ctrl-C; ``main`` gets the given argv as a list, or None."""
    from unimmad.bench.record import run_script
    seen = []
    assert run_script(lambda argv: seen.append(argv)) == 0
    assert run_script(lambda argv: seen.append(argv), ("--x", "1")) == 0
    assert seen == [None, ["--x", "1"]]

    def interrupted(argv):
        raise KeyboardInterrupt
    assert run_script(interrupted, []) == 130
    err = capsys.readouterr().err
    assert err == "interrupted: results so far are written\n"
    with pytest.raises(ValueError):
        run_script(lambda argv: (_ for _ in ()).throw(ValueError("boom")), [])


def test_ms_fields_rates_and_fractions_of_the_ceilings():
    from unimmad.bench.record import ms_fields
    got = ms_fields(2.0, flop=4e12, nbytes=6e9, ceiling_tflops=4000.0, ceiling_gbps=6000.0)
    assert got == pytest.approx({"ms": 2.0, "tflops": 2000.0, "fraction_of_matmul": 0.5,
                                 "gbps": 3000.0, "fraction_of_copy": 0.5})
    assert ms_fields(2.0) == {"ms": 2.0}
    assert ms_fields(4.0, flop=4e12) == pytest.approx({"ms": 4.0, "tflops": 1000.0})
    assert ms_fields(4.0, nbytes=4e9, ceiling_gbps=0.0) == pytest.approx({"ms": 4.0,
                                                                          "gbps": 1000.0})


def test_json_record_budget_counts_from_when_it_was_opened(tmp_path, monkeypatch):
    """``elapsed`` is the time since the record was opened (a fake clock here): within the
    budget rows are measured, past it they are recorded as skipped."""
    import json

    import unimmad.bench.record as R
    clock = [1000.0]
    monkeypatch.setattr(R.time, "monotonic", lambda: clock[0])
    rec = R.JsonRecord(str(tmp_path / "r.json"), {"m": 1}, budget_s=10.0)
    clock[0] = 1004.0
    assert rec.elapsed() == 4.0 and not rec.over_budget()
    assert rec.row({"i": 0}, lambda: {"ms": 1.0}) == {"i": 0, "ms": 1.0, "error": None}
    clock[0] = 1010.5
    assert rec.elapsed() == 10.5 and rec.over_budget()
    assert rec.row({"i": 1}, lambda: {"ms": 1.0}) is None
    data = json.load(open(tmp_path / "r.json"))
    assert data["rows"] == [{"i": 0, "ms": 1.0, "error": None}]
    assert data["skipped"] == [{"i": 1, "why": "time budget"}] and data["wall_s"] == 10.5
    assert not R.JsonRecord(str(tmp_path / "s.json"), {}, budget_s=None).over_budget()
