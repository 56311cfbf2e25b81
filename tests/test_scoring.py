import math

import pytest
import torch
import torch.nn.functional as F

from unimmad import anomaly_map, cosine_anomaly, gaussian_blur, image_score
from unimmad.scoring import gaussian_kernel1d, top_k_count


def levels(U, dims=((8, 16, 16), (12, 8, 8), (16, 4, 4)), dtype=torch.float64):
    return [torch.randn(U, *d, dtype=dtype) for d in dims]


def test_identical_priors_and_predictions_give_zero_map():
    u = levels(5)
    uts = torch.tensor([0, 0, 1, 2, 2])
    for mode in ("mean", "joint"):
        m = anomaly_map(u, [t.clone() for t in u], uts, 64, mode=mode)
        assert m.shape == (3, 64, 64)
        assert float(m.abs().max()) < 1e-6
        assert float(image_score(m).abs().max()) < 1e-6


def test_zero_vectors_do_not_give_nan():
    u = torch.zeros(2, 4, 3, 3)
    p = torch.randn(2, 4, 3, 3)
    a = cosine_anomaly(u, p)
    assert torch.isfinite(a).all() and torch.allclose(a, torch.ones_like(a))
    m = anomaly_map([u], [p], torch.tensor([0, 1]), 16)
    assert torch.isfinite(m).all()


def test_image_score_is_mean_of_top_k():
    m = torch.rand(3, 256, 256)
    assert top_k_count(256 * 256) == 65  # the release's 65536 // 1000
    assert top_k_count(10) == 1
    ref = m.flatten(1).sort(1, descending=True).values[:, :65].mean(1)
    torch.testing.assert_close(image_score(m), ref)
    small = torch.rand(2, 5, 5)
    torch.testing.assert_close(image_score(small), small.flatten(1).max(1).values)


def test_blur_equals_dense_zero_padded_gaussian():
    x = torch.rand(2, 40, 33, dtype=torch.float64)
    g = gaussian_kernel1d(4.0, 15, torch.float64)
    assert math.isclose(float(g.sum()), 1.0, rel_tol=1e-12)
    dense = F.conv2d(x[:, None], torch.outer(g, g)[None, None], padding=7)[:, 0]
    torch.testing.assert_close(gaussian_blur(x, 4.0, 15), dense)


def _explicit_map(priors, preds, uts, B, size, mode):
    """Per sample, per modality loops (the authors' batch-1 reading of eq. 4)."""
    g = gaussian_kernel1d(4.0, 15, torch.float64)
    k2 = torch.outer(g, g)[None, None]
    out = []
    for b in range(B):
        units = [u for u in range(len(uts)) if uts[u] == b]
        per_level = []
        for u_l, p_l in zip(priors, preds):
            maps = []
            for u in units:
                cos = (u_l[u] * p_l[u]).sum(0) / (u_l[u].norm(dim=0) * p_l[u].norm(dim=0))
                maps.append(1 - cos)
            per_level.append(maps)
        up = lambda t: F.interpolate(t[None, None], size=size, mode="bilinear",
                                     align_corners=True)[0, 0]
        if mode == "mean":
            m = sum(up(torch.stack(ms).square().sum(0).sqrt()) for ms in per_level) / len(priors)
        else:
            m = sum(up(a).square() for ms in per_level for a in ms).sqrt()
        out.append(F.conv2d(m[None, None], k2, padding=7)[0, 0])
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["mean", "joint"])
def test_anomaly_map_matches_explicit_loops(mode):
    uts = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    pri, pre = levels(7), levels(7)
    out = anomaly_map(pri, pre, uts, (48, 40), mode=mode)
    torch.testing.assert_close(out, _explicit_map(pri, pre, uts, 3, (48, 40), mode))


def test_anomaly_map_bad_inputs():
    pri, pre = levels(2), levels(2)
    uts = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="mode"):
        anomaly_map(pri, pre, uts, 32, mode="max")
    with pytest.raises(ValueError, match="level 1"):
        anomaly_map(pri, [pre[0], pre[1][:, :3], pre[2]], uts, 32)
    with pytest.raises(ValueError, match="units"):
        anomaly_map(pri, pre, torch.tensor([0]), 32)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        image_score(torch.rand(4, 4))
