"""unimmad.metrics against scikit-learn (AUROC, AP), brute-force sweeps (F1-max), brute-force
implementations of the AUPRO definitions written here from the published code's behaviour
(MVTec AD every-threshold curve; MVTec 3D-AD 100 and CFM 99 sampled thresholds),
hand-computed PRO curves, and the binned estimators against the exact ones within their
stated error bounds — on continuous, tied, constant, clipped, quantised and fp16 maps."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

import unimmad.metrics as M
from unimmad.metrics.functional import trapezoid


# ----------------------------------------------------------------------------- brute force
def brute_f1max(scores, labels):
    s, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        fp = np.sum(pred & ~y)
        fn = np.sum(~pred & y)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def clipped_area(x, y, limit):
    """Area under the piecewise-linear (x, y) up to ``limit``, segment by segment."""
    area = 0.0
    for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            yl = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + yl) * (limit - x0)
    return area


def regions_of(masks):
    out = []
    for i, g in enumerate(masks):
        lab, n = ndimage.label(g, structure=np.ones((3, 3)))
        out += [(i, lab == k) for k in range(1, n + 1)]
    return out


def brute_aupro_exact(maps, masks, limit=0.3):
    regions = regions_of(masks)
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append((pred & normal).sum() / normal.sum())
        ys.append(np.mean([pred[i][r].mean() for i, r in regions]))
    xs.append(1.0)
    ys.append(1.0)
    return clipped_area(xs, ys, limit) / limit


def brute_aupro_sampled(maps, masks, T, limit=0.3):
    """The threshold-sampled PRO curve as the MVTec 3D-AD / CFM evaluation code defines it:
    thresholds at the positions ``np.linspace(0, n - 1, T, dtype=int)`` of the sorted normal
    scores, positional FPR ``1 - (pos + 1) / n``, a region pixel detected when its score is
    strictly above the threshold, the point (1, 1) appended."""
    regions = regions_of(masks)
    ok = np.sort(maps[~masks].astype(np.float64))
    n = ok.size
    pts = []
    for pos in np.linspace(0, n - 1, num=T, dtype=int):
        t = ok[pos]
        pro = np.mean([(maps[i][r] > t).mean() for i, r in regions])
        pts.append((1.0 - (pos + 1) / n, pro))
    pts = pts[::-1] + [(1.0, 1.0)]
    return clipped_area([p[0] for p in pts], [p[1] for p in pts], limit) / limit


def brute_aupro(maps, masks, variant, limit=0.3):
    if variant == "exact":
        return brute_aupro_exact(maps, masks, limit)
    return brute_aupro_sampled(maps, masks, {"mvtec3d": 100, "cfm": 99}[variant], limit)


# ----------------------------------------------------------------------------- data
def random_set(rng, n=8, h=12, w=14, ties=False):
    """Maps with several defects per image, images without defect, a defect on the border."""
    maps = rng.random((n, h, w))
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        if i % 3 == 2:
            continue                                     # defect-free image
        for _ in range(1 + i % 3):                       # 1 or 2 defects
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            masks[i, y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = True
    masks[0, 0:2, w - 3:w] = True                        # touches the top-right border
    maps = maps + 0.6 * masks * rng.random((n, h, w))
    if ties:
        maps = np.round(maps * 8) / 8
    return maps.astype(np.float32), masks


# ----------------------------------------------------------------------------- image metrics
@pytest.mark.parametrize("ties", [False, True])   # continuous scores / many tied scores
def test_image_metrics_match_sklearn(ties):
    rng = np.random.default_rng(0)
    for n in (7, 50, 333):
        y = rng.random(n) < 0.4
        y[0], y[1] = True, False
        s = rng.normal(size=n) + y
        if ties:
            s = np.round(s * 2) / 2
        r = M.compute(torch.as_tensor(s), torch.as_tensor(y))
        assert set(r) == set(M.IMAGE_KEYS)
        assert abs(r["image_AUROC"] - roc_auc_score(y, s)) < 1e-6
        assert abs(r["image_AP"] - average_precision_score(y, s)) < 1e-6
        assert abs(r["image_F1max"] - brute_f1max(s, y)) < 1e-12
        assert abs(M.auroc(s, y) - roc_auc_score(y, s)) < 1e-6


@pytest.mark.filterwarnings("ignore:image AP:RuntimeWarning", "ignore:image F1:RuntimeWarning")
def test_image_metrics_undefined_give_nan():
    with pytest.warns(RuntimeWarning, match="image AUROC"):
        r = M.compute(np.array([0.1, 0.2]), np.array([0, 0]))
    assert math.isnan(r["image_AUROC"]) and math.isnan(r["image_AP"])


# ----------------------------------------------------------------------------- pixel metrics
def smooth_set(rng, n=10, h=40, w=40, one_pixel=False):
    """Smooth maps in [0, 1], 1–2 rectangular defects per image (or isolated one-pixel
    defects), every fourth image defect-free."""
    maps = ndimage.gaussian_filter(rng.random((n, h, w)), (0, 2, 2))
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        if i % 4 == 3:
            continue
        for _ in range(1 + i % 2):
            y, x = rng.integers(1, h - 9), rng.integers(1, w - 9)
            if one_pixel:
                masks[i, y, x] = True
            else:
                masks[i, y:y + rng.integers(1, 8), x:x + rng.integers(1, 8)] = True
    maps = maps + 0.05 * masks * rng.random((n, h, w))
    return ((maps - maps.min()) / (maps.max() - maps.min())).astype(np.float32), masks


def with_ties(kind, maps):
    if kind == "constant":
        return np.full_like(maps, 0.25)
    if kind == "clipped":                      # 30 % of the pixels at the low clip, 10 % at the high
        lo, hi = np.quantile(maps, [0.3, 0.9])
        return np.clip(maps, lo, hi)
    if kind == "quantised":                    # an 8-bit map
        return (np.round(maps * 255) / 255).astype(np.float32)
    if kind == "fp16":
        return maps.astype(np.float16).astype(np.float32)
    return maps


@pytest.mark.parametrize("ties", [False, True])
def test_exact_pixel_metrics_match_sklearn_and_bruteforce(ties):
    rng = np.random.default_rng(1)
    maps, masks = random_set(rng, ties=ties)
    scores = maps.reshape(len(maps), -1).max(1)
    r = M.compute(scores, masks.any((1, 2)), maps, masks)
    assert set(r) == set(M.IMAGE_KEYS) | set(M.PIXEL_KEYS)
    assert abs(r["pixel_AUROC"] - roc_auc_score(masks.ravel(), maps.ravel())) < 1e-6
    assert abs(r["pixel_AP"] - average_precision_score(masks.ravel(), maps.ravel())) < 1e-6
    assert abs(r["pixel_F1max"] - brute_f1max(maps, masks)) < 1e-9
    for variant in M.AUPRO_VARIANTS:
        got = M.compute(scores, masks.any((1, 2)), maps, masks, aupro=variant)["pixel_AUPRO"]
        assert abs(got - brute_aupro(maps, masks, variant)) < 1e-10, variant


@pytest.mark.parametrize("kind", ["constant", "clipped", "quantised"])
def test_exact_aupro_on_tied_maps_matches_bruteforce(kind):
    rng = np.random.default_rng(11)
    maps, masks = random_set(rng, n=6, h=10, w=12)
    maps = with_ties(kind, maps)
    for variant in M.AUPRO_VARIANTS:
        assert abs(M.aupro(maps, masks, variant) - brute_aupro(maps, masks, variant)) < 1e-10


def test_100_and_99_thresholds_are_different_estimators():
    """"mvtec3d" is the official MVTec 3D-AD evaluation (100 thresholds), "cfm" CFM's and the
    UniMMAD release's (99); both follow their definition and give different numbers."""
    rng = np.random.default_rng(12)
    maps, masks = random_set(rng, n=10, h=16, w=16)
    mv, cfm = M.aupro(maps, masks, "mvtec3d"), M.aupro(maps, masks, "cfm")
    assert abs(mv - brute_aupro_sampled(maps, masks, 100)) < 1e-10
    assert abs(cfm - brute_aupro_sampled(maps, masks, 99)) < 1e-10
    assert abs(mv - cfm) > 1e-4
    assert M.aupro(maps, masks, "mvtec3d", num_thresholds=99) == pytest.approx(cfm, abs=1e-15)
    assert abs(M.aupro(maps, masks, "cfm", num_thresholds=7)
               - brute_aupro_sampled(maps, masks, 7)) < 1e-10
    assert M.AUPRO_THRESHOLDS == {"mvtec3d": 100, "cfm": 99}


