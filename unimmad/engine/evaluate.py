"""Evaluation as the paper does it — per class, image and pixel metrics, means per dataset
and overall — with any batch size, plus PNG overlays of the highest- and lowest-scored
items of each class."""
from __future__ import annotations

import heapq
import os
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.io import safe_component
from ..data.multi import collate
from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..metrics import DEFAULT_PIXEL_BINS, Evaluator, MetricsReport

__all__ = ["evaluate", "save_overlay", "predict_batches"]


def predict_batches(model, dataset, batch_size: int = 16, device=None, num_workers: int = 0,
                    progress: bool = True):
    """Yield ``(batch, anomaly_map [B, H, W] cpu, pred_score [B] cpu)`` over ``dataset``."""
    device = device or next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                        num_workers=num_workers)
    try:
        from tqdm.auto import tqdm
        loader_it = tqdm(loader, desc="evaluate", disable=not progress, leave=False,
                         file=sys.stderr)
    except ImportError:  # pragma: no cover
        loader_it = loader
    model.eval()
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for batch in loader_it:
            out = model(batch["images"].to(device, dtype), batch["num_modalities"].to(device))
            yield batch, out.anomaly_map.float().cpu(), out.pred_score.float().cpu()


def _display_image(images: torch.Tensor) -> np.ndarray:
    """First modality slot ``[3, H, W]`` (ImageNet-normalised or not) → uint8 ``[H, W, 3]``."""
    x = images[0].float()
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    x = x * std + mean
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.05 or hi > 1.05:  # not an ImageNet-normalised photo (e.g. depth): stretch
        x = (x - lo) / max(hi - lo, 1e-6)
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def save_overlay(path: str, image: np.ndarray, anomaly_map: np.ndarray,
                 mask: Optional[np.ndarray] = None, title: str = "") -> None:
    """Image | anomaly-map overlay (jet colormap, per-image scaling) | ground truth, as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = 3 if mask is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3 * panels, 3.2), dpi=80)
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(image)
    axes[1].imshow(anomaly_map, cmap="jet", alpha=0.5)
    axes[1].set_title(title, fontsize=8)
    if mask is not None:
        axes[2].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[2].set_title("ground truth", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def evaluate(model, dataset, out_dir: Optional[str] = None, batch_size: int = 16,
             aupro: str = "mvtec3d", pixel_bins: Optional[int] = DEFAULT_PIXEL_BINS, overlays: int = 2,
             num_workers: int = 0, progress: bool = True) -> MetricsReport:
    """Evaluate ``model`` on ``dataset`` (unified samples, e.g. a reader's test split).

    Returns the :class:`~unimmad.metrics.MetricsReport` (per class, per dataset, mean of
    classes, mean of datasets).  With ``out_dir``: ``results.{csv,json,md}`` and, for each
    class, PNG overlays of its ``overlays`` highest- and lowest-scored items in
    ``out_dir/overlays/<class>/`` (the class name made one safe folder name by
    :func:`~unimmad.data.io.safe_component`: a name with ``/``, ``..`` or an absolute path
    never leads outside ``out_dir``).
    """
    ev = Evaluator(aupro=aupro, pixel_bins=pixel_bins)
    keep: Dict[str, Dict[str, List]] = {}
    counter = 0
    for batch, maps, scores in predict_batches(model, dataset, batch_size,
                                               num_workers=num_workers, progress=progress):
        ev.update(scores, batch["labels"], batch["class_names"], batch["datasets"], maps,
                  batch["masks"])
        if out_dir is None or overlays <= 0:
            continue
        for i, c in enumerate(batch["class_names"]):
            counter += 1
            item = (float(scores[i]), counter, {
                "image": _display_image(batch["images"][i]), "map": maps[i].numpy(),
                "mask": batch["masks"][i].numpy(), "label": int(batch["labels"][i]),
                "path": batch["paths"][i]})
            slot = keep.setdefault(c, {"high": [], "low": []})
            # min-heap of the highest scores, and of the lowest (negated)
            for name, key in (("high", item[0]), ("low", -item[0])):
                entry = (key, item[1], item[2])
                if len(slot[name]) < overlays:
                    heapq.heappush(slot[name], entry)
                else:
                    heapq.heappushpop(slot[name], entry)
    report = ev.compute(progress=progress)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        report.write(out_dir, "results")
        for c, slots in keep.items():
            for name, heap in slots.items():
                for rank, (key, _, it) in enumerate(sorted(heap, reverse=True)):
                    score = key if name == "high" else -key
                    save_overlay(os.path.join(out_dir, "overlays", safe_component(c),
                                              f"{name}{rank + 1}.png"),
                                 it["image"], it["map"], it["mask"],
                                 f"score {score:.3f} ({'defect' if it['label'] else 'good'})")
    return report
