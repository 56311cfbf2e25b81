"""The CPU timing helper of unimmad.bench: each timed call's duration, not a clock reading."""
import time

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
