"""One input contract: the reference functions (``unimmad.anomaly_map``, ``image_score``,
``decompression_loss``) and the fused ones (``kernels.*`` on every backend) accept and
refuse exactly the same inputs, with the same exception type and message."""
import math

import pytest
import torch

import kernels
import unimmad
from unimmad.losses import moe_anneal_factor

BACKENDS = ["torch", "triton"]   # triton: the CPU interpreter here, CUDA where present


def feats(U=3, shapes=((6, 4, 5), (8, 2, 3))):
    pri = [torch.randn(U, *s) for s in shapes]
    pre = [torch.randn(U, *s) for s in shapes]
    return pri, pre, torch.tensor([0, 1, 1][:U])


def _outcome(fn):
    try:
        fn()
    except Exception as exc:  # the contract is about which exception and which words
        return type(exc), str(exc)
    return None


def _same(ref_call, fast_call):
    ref, fast = _outcome(ref_call), _outcome(fast_call)
    assert ref == fast, f"reference: {ref}\nfast:      {fast}"
    return ref


MAP_CASES = {
    "ok": lambda p, q, u: ((p, q, u, 16), {}),
    "tuple size": lambda p, q, u: ((p, q, u, (16, 12)), {}),
    "levels differ in length": lambda p, q, u: ((p, q[:1], u, 16), {}),
    "no levels": lambda p, q, u: (([], [], u, 16), {}),
    "tensor instead of list": lambda p, q, u: ((p[0], q[0], u, 16), {}),
    "shape mismatch": lambda p, q, u: ((p, [q[0][:, :3], q[1]], u, 16), {}),
    "units mismatch": lambda p, q, u: ((p, q, u[:2], 16), {}),
    "float unit index": lambda p, q, u: ((p, q, u.float(), 16), {}),
    "2-D unit index": lambda p, q, u: ((p, q, u[None], 16), {}),
    "integer features": lambda p, q, u: (([t.long() for t in p], q, u, 16), {}),
    "bool size": lambda p, q, u: ((p, q, u, True), {}),
    "float size": lambda p, q, u: ((p, q, u, 16.5), {}),
    "fractional pair": lambda p, q, u: ((p, q, u, (16, 2.5)), {}),
    "zero size": lambda p, q, u: ((p, q, u, (0, 4)), {}),
    "triple size": lambda p, q, u: ((p, q, u, (4, 4, 4)), {}),
    "index out of range": lambda p, q, u: ((p, q, u + 5, 16), {"num_samples": 2}),
    "negative num_samples": lambda p, q, u: ((p, q, u, 16), {"num_samples": -1}),
    "float num_samples": lambda p, q, u: ((p, q, u, 16), {"num_samples": 2.0}),
    "bool num_samples": lambda p, q, u: ((p, q, u, 16), {"num_samples": True}),
    "bad mode": lambda p, q, u: ((p, q, u, 16), {"mode": "max"}),
    "nan sigma": lambda p, q, u: ((p, q, u, 16), {"sigma": math.nan}),
    "inf sigma": lambda p, q, u: ((p, q, u, 16), {"sigma": math.inf}),
    "zero sigma": lambda p, q, u: ((p, q, u, 16), {"sigma": 0}),
    "string sigma": lambda p, q, u: ((p, q, u, 16), {"sigma": "4"}),
    "even kernel": lambda p, q, u: ((p, q, u, 16), {"kernel_size": 4}),
    "float kernel": lambda p, q, u: ((p, q, u, 16), {"kernel_size": 5.0}),
    "bool kernel": lambda p, q, u: ((p, q, u, 16), {"kernel_size": True}),
}


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(MAP_CASES))
def test_anomaly_map_contract(case, backend):
    pri, pre, uts = feats()
    args, kw = MAP_CASES[case](pri, pre, uts)
    outcome = _same(lambda: unimmad.anomaly_map(*args, **kw),
                    lambda: kernels.anomaly_map(*args, **kw, backend=backend))
    assert (outcome is None) == case.startswith(("ok", "tuple")), outcome


SCORE_CASES = {
    "ok": (torch.rand(2, 8, 8), {}),
    "fraction 1": (torch.rand(2, 8, 8), {"top_fraction": 1}),
    "2-D map": (torch.rand(8, 8), {}),
    "integer map": (torch.ones(2, 8, 8, dtype=torch.long), {}),
    "no pixels": (torch.rand(2, 0, 8), {}),
    "list": ([[1.0]], {}),
    "zero fraction": (torch.rand(2, 8, 8), {"top_fraction": 0.0}),
    "fraction above 1": (torch.rand(2, 8, 8), {"top_fraction": 1.5}),
    "nan fraction": (torch.rand(2, 8, 8), {"top_fraction": math.nan}),
    "bool fraction": (torch.rand(2, 8, 8), {"top_fraction": True}),
}


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(SCORE_CASES))
def test_image_score_contract(case, backend):
    m, kw = SCORE_CASES[case]
    outcome = _same(lambda: unimmad.image_score(m, **kw),
                    lambda: kernels.image_score(m, **kw, backend=backend))
    assert (outcome is None) == (case in ("ok", "fraction 1")), outcome


