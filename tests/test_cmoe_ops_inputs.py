"""The public C-MoE primitives (``kernels.cmoe_ops.dyn_conv / compose / mix``) refuse
inputs of the wrong shape or dtype before any backend runs, with one message naming the
argument for every backend (the Triton kernels would otherwise read past a bank or an
image silently), and accept the shapes their docstrings state."""
import re

import pytest
import torch

from kernels import cmoe_ops as O

TRITON = pytest.param("triton", marks=pytest.mark.interpreter)
BACKENDS = ["torch", TRITON]


def _mix_args():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(4, 18, generator=g), torch.randn(3, 4, 18, generator=g),
            torch.tensor([[0, 2], [1, 0]]), torch.rand(2, 2, generator=g))


def _compose_args():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(5, 4, 18, generator=g), torch.randn(3, 5, 4, generator=g),
            torch.tensor([[0, 2], [1, 0]]), torch.rand(2, 2, generator=g))


def _conv_args(backend):
    g = torch.Generator().manual_seed(2)
    w = O.to_bank(torch.randn(3, 4, 2, 3, 3, generator=g), backend)
    return (torch.randn(2, 2, 5, 5, generator=g), w, torch.tensor([0, 1, 1]),
            torch.tensor([0, 1, 2]), 3)


def _with(args, i, value):
    args = list(args)
    args[i] = value
    return args


MIX_BAD = [
    (0, torch.randn(5, 18), "g0 must be [Co, R] and bank [L, Co, R], got (5, 18) and (3, 4, 18)"),
    (0, torch.randn(4, 18, 1), "g0 must be [Co, R]"),
    (1, torch.randn(3, 4, 17), "got (4, 18) and (3, 4, 17)"),
    (1, torch.randn(0, 4, 18), "idx selects from bank rows but there are none"),
    (2, torch.tensor([[0.0, 2.0], [1.0, 0.0]]), "idx must hold integer indices into the 3 bank rows, got torch.float32"),
    (2, torch.tensor([[True, False], [True, True]]), "idx must hold integer indices"),
    (2, torch.tensor([0, 1]), "idx and scores must both be [U, K], got (2,) and (2, 2)"),
    (3, torch.rand(1, 2), "idx and scores must both be [U, K], got (2, 2) and (1, 2)"),
    (3, torch.ones(2, 2, dtype=torch.long), "scores must be floating point, got torch.int64"),
    (3, [[0.5, 0.5], [0.5, 0.5]], "scores must be a torch.Tensor, got list"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i, value, message", MIX_BAD)
def test_mix_refuses(backend, i, value, message):
    err = TypeError if not isinstance(value, torch.Tensor) else ValueError
    with pytest.raises(err, match=re.escape("kernels.cmoe_ops.mix: ") + ".*" + re.escape(message)):
        O.mix(*_with(_mix_args(), i, value), backend=backend)


COMPOSE_BAD = [
    (0, torch.randn(5, 4), "base must be [N, Co, R] and leaders [L, N, Co], got (5, 4) and (3, 5, 4)"),
    (1, torch.randn(3, 4, 4), "got (5, 4, 18) and (3, 4, 4)"),
    (1, torch.randn(3, 5, 5), "got (5, 4, 18) and (3, 5, 5)"),
    (1, torch.randn(0, 5, 4), "idx selects from leaders but there are none"),
    (2, torch.tensor([[0.0, 2.0], [1.0, 0.0]]), "idx must hold integer indices into the 3 leaders"),
    (3, torch.rand(2, 3), "idx and scores must both be [U, K], got (2, 2) and (2, 3)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i, value, message", COMPOSE_BAD)
def test_compose_refuses(backend, i, value, message):
    with pytest.raises(ValueError, match=re.escape("kernels.cmoe_ops.compose: ") + ".*" + re.escape(message)):
        O.compose(*_with(_compose_args(), i, value), backend=backend)


CONV_BAD = [
    (0, torch.randn(2, 5, 5), "x must be [B, Ci, H, W], got (2, 5, 5)"),
    (0, torch.randn(2, 3, 5, 5), "weight must be [NW, Co, Ci*k*k] = [NW, Co, 27] for x (2, 3, 5, 5) and k=3, got (3, 4, 18)"),
    (1, torch.randn(3, 18), "weight must be [NW, Co, Ci*k*k]"),
    (2, torch.tensor([0, 1]), "job_sample (2 jobs) and job_weight (3) differ in length"),
    (2, torch.tensor([[0, 1, 1]]), "job_sample must be a 1-D integer tensor, got (1, 3) torch.int64"),
    (3, torch.tensor([0.0, 1.0, 2.0]), "job_weight must be a 1-D integer tensor, got (3,) torch.float32"),
    (4, 2, "k must be an odd positive int, got 2"),
    (4, 0, "k must be an odd positive int, got 0"),
    (4, True, "k must be an odd positive int, got True"),
    (4, 3.0, "k must be an odd positive int, got 3.0"),
    (4, 5, "= [NW, Co, 50] for x (2, 2, 5, 5) and k=5"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i, value, message", CONV_BAD)
def test_dyn_conv_refuses(backend, i, value, message):
    with pytest.raises(ValueError, match=re.escape("kernels.cmoe_ops.dyn_conv: ") + ".*" + re.escape(message)):
        O.dyn_conv(*_with(_conv_args(backend), i, value), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_documented_shapes_are_accepted_and_computed(backend):
    """float64 references written here: W[u] = g0 + Σ_j s_uj bank[idx_uj]; the mixed kernel
    Σ_n α[u, n, o] base[n, o]; one convolution per job."""
    g0, bank, idx, sc = _mix_args()
    want = torch.stack([g0.double() + sum(sc[u, j].double() * bank[idx[u, j]].double()
                                          for j in range(2)) for u in range(2)])
    torch.testing.assert_close(O.mix(g0, bank, idx, sc, backend=backend).double(), want,
                               rtol=1e-5, atol=1e-5)
    base, leaders, idx, sc = _compose_args()
    alpha = sum(sc[:, j, None, None].double() * torch.softmax(leaders[idx[:, j]].double(), 1)
                for j in range(2))                                        # [U, N, Co]
    want = torch.einsum("uno,nor->uor", alpha, base.double())
    torch.testing.assert_close(O.compose(base, leaders, idx, sc, backend=backend).double(), want,
                               rtol=1e-5, atol=1e-5)
    x, w, js, jw, k = _conv_args(backend)
    w5 = torch.randn(3, 4, 2, 3, 3, generator=torch.Generator().manual_seed(3))
    y = O.dyn_conv(x, O.to_bank(w5, backend), js, jw, k, backend=backend, precision="ieee")
    want = torch.cat([torch.nn.functional.conv2d(x[s:s + 1].double(), w5[t].double(), padding=1)
                      for s, t in zip(js.tolist(), jw.tolist())])
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    # numpy / torch integer k values are ints
    import numpy as np
    y2 = O.dyn_conv(x, O.to_bank(w5, backend), js, jw, np.int64(3), backend=backend,
                    precision="ieee")
    torch.testing.assert_close(y2, y)
