"""The parity helper every benchmark and parity test uses (unimmad.bench.parity): a broken
output never passes, and the verdict follows the SPEC §3 table."""
import math

import pytest
import torch

from unimmad.bench.parity import TOL, judge, rel_err, tolerance


def test_rel_err_is_the_float64_relative_norm():
    ref = torch.tensor([3.0, 4.0])
    assert rel_err(ref + torch.tensor([0.3, 0.4]), ref) == pytest.approx(0.1, rel=1e-6)
    assert rel_err(torch.tensor([0.5, 0.0]), torch.zeros(2)) == 0.5  # absolute when ref is 0


def test_rel_err_of_a_broken_output_is_infinite():
    ref = torch.ones(4)
    for bad in (torch.tensor([1.0, float("nan"), 1.0, 1.0]), torch.tensor([1.0, 1.0, math.inf, 1.0])):
        assert rel_err(bad, ref) == math.inf        # same shape, not finite
    assert rel_err(torch.ones(5), ref) == math.inf  # finite, other shape
    assert rel_err(torch.ones(2, 2), ref) == math.inf


def test_judge_fails_rows_over_tolerance_and_gives_no_speedup():
    row = {"latency_median_ms": 5.0}
    judge(row, 2e-5, TOL["fp32"], 10.0)
    assert (row["status"], row["speedup"]) == ("FAIL parity", None)
    assert (row["parity_rel_err"], row["parity_tol"]) == (2e-5, 1e-5)
    # SPEC §3: an error at the tolerance passes (≤), just over it fails
    edge = {"latency_median_ms": 4.0}
    judge(edge, 1e-5, 1e-5, 10.0)
    assert (edge["status"], edge["speedup"]) == ("ok", 2.5)
    over = {"latency_median_ms": 4.0}
    judge(over, math.nextafter(1e-5, 1.0), 1e-5, 10.0)
    assert over["status"] == "FAIL parity"
    # no reference time (the reference failed or was not run): no speedup
    alone = {"latency_median_ms": 4.0}
    judge(alone, 0.0, 1e-5, None)
    assert (alone["status"], alone["speedup"]) == ("ok", None)
    ok = {"latency_median_ms": 5.0}
    judge(ok, 0.0, TOL["fp32"], 10.0)
    assert ok["status"] == "ok" and ok["speedup"] == 2.0
    bad = {"latency_median_ms": 5.0}
    judge(bad, math.inf, TOL["fp32"], 10.0)
    assert bad["status"] == "FAIL parity" and bad["speedup"] is None
    ref = {"latency_median_ms": 10.0}
    judge(ref, None, TOL["fp32"], 10.0)
    assert ref["status"] == "ok" and ref["speedup"] == 1.0
    judge(ref, None, TOL["fp32"], None)
    assert ref["speedup"] is None and ref["parity_rel_err"] is None


def test_tolerance_by_dtype():
    assert tolerance(torch.bfloat16, "cpu") == TOL["bf16"] == tolerance(torch.float16, "cpu")
    assert tolerance(torch.float32, "cpu") == TOL["fp32"]
    assert TOL["fp32"] < TOL["bf16"]
