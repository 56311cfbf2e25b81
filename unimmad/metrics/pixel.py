"""Pixel-score stores: exact (every score kept once) and binned (bounded memory).

Both stores receive, per image, the scores of the normal pixels, the scores of the
defect pixels with their region weights ``1/|region|`` and the number of defect regions,
and compute pixel AUROC, AP, F1-max and AUPRO (either estimator, see
:mod:`unimmad.metrics.functional`).

**Binned store** (:class:`PixelHistogram`).  Scores fall into ``num_bins`` equal-width bins
on an adaptive range: the first update sets the range to its own ``[min, max]``; a later
score outside the range shifts the origin by whole bins and, when the range must grow,
merges adjacent bins by powers of two (the width doubles), so no count is ever split or
re-distributed and memory stays at ``3 × num_bins`` numbers (``24·num_bins`` bytes:
1.5 MiB for the default ``2**16``), whatever the number of images.  The bin width ends at
most about ``2 × (max − min) / num_bins`` of all scores seen.

Every binned metric is computed from the counts at the bin edges, which are *real*
thresholds ("anomalous ⇔ bin ≥ b" is "score ≥ the smallest score of bin b"), so the
curves pass through points of the exact curves.  Only the order of the pixels *inside*
one bin is unknown, which bounds the binning error by quantities computed from the same
histogram (:meth:`PixelHistogram.error_bounds`, reported by the accumulators):

* AUROC:  ``|err| ≤ ½ Σ_b (n_b/N)(p_b/P)`` (``n_b``/``p_b`` normal/defect pixels in bin b).
* AP:     ``|err| ≤ Σ_b (p_b/P)(hi_b − lo_b)`` with ``hi_b = (A+p_b)/(A+B+p_b)`` and
  ``lo_b = (A+1)/(A+B+1+n_b)`` (``A``, ``B``: defect/normal pixels in higher bins) — the
  range of precisions any pixel order inside bin b could produce.
* F1-max: the binned value is the F1 of a real threshold, so ``0 ≤ exact − binned ≤
  max_b 2(A+p_b)/(A+p_b+B+P) − binned``.
* AUPRO "exact": ``|err| ≤ (½ Σ_full ΔFPR_b ΔPRO_b + (limit − FPR_lo)·ΔPRO_cut) / limit``
  over the bins below the FPR limit (the exact curve is monotone inside each bin).
* AUPRO "mvtec3d": its thresholds are normal-score quantiles, whose FPRs are exact; the
  PRO at a quantile inside bin b is interpolated by the fraction of the bin's normal
  pixels below it and is off by at most ``w_b / R`` (the bin's share of region weight);
  the bound is the trapezoid of these per-threshold bounds, divided by the limit.

For smooth score distributions the bounds shrink like ``1/num_bins``; ``tests/test_metrics``
checks binned against exact values on random data.

**Exact store** (:class:`ExactPixelStore`) keeps every score once (in the dtype given)
plus the defect pixels' weights; :meth:`~ExactPixelStore.metrics` needs one transient sorted
copy.  Use it for small sets, or where exact values matter more than memory.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np

from .functional import (_nan_warn, ap_split, auroc_split, aupro_split, check_aupro_args,
                         f1max_split, trapezoid)

__all__ = ["ExactPixelStore", "PixelHistogram", "PIXEL_KEYS"]

PIXEL_KEYS = ("pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO")


def _check_finite(*arrays: np.ndarray) -> None:
    for a in arrays:
        if a.size and not np.isfinite(a).all():
            raise ValueError("anomaly maps contain NaN or Inf values")


class ExactPixelStore:
    """Keeps every pixel score (exact metrics; memory grows with the number of pixels)."""

    estimator = "exact"

    def __init__(self) -> None:
        self._neg: List[np.ndarray] = []
        self._pos: List[np.ndarray] = []
        self._w: List[np.ndarray] = []
        self.num_regions = 0
        self.num_neg = 0
        self.num_pos = 0

    def add(self, neg: np.ndarray, pos: np.ndarray, pos_w: np.ndarray, num_regions: int) -> None:
        """Add one image's normal scores, defect scores, defect weights and region count."""
        _check_finite(neg, pos)
        self._neg.append(np.asarray(neg).reshape(-1))
        self._pos.append(np.asarray(pos).reshape(-1))
        self._w.append(np.asarray(pos_w, np.float64).reshape(-1))
        self.num_regions += int(num_regions)
        self.num_neg += neg.size
        self.num_pos += pos.size

    def metrics(self, aupro: str = "exact", integration_limit: float = 0.3,
                num_thresholds: int = 99) -> Dict[str, float]:
        check_aupro_args(aupro, integration_limit, num_thresholds)
        neg = np.sort(np.concatenate(self._neg)) if self._neg else np.zeros(0)
        pos = np.concatenate(self._pos) if self._pos else np.zeros(0)
        w = np.concatenate(self._w) if self._w else np.zeros(0)
        order = np.argsort(pos, kind="stable")
        pos, w = pos[order], w[order]
        return {
            "pixel_AUROC": auroc_split(neg, pos, "pixel AUROC"),
            "pixel_AP": ap_split(neg, pos, "pixel AP"),
            "pixel_F1max": f1max_split(neg, pos, "pixel F1-max"),
            "pixel_AUPRO": aupro_split(neg, pos, w, self.num_regions, aupro,
                                       integration_limit, num_thresholds),
        }

    def error_bounds(self, aupro: str = "exact", integration_limit: float = 0.3,
                     num_thresholds: int = 99) -> Dict[str, float]:
        """Exact store: every bound is 0."""
        return {k: 0.0 for k in PIXEL_KEYS}


