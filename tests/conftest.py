"""Test fixtures: a fixed seed per test and a scoped full-precision fp32 switch.  (The
interpreter switch and the gpu skip live in the root conftest.py.)"""
import random
import zlib

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed(request):
    """Seed every RNG from the test's id (crc32: stable across processes, different per
    test)."""
    seed = zlib.crc32(request.node.nodeid.encode()) % (2 ** 31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield


@pytest.fixture
def no_tf32():
    """Full-precision fp32 for the duration of a test, restoring the global switches."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