@pytest.mark.filterwarnings("ignore:image AUROC is undefined:RuntimeWarning")
def test_pro_curves_by_hand():
    """Two regions of 2 pixels; 11 normal pixels, one of them at 0.7, the rest ≤ 0.09.

    Exact curve: (0, .25) (0, .75) (1/11, .75) (1/11, 1) … → AUPRO = 1 − (0.25/11)/0.3.
    Sampled (MVTec 3D-AD / CFM): thresholds at normal-score quantiles, "> t":
    (0, .75) (1/11, 1) … → AUPRO = 1 − (0.125/11)/0.3."""
    gt = np.array([[1, 1, 0, 0, 0],
                   [0, 0, 0, 0, 1],
                   [0, 0, 0, 0, 1]], bool)
    m = np.zeros((3, 5))
    m[0, 0], m[0, 1], m[1, 4], m[2, 4] = 0.9, 0.5, 0.8, 0.8
    normal = np.argwhere(~gt)
    m[tuple(normal[0])] = 0.7
    for k, (i, j) in enumerate(normal[1:]):
        m[i, j] = 0.01 * k
    want = {"exact": 1 - (0.25 / 11) / 0.3, "mvtec3d": 1 - (0.125 / 11) / 0.3,
            "cfm": 1 - (0.125 / 11) / 0.3}
    for variant, ref in want.items():
        assert abs(M.aupro(m[None], gt[None], variant) - ref) < 1e-12
        acc = M.MetricAccumulator(aupro=variant, pixel_bins=1024)
        acc.update([1.0], [1], m[None], gt[None])
        assert abs(acc.compute()["pixel_AUPRO"] - ref) <= acc.error_bounds()["pixel_AUPRO"] + 1e-12


