"""Exact anomaly-detection metrics on in-memory arrays (numpy, float64 arithmetic).

Definitions (the ones users know from scikit-learn and the MVTec evaluation code):

* **AUROC** — area under the ROC curve; tied scores count one half (Mann–Whitney), which is
  what ``sklearn.metrics.roc_auc_score`` computes.
* **AP** — ``Σ_k (R_k − R_{k−1}) · P_k`` over the distinct score thresholds taken in
  decreasing order (``sklearn.metrics.average_precision_score``; no interpolation).
* **F1-max** — ``max_t 2·TP(t) / (TP(t) + FP(t) + P)`` over every threshold ``t`` with the
  rule "anomalous ⇔ score ≥ t".
* **AUPRO** — area under the per-region-overlap curve for FPR ≤ ``integration_limit``
  (0.3), divided by the limit.  Regions are the 8-connected components of each ground-truth
  mask (``scipy.ndimage.label`` with a 3×3 structuring element); every region of the whole
  set weighs the same, whatever its size or image.  The false-positive rate counts the
  pixels outside every region.  Three estimators circulate under the name and give
  different numbers, so the variant is a parameter (:data:`AUPRO_VARIANTS`):

  - ``"exact"`` — MVTec AD evaluation code (``pro_curve_util.compute_pro``): the curve
    through *every* distinct threshold, "anomalous ⇔ score ≥ t", from (0, 0) to (1, 1);
    integrated with the trapezoidal rule up to the limit, the last segment interpolated
    linearly (``generic_util.trapezoid``).
  - ``"mvtec3d"`` — the official MVTec 3D-AD evaluation code (``evaluate_experiment.py``,
    ``--pro_num_thresholds`` default **100**), also the default of ``calculate_au_pro`` in
    3D-ADS and M3DM: ``T`` thresholds at the positions ``np.linspace(0, N−1, T,
    dtype=int)`` of the ascending normal-pixel scores; at position ``p`` the FPR is taken
    as ``1 − (p + 1)/N`` (a positional value: with tied scores it is not the true FPR) and
    a region pixel counts as detected when its score is *strictly greater* than the
    threshold; the point (1, 1) is appended and the same trapezoidal rule is applied.
  - ``"cfm"`` — the same estimator with **99** thresholds: the default of
    ``calculate_au_pro`` in CFM (crossmodal-feature-mapping), which the UniMMAD release
    (``myutils/cfm_metrics_utils.py``) and its PyADMetric_EvalToolkit use.  Use it to
    compare with the paper's and the release's AUPRO numbers.

  ``num_thresholds`` overrides the threshold count of ``"mvtec3d"``/``"cfm"``
  (:data:`AUPRO_THRESHOLDS` holds the defaults); it has no meaning for ``"exact"``.

The pixel functions work on a *split* representation — the normal-pixel scores sorted
ascending, the anomalous-pixel scores sorted ascending with the weight ``1/|region|`` of
each pixel, and the number of regions — which is what :class:`~unimmad.metrics.MetricAccumulator`
stores in exact mode.

Labels must be 0 (normal) or 1 (anomalous) — bool, integer or float — and anything else
(−1, 2, 0.5, NaN, strings) is refused with an error naming the first offending entry;
ground-truth masks are bool, non-negative integers (non-zero = defect, e.g. 255 or
VisA's small ids) or non-negative floats (> 0.5 = defect).
"""
from __future__ import annotations

import math
import numbers
import warnings
from types import MappingProxyType
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

__all__ = [
    "AUPRO_VARIANTS",
    "AUPRO_THRESHOLDS",
    "AUPRO_SOURCES",
    "resolve_aupro",
    "as_numpy",
    "check_labels",
    "check_scores",
    "check_masks",
    "auroc",
    "average_precision",
    "f1_max",
    "image_metrics",
    "split_scores",
    "label_regions",
    "trapezoid",
    "pro_curve_exact",
    "pro_curve_sampled",
    "aupro",
]

AUPRO_VARIANTS = ("exact", "mvtec3d", "cfm")

