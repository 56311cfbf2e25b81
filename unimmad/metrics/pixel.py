"""Pixel-score stores: exact (every score kept once) and binned (bounded memory).

Both stores receive, per image, the scores of the normal pixels, the scores of the
defect pixels with their region weights ``1/|region|`` and the number of defect regions,
and compute pixel AUROC, AP, F1-max and AUPRO (any estimator of
:mod:`unimmad.metrics.functional`).

**Binned store** (:class:`PixelHistogram`).  Scores fall into ``num_bins`` equal-width bins
on an adaptive range: the first update sets the range to its own ``[min, max]``; a later
score outside the range shifts the origin by whole bins and, when the range must grow,
merges adjacent bins by powers of two (the width doubles), so memory stays fixed whatever
the number of images.  The bin width ends at most about ``2 × (max − min) / num_bins`` of
all scores seen.

Each bin also keeps the **smallest and the largest score** it received and splits its
counts into three parts: the pixels whose score *equals* the bin's minimum, those equal to
its maximum, and those strictly between.  The two end parts are *tied groups* whose score
is known exactly; only the order of the pixels of the middle part is unknown.  Memory:
11 numbers per bin, ``88·num_bins`` bytes (1.4 MiB for the default ``2**14``).

Every binned metric is computed on this ordered list of parts, whose edges are *real*
thresholds, so the curves pass through points of the exact curves; a part holding one
score value is handled exactly as the original code handles tied scores (one threshold,
ties counted together — and, for the threshold-sampled AUPRO, a threshold equal to the
value of its part with "detected ⇔ score > threshold").  Constant maps, maps clipped to a
range, quantised maps (uint8, fp16 grids) and images without defect are therefore scored
exactly wherever the distinct values of a bin are at most two.  The remaining error comes
from the middle parts only and is bounded by quantities of the same histogram
(:meth:`PixelHistogram.error_bounds`, reported by the accumulators), with ``n_b``/``p_b``
the normal/defect pixels of middle part b and ``A``/``B`` the defect/normal pixels above
it:

* AUROC:  ``|err| ≤ ½ Σ_b (n_b/N)(p_b/P)``.
* AP:     ``|err| ≤ Σ_b (p_b/P)(hi_b − lo_b)`` with ``hi_b = (A+p_b)/(A+B+p_b)`` and
  ``lo_b = (A+1)/(A+B+1+n_b)`` — the range of precisions any pixel order inside the part
  could produce.
* F1-max: the binned value is the F1 of a real threshold, so ``0 ≤ exact − binned ≤
  max_b 2(A+p_b)/(A+p_b+B+P) − binned``.
* AUPRO "exact": ``|err| ≤ (½ Σ_full ΔFPR_b ΔPRO_b + (limit − FPR_lo)·ΔPRO_cut) / limit``
  over the middle parts below the FPR limit (the exact curve is monotone inside each).
* AUPRO "mvtec3d" / "cfm": the thresholds are normal-score quantiles whose (positional)
  FPRs are exact.  A threshold in an end part is exact; in a middle part b its PRO lies
  in ``[W_above, W_above + w_b] / R`` and is estimated by the share ``1 − ρ`` of the part's
  normal pixels above it, off by at most ``max(ρ, 1 − ρ)·w_b / R``; the bound is the
  trapezoid of these per-threshold bounds, divided by the limit.

For smooth score distributions the bounds shrink like ``1/num_bins``; ``tests/test_metrics``
checks binned against exact values on random, tied, constant, clipped and quantised maps.

**Exact store** (:class:`ExactPixelStore`) keeps every score once (in the dtype given)
plus the defect pixels' weights; :meth:`~ExactPixelStore.metrics` needs one transient sorted
copy.  Use it for small sets, or where exact values matter more than memory.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from .functional import (_is_int, _nan_warn, ap_split, auroc_split, aupro_split, f1max_split,
                         resolve_aupro, threshold_positions, trapezoid)
from .thresholds import _between, _f1_from_sorted

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
        neg = np.asarray(neg).reshape(-1)
        pos = np.asarray(pos).reshape(-1)
        _check_finite(neg, pos)
        self._neg.append(neg)
        self._pos.append(pos)
        self._w.append(np.asarray(pos_w, np.float64).reshape(-1))
        self.num_regions += int(num_regions)
        self.num_neg += neg.size
        self.num_pos += pos.size

    def metrics(self, aupro: str = "exact", integration_limit: float = 0.3,
                num_thresholds: Optional[int] = None) -> Dict[str, float]:
        resolve_aupro(aupro, integration_limit, num_thresholds)
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
                     num_thresholds: Optional[int] = None) -> Dict[str, float]:
        """Exact store: every bound is 0."""
        resolve_aupro(aupro, integration_limit, num_thresholds)
        return {k: 0.0 for k in PIXEL_KEYS}

    def threshold_stats(self) -> Dict[str, object]:
        """What :func:`unimmad.metrics.thresholds.threshold_record` needs: the exact
        F1-optimal pixel threshold and the normal pixels' min, max and std."""
        neg = np.sort(np.concatenate(self._neg)).astype(np.float64) if self._neg else np.zeros(0)
        pos = np.sort(np.concatenate(self._pos)).astype(np.float64) if self._pos else np.zeros(0)
        if neg.size == 0:
            raise ValueError("pixel thresholds need normal pixels")
        t, f1 = _f1_from_sorted(neg, pos)
        return {"f1_threshold": t, "f1": f1, "min_normal": float(neg[0]),
                "max_normal": float(neg[-1]), "std_normal": float(neg.std()),
                "low": float(min(neg[0], pos[0] if pos.size else np.inf)),
                "high": float(max(neg[-1], pos[-1] if pos.size else -np.inf)),
                "num_normal": int(neg.size), "num_anomalous": int(pos.size)}


