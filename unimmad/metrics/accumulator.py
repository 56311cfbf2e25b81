"""Streaming metric accumulators and the :func:`compute` entry point."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from tqdm.auto import tqdm

from .functional import (_is_int, _real_dtype, as_numpy, ap_split, auroc_split, check_labels,
                         check_masks, check_scores, f1max_split, region_weights, resolve_aupro)
from .pixel import PIXEL_KEYS, ExactPixelStore, PixelHistogram

__all__ = ["MetricAccumulator", "ThresholdAccumulator", "compute", "IMAGE_KEYS", "PIXEL_KEYS",
           "DEFAULT_PIXEL_BINS"]

IMAGE_KEYS = ("image_AUROC", "image_AP", "image_F1max")
DEFAULT_PIXEL_BINS = 2 ** 14


def _maps_and_masks(anomaly_maps, masks, batch: int):
    maps = as_numpy(anomaly_maps, "anomaly_maps")
    gts = as_numpy(masks, "masks")
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if gts.ndim == 4 and gts.shape[1] == 1:
        gts = gts[:, 0]
    if maps.ndim != 3:
        raise ValueError(f"anomaly_maps must be [B, H, W] (or [B, 1, H, W]), got {maps.shape}")
    if gts.shape != maps.shape:
        raise ValueError(f"masks {gts.shape} must have the shape of anomaly_maps {maps.shape}")
    if maps.shape[0] != batch:
        raise ValueError(f"{maps.shape[0]} anomaly maps but {batch} image scores")
    _real_dtype(maps, "anomaly_maps")
    if not np.isfinite(maps).all():
        raise ValueError("anomaly_maps contain NaN or Inf values")
    return maps, check_masks(gts, "masks")


class MetricAccumulator:
    """Image and pixel metrics of one group of images, accumulated batch by batch.

    ``update(pred_scores, labels, anomaly_maps=None, masks=None)`` any number of times, then
    ``compute()`` → ``{"image_AUROC", "image_AP", "image_F1max"}`` plus, when maps and masks
    were given, ``{"pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO"}`` (fractions in
    [0, 1]; NaN with a warning where a metric is undefined, e.g. no defect pixel).

    Args:
        aupro: ``"exact"`` (MVTec AD, every threshold), ``"mvtec3d"`` (official MVTec 3D-AD,
            100 thresholds) or ``"cfm"`` (CFM / UniMMAD release, 99 thresholds); see
            :mod:`unimmad.metrics.functional`.
        pixel_bins: number of histogram bins for the pixel metrics (bounded memory,
            ``88·pixel_bins`` bytes; tied scores exact, the rest bounded as stated in
            :mod:`unimmad.metrics.pixel`, see :meth:`error_bounds`), or ``None`` to keep
            every pixel score once and compute exact values.
        integration_limit: FPR limit of the AUPRO (0.3).
        num_thresholds: threshold count of ``"mvtec3d"``/``"cfm"`` (``None``: the
            variant's own, 100 / 99).

    Image scores and labels are always kept (one float per image) and scored exactly.
    Labels must be 0 or 1 (bool, integer or float; −1 or 2 are refused).  Masks: bool as
    is, non-negative integers ``> 0``, non-negative floats ``> 0.5`` count as defect.
    """

    def __init__(self, aupro: str = "exact", pixel_bins: Optional[int] = DEFAULT_PIXEL_BINS,
                 integration_limit: float = 0.3, num_thresholds: Optional[int] = None):
        aupro, integration_limit, num_thresholds = resolve_aupro(
            aupro, integration_limit, num_thresholds)
        if pixel_bins is not None and (not _is_int(pixel_bins) or pixel_bins < 2):
            raise ValueError(f"pixel_bins must be None or an int >= 2, got {pixel_bins!r}")
        self.aupro = aupro
        self.pixel_bins = None if pixel_bins is None else int(pixel_bins)
        self.integration_limit = integration_limit
        self.num_thresholds = num_thresholds
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._scores: List[np.ndarray] = []
        self._labels: List[np.ndarray] = []
        self._store = (ExactPixelStore() if self.pixel_bins is None
                       else PixelHistogram(self.pixel_bins))
        self._has_maps: Optional[bool] = None

    @property
    def pixel_estimator(self) -> str:
        """``"exact"`` or ``"binned(<bins>)"``."""
        return "exact" if self.pixel_bins is None else f"binned({self.pixel_bins})"

    @property
    def num_images(self) -> int:
        return int(sum(s.size for s in self._scores))

    def update(self, pred_scores, labels, anomaly_maps=None, masks=None) -> None:
        """Add a batch: image scores ``[B]``, labels ``[B]`` (0 normal, 1 anomalous) and
        optionally anomaly maps and ground-truth masks ``[B, H, W]`` (both or neither, in
        every update alike)."""
        s = check_scores(pred_scores, "pred_scores")
        y = check_labels(labels, "labels")
        if s.shape != y.shape:
            raise ValueError(f"{s.size} pred_scores but {y.size} labels")
        has_maps = anomaly_maps is not None or masks is not None
        if has_maps and (anomaly_maps is None or masks is None):
            raise ValueError("anomaly_maps and masks must be given together")
        if self._has_maps is not None and has_maps != self._has_maps:
            raise ValueError(
                "anomaly_maps/masks were given in some updates but not in others; pixel "
                "metrics need them for every image")
        if has_maps:
            maps, gts = _maps_and_masks(anomaly_maps, masks, s.size)
            for m, g in zip(maps, gts):
                w, n = region_weights(g)
                self._store.add(m[~g], m[g], w, n)
        self._has_maps = has_maps
        self._scores.append(s)
        self._labels.append(y)

    def compute(self) -> Dict[str, float]:
        """The metrics dict (see the class docstring)."""
        if not self._scores or self.num_images == 0:
            raise ValueError("MetricAccumulator.compute() called before any update() with images")
        s = np.concatenate(self._scores)
        y = np.concatenate(self._labels)
        neg, pos = np.sort(s[~y]), np.sort(s[y])
        out = {"image_AUROC": auroc_split(neg, pos, "image AUROC"),
               "image_AP": ap_split(neg, pos, "image AP"),
               "image_F1max": f1max_split(neg, pos, "image F1-max")}
        if self._has_maps:
            out.update(self._store.metrics(self.aupro, self.integration_limit,
                                           self.num_thresholds))
        return out

    def thresholds(self) -> Dict[str, Optional[Dict]]:
        """Decision thresholds and normalisation of this group
        (:mod:`unimmad.metrics.thresholds`): ``{"image": record, "pixel": record}``; a level
        is ``None`` where it cannot be set (no normal image; no maps)."""
        from .thresholds import image_threshold, threshold_record
        if not self._scores or self.num_images == 0:
            raise ValueError("MetricAccumulator.thresholds() called before any update()")
        s = np.concatenate(self._scores)
        y = np.concatenate(self._labels)
        out: Dict[str, Optional[Dict]] = {"image": None, "pixel": None}
        if (~y).any():
            out["image"] = image_threshold(s, y)
        if self._has_maps and self._store.num_neg > 0:
            out["pixel"] = threshold_record(**self._store.threshold_stats())
        return out

    def error_bounds(self) -> Dict[str, float]:
        """Upper bounds of the binning error of each pixel metric (0 in exact mode)."""
        if not self._has_maps:
            return {}
        return self._store.error_bounds(self.aupro, self.integration_limit, self.num_thresholds)


class ThresholdAccumulator:
    """Image scores and pixel scores of any number of batches, for thresholds only
    (:meth:`thresholds`, as :meth:`MetricAccumulator.thresholds`) — no region labelling,
    no metrics.  ``pixel_bins`` as :class:`MetricAccumulator` (``None``: exact)."""

    def __init__(self, pixel_bins: Optional[int] = DEFAULT_PIXEL_BINS):
        if pixel_bins is not None and (not _is_int(pixel_bins) or pixel_bins < 2):
            raise ValueError(f"pixel_bins must be None or an int >= 2, got {pixel_bins!r}")
        self._scores: List[np.ndarray] = []
        self._labels: List[np.ndarray] = []
        self._store = ExactPixelStore() if pixel_bins is None else PixelHistogram(pixel_bins)
        self._has_maps = False

    @property
    def num_images(self) -> int:
        return int(sum(s.size for s in self._scores))

    def update(self, pred_scores, labels, anomaly_maps=None, masks=None) -> None:
        """Add a batch (as :meth:`MetricAccumulator.update`)."""
        s = check_scores(pred_scores, "pred_scores")
        y = check_labels(labels, "labels")
        if s.shape != y.shape:
            raise ValueError(f"{s.size} pred_scores but {y.size} labels")
        if anomaly_maps is not None or masks is not None:
            if anomaly_maps is None or masks is None:
                raise ValueError("anomaly_maps and masks must be given together")
            maps, gts = _maps_and_masks(anomaly_maps, masks, s.size)
            for m, g in zip(maps, gts):
                pos = m[g]
                self._store.add(m[~g], pos, np.zeros(pos.size), 0)
            self._has_maps = True
        self._scores.append(s)
        self._labels.append(y)

    thresholds = MetricAccumulator.thresholds


def compute(pred_scores, labels, anomaly_maps=None, masks=None, aupro: str = "exact", *,
            pixel_bins: Optional[int] = None, integration_limit: float = 0.3,
            num_thresholds: Optional[int] = None, chunk_size: int = 64,
            progress: Optional[bool] = None) -> Dict[str, float]:
    """Image (and pixel) metrics of one set of images.

    Args:
        pred_scores: image scores ``[N]`` (name the reduction that produced them when you
            report results: UniMMAD's default is the mean of the top 0.1 % map pixels).
        labels: ``[N]``, 0 normal / 1 anomalous (anything else is refused).
        anomaly_maps, masks: ``[N, H, W]`` maps and ground-truth masks (both or neither).
        aupro: ``"exact"``, ``"mvtec3d"`` or ``"cfm"`` (see :mod:`unimmad.metrics.functional`).
        pixel_bins: ``None`` (default here: exact, the arrays are in memory already) or a
            bin count for the bounded-memory binned estimator.
        integration_limit, num_thresholds: AUPRO FPR limit (0.3) and the threshold count
            of ``"mvtec3d"``/``"cfm"`` (``None``: 100 / 99, as their sources).
        chunk_size: images handed to the accumulator at a time.
        progress: tqdm bar over the images (``None``: only on a terminal).

    Returns:
        ``{"image_AUROC", "image_AP", "image_F1max"}`` and, with maps and masks,
        ``{"pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO"}``.
    """
    acc = MetricAccumulator(aupro, pixel_bins, integration_limit, num_thresholds)
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be None, True or False, got {progress!r}")
    s = check_scores(pred_scores, "pred_scores")
    y = check_labels(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"{s.size} pred_scores but {y.size} labels")
    if s.size == 0:
        raise ValueError("compute: no images (pred_scores is empty)")
    if anomaly_maps is None and masks is None:
        acc.update(s, y)
        return acc.compute()
    if anomaly_maps is None or masks is None:
        raise ValueError("anomaly_maps and masks must be given together")
    maps = as_numpy(anomaly_maps, "anomaly_maps")
    gts = as_numpy(masks, "masks")
    if maps.ndim == 0 or gts.ndim == 0 or maps.shape[0] != s.size or gts.shape[0] != s.size:
        raise ValueError(
            f"{s.size} pred_scores but anomaly_maps of shape {maps.shape} and masks of shape "
            f"{gts.shape} (expected [{s.size}, H, W])")
    disable = None if progress is None else not progress
    with tqdm(total=s.size, desc="pixel metrics", unit="img", disable=disable) as bar:
        for i in range(0, s.size, chunk_size):
            j = min(i + chunk_size, s.size)
            acc.update(s[i:j], y[i:j], maps[i:j], gts[i:j])
            bar.update(j - i)
    return acc.compute()
