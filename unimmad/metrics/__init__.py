"""Anomaly-detection metrics: image/pixel AUROC, AP, F1-max and AUPRO@0.3.

Public API::

    from unimmad.metrics import compute, MetricAccumulator, Evaluator, MetricsReport

* :func:`compute` — metrics of in-memory arrays (exact by default).
* :class:`MetricAccumulator` — streaming ``update(...)`` / ``compute()`` for one group of
  images; pixel metrics in bounded memory (binned, error bounds stated in
  :mod:`unimmad.metrics.pixel`) or exact.
* :class:`Evaluator` — one accumulator per class; :class:`MetricsReport` with per-class,
  per-dataset, mean-of-classes and mean-of-datasets rows and CSV / JSON / Markdown writers.
* AUPRO estimators: ``"exact"`` (MVTec AD ``compute_pro``, every threshold), ``"mvtec3d"``
  (official MVTec 3D-AD evaluation, 100 thresholds) and ``"cfm"`` (CFM's 99 thresholds,
  used by the UniMMAD release) — see :mod:`unimmad.metrics.functional`.
* Decision thresholds (F1-optimal, or a normal-only rule) and normalised scores in [0, 1]
  with the threshold at 0.5 — :mod:`unimmad.metrics.thresholds`
  (:meth:`MetricAccumulator.thresholds`, :class:`ThresholdAccumulator`).
"""
from .accumulator import (DEFAULT_PIXEL_BINS, IMAGE_KEYS, PIXEL_KEYS, MetricAccumulator,
                          ThresholdAccumulator, compute)
from .functional import (AUPRO_SOURCES, AUPRO_THRESHOLDS, AUPRO_VARIANTS, aupro, auroc,
                         average_precision, f1_max, image_metrics, label_regions, trapezoid)
from .pixel import ExactPixelStore, PixelHistogram
from .report import DEFAULT_IMAGE_SCORE, METRIC_KEYS, Evaluator, MetricsReport
from .thresholds import image_threshold, is_anomalous, normalize

__all__ = [
    "compute", "MetricAccumulator", "Evaluator", "MetricsReport", "ExactPixelStore",
    "PixelHistogram", "AUPRO_VARIANTS", "AUPRO_THRESHOLDS", "AUPRO_SOURCES", "IMAGE_KEYS",
    "PIXEL_KEYS", "METRIC_KEYS",
    "DEFAULT_PIXEL_BINS", "DEFAULT_IMAGE_SCORE", "auroc", "average_precision", "f1_max",
    "image_metrics", "aupro", "label_regions", "trapezoid", "ThresholdAccumulator",
    "image_threshold", "normalize", "is_anomalous",
]