LOSS_CASES = {
    "ok": lambda p, q, u: ((p, q, u), {}),
    "weights": lambda p, q, u: ((p, q, u, torch.tensor([1.0, 2.0])), {}),
    "fractional gamma": lambda p, q, u: ((p, q, u), {"gamma": 1.5}),
    "levels differ in length": lambda p, q, u: ((p, q[:1], u), {}),
    "no units": lambda p, q, u: (([t[:0] for t in p], [t[:0] for t in q], u[:0]), {}),
    "nan gamma": lambda p, q, u: ((p, q, u), {"gamma": math.nan}),
    "negative gamma": lambda p, q, u: ((p, q, u), {"gamma": -1.0}),
    "bool gamma": lambda p, q, u: ((p, q, u), {"gamma": True}),
    "weights too short": lambda p, q, u: ((p, q, u, torch.tensor([1.0])), {}),
    "2-D weights": lambda p, q, u: ((p, q, u, torch.ones(2, 1)), {}),
    "integer weights": lambda p, q, u: ((p, q, u, torch.tensor([1, 2])), {}),
    "nan weight": lambda p, q, u: ((p, q, u, torch.tensor([1.0, math.nan])), {}),
    "negative weight": lambda p, q, u: ((p, q, u, torch.tensor([1.0, -2.0])), {}),
}


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_decompression_loss_contract(case, backend):
    pri, pre, uts = feats()
    args, kw = LOSS_CASES[case](pri, pre, uts)
    outcome = _same(lambda: unimmad.decompression_loss(*args, **kw),
                    lambda: kernels.decompression_loss(*args, **kw, backend=backend))
    assert (outcome is None) == (case in ("ok", "weights", "fractional gamma")), outcome


def test_reference_loss_has_finite_gradients_for_zero_vectors():
    # a zero prediction vector: the clamped cosine has a finite derivative (was NaN)
    pri, pre, uts = feats()
    pre = [t.clone() for t in pre]
    pre[0][0, :, 1, 2] = 0.0
    pre = [t.requires_grad_(True) for t in pre]
    loss, _ = unimmad.decompression_loss(pri, pre, uts)
    loss.backward()
    assert all(bool(torch.isfinite(t.grad).all()) for t in pre)
    fast = [t.detach().clone().requires_grad_(True) for t in pre]
    kernels.decompression_loss(pri, fast, uts, backend="torch")[0].backward()
    for a, b in zip(fast, pre):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("epoch, total, err", [
    (math.nan, 10, ValueError), (math.inf, 10, ValueError), (-1, 10, ValueError),
    (1, 0, ValueError), (1, math.nan, ValueError), ("1", 10, TypeError),
    (True, 10, TypeError), (1, None, TypeError)])
def test_anneal_factor_refuses_bad_scalars(epoch, total, err):
    with pytest.raises(err, match="epoch"):
        moe_anneal_factor(epoch, total)


def test_anneal_factor_values():
    assert moe_anneal_factor(5, 10) == pytest.approx(0.25)           # (1 − ½)²
    assert moe_anneal_factor(5, 10, "linear") == pytest.approx(0.5)
    assert moe_anneal_factor(20, 10, "linear") == pytest.approx(0.001)   # clipped at the floor
    assert moe_anneal_factor(20, 10) == 0.0


# ----------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return unimmad.UniMMAD(unimmad.UniMMADConfig.tiny()).eval()


IMG = lambda b=2, **kw: torch.randn(b, 4, 3, 64, 64, **kw)

MODEL_CASES = {
    "meta images": (lambda: (IMG(device="meta"), torch.ones(2, dtype=torch.long,
                                                            device="meta")), ValueError, "meta"),
    "float counts": (lambda: (IMG(), torch.ones(2)), TypeError, "integer"),
    "zero modalities": (lambda: (IMG(), torch.tensor([1, 0])), ValueError, r"\[1, 4\]"),
    "five modalities": (lambda: (IMG(), torch.tensor([5, 1])), ValueError, r"\[1, 4\]"),
    "counts of another batch": (lambda: (IMG(), torch.ones(3, dtype=torch.long)), ValueError,
                                "B=2"),
    "wrong size": (lambda: (torch.randn(2, 4, 3, 32, 32), torch.ones(2, dtype=torch.long)),
                   ValueError, "64"),
    "integer images": (lambda: (IMG().long(), torch.ones(2, dtype=torch.long)), TypeError,
                       "floating"),
    "nan pixel": (lambda: (IMG().index_fill_(0, torch.tensor([1]), math.nan),
                           torch.ones(2, dtype=torch.long)), ValueError, "NaN"),
    "float64 images": (lambda: (IMG().double(), torch.ones(2, dtype=torch.long)), TypeError,
                       "float64"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_refuses_bad_inputs_before_reading_values(tiny_model, case):
    make, err, words = MODEL_CASES[case]
    images, nm = make()
    with pytest.raises(err, match=words):
        tiny_model(images, nm)


@pytest.mark.parametrize("kw, err, words", [
    ({"epoch": math.nan}, ValueError, "epoch"), ({"epoch": -1}, ValueError, "epoch"),
    ({"total_epochs": 0}, ValueError, "total_epochs"),
    ({"sample_weight": torch.tensor([1.0, math.inf])}, ValueError, "finite"),
    ({"sample_weight": torch.ones(3)}, ValueError, "B=2"),
    ({"sample_weight": torch.tensor([1.0, -1.0])}, ValueError, "non-negative")])
def test_model_loss_refuses_bad_arguments(tiny_model, kw, err, words):
    tiny_model.train()
    try:
        with pytest.raises(err, match=words):
            tiny_model.loss(IMG(), torch.tensor([2, 1]), **kw)
    finally:
        tiny_model.eval()