#: Threshold count of each threshold-sampled AUPRO estimator, as in its source code.
AUPRO_THRESHOLDS: Mapping[str, int] = MappingProxyType({"mvtec3d": 100, "cfm": 99})

#: The original code each AUPRO variant reproduces (written into every report).
AUPRO_SOURCES: Mapping[str, str] = MappingProxyType({
    "exact": "MVTec AD evaluation code, compute_pro (every threshold)",
    "mvtec3d": "official MVTec 3D-AD evaluation code (also 3D-ADS, M3DM calculate_au_pro)",
    "cfm": "CFM calculate_au_pro, used by the UniMMAD release",
})

# 8-connectivity, as in the MVTec AD / MVTec 3D-AD evaluation code.
_STRUCTURE = np.ones((3, 3), dtype=int)


def as_numpy(x, name: str = "array") -> np.ndarray:
    """A numpy view/copy of a tensor, array or sequence (CPU, detached)."""
    if x is None:
        raise TypeError(f"{name} must not be None")
    try:
        import torch
        if isinstance(x, torch.Tensor):
            if x.device.type == "meta":
                raise ValueError(f"{name} is on the meta device (a tensor without values)")
            x = x.detach()
            if x.dtype in (torch.bfloat16, torch.float16):
                x = x.float()
            return x.cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        pass
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be an array of numbers, got a {type(x).__name__}")
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:        # ragged nested lists
        raise TypeError(f"{name} must be a rectangular array of numbers ({e})") from None


def _real_dtype(a: np.ndarray, name: str, allow_bool: bool = False) -> None:
    ok = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    if allow_bool and a.dtype == bool:
        ok = True
    if not ok:
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")