def _reduce(keys: np.ndarray, vmin: np.ndarray, vmax: np.ndarray, neg: np.ndarray,
            pos: np.ndarray, w: np.ndarray):
    """Merge bin summaries that share a key.

    Each summary: its smallest and largest score and three parts ``[0]`` = scores equal to
    the smallest, ``[1]`` = strictly between, ``[2]`` = equal to the largest (empty when
    smallest == largest), each with normal count, defect count and defect weight.  The
    merged summary keeps the same meaning: an end part of an input lands in the merged
    end part holding its value, or in the middle.  Returns ``(keys, vmin, vmax, neg, pos,
    w)`` of the distinct keys, ascending."""
    order = np.argsort(keys, kind="stable")
    keys, vmin, vmax = keys[order], vmin[order], vmax[order]
    neg, pos, w = neg[:, order], pos[:, order], w[:, order]
    new = np.ones(keys.size, bool)
    new[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(new)
    gid = np.cumsum(new) - 1
    g = starts.size
    lo = np.minimum.reduceat(vmin, starts)
    hi = np.maximum.reduceat(vmax, starts)
    lo_e, hi_e = lo[gid], hi[gid]
    dest = (np.where(vmin == lo_e, 0, np.where(vmin == hi_e, 2, 1)),
            np.ones(keys.size, np.int64),
            np.where(vmax == lo_e, 0, np.where(vmax == hi_e, 2, 1)))
    out = []
    for arr in (neg, pos, w):
        acc = np.zeros(3 * g)
        for part in range(3):
            acc += np.bincount(dest[part] * g + gid, weights=arr[part], minlength=3 * g)
        out.append(acc.reshape(3, g))
    n_out = np.rint(out[0]).astype(np.int64)
    p_out = np.rint(out[1]).astype(np.int64)
    return keys[starts], lo, hi, n_out, p_out, out[2]


class PixelHistogram:
    """Binned pixel-score store with an adaptive range and exact tied groups (see the
    module docstring).

    Args:
        num_bins: number of equal-width bins (memory ``88·num_bins`` bytes).
    """

    estimator = "binned"

    def __init__(self, num_bins: int = 2 ** 14) -> None:
        if not _is_int(num_bins) or num_bins < 2:
            raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
        n = self.num_bins = int(num_bins)
        self.lo: Optional[float] = None
        self.width: Optional[float] = None
        self.vmin = np.full(n, np.inf)           # smallest / largest score of each bin
        self.vmax = np.full(n, -np.inf)
        self.neg = np.zeros((3, n), np.int64)   # parts: at vmin, strictly between, at vmax
        self.pos = np.zeros((3, n), np.int64)
        self.w = np.zeros((3, n), np.float64)
        self.num_regions = 0

    # ------------------------------------------------------------------ range management
    @property
    def num_neg(self) -> int:
        return int(self.neg.sum())

    @property
    def num_pos(self) -> int:
        return int(self.pos.sum())

    @property
    def nbytes(self) -> int:
        """Memory held by the histogram's arrays."""
        return sum(a.nbytes for a in (self.vmin, self.vmax, self.neg, self.pos, self.w))

    def _index(self, x: np.ndarray) -> np.ndarray:
        return np.floor((np.asarray(x, np.float64) - self.lo) / self.width)

    def _fits(self, vmin: float, vmax: float) -> bool:
        i = self._index(np.array([vmin, vmax]))
        return bool(i[0] >= 0 and i[1] < self.num_bins)

    def _occupied(self) -> np.ndarray:
        return np.flatnonzero(np.isfinite(self.vmin))

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
        occ = self._occupied()
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
        if occ.size:
            keys = np.clip(j + occ // f, 0, n - 1)
            k, lo, hi, nn, pp, ww = _reduce(keys, self.vmin[occ], self.vmax[occ],
                                            self.neg[:, occ], self.pos[:, occ], self.w[:, occ])
            self.vmin.fill(np.inf)
            self.vmax.fill(-np.inf)
            for a in (self.neg, self.pos, self.w):
                a.fill(0)
            self.vmin[k], self.vmax[k] = lo, hi
            self.neg[:, k], self.pos[:, k], self.w[:, k] = nn, pp, ww
        self.lo, self.width = new_lo, new_w

    def add(self, neg: np.ndarray, pos: np.ndarray, pos_w: np.ndarray, num_regions: int) -> None:
        """Add one image's normal scores, defect scores, defect weights and region count."""
        neg = np.asarray(neg, np.float64).reshape(-1)
        pos = np.asarray(pos, np.float64).reshape(-1)
        pos_w = np.asarray(pos_w, np.float64).reshape(-1)
        if pos_w.size != pos.size:
            raise ValueError(f"{pos.size} defect scores but {pos_w.size} weights")
        _check_finite(neg, pos)
        vals = np.concatenate((neg, pos))
        if vals.size:
            self._ensure_range(float(vals.min()), float(vals.max()))
            n = self.num_bins
            idx = np.clip(self._index(vals).astype(np.int64), 0, n - 1)
            occ = np.unique(idx)
            m, k = vals.size, occ.size
            zeros = np.zeros((3, k + m))
            cnt_n, cnt_p, wts = zeros.copy(), zeros.copy(), zeros.copy()
            cnt_n[:, :k], cnt_p[:, :k], wts[:, :k] = self.neg[:, occ], self.pos[:, occ], self.w[:, occ]
            cnt_n[0, k:k + neg.size] = 1.0
            cnt_p[0, k + neg.size:] = 1.0
            wts[0, k + neg.size:] = pos_w
            keys, lo, hi, nn, pp, ww = _reduce(
                np.concatenate((occ, idx)), np.concatenate((self.vmin[occ], vals)),
                np.concatenate((self.vmax[occ], vals)), cnt_n, cnt_p, wts)
            self.vmin[keys], self.vmax[keys] = lo, hi
            self.neg[:, keys], self.pos[:, keys], self.w[:, keys] = nn, pp, ww
        self.num_regions += int(num_regions)

    # ------------------------------------------------------------------ metrics
    def _parts(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Non-empty parts in ascending score order: normal count, defect count, defect
        weight, and whether the part is a tied group (one known score value)."""
        occ = self._occupied()
        neg = self.neg[:, occ].T.ravel().astype(np.float64)
        pos = self.pos[:, occ].T.ravel().astype(np.float64)
        w = self.w[:, occ].T.ravel()
        tied = np.tile(np.array([True, False, True]), occ.size)
        keep = (neg > 0) | (pos > 0)
        return neg[keep], pos[keep], w[keep], tied[keep]

    def _compute(self, aupro: str, limit: float, num_thresholds: Optional[int]):
        aupro, limit, num_thresholds = resolve_aupro(aupro, limit, num_thresholds)
        N, P, R = float(self.num_neg), float(self.num_pos), self.num_regions
        vals: Dict[str, float] = {}
        errs: Dict[str, float] = {}
        a_neg, a_pos, a_w, a_tied = self._parts()                 # ascending
        neg, pos, w, tied = a_neg[::-1], a_pos[::-1], a_w[::-1], a_tied[::-1]   # descending
        mid = ~tied
        FP, TP, W = np.cumsum(neg), np.cumsum(pos), np.cumsum(w)
        # AUROC
        if N == 0 or P == 0:
            vals["pixel_AUROC"] = _nan_warn("pixel AUROC", "needs normal and defect pixels")
            errs["pixel_AUROC"] = float("nan")
        else:
            x = np.concatenate(([0.0], FP / N))
            y = np.concatenate(([0.0], TP / P))
            vals["pixel_AUROC"] = trapezoid(x, y)
            errs["pixel_AUROC"] = float(0.5 * np.sum((neg / N * (pos / P))[mid]))
        # AP and F1-max
        if P == 0:
            vals["pixel_AP"] = _nan_warn("pixel AP", "needs defect pixels")
            vals["pixel_F1max"] = _nan_warn("pixel F1-max", "needs defect pixels")
            errs["pixel_AP"] = errs["pixel_F1max"] = float("nan")
        else:
            has = pos > 0                                   # parts holding a threshold of AP
            A, B = (TP - pos)[has], (FP - neg)[has]
            p, nb, m = pos[has], neg[has], mid[has]
            vals["pixel_AP"] = float(np.sum(p / P * (TP[has] / (TP[has] + FP[has]))))
            hi = (A + p) / (A + B + p)
            lo = (A + 1.0) / (A + B + 1.0 + nb)
            errs["pixel_AP"] = float(np.sum((p / P * (hi - lo))[m]))
            A, B = TP - pos, FP - neg
            f1 = 2.0 * TP / (TP + FP + P)
            vals["pixel_F1max"] = float(f1.max())
            upper = 2.0 * (A + pos) / (A + pos + B + P)
            best = float(upper[mid].max()) if mid.any() else vals["pixel_F1max"]
            errs["pixel_F1max"] = float(max(best - vals["pixel_F1max"], 0.0))
        # AUPRO
        if R == 0 or N == 0:
            vals["pixel_AUPRO"] = _nan_warn("pixel AUPRO", "needs a defect region and normal pixels")
            errs["pixel_AUPRO"] = float("nan")
        elif aupro == "exact":
            fpr = np.concatenate(([0.0], FP / N, [1.0]))
            pro = np.concatenate(([0.0], np.minimum(W / R, 1.0), [1.0]))
            vals["pixel_AUPRO"] = trapezoid(fpr, pro, limit) / limit
            f0, f1_, dp = fpr[:-1], fpr[1:], np.diff(pro)
            seg_mid = np.concatenate((mid, [False]))               # segment b ↔ part b
            full = (f1_ <= limit) & seg_mid
            cut = (f0 < limit) & (f1_ > limit) & seg_mid
            bound = 0.5 * np.sum((f1_ - f0)[full] * dp[full]) + np.sum(((limit - f0) * dp)[cut])
            errs["pixel_AUPRO"] = float(bound / limit)
        else:
            vals["pixel_AUPRO"], errs["pixel_AUPRO"] = self._aupro_sampled(
                a_neg, a_w, a_tied, limit, num_thresholds)
        return vals, errs

    def _aupro_sampled(self, neg, w, tied, limit: float, num_thresholds: int):
        """The threshold-sampled AUPRO on the ascending parts (module docstring)."""
        n_total = int(neg.sum())
        R = float(self.num_regions)
        positions = threshold_positions(n_total, num_thresholds)
        cneg = np.cumsum(neg)
        b = np.searchsorted(cneg, positions, side="right")          # part of each quantile
        nb = neg[b]
        rho = (positions + 1 - (cneg[b] - nb)) / nb                  # share of part ≤ threshold
        w_above = np.concatenate((np.cumsum(w[::-1])[::-1][1:], [0.0]))  # Σ w of parts > b
        exact = tied[b]
        inside = np.where(exact, 0.0, (1.0 - rho) * w[b])
        pro = np.minimum((w_above[b] + inside) / R, 1.0)
        bound = np.where(exact, 0.0, np.maximum(rho, 1.0 - rho) * w[b] / R)
        fpr = 1.0 - (positions + 1) / float(n_total)
        x = np.concatenate((fpr[::-1], [1.0]))
        value = trapezoid(x, np.concatenate((pro[::-1], [1.0])), limit) / limit
        err = trapezoid(x, np.concatenate((bound[::-1], [0.0])), limit) / limit
        return value, float(abs(err))

    def _part_values(self):
        """Per non-empty part (ascending, as :meth:`_parts`): the lowest and highest score
        it can hold (a middle part's bounds are exclusive) and a representative value."""
        occ = self._occupied()
        lo, hi = self.vmin[occ], self.vmax[occ]
        low = np.stack((lo, lo, hi), 1).ravel()
        high = np.stack((lo, hi, hi), 1).ravel()
        rep = np.stack((lo, 0.5 * (lo + hi), hi), 1).ravel()
        neg = self.neg[:, occ].T.ravel()
        pos = self.pos[:, occ].T.ravel()
        keep = (neg > 0) | (pos > 0)
        return low[keep], high[keep], rep[keep]

    def threshold_stats(self) -> Dict[str, object]:
        """What :func:`unimmad.metrics.thresholds.threshold_record` needs, from the
        histogram: the F1-optimal threshold over the part edges (the real thresholds the
        binned F1-max is computed at: its F1 is the binned F1-max) and the normal pixels'
        min, max (bounds of their parts) and std (parts at their representative value)."""
        neg, pos, _, tied = self._parts()
        low, high, rep = self._part_values()
        if neg.sum() == 0:
            raise ValueError("pixel thresholds need normal pixels")
        has_neg = np.flatnonzero(neg > 0)
        mean = float(np.sum(neg * rep) / neg.sum())
        std = float(np.sqrt(max(np.sum(neg * (rep - mean) ** 2) / neg.sum(), 0.0)))
        out = {"f1_threshold": None, "f1": None, "min_normal": float(low[has_neg[0]]),
               "max_normal": float(high[has_neg[-1]]), "std_normal": std,
               "low": float(low[0]), "high": float(high[-1]),
               "num_normal": int(neg.sum()), "num_anomalous": int(pos.sum())}
        P = float(pos.sum())
        if P > 0:
            d = slice(None, None, -1)                                   # descending parts
            TP, FP = np.cumsum(pos[d]), np.cumsum(neg[d])
            f1 = 2.0 * TP / (TP + FP + P)
            b = int(np.argmax(f1))
            i = neg.size - 1 - b                                        # ascending index
            if i == 0:                                                  # flags every pixel
                t = float(low[0]) - max(abs(float(low[0])) * 0.01, 1e-12)
            elif not tied[i]:                                           # above its bin's min
                t = float(np.nextafter(low[i], np.inf))
            else:
                t = _between(float(high[i - 1]), float(low[i])) if high[i - 1] < low[i] \
                    else float(low[i])
            out["f1_threshold"], out["f1"] = t, float(f1[b])
        return out

    def metrics(self, aupro: str = "exact", integration_limit: float = 0.3,
                num_thresholds: Optional[int] = None) -> Dict[str, float]:
        """Binned pixel AUROC, AP, F1-max and AUPRO (keys ``pixel_*``)."""
        return self._compute(aupro, integration_limit, num_thresholds)[0]

    def error_bounds(self, aupro: str = "exact", integration_limit: float = 0.3,
                     num_thresholds: Optional[int] = None) -> Dict[str, float]:
        """Upper bounds of ``|binned − exact|`` for each pixel metric (module docstring)."""
        return self._compute(aupro, integration_limit, num_thresholds)[1]
