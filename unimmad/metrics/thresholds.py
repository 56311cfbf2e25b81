"""Decision thresholds and normalised scores, at image and pixel level.

A threshold turns a score into a decision: **anomalous ⇔ score ≥ threshold** (images:
the image score; pixels: the anomaly-map value, giving the predicted mask).  The rules,
applied to one group of evaluation data (one class, or all of it):

* **F1-optimal** (the evaluation data holds anomalies — anomalous images, or defect
  pixels): the threshold that maximises F1 on the data, placed halfway between the lowest
  score it flags and the highest score it does not (so that it does not sit on a data
  point); among equal F1 values, the highest threshold (fewer false alarms).
* **normal-only** (no anomalies in the data, or the F1-optimal threshold would flag every
  normal image / pixel — the scores do not separate the group): ``max + σ`` of the normal
  scores (σ their standard deviation; when all are equal, 1 % of ``|max|``).  No normal
  item of the evaluation data is flagged, and a new normal item is flagged only if it
  exceeds every normal score seen by one standard deviation.  Why: without anomalies
  there is no recall to trade false alarms against, so the rule aims at no false alarm,
  with a margin because the largest of ``n`` normal scores underestimates the largest of
  the next ones.  (The F1 rule with no anomaly in the data degenerates — F1 is 0 at every
  threshold, and the common implementation returns the lowest score, which flags every
  image.)

**Normalisation** maps a raw score to ``[0, 1]`` with the threshold at exactly 0.5:
piecewise linear through ``(low, 0)``, ``(threshold, 0.5)``, ``(high, 1)`` and clipped,
where ``low`` / ``high`` are the lowest / highest score of the evaluation data (for the
normal-only rule, where nothing was seen above the threshold, ``high = threshold +
(threshold − low)``).  Monotone, so ``normalised ≥ 0.5 ⇔ raw ≥ threshold``.  The same
record gives the anomaly-map colour scale of a class (one scale for all of its pictures).

A record (JSON-ready)::

    {"threshold": t, "low": lo, "high": hi, "rule": "f1_optimal" | "normal_only",
     "f1": F1 at t on the data (F1-optimal rule) or null,
     "num_normal": n, "num_anomalous": p, "note": why a rule was chosen (optional)}

(``num_*`` count images at image level, pixels at pixel level.)
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

__all__ = ["RULES", "image_threshold", "threshold_record", "normal_only_threshold",
           "normalize", "is_anomalous", "check_record", "F1_OPTIMAL", "NORMAL_ONLY"]

F1_OPTIMAL = "f1_optimal"
NORMAL_ONLY = "normal_only"
RULES = {
    F1_OPTIMAL: "maximises F1 on the evaluation data (halfway between the lowest flagged "
                "and the highest unflagged score; ties: the highest threshold)",
    NORMAL_ONLY: "max + std of the normal scores (no anomaly in the evaluation data, or the "
                 "F1-optimal threshold flagged every normal item): no normal item of the "
                 "evaluation data is flagged",
}


def normal_only_threshold(max_normal: float, std_normal: float) -> float:
    """``max + σ`` (σ = 1 % of ``|max|`` — or 1e-12 — when all normal scores are equal)."""
    margin = float(std_normal) if std_normal > 0 else max(abs(float(max_normal)) * 0.01, 1e-12)
    return float(max_normal) + margin


def threshold_record(*, f1_threshold: Optional[float], f1: Optional[float],
                     min_normal: Optional[float], max_normal: Optional[float],
                     std_normal: float, low: float, high: float, num_normal: int,
                     num_anomalous: int) -> Dict:
    """The record of one group from its statistics (see the module docstring).

    ``f1_threshold``/``f1``: the F1-optimal threshold and its F1 (``None`` when the data
    holds no anomaly or the optimum flags everything); ``min/max/std_normal``: of the
    normal scores (``None`` without normal items); ``low``/``high``: of all scores."""
    note = None
    if num_normal == 0:
        raise ValueError("a threshold needs normal items in the evaluation data")
    if f1_threshold is not None and f1_threshold <= min_normal:
        note = "the F1-optimal threshold flagged every normal item"
        f1_threshold = None
    if f1_threshold is not None:
        rule, t, f1v = F1_OPTIMAL, float(f1_threshold), float(f1)
    else:
        rule, t, f1v = NORMAL_ONLY, normal_only_threshold(max_normal, std_normal), None
        if note is None:
            note = "no anomaly in the evaluation data"
    lo, hi = float(low), float(high)
    if not lo < t:
        lo = t - max(hi - t, abs(t) * 0.01, 1e-12)
    if not hi > t:
        hi = t + (t - lo)
    rec = {"threshold": t, "low": lo, "high": hi, "rule": rule, "f1": f1v,
           "num_normal": int(num_normal), "num_anomalous": int(num_anomalous)}
    if note:
        rec["note"] = note
    return rec


def _f1_from_sorted(neg: np.ndarray, pos: np.ndarray):
    """F1-optimal ``(threshold, f1)`` for exact sorted normal / anomalous scores, or
    ``(None, None)`` without anomalies."""
    if pos.size == 0:
        return None, None
    vals = np.unique(pos)[::-1]                                   # candidate cuts, descending
    tp = pos.size - np.searchsorted(pos, vals, side="left")      # flagged: score >= v
    fp = neg.size - np.searchsorted(neg, vals, side="left")
    f1 = 2.0 * tp / (tp + fp + pos.size)
    b = int(np.argmax(f1))                                        # first max: highest cut
    v = float(vals[b])
    below = np.concatenate((neg[neg < v], pos[pos < v]))
    if below.size == 0:                    # flags everything: a threshold below every score
        return v - max(abs(v) * 0.01, 1e-12), float(f1[b])
    u = float(below.max())
    return _between(u, v), float(f1[b])


def _between(u: float, v: float) -> float:
    """A threshold ``t`` with ``u < t ≤ v`` (halfway when representable)."""
    t = u + (v - u) / 2.0
    if not u < t <= v:
        t = float(np.nextafter(u, np.inf))
    return t


def image_threshold(scores, labels) -> Dict:
    """The image-level record of one group (``scores [N]``, ``labels [N]`` 0/1, at least
    one normal image)."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.size != y.size:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf values")
    neg, pos = np.sort(s[~y]), np.sort(s[y])
    if neg.size == 0:
        raise ValueError("a threshold needs normal images in the evaluation data")
    t, f1 = _f1_from_sorted(neg, pos)
    return threshold_record(f1_threshold=t, f1=f1, min_normal=float(neg[0]),
                            max_normal=float(neg[-1]), std_normal=float(neg.std()),
                            low=float(s.min()), high=float(s.max()), num_normal=neg.size,
                            num_anomalous=pos.size)