@pytest.mark.filterwarnings("ignore:image AUROC is undefined:RuntimeWarning")
@pytest.mark.parametrize("bins", [None, 2, 1024])
def test_positional_fpr_with_tied_normal_scores(bins):
    """Ten normal pixels all at 0, one region of two pixels at 0 and 1.  The sampled
    estimators put every threshold at 0 with the positional FPR 1 − (p+1)/10 and count the
    region pixel at 1 only ("> t"): PRO 0.5 up to FPR 0.9 → AUPRO 0.5.  The exact curve is
    (0, 0) (0, .5) (1, 1) → AUPRO (0.5 + 0.65)/2 = 0.575.  Binned (a tied group) = exact."""
    gt = np.zeros((1, 3, 4), bool)
    gt[0, 0, :2] = True
    m = np.zeros((1, 3, 4))
    m[0, 0, 1] = 1.0
    for variant, ref in (("exact", 0.575), ("mvtec3d", 0.5), ("cfm", 0.5)):
        acc = M.MetricAccumulator(aupro=variant, pixel_bins=bins)
        acc.update([1.0], [1], m, gt)
        assert acc.compute()["pixel_AUPRO"] == pytest.approx(ref, abs=1e-12)
        assert acc.error_bounds()["pixel_AUPRO"] == 0.0


def test_trapezoid_limit_rules():
    x, y = np.array([0.0, 0.2, 0.4, 1.0]), np.array([0.0, 0.5, 1.0, 1.0])
    assert trapezoid(x, y, 0.2) == pytest.approx(0.05)                 # x_max on a sample
    assert trapezoid(x, y, 0.3) == pytest.approx(0.05 + 0.1 * (0.5 + 0.75) / 2)
    with pytest.raises(ValueError, match="outside"):
        trapezoid(np.array([0.5, 1.0]), np.array([0.0, 1.0]), 0.3)


