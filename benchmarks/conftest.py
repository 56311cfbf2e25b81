"""Benchmark fixtures.  Benchmarks share setup code with the parity tests
(tests/cmoe_cases.py), so tests/ is put on the path."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from unimmad.benchmeta import environment  # noqa: E402


@pytest.fixture(scope="session")
def bench_env():
    return environment("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def benchmarks_enabled(request):
    """False in the smoke run (pytest.ini's --benchmark-disable: each case runs once); True
    when --benchmark-enable overrides it."""
    opt = request.config.getoption
    return bool(opt("benchmark_enable", False)) or not opt("benchmark_disable", False)
