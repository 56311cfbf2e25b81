"""Evaluation as the paper does it — per class, image and pixel metrics, means per dataset
and overall — with any batch size; the decision thresholds and normalisation of each class
and of all the data (:mod:`unimmad.metrics.thresholds`); and pictures of the highest- and
lowest-scored items of each class, on the class's colour scale."""
from __future__ import annotations

import heapq
import logging
import os
import sys
from typing import Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from ..data.io import safe_component
from ..data.multi import collate
from ..metrics import DEFAULT_PIXEL_BINS, Evaluator, MetricsReport, ThresholdAccumulator
from ..metrics.thresholds import RULES, is_anomalous, normalize
from .visualize import RAW_SCALE, modality_images, save_overlay

__all__ = ["evaluate", "save_overlay", "predict_batches", "THRESHOLDS_FORMAT",
           "threshold_for", "describe_prediction", "thresholds_table"]

log = logging.getLogger(__name__)

#: ``format`` of the thresholds record (``config.json["thresholds"]``, ``thresholds.json``).
THRESHOLDS_FORMAT = "unimmad-thresholds"


def predict_batches(model, dataset, batch_size: int = 16, device=None, num_workers: int = 0,
                    progress: bool = True):
    """Yield ``(batch, anomaly_map [B, H, W] cpu, pred_score [B] cpu)`` over ``dataset``
    (a progress bar on a terminal unless ``progress=False``)."""
    device = device or next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                        num_workers=num_workers)
    from tqdm.auto import tqdm
    loader_it = tqdm(loader, desc="evaluate", unit="batch", disable=None if progress else True,
                     leave=False, file=sys.stderr)
    model.eval()
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for batch in loader_it:
            out = model(batch["images"].to(device, dtype), batch["num_modalities"].to(device))
            yield batch, out.anomaly_map.float().cpu(), out.pred_score.float().cpu()


def threshold_for(thresholds: Optional[Dict], level: str, class_name: Optional[str] = None
                  ) -> Optional[Dict]:
    """The ``level`` (``"image"`` | ``"pixel"``) record of ``class_name`` in a thresholds
    record, falling back to the overall one; ``None`` when there is none."""
    if not thresholds:
        return None
    if class_name is not None:
        rec = (thresholds.get("classes") or {}).get(class_name) or {}
        if rec.get(level):
            return rec[level]
    return (thresholds.get("overall") or {}).get(level)


def describe_prediction(score: float, image_rec: Optional[Dict]) -> str:
    """``"predicted ANOMALOUS · score 0.83 (raw 0.2412, threshold 0.2210)"``."""
    if image_rec is None:
        return f"score {score:.4f} (raw; no threshold stored)"
    label = "ANOMALOUS" if is_anomalous(score, image_rec) else "NORMAL"
    return (f"predicted {label} · score {normalize(score, image_rec):.2f} (raw {score:.4g}, "
            f"threshold {float(image_rec['threshold']):.4g})")


def _short_path(path: str, parts: int = 3) -> str:
    """The last ``parts`` components of an item's path (``Ungood/img/001.png``): enough to
    tell ``good/001.png`` from ``crack/001.png`` in a title or a file name."""
    bits = [b for b in str(path).replace(os.sep, "/").split("/") if b]
    return "/".join(bits[-parts:])


def _verdict(pred: str, label: int) -> str:
    """`` · ground truth defect: missed`` and the like, so that a green NORMAL on a
    defect is not read as a success."""
    truth = "defect" if label else "good"
    if pred == "unscored":
        return f" · ground truth {truth}"
    right = (pred == "anomalous") == bool(label)
    what = "correct" if right else ("missed" if label else "false alarm")
    return f" · ground truth {truth}: {what}"


def _write_overlays(out_dir: str, keep: Dict, thresholds: Dict) -> int:
    written = 0
    for c, slots in sorted(keep.items()):
        img_rec = threshold_for(thresholds, "image", c)
        pix_rec = threshold_for(thresholds, "pixel", c)
        folder = os.path.join(out_dir, "overlays", safe_component(c))
        for name, heap in slots.items():
            items = sorted(heap, reverse=True)
            for rank, (key, _, it) in enumerate(items):
                score = key if name == "high" else -key
                pred = "anomalous" if img_rec and is_anomalous(score, img_rec) else (
                    "normal" if img_rec else "unscored")
                norm = normalize(score, img_rec) if img_rec else score
                shown = _short_path(it["path"])
                stem = safe_component(os.path.splitext(shown)[0].replace("/", "_"))
                fname = f"{'highest' if name == 'high' else 'lowest'}{rank + 1}_{pred}_" \
                        f"{norm:.2f}_{stem}.png"
                mask = it["mask"] > 0.5
                pred_mask = is_anomalous(it["map"], pix_rec) if pix_rec else None
                save_overlay(os.path.join(folder, fname), it["modalities"], it["map"],
                             pixel_record=pix_rec, scale=None if pix_rec else RAW_SCALE,
                             pred_mask=pred_mask, gt_mask=mask if mask.any() else None, gt_label=it["label"],
                             title=f"{c} · {shown} · "
                                   f"{'highest' if name == 'high' else 'lowest'}-scored "
                                   f"#{rank + 1} of the class",
                             prediction=describe_prediction(score, img_rec)
                             + _verdict(pred, it["label"]))
                written += 1
    return written


