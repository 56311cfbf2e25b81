"""Per-class evaluation over many datasets, and CSV / JSON / Markdown result writers.

:class:`Evaluator` keeps one :class:`~unimmad.metrics.MetricAccumulator` per class and
turns them into a :class:`MetricsReport`: one row per class, one mean row per dataset (the
mean of its classes), the mean of all classes and the mean of the dataset means — the
layout of PatchCore's ``results.csv`` and ADer's ``_Avg`` rows.  Every output names the
AUPRO estimator, the pixel estimator (exact or binned) and the image-score reduction.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from .accumulator import DEFAULT_PIXEL_BINS, IMAGE_KEYS, PIXEL_KEYS, MetricAccumulator
from .functional import AUPRO_SOURCES, as_numpy, check_labels, check_scores, resolve_aupro

__all__ = ["Evaluator", "MetricsReport", "METRIC_KEYS", "DEFAULT_IMAGE_SCORE"]

METRIC_KEYS = IMAGE_KEYS + PIXEL_KEYS
DEFAULT_IMAGE_SCORE = "mean of the top 0.1% anomaly-map pixels"


def dataset_of(class_name: str) -> str:
    """Dataset part of a ``<class>_<dataset>`` name (text after the last ``_``)."""
    return class_name.rsplit("_", 1)[1] if "_" in class_name else "default"


def _names(values, what: str) -> List[str]:
    """A sequence of names, one per image (a bare string is refused: it is not a list)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{what} must be a sequence of str (one per image), got {values!r}")
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(v).__name__} {v!r}")
        out.append(v)
    return out


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], np.float64)
    if arr.size == 0 or np.isnan(arr).all():
        return float("nan")
    return float(np.nanmean(arr))


