"""Shared by tests/ and benchmarks/: Triton's CPU interpreter when no GPU is present (set
before anything imports ``kernels``), skipping of ``gpu``-marked items without CUDA, and
(only under ``tests/mutation.py coverage``) naming each test's subprocesses after it."""
import base64
import json
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (none present)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _subprocess_coverage_context(request):
    """Under ``tests/mutation.py coverage`` (``UNIMMAD_MUTATION_COVERAGE=1``) coverage follows
    subprocesses (``[run] patch = subprocess``) but cannot tell which test started them: the
    configuration they inherit gets this test's name as its static context, so the lines a
    CLI or compile subprocess runs are mapped to the test that checks them.  Inert
    otherwise."""
    config = os.environ.get("COVERAGE_PROCESS_CONFIG")
    if os.environ.get("UNIMMAD_MUTATION_COVERAGE") != "1" or config is None:
        yield
        return
    data = json.loads(base64.b64decode(config))
    node = request.node
    parts = [node.module.__name__] + ([node.cls.__name__] if node.cls else [])
    data["context"] = ".".join(parts + [node.originalname])
    os.environ["COVERAGE_PROCESS_CONFIG"] = base64.b64encode(json.dumps(data).encode()).decode()
    try:
        yield
    finally:
        os.environ["COVERAGE_PROCESS_CONFIG"] = config