def evaluate(model, dataset, out_dir: Optional[str] = None, batch_size: int = 16,
             aupro: str = "mvtec3d", pixel_bins: Optional[int] = DEFAULT_PIXEL_BINS, overlays: int = 2,
             num_workers: int = 0, progress: bool = True) -> MetricsReport:
    """Evaluate ``model`` on ``dataset`` (unified samples, e.g. a reader's test split).

    Returns the :class:`~unimmad.metrics.MetricsReport` (per class, per dataset, mean of
    classes, mean of datasets) with ``report.thresholds``: the decision thresholds and
    normalisation at image and pixel level of each class and of all the data
    (``{"format": "unimmad-thresholds", "version": 1, "image_score", "rules", "overall":
    {"image": record, "pixel": record}, "classes": {class: {...}}}``, records as in
    :mod:`unimmad.metrics.thresholds`).

    With ``out_dir``: ``results.{csv,json,md}``, ``thresholds.json`` and, for each class,
    pictures of its ``overlays`` highest- and lowest-scored items in
    ``out_dir/overlays/<class>/`` named ``highest1_<prediction>_<normalised
    score>_<last two folders and file stem>.png`` (see :mod:`unimmad.engine.visualize`;
    the class name made one safe folder name by :func:`~unimmad.data.io.safe_component`:
    a name with ``/``, ``..`` or an absolute path never leads outside ``out_dir``).
    """
    ev = Evaluator(aupro=aupro, pixel_bins=pixel_bins)
    overall = ThresholdAccumulator(pixel_bins)
    keep: Dict[str, Dict[str, List]] = {}
    counter = 0
    for batch, maps, scores in predict_batches(model, dataset, batch_size,
                                               num_workers=num_workers, progress=progress):
        ev.update(scores, batch["labels"], batch["class_names"], batch["datasets"], maps,
                  batch["masks"])
        overall.update(scores, batch["labels"], maps, batch["masks"])
        if out_dir is None or overlays <= 0:
            continue
        for i, c in enumerate(batch["class_names"]):
            counter += 1
            slot = keep.setdefault(c, {"high": [], "low": []})
            score = float(scores[i])
            # min-heaps of the highest scores, and of the lowest (negated)
            for name, key in (("high", score), ("low", -score)):
                heap = slot[name]
                if len(heap) >= overlays and key <= heap[0][0]:
                    continue
                item = {"modalities": modality_images(
                            batch["images"][i], batch["num_modalities"][i],
                            str(batch["modalities"][i]).split("+")),
                        "map": maps[i].numpy(), "mask": batch["masks"][i].numpy(),
                        "label": int(batch["labels"][i]), "path": batch["paths"][i]}
                entry = (key, counter, item)
                if len(heap) < overlays:
                    heapq.heappush(heap, entry)
                else:
                    heapq.heappushpop(heap, entry)
    report = ev.compute(progress=progress)
    overall_rec = overall.thresholds()
    report.thresholds = {
        "format": THRESHOLDS_FORMAT, "version": 1, "image_score": report.meta.get("image_score"),
        "pixel_estimator": report.meta.get("pixel_estimator"), "rules": dict(RULES),
        "overall": overall_rec, "classes": ev.thresholds(),
        "num_images": overall.num_images}
    if out_dir is not None:
        import json
        os.makedirs(out_dir, exist_ok=True)
        report.write(out_dir, "results")
        with open(os.path.join(out_dir, "thresholds.json"), "w", encoding="utf-8") as f:
            json.dump(report.thresholds, f, indent=2, allow_nan=False)
            f.write("\n")
        n = _write_overlays(out_dir, keep, report.thresholds)
        if n:
            log.debug("wrote %d overlays into %s", n, os.path.join(out_dir, "overlays"))
    return report


def thresholds_table(thresholds: Dict) -> str:
    """A Markdown table of a thresholds record: per class and overall, each level's
    threshold, rule, and the data it was set on."""
    lines = ["| class | image threshold | rule | pixel threshold | rule |",
             "|---|---:|---|---:|---|"]

    def cells(rec):
        if not rec:
            return ["—", "—"]
        rule = rec["rule"].replace("_", "-")
        if rec.get("f1") is not None:
            rule += f" (F1 {rec['f1']:.3f})"
        return [f"{rec['threshold']:.4g}", rule]

    rows = list(sorted((thresholds.get("classes") or {}).items()))
    rows.append(("**overall**", thresholds.get("overall") or {}))
    for name, rec in rows:
        lines.append("| " + " | ".join([name] + cells(rec.get("image")) + cells(rec.get("pixel")))
                     + " |")
    return "\n".join(lines) + "\n"