@pytest.mark.parametrize("aupro", M.AUPRO_VARIANTS)
@pytest.mark.parametrize("bins", [64, 2 ** 12])
def test_binned_within_stated_error(aupro, bins):
    rng = np.random.default_rng(2)
    maps, masks = random_set(rng, n=12, h=20, w=20)
    scores = maps.reshape(len(maps), -1).mean(1)
    labels = masks.any((1, 2))
    exact = M.compute(scores, labels, maps, masks, aupro=aupro)
    acc = M.MetricAccumulator(aupro=aupro, pixel_bins=bins)
    for i in range(0, len(maps), 5):                              # streamed in batches
        acc.update(scores[i:i + 5], labels[i:i + 5], maps[i:i + 5], masks[i:i + 5])
    got, bound = acc.compute(), acc.error_bounds()
    for k in M.PIXEL_KEYS:
        assert abs(got[k] - exact[k]) <= bound[k] + 1e-9, (k, got[k], exact[k], bound[k])
    assert got["pixel_F1max"] <= exact["pixel_F1max"] + 1e-12    # a real threshold's F1
    if bins >= 2 ** 12:                                            # the bounds are not vacuous
        assert max(bound.values()) < 5e-3
    for k in M.IMAGE_KEYS:                                         # image metrics stay exact
        assert got[k] == exact[k]


@pytest.mark.filterwarnings("ignore:image AUROC is undefined:RuntimeWarning")
@pytest.mark.parametrize("kind", ["continuous", "constant", "clipped", "quantised", "fp16",
                                  "one_pixel"])
@pytest.mark.parametrize("aupro", M.AUPRO_VARIANTS)
def test_binned_default_reproduces_exact_on_ties(kind, aupro):
    """The default Evaluator path (binned, default bins) against the exact estimator, on
    maps with ties: within 1e-3 and within a bound that is itself ≤ 1e-3; tied groups
    (constant, 8-bit maps) exactly, with a zero bound."""
    rng = np.random.default_rng(13)
    maps, masks = smooth_set(rng, one_pixel=(kind == "one_pixel"))
    maps = with_ties(kind, maps)
    scores = maps.reshape(len(maps), -1).max(1)
    labels = masks.any((1, 2))
    exact = M.compute(scores, labels, maps, masks, aupro=aupro)
    acc = M.MetricAccumulator(aupro=aupro)
    assert acc.pixel_bins == M.DEFAULT_PIXEL_BINS
    for i in range(0, len(maps), 3):
        acc.update(scores[i:i + 3], labels[i:i + 3], maps[i:i + 3], masks[i:i + 3])
    got, bound = acc.compute(), acc.error_bounds()
    for k in M.PIXEL_KEYS:
        err = abs(got[k] - exact[k])
        assert err <= bound[k] + 1e-12, (k, err, bound[k])
        assert bound[k] <= 1e-3 and err <= 1e-3, (k, err, bound[k])
        if kind in ("constant", "quantised"):
            assert err < 1e-12 and bound[k] == 0.0, (k, err, bound[k])


def test_aupro_bound_counts_a_part_that_ends_exactly_at_the_limit():
    """10 normal pixels (FPR steps of 0.1) in 5 bins, limit 0.3: one histogram part's FPR
    segment ends exactly at the limit.  The histogram cannot tell how that part's defect
    pixels sit among its normal ones, and here the exact AUPRO differs from the binned one
    by 1/30: the error bound must count that part (a segment ending at the limit is inside
    the integral)."""
    from unimmad.metrics.pixel import ExactPixelStore, PixelHistogram
    neg = np.array([0.5009, 0.2008, 0.3, 0.0009, 0.00003, 0.0007, 0.1002, 0.8009, 0.6005,
                    0.9003])
    pos = np.array([0.5004, 0.6, 0.9001, 0.7007, 0.6006])
    hist, exact = PixelHistogram(5), ExactPixelStore()
    for store in (hist, exact):
        store.add(neg, pos, np.full(5, 0.2), 1)
    err = abs(hist.metrics()["pixel_AUPRO"] - exact.metrics()["pixel_AUPRO"])
    bound = hist.error_bounds()["pixel_AUPRO"]
    assert err == pytest.approx(1 / 30, abs=1e-12) and err <= bound + 1e-12


