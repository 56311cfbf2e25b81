"""Benchmarks share setup code with the parity tests (tests/cmoe_cases.py)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from unimmad.benchmeta import environment  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (none present)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def bench_env():
    return environment("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def benchmarks_enabled(request):
    """False when run with --benchmark-disable (the CI smoke run: each case runs once)."""
    return not request.config.getoption("benchmark_disable", False)