def _as_vector(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` as a vector: ``[N]``, ``[N, 1]``, ``[1, N]`` (or a scalar) — not ``[N, K]``."""
    if sum(d != 1 for d in a.shape) > 1:
        raise ValueError(f"{name} must be a vector [N] (one value per image), got shape {a.shape}")
    return a.reshape(-1)


def check_scores(scores, name: str = "pred_scores") -> np.ndarray:
    """Scores as a float64 vector; refuses non-numeric, bool, complex, NaN and Inf values."""
    s = _as_vector(as_numpy(scores, name), name)
    _real_dtype(s, name)
    s = s.astype(np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        raise ValueError(f"{name} contain NaN or Inf values (first at index {int(np.argmax(bad))})")
    return s


def check_labels(labels, name: str = "labels") -> np.ndarray:
    """Image labels as a bool vector.

    Accepted: bool, or integers / floats that are exactly 0 (normal) or 1 (anomalous).
    Anything else (−1, 2, 0.5, NaN, strings) raises: a label of −1 is *not* read as
    normal."""
    y = _as_vector(as_numpy(labels, name), name)
    if y.dtype == bool:
        return y
    _real_dtype(y, name)
    ok = (y == 0) | (y == 1)
    if not ok.all():
        k = int(np.argmax(~ok))
        raise ValueError(f"{name} must be 0 (normal) or 1 (anomalous); got {y[k].item()!r} at index {k}")
    return y == 1


def check_masks(masks, name: str = "masks") -> np.ndarray:
    """Ground-truth masks as bool: bool as is, integers ``> 0`` (non-negative), floats
    ``> 0.5`` (finite, non-negative)."""
    y = as_numpy(masks, name)
    if y.dtype == bool:
        return y
    _real_dtype(y, name)
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise ValueError(f"{name} contain NaN or Inf")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} must be non-negative (0 = normal pixel), got {y.min()!r}")
    return y > (0.5 if np.issubdtype(y.dtype, np.floating) else 0)


def _scores_labels(scores, labels, what: str) -> Tuple[np.ndarray, np.ndarray]:
    s = check_scores(scores, f"{what} scores")
    y = check_labels(labels, f"{what} labels")
    if s.shape != y.shape:
        raise ValueError(f"{what}: {s.size} scores but {y.size} labels")
    if s.size == 0:
        raise ValueError(f"{what}: no scores given")
    return s, y


def split_scores(scores, labels) -> Tuple[np.ndarray, np.ndarray]:
    """``(negatives sorted ascending, positives sorted ascending)`` of a labelled score set."""
    s, y = _scores_labels(scores, labels, "split_scores")
    return np.sort(s[~y]), np.sort(s[y])


def _nan_warn(what: str, reason: str) -> float:
    warnings.warn(f"{what} is undefined ({reason}); returning NaN", RuntimeWarning, stacklevel=3)
    return float("nan")


# ----------------------------------------------------------------------------- split metrics
def auroc_split(neg: np.ndarray, pos: np.ndarray, what: str = "AUROC") -> float:
    """AUROC from sorted negative and positive scores (ties count ½)."""
    n, p = neg.size, pos.size
    if n == 0 or p == 0:
        return _nan_warn(what, "needs both normal and anomalous samples")
    lt = np.searchsorted(neg, pos, side="left").astype(np.float64)
    le = np.searchsorted(neg, pos, side="right").astype(np.float64)
    return float((lt.sum() + 0.5 * (le - lt).sum()) / (float(n) * float(p)))


def _pr_points(neg: np.ndarray, pos: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """TP and FP at each distinct positive score, thresholds in decreasing order."""
    vals, counts = np.unique(pos, return_counts=True)      # ascending
    vals, counts = vals[::-1], counts[::-1]
    tp = np.cumsum(counts).astype(np.float64)
    fp = (neg.size - np.searchsorted(neg, vals, side="left")).astype(np.float64)
    return tp, fp


def ap_split(neg: np.ndarray, pos: np.ndarray, what: str = "AP") -> float:
    """Average precision (scikit-learn's definition) from sorted negatives/positives."""
    if pos.size == 0:
        return _nan_warn(what, "needs anomalous samples")
    tp, fp = _pr_points(neg, pos)
    recall_step = np.diff(np.concatenate(([0.0], tp))) / pos.size
    return float(np.sum(recall_step * tp / (tp + fp)))


def f1max_split(neg: np.ndarray, pos: np.ndarray, what: str = "F1-max") -> float:
    """Maximum F1 over all thresholds from sorted negatives/positives."""
    if pos.size == 0:
        return _nan_warn(what, "needs anomalous samples")
    tp, fp = _pr_points(neg, pos)
    return float(np.max(2.0 * tp / (tp + fp + pos.size)))


# ----------------------------------------------------------------------------- public image API
def auroc(scores, labels) -> float:
    """Exact AUROC (equals ``sklearn.metrics.roc_auc_score``)."""
    return auroc_split(*split_scores(scores, labels))


def average_precision(scores, labels) -> float:
    """Exact average precision (equals ``sklearn.metrics.average_precision_score``)."""
    return ap_split(*split_scores(scores, labels))


def f1_max(scores, labels) -> float:
    """Exact maximum F1 over all thresholds ("anomalous ⇔ score ≥ t")."""
    return f1max_split(*split_scores(scores, labels))


def image_metrics(scores, labels) -> Dict[str, float]:
    """``{"AUROC", "AP", "F1max"}`` of one labelled score set."""
    neg, pos = split_scores(scores, labels)
    return {"AUROC": auroc_split(neg, pos), "AP": ap_split(neg, pos),
            "F1max": f1max_split(neg, pos)}


# ----------------------------------------------------------------------------- regions
def label_regions(mask: np.ndarray) -> Tuple[np.ndarray, int, np.ndarray]:
    """8-connected components of a 2-D boolean mask.

    Returns ``(labels [H, W] int, num_regions, sizes [num_regions])``; label 0 is background.
    """
    from scipy import ndimage

    if mask.ndim != 2:
        raise ValueError(f"a ground-truth mask must be 2-D, got shape {mask.shape}")
    lab, n = ndimage.label(mask, structure=_STRUCTURE)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:] if n else np.zeros(0, np.int64)
    return lab, int(n), sizes


def region_weights(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """``(1/|region| for every mask pixel in ``mask[mask]`` order, num_regions)``."""
    lab, n, sizes = label_regions(mask)
    if n == 0:
        return np.zeros(0, np.float64), 0
    return 1.0 / sizes[lab[mask] - 1].astype(np.float64), n


# ----------------------------------------------------------------------------- integration
def trapezoid(x: np.ndarray, y: np.ndarray, x_max: Optional[float] = None) -> float:
    """Trapezoidal area under ``(x, y)`` (``x`` ascending, repeats allowed) up to ``x_max``.

    When ``x_max`` falls strictly between two samples, the last partial segment is closed
    with ``y`` interpolated linearly at ``x_max`` (the MVTec evaluation rule).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("trapezoid: x and y must be 1-D arrays of equal length")
    if x_max is None:
        return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))
    correction = 0.0
    if not np.any(x == x_max):
        ins = int(np.searchsorted(x, x_max, side="right"))
        if not 0 < ins < x.size:
            raise ValueError(
                f"trapezoid: x_max={x_max} lies outside the curve's range [{x[0]}, {x[-1]}]")
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        correction = 0.5 * (y_at + y0) * (x_max - x0)
    keep = x <= x_max
    xk, yk = x[keep], y[keep]
    return float(np.sum(0.5 * (yk[1:] + yk[:-1]) * np.diff(xk)) + correction)


# ----------------------------------------------------------------------------- PRO curves
def _weights_above(pos: np.ndarray, pos_w: np.ndarray, thr: np.ndarray, strict: bool) -> np.ndarray:
    """Σ of the weights of positive pixels with score ≥ thr (or > thr when ``strict``)."""
    cum = np.concatenate(([0.0], np.cumsum(pos_w, dtype=np.float64)))
    idx = np.searchsorted(pos, thr, side="right" if strict else "left")
    return cum[-1] - cum[idx]


def pro_curve_exact(neg: np.ndarray, pos: np.ndarray, pos_w: np.ndarray, num_regions: int,
                    fpr_limit: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact PRO curve ``(fpr, pro)`` in increasing FPR order, from (0, 0) to (1, 1).

    ``neg``/``pos`` sorted ascending, ``pos_w`` aligned with ``pos``.  With ``fpr_limit``,
    points past the first one whose FPR exceeds the limit are dropped (they cannot change
    the area up to the limit), which bounds the work to the top ``fpr_limit`` of the
    normal scores.
    """
    n = neg.size
    if fpr_limit is not None and n:
        k = min(n, int(math.ceil(fpr_limit * n)) + 2)
        lo = neg[n - k]
        cand = np.union1d(neg[n - k:], pos[np.searchsorted(pos, lo, side="left"):])
    else:
        cand = np.union1d(neg, pos)
    thr = cand[::-1]                                             # decreasing
    fpr = (n - np.searchsorted(neg, thr, side="left")) / float(n)
    pro = _weights_above(pos, pos_w, thr, strict=False) / float(num_regions)
    fpr = np.concatenate(([0.0], fpr, [1.0]))
    pro = np.concatenate(([0.0], np.minimum(pro, 1.0), [1.0]))
    return fpr, pro


def threshold_positions(num_normal: int, num_thresholds: int) -> np.ndarray:
    """Positions ``np.linspace(0, N−1, T, dtype=int)`` of the sampled thresholds in the
    ascending normal scores (the MVTec 3D-AD / CFM rule, float rounding included)."""
    return np.linspace(0, num_normal - 1, num=num_thresholds, dtype=int)


def pro_curve_sampled(neg: np.ndarray, pos: np.ndarray, pos_w: np.ndarray, num_regions: int,
                      num_thresholds: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``num_thresholds``-point PRO curve of MVTec 3D-AD / CFM ``(fpr, pro)``,
    increasing FPR, ending at (1, 1) (see the module docstring)."""
    n = neg.size
    positions = threshold_positions(n, num_thresholds)
    thr = neg[positions]
    fpr = 1.0 - (positions + 1) / float(n)
    pro = _weights_above(pos, pos_w, thr, strict=True) / float(num_regions)
    fpr = np.concatenate((fpr[::-1], [1.0]))
    pro = np.concatenate((np.minimum(pro, 1.0)[::-1], [1.0]))
    return fpr, pro


def aupro_split(neg: np.ndarray, pos: np.ndarray, pos_w: np.ndarray, num_regions: int,
                variant: str = "exact", integration_limit: float = 0.3,
                num_thresholds: Optional[int] = None) -> float:
    """AUPRO (normalised by the limit) from the split representation."""
    variant, integration_limit, num_thresholds = resolve_aupro(
        variant, integration_limit, num_thresholds)
    if num_regions == 0 or neg.size == 0:
        return _nan_warn("pixel AUPRO", "needs at least one defect region and one normal pixel")
    if variant == "exact":
        fpr, pro = pro_curve_exact(neg, pos, pos_w, num_regions, fpr_limit=integration_limit)
    else:
        fpr, pro = pro_curve_sampled(neg, pos, pos_w, num_regions, num_thresholds)
    return trapezoid(fpr, pro, integration_limit) / integration_limit


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def resolve_aupro(variant: str, integration_limit=0.3,
                  num_thresholds: Optional[int] = None) -> Tuple[str, float, Optional[int]]:
    """Check the AUPRO settings; ``(variant, limit, threshold count or None for "exact")``.

    ``num_thresholds=None`` takes the variant's own count (:data:`AUPRO_THRESHOLDS`)."""
    if not isinstance(variant, str) or variant not in AUPRO_VARIANTS:
        raise ValueError(f"aupro must be one of {AUPRO_VARIANTS}, got {variant!r}")
    if (not isinstance(integration_limit, numbers.Real)
            or isinstance(integration_limit, (bool, np.bool_))
            or not math.isfinite(float(integration_limit))
            or not 0.0 < float(integration_limit) <= 1.0):
        raise ValueError(f"integration_limit must be a number in (0, 1], got {integration_limit!r}")
    if num_thresholds is not None:
        if variant == "exact":
            raise ValueError("num_thresholds applies to the threshold-sampled AUPRO estimators "
                             f"{tuple(AUPRO_THRESHOLDS)}, not to 'exact' (every threshold)")
        if not _is_int(num_thresholds) or num_thresholds < 2:
            raise ValueError(f"num_thresholds must be an int >= 2, got {num_thresholds!r}")
        num_thresholds = int(num_thresholds)
    elif variant != "exact":
        num_thresholds = AUPRO_THRESHOLDS[variant]
    return variant, float(integration_limit), num_thresholds


def aupro(anomaly_maps, masks, variant: str = "exact", integration_limit: float = 0.3,
          num_thresholds: Optional[int] = None) -> float:
    """Exact AUPRO of a set of maps ``[N, H, W]`` and ground-truth masks ``[N, H, W]``
    with the estimator ``variant`` (module docstring)."""
    variant, integration_limit, num_thresholds = resolve_aupro(
        variant, integration_limit, num_thresholds)
    maps = as_numpy(anomaly_maps, "anomaly_maps")
    _real_dtype(maps, "anomaly_maps")
    gts = check_masks(masks, "masks")
    if maps.shape != gts.shape or maps.ndim != 3:
        raise ValueError(
            f"anomaly_maps {maps.shape} and masks {gts.shape} must be equal [N, H, W] shapes")
    if not np.isfinite(maps).all():
        raise ValueError("anomaly_maps contain NaN or Inf values")
    negs, poss, ws, regions = [], [], [], 0
    for m, g in zip(maps, gts):
        w, n = region_weights(g)
        negs.append(m[~g])
        poss.append(m[g])
        ws.append(w)
        regions += n
    pos = np.concatenate(poss)
    order = np.argsort(pos, kind="stable")
    return aupro_split(np.sort(np.concatenate(negs)), pos[order], np.concatenate(ws)[order],
                       regions, variant, integration_limit, num_thresholds)