def test_histogram_adapts_range_and_keeps_memory_bounded():
    """Later batches far outside the first range (one constant, one wide, one shifted):
    counts survive the bin merges, memory stays fixed, tied groups stay exact and the
    binned values stay within their bounds of the exact ones."""
    rng = np.random.default_rng(3)
    maps, masks = random_set(rng, n=9, h=16, w=16)
    maps = maps.astype(np.float64)
    maps[0] = 0.5                                       # a constant first image
    maps[3:6] = maps[3:6] * 50 - 20                     # wider and negative
    maps[6:] += 1e3
    scores = maps.reshape(9, -1).max(1)
    labels = masks.any((1, 2))
    acc = M.MetricAccumulator(pixel_bins=4096)
    nbytes = None
    for i in range(9):
        acc.update(scores[i:i + 1], labels[i:i + 1], maps[i:i + 1], masks[i:i + 1])
        h = acc._store
        assert nbytes in (None, h.nbytes)
        nbytes = h.nbytes
    h = acc._store
    assert nbytes == 88 * 4096
    assert h.num_neg == (~masks).sum() and h.num_pos == masks.sum()
    assert h.width <= 2.05 * (maps.max() - maps.min()) / h.num_bins    # stated resolution
    assert h.w.sum() == pytest.approx(h.num_regions)
    for variant in M.AUPRO_VARIANTS:
        acc.aupro, acc.num_thresholds = variant, M.AUPRO_THRESHOLDS.get(variant)
        exact = M.compute(scores, labels, maps, masks, aupro=variant)
        got, bound = acc.compute(), acc.error_bounds()
        for k in M.PIXEL_KEYS:
            assert abs(got[k] - exact[k]) <= bound[k] + 1e-9, (variant, k)


def test_quantised_maps_stay_exact_through_range_growth():
    """8-bit maps whose range grows over the batches (bins merge twice): every bin still
    holds at most two distinct values, so the binned metrics equal the exact ones."""
    rng = np.random.default_rng(14)
    maps, masks = smooth_set(rng, n=8, h=24, w=24)
    maps = np.round(maps * 255) / 255
    maps[:2] = np.clip(maps[:2], 0.4, 0.6)               # the first batches span less
    maps[2:4] = np.clip(maps[2:4], 0.2, 0.8)
    scores = maps.reshape(8, -1).max(1)
    labels = masks.any((1, 2))
    for variant in M.AUPRO_VARIANTS:
        acc = M.MetricAccumulator(aupro=variant, pixel_bins=1024)
        for i in range(0, 8, 2):
            acc.update(scores[i:i + 2], labels[i:i + 2], maps[i:i + 2], masks[i:i + 2])
        exact = M.compute(scores, labels, maps, masks, aupro=variant)
        got, bound = acc.compute(), acc.error_bounds()
        for k in M.PIXEL_KEYS:
            assert abs(got[k] - exact[k]) < 1e-12 and bound[k] == 0.0, (variant, k)


@pytest.mark.filterwarnings("ignore:.* is undefined:RuntimeWarning")
def test_constant_and_degenerate_maps():
    maps = np.full((2, 6, 6), 0.5, np.float32)
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 2:4, 2:4] = True
    for bins in (None, 256):
        r = M.compute([0.5, 0.5], [1, 0], maps, masks, pixel_bins=bins)
        assert r["pixel_AUROC"] == pytest.approx(0.5)
        assert r["image_AUROC"] == pytest.approx(0.5)
    with pytest.warns(RuntimeWarning, match="pixel AUPRO"):
        r = M.compute([0.1, 0.2], [0, 0], maps, np.zeros_like(masks))
    assert math.isnan(r["pixel_AUPRO"]) and math.isnan(r["pixel_AUROC"])


def test_streaming_equals_one_shot_exact():
    rng = np.random.default_rng(4)
    maps, masks = random_set(rng, n=10)
    scores, labels = maps.reshape(10, -1).max(1), masks.any((1, 2))
    one = M.compute(scores, labels, maps, masks)
    acc = M.MetricAccumulator(pixel_bins=None)
    for i in range(10):
        acc.update(torch.tensor(scores[i:i + 1]), torch.tensor(labels[i:i + 1]),
                   torch.tensor(maps[i:i + 1])[:, None], torch.tensor(masks[i:i + 1]).float())
    assert acc.compute() == pytest.approx(one, abs=1e-12)
    assert acc.error_bounds() == {k: 0.0 for k in M.PIXEL_KEYS}
    assert acc.pixel_estimator == "exact" and acc.num_images == 10


