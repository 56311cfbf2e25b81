"""Benchmark fixtures.  The case factories, timing and parity helpers come from
:mod:`unimmad.bench` (shared with ``unimmad bench``, the GPU scripts and the tests)."""
import pytest
import torch

from unimmad.bench.meta import environment


@pytest.fixture(scope="session")
def bench_env():
    return environment("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def benchmarks_enabled(request):
    """False in the smoke run (pytest.ini's --benchmark-disable: each case runs once); True
    when --benchmark-enable overrides it."""
    opt = request.config.getoption
    return bool(opt("benchmark_enable", False)) or not opt("benchmark_disable", False)