def _fmt(v, percent: bool, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan" if not percent else "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{100.0 * v:.{digits}f}" if percent else f"{v:.{max(digits, 6)}f}"


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


@dataclass
class MetricsReport:
    """Results of an evaluation.

    Attributes:
        per_class: rows ``{"dataset", "class", "num_images", <metrics>}``.
        per_dataset: rows ``{"dataset", "class": "mean", "num_classes", <metric means>}``.
        mean_of_classes: ``{<metric>: mean over all classes}`` (NaNs skipped).
        mean_of_datasets: ``{<metric>: mean over the per-dataset means}`` (NaNs skipped).
        meta: estimator names and settings (``aupro``, ``integration_limit``,
            ``num_thresholds``, ``pixel_estimator``, ``image_score``).
        binning_error: per class, upper bounds of the pixel metrics' binning error.
        thresholds: decision thresholds and normalisation when the evaluation computed
            them (:func:`unimmad.engine.evaluate`; not part of :meth:`to_dict`).
    """

    per_class: List[Dict] = field(default_factory=list)
    per_dataset: List[Dict] = field(default_factory=list)
    mean_of_classes: Dict[str, float] = field(default_factory=dict)
    mean_of_datasets: Dict[str, float] = field(default_factory=dict)
    meta: Dict[str, object] = field(default_factory=dict)
    binning_error: Dict[str, Dict[str, float]] = field(default_factory=dict)
    thresholds: Optional[Dict] = None

    @classmethod
    def from_results(cls, results: Dict[Tuple[str, str], Dict[str, float]],
                     num_images: Optional[Dict[Tuple[str, str], int]] = None,
                     meta: Optional[Dict[str, object]] = None,
                     binning_error: Optional[Dict[str, Dict[str, float]]] = None
                     ) -> "MetricsReport":
        """Build a report from ``{(dataset, class): metrics}``."""
        keys = [k for k in METRIC_KEYS if any(k in m for m in results.values())]
        per_class = []
        by_dataset: Dict[str, List[Dict]] = {}
        for (ds, cls_name) in sorted(results):
            row = {"dataset": ds, "class": cls_name,
                   "num_images": int((num_images or {}).get((ds, cls_name), 0))}
            row.update({k: float(results[(ds, cls_name)].get(k, float("nan"))) for k in keys})
            per_class.append(row)
            by_dataset.setdefault(ds, []).append(row)
        per_dataset = []
        for ds, rows in by_dataset.items():
            r = {"dataset": ds, "class": "mean", "num_classes": len(rows)}
            r.update({k: _nanmean([row[k] for row in rows]) for k in keys})
            per_dataset.append(r)
        moc = {k: _nanmean([row[k] for row in per_class]) for k in keys}
        mod = {k: _nanmean([row[k] for row in per_dataset]) for k in keys}
        return cls(per_class, per_dataset, moc, mod, dict(meta or {}), dict(binning_error or {}))

    # ------------------------------------------------------------------ views
    @property
    def metric_keys(self) -> List[str]:
        return [k for k in METRIC_KEYS if k in self.mean_of_classes]

    def rows(self) -> List[Dict]:
        """Table rows: each dataset's classes then its mean row; then the two overall means."""
        out = []
        means = {r["dataset"]: r for r in self.per_dataset}
        for ds in means:
            out.extend(r for r in self.per_class if r["dataset"] == ds)
            out.append(means[ds])
        out.append({"dataset": "all", "class": "mean_of_classes",
                    "num_classes": len(self.per_class), **self.mean_of_classes})
        out.append({"dataset": "all", "class": "mean_of_datasets",
                    "num_classes": len(self.per_dataset), **self.mean_of_datasets})
        return out

    def to_dict(self) -> Dict:
        """JSON-ready dict (NaN → ``None``)."""
        return _json_safe({
            "meta": self.meta, "per_class": self.per_class, "per_dataset": self.per_dataset,
            "mean_of_classes": self.mean_of_classes, "mean_of_datasets": self.mean_of_datasets,
            "binning_error": self.binning_error})

    # ------------------------------------------------------------------ writers
    def to_json(self, path: Optional[str] = None, indent: int = 2) -> str:
        """JSON text (written to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=indent)
        return _maybe_write(path, text)

    def to_csv(self, path: Optional[str] = None, percent: bool = False, digits: int = 6) -> str:
        """CSV: ``dataset,class,num,<metrics>,aupro_estimator,pixel_estimator,image_score``."""
        keys = self.metric_keys
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["dataset", "class", "num"] + keys +
                   ["aupro_estimator", "pixel_estimator", "image_score"])
        tail = [self._aupro_name(), self.meta.get("pixel_estimator", ""),
                self.meta.get("image_score", "")]
        for r in self.rows():
            num = r.get("num_images", r.get("num_classes", ""))
            w.writerow([r["dataset"], r["class"], num] +
                       [_fmt(r.get(k), percent, digits) for k in keys] + tail)
        return _maybe_write(path, buf.getvalue())

    def to_markdown(self, path: Optional[str] = None, percent: bool = True, digits: int = 2) -> str:
        """Markdown table (percent by default) with the estimator names above it."""
        keys = self.metric_keys
        lines = [
            f"AUPRO estimator: {self._aupro_name()}; pixel metrics: "
            f"{self.meta.get('pixel_estimator', '?')}; image score: "
            f"{self.meta.get('image_score', '?')}" + ("; values in %" if percent else ""),
            "",
            "| dataset | class | n | " + " | ".join(keys) + " |",
            "|---|---|---:|" + "---:|" * len(keys),
        ]
        for r in self.rows():
            num = r.get("num_images", r.get("num_classes", ""))
            name = r["class"] if r["class"] not in ("mean", "mean_of_classes", "mean_of_datasets") \
                else f"**{r['class']}**"
            lines.append(f"| {r['dataset']} | {name} | {num} | " +
                         " | ".join(_fmt(r.get(k), percent, digits) for k in keys) + " |")
        worst = {}
        for bounds in self.binning_error.values():
            for k, v in bounds.items():
                if v is not None and not math.isnan(v):
                    worst[k] = max(worst.get(k, 0.0), v)
        if worst and any(v > 0 for v in worst.values()):
            lines += ["", "Largest binning-error bound per pixel metric"
                      + (" (percentage points)" if percent else "") + ": " + ", ".join(
                          f"{k} ≤ {_fmt(v, percent, max(digits, 4))}" for k, v in worst.items())]
        return _maybe_write(path, "\n".join(lines) + "\n")

    def write(self, directory: str, stem: str = "results") -> Dict[str, str]:
        """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.md`` into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        paths = {ext: os.path.join(directory, f"{stem}.{ext}") for ext in ("csv", "json", "md")}
        self.to_csv(paths["csv"])
        self.to_json(paths["json"])
        self.to_markdown(paths["md"])
        return paths

    def _aupro_name(self) -> str:
        a = self.meta.get("aupro", "?")
        lim = self.meta.get("integration_limit", 0.3)
        t = self.meta.get("num_thresholds")
        if a != "exact" and t is not None:
            return f"{a} ({t} thresholds, FPR<={lim})"
        return f"{a} (FPR<={lim})"


def _maybe_write(path: Optional[str], text: str) -> str:
    if path is not None:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return text


class Evaluator:
    """Per-class metrics over any number of datasets.

    ``update(pred_scores, labels, class_names, datasets=None, anomaly_maps=None, masks=None)``
    per batch (e.g. with a collated batch's ``class_names``/``datasets``), then
    ``compute()`` → :class:`MetricsReport`.

    Args:
        aupro, pixel_bins, integration_limit, num_thresholds: as
            :class:`~unimmad.metrics.MetricAccumulator` (binned pixel metrics by default,
            ``pixel_bins=None`` for exact ones).
        image_score: name of the reduction that produced ``pred_scores``, written into
            every output (UniMMAD's default: the mean of the top 0.1 % map pixels).
    """

    def __init__(self, aupro: str = "exact", pixel_bins: Optional[int] = DEFAULT_PIXEL_BINS,
                 integration_limit: float = 0.3, num_thresholds: Optional[int] = None,
                 image_score: str = DEFAULT_IMAGE_SCORE):
        aupro, integration_limit, num_thresholds = resolve_aupro(
            aupro, integration_limit, num_thresholds)
        if not isinstance(image_score, str):
            raise TypeError(f"image_score must be a str (the reduction's name), got {image_score!r}")
        self.kwargs = dict(aupro=aupro, pixel_bins=pixel_bins,
                           integration_limit=integration_limit, num_thresholds=num_thresholds)
        MetricAccumulator(**self.kwargs)                  # validates pixel_bins now
        self.image_score = image_score
        self.groups: Dict[Tuple[str, str], MetricAccumulator] = {}

    def reset(self) -> None:
        self.groups.clear()

    def update(self, pred_scores, labels, class_names: Sequence[str],
               datasets: Optional[Sequence[str]] = None, anomaly_maps=None, masks=None) -> None:
        """Route each image of a batch to the accumulator of its (dataset, class).

        ``datasets`` defaults to the text after the last ``_`` of each class name
        (``<class>_<dataset>``)."""
        s = check_scores(pred_scores, "pred_scores")
        y = check_labels(labels, "labels")
        names = _names(class_names, "class_names")
        if len(names) != s.size or y.size != s.size:
            raise ValueError(
                f"{s.size} pred_scores, {y.size} labels and {len(names)} class names differ")
        ds = [dataset_of(c) for c in names] if datasets is None else _names(datasets, "datasets")
        if len(ds) != s.size:
            raise ValueError(f"{len(ds)} dataset names for {s.size} images")
        maps = None if anomaly_maps is None else as_numpy(anomaly_maps, "anomaly_maps")
        gts = None if masks is None else as_numpy(masks, "masks")
        for arr, what in ((maps, "anomaly_maps"), (gts, "masks")):
            if arr is not None and (arr.ndim == 0 or arr.shape[0] != s.size):
                raise ValueError(f"{what} of shape {arr.shape} for {s.size} images "
                                 "(expected one map per image, [B, H, W])")
        keys = list(zip(ds, names))
        for key in dict.fromkeys(keys):
            idx = np.asarray([i for i, k in enumerate(keys) if k == key])
            acc = self.groups.get(key)
            if acc is None:
                acc = self.groups[key] = MetricAccumulator(**self.kwargs)
            acc.update(s[idx], y[idx], None if maps is None else maps[idx],
                       None if gts is None else gts[idx])

    def thresholds(self) -> Dict[str, Dict[str, Optional[Dict]]]:
        """``{class name: {"image": record, "pixel": record}}`` — each class's decision
        thresholds and normalisation (:meth:`MetricAccumulator.thresholds`); class names
        are the readers' ``<class>_<dataset>``."""
        return {cls_name: acc.thresholds() for (_, cls_name), acc in sorted(self.groups.items())}

    def compute(self, progress: Optional[bool] = None) -> MetricsReport:
        """Metrics per class, per dataset and overall (see :class:`MetricsReport`)."""
        if not self.groups:
            raise ValueError("Evaluator.compute() called before any update()")
        results, counts, bounds = {}, {}, {}
        disable = None if progress is None else not progress
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # undefined metrics → NaN rows
            for key, acc in tqdm(sorted(self.groups.items()), desc="metrics", unit="class",
                                 disable=disable):
                results[key] = acc.compute()
                counts[key] = acc.num_images
                eb = acc.error_bounds() if self.kwargs["pixel_bins"] is not None else {}
                if eb:
                    bounds[f"{key[0]}/{key[1]}"] = eb
        first = next(iter(self.groups.values()))
        meta = {"aupro": self.kwargs["aupro"],
                "aupro_source": AUPRO_SOURCES[self.kwargs["aupro"]],
                "integration_limit": self.kwargs["integration_limit"],
                "num_thresholds": self.kwargs["num_thresholds"],
                "pixel_estimator": first.pixel_estimator,
                "image_score": self.image_score}
        return MetricsReport.from_results(results, counts, meta, bounds)