def test_bad_inputs_raise_clear_errors():
    acc = M.MetricAccumulator()
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="together"):
        acc.update([0.1, 0.2], [0, 1], maps, None)
    with pytest.raises(ValueError, match="shape"):
        acc.update([0.1, 0.2], [0, 1], maps, np.zeros((2, 4, 5)))
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        acc.update([0.1, 0.2], [0, 1], bad, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        acc.update([np.nan, 0.2], [0, 1])
    with pytest.raises(ValueError, match="non-negative"):
        acc.update([0.1, 0.2], [0, 1], maps, -np.ones((2, 4, 4)))
    with pytest.raises(TypeError, match="real numbers"):
        acc.update(["0.1", "0.2"], [0, 1])
    with pytest.raises(TypeError, match="real numbers"):
        acc.update([0.1, 0.2], [0, 1], maps.astype(complex), np.zeros((2, 4, 4)))
    assert acc.num_images == 0                                    # nothing half-added
    acc.update([0.1, 0.2], [0, 1], maps, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="some updates"):
        acc.update([0.1, 0.2], [0, 1])
    with pytest.raises(ValueError, match="before any update"):
        M.MetricAccumulator().compute()
    empty = M.MetricAccumulator()
    empty.update([], [])
    with pytest.raises(ValueError, match="before any update"):
        empty.compute()
    with pytest.raises(ValueError, match="no images"):
        M.compute([], [])
    with pytest.raises(ValueError, match="3 pred_scores"):
        M.compute([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="expected \\[2, H, W\\]"):
        M.compute([0.1, 0.2], [0, 1], np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))


@pytest.mark.parametrize("labels", [[0, -1], [0, 2], [0.0, 0.5], [1.0, float("nan")], ["0", "1"]])
def test_labels_other_than_0_and_1_are_refused(labels):
    """A label of −1 (a common "unknown"/"normal" code elsewhere) is not counted as normal."""
    scores = [0.1, 0.9]
    with pytest.raises((ValueError, TypeError), match="labels"):
        M.compute(scores, labels)
    with pytest.raises((ValueError, TypeError), match="labels"):
        M.MetricAccumulator().update(scores, labels)
    with pytest.raises((ValueError, TypeError), match="labels"):
        M.Evaluator().update(scores, labels, ["a_x", "a_x"])
    with pytest.raises((ValueError, TypeError), match="labels"):
        M.auroc(scores, labels)


def test_valid_label_forms_agree():
    scores = np.array([0.1, 0.9, 0.4, 0.3])
    ref = M.compute(scores, [0, 1, 1, 0])
    for labels in ([False, True, True, False], [0.0, 1.0, 1.0, 0.0], np.array([0, 1, 1, 0], np.uint8),
                   torch.tensor([0, 1, 1, 0])):
        assert M.compute(scores, labels) == ref
    with pytest.raises(ValueError, match="must be 0 \\(normal\\) or 1 \\(anomalous\\); got -1 at index 2"):
        M.compute(scores, [0, 1, -1, 0])


@pytest.mark.parametrize("kwargs,match", [
    ({"aupro": "approx"}, "aupro must be one of"),
    ({"aupro": "MVTec3D"}, "aupro must be one of"),
    ({"aupro": "exact", "num_thresholds": 99}, "not to 'exact'"),
    ({"aupro": "mvtec3d", "num_thresholds": 1}, "num_thresholds"),
    ({"aupro": "mvtec3d", "num_thresholds": True}, "num_thresholds"),
    ({"aupro": "cfm", "num_thresholds": 99.0}, "num_thresholds"),
    ({"integration_limit": 0.0}, "integration_limit"),
    ({"integration_limit": 1.5}, "integration_limit"),
    ({"integration_limit": float("nan")}, "integration_limit"),
    ({"integration_limit": "0.3"}, "integration_limit"),
    ({"integration_limit": True}, "integration_limit"),
    ({"pixel_bins": 1}, "pixel_bins"),
    ({"pixel_bins": True}, "pixel_bins"),
    ({"pixel_bins": 100.0}, "pixel_bins"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.MetricAccumulator(**kwargs)
    with pytest.raises(ValueError, match=match):
        M.Evaluator(**kwargs)


def test_evaluator_refuses_bad_names_and_shapes():
    ev = M.Evaluator()
    with pytest.raises(TypeError, match="class_names must be a sequence"):
        ev.update([0.1, 0.2, 0.3], [0, 1, 0], "abc")           # a bare string is not a list
    with pytest.raises(TypeError, match="class_names\\[1\\] must be a str"):
        ev.update([0.1, 0.2], [0, 1], ["a_x", 3])
    with pytest.raises(ValueError, match="anomaly_maps of shape"):
        ev.update([0.1, 0.2], [0, 1], ["a_x", "a_x"], None, np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="chunk_size"):
        M.compute([0.1, 0.2], [0, 1], chunk_size=0)
    with pytest.raises(TypeError, match="image_score"):
        M.Evaluator(image_score=3)


# ----------------------------------------------------------------------------- report
def test_evaluator_report_and_writers(tmp_path):
    rng = np.random.default_rng(5)
    ev = M.Evaluator(aupro="mvtec3d", pixel_bins=1024, image_score="top-1% mean")
    truth = {}
    for ds, classes in (("mvtec", ("bottle", "cable")), ("visa", ("candle",))):
        for c in classes:
            maps, masks = random_set(rng, n=6)
            scores, labels = maps.reshape(6, -1).max(1), masks.any((1, 2))
            name = f"{c}_{ds}"
            # two batches, with the dataset taken from the class name
            ev.update(scores[:3], labels[:3], [name] * 3, None, maps[:3], masks[:3])
            ev.update(scores[3:], labels[3:], [name] * 3, [ds] * 3, maps[3:], masks[3:])
            truth[(ds, name)] = M.compute(scores, labels, maps, masks, aupro="mvtec3d",
                                          pixel_bins=1024)
    rep = ev.compute()
    assert [(r["dataset"], r["class"]) for r in rep.per_class] == sorted(truth)
    for r in rep.per_class:
        for k in M.METRIC_KEYS:
            assert r[k] == pytest.approx(truth[(r["dataset"], r["class"])][k])
    mv = [r for r in rep.per_dataset if r["dataset"] == "mvtec"][0]
    want = np.mean([truth[("mvtec", "bottle_mvtec")]["pixel_AUPRO"],
                    truth[("mvtec", "cable_mvtec")]["pixel_AUPRO"]])
    assert mv["pixel_AUPRO"] == pytest.approx(want)
    assert rep.mean_of_classes["image_AUROC"] == pytest.approx(
        np.mean([t["image_AUROC"] for t in truth.values()]))
    assert rep.mean_of_datasets["image_AUROC"] == pytest.approx(
        np.mean([mv["image_AUROC"], truth[("visa", "candle_visa")]["image_AUROC"]]))
    paths = rep.write(str(tmp_path))
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["class"] for r in rows] == ["bottle_mvtec", "cable_mvtec", "mean", "candle_visa",
                                          "mean", "mean_of_classes", "mean_of_datasets"]
    assert rows[0]["aupro_estimator"].startswith("mvtec3d (100 thresholds")
    assert rows[0]["image_score"] == "top-1% mean"
    assert rows[0]["pixel_estimator"] == "binned(1024)"
    data = json.load(open(paths["json"]))
    assert data["meta"]["aupro"] == "mvtec3d" and len(data["per_class"]) == 3
    assert data["meta"]["num_thresholds"] == 100 and "MVTec 3D-AD" in data["meta"]["aupro_source"]
    assert data["mean_of_datasets"]["pixel_AUPRO"] == pytest.approx(rep.mean_of_datasets["pixel_AUPRO"])
    md = open(paths["md"]).read()
    assert "AUPRO estimator: mvtec3d" in md and "image score: top-1% mean" in md
    assert "| visa | candle_visa |" in md and "binning-error bound" in md


def test_report_nan_classes_are_skipped_in_means():
    ev = M.Evaluator(pixel_bins=None)
    ev.update([0.1, 0.9], [0, 1], ["a_x", "a_x"])
    ev.update([0.1, 0.2], [0, 0], ["b_x", "b_x"])           # no anomaly: NaN metrics
    rep = ev.compute()
    assert rep.mean_of_classes["image_AUROC"] == 1.0
    js = json.loads(rep.to_json())
    assert js["per_class"][1]["image_AUROC"] is None         # NaN → null in JSON
    assert "–" in rep.to_markdown()


@pytest.mark.filterwarnings("ignore:image AUROC is undefined:RuntimeWarning")  # one image
def test_binned_auroc_bound_is_exactly_the_in_bin_ordering_range():
    """The pixel-AUROC bound is tight: two pixel sets with the same histogram — in every
    bin one defect and one normal pixel strictly inside the bin, ordered best-first in one
    set and worst-first in the other — have exact AUROCs exactly ``binned ± bound``."""
    bins, nb = 16, 6                                  # 6 occupied interior bins
    w = 1.0 / bins

    def pixel_set(best):
        vals, pos = [0.0, 1.0], [False, True]         # fix the range to [0, 1]
        for b in range(2, 2 + nb):
            c = (b + 0.5) * w
            lo, hi = c - 0.1 * w, c + 0.1 * w
            vals += [c - 0.4 * w, c + 0.4 * w, lo, hi]  # the bin's min and max: normal
            pos += [False, False, not best, best]        # the inner pair decides the order
        maps = np.array(vals, np.float64).reshape(1, 1, -1)
        return maps, np.array(pos).reshape(1, 1, -1)

    got = {}
    for best in (True, False):
        maps, masks = pixel_set(best)
        exact = M.compute(np.array([1.0]), np.array([True]), maps, masks)
        acc = M.MetricAccumulator(pixel_bins=bins)
        acc.update(np.array([1.0]), np.array([True]), maps, masks)
        got[best] = (exact, acc.compute(), acc.error_bounds())
    (e_best, b1, bound1), (e_worst, b2, bound2) = got[True], got[False]
    for k in M.PIXEL_KEYS:                                       # one histogram
        assert b1[k] == b2[k] and bound1[k] == bound2[k], k
    key = "pixel_AUROC"
    N, P = 1 + 3 * nb, 1 + nb
    assert e_best[key] - e_worst[key] == pytest.approx(nb / (N * P), rel=1e-12)
    assert bound1[key] == pytest.approx((e_best[key] - e_worst[key]) / 2, rel=1e-12)
    assert b1[key] == pytest.approx((e_best[key] + e_worst[key]) / 2, rel=1e-12)
    # AP: the binned value is the worst in-bin order's, its bound the distance to the best
    key = "pixel_AP"
    assert b1[key] == pytest.approx(e_worst[key], rel=1e-12)
    assert bound1[key] > 0
    assert bound1[key] == pytest.approx(e_best[key] - e_worst[key], rel=1e-12)
    # F1-max: binned at real thresholds (the bins' edges), bound up to the best order's
    key = "pixel_F1max"
    assert b1[key] <= e_worst[key] + 1e-12
    assert bound1[key] > 0
    assert bound1[key] == pytest.approx(e_best[key] - b1[key], rel=1e-12)


@pytest.mark.parametrize("lo, hi", [(0.25, 0.75), (-3.0, 40.0), (2.0, 2.0)])
def test_histogram_range_is_set_by_the_first_image(lo, hi):
    """The first image fixes the bins: origin at its lowest score, width its span / bins
    (a constant image: a span of 1e-6 of its value, at least 1e-6); every score lands in
    a bin."""
    from unimmad.metrics.pixel import PixelHistogram
    h = PixelHistogram(num_bins=8)
    h.add(np.array([lo, hi]), np.array([(lo + hi) / 2]), np.array([1.0]), 1)
    span = hi - lo if hi > lo else max(abs(lo), 1.0) * 1e-6
    assert h.lo == lo
    assert h.width == pytest.approx(span / 8, rel=1e-8)
    assert h.num_neg == 2 and h.num_pos == 1


def test_label_regions_counts_8_connected_regions_and_their_sizes():
    from unimmad.metrics.functional import label_regions
    m = np.zeros((6, 7), bool)
    m[0:2, 0:2] = True          # 4 pixels
    m[2, 2] = True              # touches the first diagonally: same region (8-connected)
    m[4:6, 5:7] = True          # 4 pixels, separate
    m[0, 6] = True              # 1 pixel
    lab, n, sizes = label_regions(m)
    assert n == 3 and sizes.shape == (3,)
    assert sorted(sizes.tolist()) == [1, 4, 5]
    assert lab.shape == m.shape and set(np.unique(lab)) == {0, 1, 2, 3}
    assert [(lab == i + 1).sum() for i in range(3)] == sizes.tolist()
    lab0, n0, sizes0 = label_regions(np.zeros((3, 3), bool))
    assert n0 == 0 and sizes0.shape == (0,) and not lab0.any()