def check_record(rec, where: str = "threshold record") -> Dict:
    """``rec`` if it is a usable record (finite ``low < threshold < high``), else a
    ``ValueError`` naming ``where``."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(rec).__name__}")
    vals = []
    for k in ("low", "threshold", "high"):
        v = rec.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{where}: '{k}' must be a finite number, got {v!r}")
        vals.append(float(v))
    if not vals[0] < vals[1] < vals[2]:
        raise ValueError(f"{where}: needs low < threshold < high, got {vals}")
    return rec


def normalize(x, rec: Dict):
    """Raw scores (a number or an array) → ``[0, 1]`` with ``rec['threshold']`` at 0.5
    (piecewise linear through low → 0, threshold → 0.5, high → 1, clipped)."""
    lo, t, hi = float(rec["low"]), float(rec["threshold"]), float(rec["high"])
    a = np.asarray(x, np.float64)
    out = np.where(a < t, 0.5 * (a - lo) / (t - lo), 0.5 + 0.5 * (a - t) / (hi - t))
    out = np.clip(out, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def is_anomalous(x, rec: Dict):
    """``x ≥ threshold`` (a bool, or a bool array)."""
    a = np.asarray(x, np.float64) >= float(rec["threshold"])
    return bool(a) if a.ndim == 0 else a