class PixelHistogram:
    """Binned pixel-score store with an adaptive range (see the module docstring).

    Args:
        num_bins: number of equal-width bins (memory ``24·num_bins`` bytes).
    """

    estimator = "binned"

    def __init__(self, num_bins: int = 2 ** 16) -> None:
        if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 2:
            raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
        self.num_bins = num_bins
        self.lo: Optional[float] = None
        self.width: Optional[float] = None
        self.neg = np.zeros(num_bins, np.int64)
        self.pos = np.zeros(num_bins, np.int64)
        self.w = np.zeros(num_bins, np.float64)
        self.num_regions = 0

    # ------------------------------------------------------------------ range management
    @property
    def num_neg(self) -> int:
        return int(self.neg.sum())

    @property
    def num_pos(self) -> int:
        return int(self.pos.sum())

    def _index(self, x: np.ndarray) -> np.ndarray:
        return np.floor((np.asarray(x, np.float64) - self.lo) / self.width)

    def _fits(self, vmin: float, vmax: float) -> bool:
        i = self._index(np.array([vmin, vmax]))
        return bool(i[0] >= 0 and i[1] < self.num_bins)

    def _ensure_range(self, vmin: float, vmax: float) -> None:
        n = self.num_bins
        if self.lo is None:
            span = vmax - vmin
            if span <= 0:
                span = max(abs(vmin), 1.0) * 1e-6
            self.lo = float(vmin)
            self.width = float(span) / n * (1.0 + 1e-9)
            while not self._fits(vmin, vmax):          # guard against rounding
                self.width *= 1.0 + 1e-6
            return
        if self._fits(vmin, vmax):
            return
        # Shift the origin by j new bins, merging f = 1 (none), 2, 4, ... old bins into one,
        # so that the occupied old bins and [vmin, vmax] fit; the data end up centred.
        occ = np.flatnonzero((self.neg > 0) | (self.pos > 0))
        f = 1 / 2
        while True:
            f = int(f * 2)
            new_w = self.width * f
            lower = int(math.ceil((self.lo - vmin) / new_w))            # new_lo <= vmin
            upper = int(math.ceil(n - (vmax - self.lo) / new_w)) - 1    # vmax < new_hi
            if occ.size:
                lower = max(lower, -(int(occ[0]) // f))
                upper = min(upper, n - 1 - int(occ[-1]) // f)
            if lower > upper:
                continue
            j = (lower + upper) // 2
            new_lo = self.lo - j * new_w
            idx = np.floor((np.array([vmin, vmax]) - new_lo) / new_w)
            if idx[0] >= 0 and idx[1] < n:
                break
        mapping = np.clip(j + np.arange(n) // f, 0, n - 1)     # clipped bins are empty
        self.neg = np.bincount(mapping, weights=self.neg, minlength=n).astype(np.int64)
        self.pos = np.bincount(mapping, weights=self.pos, minlength=n).astype(np.int64)
        self.w = np.bincount(mapping, weights=self.w, minlength=n)
        self.lo, self.width = new_lo, new_w

    def add(self, neg: np.ndarray, pos: np.ndarray, pos_w: np.ndarray, num_regions: int) -> None:
        """Add one image's normal scores, defect scores, defect weights and region count."""
        neg = np.asarray(neg).reshape(-1)
        pos = np.asarray(pos).reshape(-1)
        _check_finite(neg, pos)
        both = [a for a in (neg, pos) if a.size]
        if both:
            vmin = float(min(a.min() for a in both))
            vmax = float(max(a.max() for a in both))
            self._ensure_range(vmin, vmax)
        n = self.num_bins
        if neg.size:
            i = np.clip(self._index(neg).astype(np.int64), 0, n - 1)
            self.neg += np.bincount(i, minlength=n)
        if pos.size:
            i = np.clip(self._index(pos).astype(np.int64), 0, n - 1)
            self.pos += np.bincount(i, minlength=n)
            self.w += np.bincount(i, weights=np.asarray(pos_w, np.float64), minlength=n)
        self.num_regions += int(num_regions)

    # ------------------------------------------------------------------ metrics
    def _descending(self):
        """Occupied bins, highest scores first: per-bin and cumulative counts."""
        keep = (self.neg > 0) | (self.pos > 0)
        neg = self.neg[keep][::-1].astype(np.float64)
        pos = self.pos[keep][::-1].astype(np.float64)
        w = self.w[keep][::-1]
        return neg, pos, w, np.cumsum(neg), np.cumsum(pos), np.cumsum(w)

    def _compute(self, aupro: str, limit: float, num_thresholds: int):
        check_aupro_args(aupro, limit, num_thresholds)
        N, P, R = float(self.num_neg), float(self.num_pos), self.num_regions
        vals: Dict[str, float] = {}
        errs: Dict[str, float] = {}
        neg, pos, w, FP, TP, W = self._descending()
        # AUROC
        if N == 0 or P == 0:
            vals["pixel_AUROC"] = _nan_warn("pixel AUROC", "needs normal and defect pixels")
            errs["pixel_AUROC"] = float("nan")
        else:
            x = np.concatenate(([0.0], FP / N))
            y = np.concatenate(([0.0], TP / P))
            vals["pixel_AUROC"] = trapezoid(x, y)
            errs["pixel_AUROC"] = float(0.5 * np.sum((neg / N) * (pos / P)))
        # AP and F1-max
        if P == 0:
            vals["pixel_AP"] = _nan_warn("pixel AP", "needs defect pixels")
            vals["pixel_F1max"] = _nan_warn("pixel F1-max", "needs defect pixels")
            errs["pixel_AP"] = errs["pixel_F1max"] = float("nan")
        else:
            has = pos > 0
            A = (TP - pos)[has]
            B = (FP - neg)[has]
            p, nb = pos[has], neg[has]
            prec = TP[has] / (TP[has] + FP[has])
            vals["pixel_AP"] = float(np.sum(p / P * prec))
            hi = (A + p) / (A + B + p)
            lo = (A + 1.0) / (A + B + 1.0 + nb)
            errs["pixel_AP"] = float(np.sum(p / P * (hi - lo)))
            f1 = 2.0 * TP / (TP + FP + P)
            vals["pixel_F1max"] = float(f1.max())
            upper = 2.0 * (A + p) / (A + p + B + P)
            errs["pixel_F1max"] = float(max(upper.max() - vals["pixel_F1max"], 0.0))
        # AUPRO
        if R == 0 or N == 0:
            vals["pixel_AUPRO"] = _nan_warn("pixel AUPRO", "needs a defect region and normal pixels")
            errs["pixel_AUPRO"] = float("nan")
        elif aupro == "exact":
            fpr = np.concatenate(([0.0], FP / N, [1.0]))
            pro = np.concatenate(([0.0], np.minimum(W / R, 1.0), [1.0]))
            vals["pixel_AUPRO"] = trapezoid(fpr, pro, limit) / limit
            f0, f1_, dp = fpr[:-1], fpr[1:], np.diff(pro)
            full = f1_ <= limit
            cut = (f0 < limit) & (f1_ > limit)
            bound = 0.5 * np.sum((f1_ - f0)[full] * dp[full]) + np.sum(((limit - f0) * dp)[cut])
            errs["pixel_AUPRO"] = float(bound / limit)
        else:
            vals["pixel_AUPRO"], errs["pixel_AUPRO"] = self._aupro_mvtec3d(limit, num_thresholds)
        return vals, errs

    def _aupro_mvtec3d(self, limit: float, num_thresholds: int):
        n_total = self.num_neg
        R = float(self.num_regions)
        positions = np.linspace(0, n_total - 1, num=num_thresholds, dtype=int)
        cneg = np.cumsum(self.neg)
        b = np.searchsorted(cneg, positions, side="right")          # bin of each quantile
        nb = self.neg[b].astype(np.float64)
        below = (cneg[b] - self.neg[b]).astype(np.float64)
        rho = (positions + 1 - below) / nb                           # share of bin ≤ threshold
        w_above = np.concatenate((np.cumsum(self.w[::-1])[::-1][1:], [0.0]))  # Σ w of bins > b
        w_in = self.w[b]
        pro = np.minimum((w_above[b] + (1.0 - rho) * w_in) / R, 1.0)
        bound = w_in / R
        fpr = 1.0 - (positions + 1) / float(n_total)
        x = np.concatenate((fpr[::-1], [1.0]))
        value = trapezoid(x, np.concatenate((pro[::-1], [1.0])), limit) / limit
        err = trapezoid(x, np.concatenate((bound[::-1], [0.0])), limit) / limit
        return value, float(abs(err))

    def metrics(self, aupro: str = "exact", integration_limit: float = 0.3,
                num_thresholds: int = 99) -> Dict[str, float]:
        """Binned pixel AUROC, AP, F1-max and AUPRO (keys ``pixel_*``)."""
        return self._compute(aupro, integration_limit, num_thresholds)[0]

    def error_bounds(self, aupro: str = "exact", integration_limit: float = 0.3,
                     num_thresholds: int = 99) -> Dict[str, float]:
        """Upper bounds of ``|binned − exact|`` for each pixel metric (module docstring)."""
        return self._compute(aupro, integration_limit, num_thresholds)[1]
