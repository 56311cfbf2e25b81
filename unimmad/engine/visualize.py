"""Pictures of predictions that a person reads correctly.

One picture per item (:func:`save_overlay`): every modality of the item side by side, each
with the contour of the predicted mask; the anomaly map over the first modality, coloured
on a fixed scale with a colour bar; the ground truth only where it is known, in its own
panel, labelled as such; a title giving the prediction, the normalised and raw score and
the threshold.

The colour scale is the normalised map of :mod:`unimmad.metrics.thresholds`: 0 at the
lowest and 1 at the highest map value of the class's evaluation data, 0.5 at the pixel
threshold — the same scale for every picture of a class, so a low-scored normal item looks
cold and a defect hot.  Without a stored normalisation the caller gives one raw range for
the whole run (``scale=(low, high)``).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..metrics.thresholds import normalize

__all__ = ["display_image", "modality_images", "save_overlay", "colour_scale", "CMAP", "RAW_SCALE"]

#: Colour map of anomaly maps (blue = low, red = high).
CMAP = "jet"
#: Colour range of a raw map (1 − cosine) when no normalisation is stored.
RAW_SCALE = (0.0, 1.0)


def display_image(slot: torch.Tensor) -> np.ndarray:
    """One modality slot ``[3, H, W]`` as the model sees it (ImageNet-normalised photo, or
    a standardised depth / scan) → uint8 ``[H, W, 3]`` for display.  Photos are
    un-normalised; anything outside the photo range (depth) — un-normalised values below
    −0.05 or above 1.05 (rounding allowed) — is stretched to its own range."""
    x = slot.float().cpu()
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    y = x * std + mean
    lo, hi = float(y.min()), float(y.max())
    if lo < -0.05 or hi > 1.05:  # not an ImageNet-normalised photo (e.g. depth): stretch x
        lo, hi = float(x.min()), float(x.max())
        y = (x - lo) / max(hi - lo, 1e-6)
    return (y.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def modality_images(images: torch.Tensor, num_modalities: int,
                    names: Optional[Sequence[str]] = None) -> List[Tuple[str, np.ndarray]]:
    """``[(name, uint8 [H, W, 3])]`` of the first ``num_modalities`` slots of one item
    (``images [M, 3, H, W]``); ``names`` default to ``modality 1``, ``modality 2``, ..."""
    n = int(num_modalities)
    names = list(names or [])
    return [(names[i] if i < len(names) else f"modality {i + 1}", display_image(images[i]))
            for i in range(n)]


def colour_scale(anomaly_map: np.ndarray, pixel_record: Optional[Dict] = None,
                 scale: Optional[Tuple[float, float]] = None
                 ) -> Tuple[np.ndarray, float, float]:
    """``(values shown, vmin, vmax)`` of a map's colours: with the class's pixel record,
    the normalised map on ``[0, 1]`` (threshold at 0.5) — the same scale for every picture
    of the class; else the raw map on ``scale``.  Never the map's own range: a picture
    scaled to itself paints its highest value red even when the whole map is normal."""
    amap = np.asarray(anomaly_map, np.float64)
    if pixel_record is not None:
        return np.asarray(normalize(amap, pixel_record)), 0.0, 1.0
    if scale is None:
        raise ValueError("save_overlay needs the class's pixel_record or a fixed scale=(low, "
                         "high) for the colours")
    lo, hi = (float(v) for v in scale)
    if not hi > lo:
        raise ValueError(f"scale must be (low, high) with low < high, got {scale}")
    return amap, lo, hi


def _contour(ax, mask: np.ndarray, color: str, style: str = "solid", width: float = 1.2):
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=width,
                   linestyles=style)


def save_overlay(path: str, modalities: Sequence[Tuple[str, np.ndarray]],
                 anomaly_map: np.ndarray, *, pixel_record: Optional[Dict] = None,
                 scale: Optional[Tuple[float, float]] = None,
                 pred_mask: Optional[np.ndarray] = None,
                 gt_mask: Optional[np.ndarray] = None, gt_label: Optional[int] = None,
                 title: str = "", prediction: Optional[str] = None) -> str:
    """Write the picture of one item as a PNG (see the module docstring); returns ``path``.

    Args:
        modalities: ``[(name, uint8 [H, W, 3])]``, every modality of the item.
        anomaly_map: raw map ``[H, W]``.
        pixel_record: the class's pixel threshold record: colours show the normalised map
            (threshold at 0.5; colour bar ticks give the raw values too).
        scale: ``(low, high)`` raw colour range when there is no record (one range for
            every picture of a run); one of ``pixel_record`` and ``scale`` is needed.
        pred_mask: predicted defect pixels (contour on every modality and on the map).
        gt_mask, gt_label: ground truth where known (``gt_label`` 0/1; ``gt_mask`` the
            defect pixels, ``None`` when the data has no mask); no panel when both are
            ``None``.
        title: first title line (e.g. class and file); prediction: second line (e.g.
            ``"predicted ANOMALOUS · score 0.83 ..."``), red when it says anomalous.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not modalities:
        raise ValueError("save_overlay needs at least one modality image")
    shown, vmin, vmax = colour_scale(anomaly_map, pixel_record, scale)
    has_gt = gt_label is not None or gt_mask is not None
    panels = len(modalities) + 1 + int(has_gt)
    fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels + 0.6, 3.5), dpi=100,
                             squeeze=False)
    axes = axes[0]
    for ax, (name, img) in zip(axes, modalities):
        ax.imshow(img)
        _contour(ax, pred_mask, "white")
        ax.set_title(name + (" · predicted defect pixels outlined"
                             if pred_mask is not None and pred_mask.any() else ""), fontsize=8)
    ax = axes[len(modalities)]
    base = modalities[0][1].mean(axis=2) if modalities[0][1].ndim == 3 else modalities[0][1]
    ax.imshow(base, cmap="gray")
    im = ax.imshow(shown, cmap=CMAP, vmin=vmin, vmax=vmax, alpha=0.55)
    _contour(ax, pred_mask, "white")
    ax.set_title("anomaly map", fontsize=8)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=7)
    if pixel_record is not None:
        lo, t, hi = (float(pixel_record[k]) for k in ("low", "threshold", "high"))
        bar.set_ticks([0.0, 0.5, 1.0])
        bar.set_ticklabels([f"0\n(raw {lo:.3g})", f"0.5 threshold\n(raw {t:.3g})",
                            f"1\n(raw {hi:.3g})"])
        bar.ax.axhline(0.5, color="white", linewidth=1.5)
        bar.set_label("normalised map (class scale)", fontsize=7)
    else:
        bar.set_label("raw map (1 − cosine), no stored scale", fontsize=7)
    if has_gt:
        ax = axes[-1]
        ax.imshow(modalities[0][1])
        if gt_mask is not None and np.asarray(gt_mask).any():
            gt = np.asarray(gt_mask) > 0.5
            ax.imshow(np.ma.masked_where(~gt, gt.astype(float)), cmap="autumn", alpha=0.35,
                      vmin=0, vmax=1)
            _contour(ax, gt, "lime", width=1.6)
            text = "ground truth: defect (outlined)"
        elif gt_label == 1:
            text = "ground truth: defect (no mask)"
        else:
            text = "ground truth: good (no defect)"
        ax.set_title(text, fontsize=8)
    for ax in axes:
        ax.axis("off")
    color = "black"
    if prediction and "ANOMALOUS" in prediction:
        color = "firebrick"
    elif prediction and "NORMAL" in prediction:
        color = "darkgreen"
    if title:
        fig.suptitle(title, fontsize=9, y=0.99)
        if prediction:
            fig.text(0.5, 0.905, prediction, ha="center", va="top", fontsize=9, color=color,
                     fontweight="bold")
    elif prediction:      # no first line: the prediction is the title, in its colour
        fig.suptitle(prediction, fontsize=9, y=0.99, color=color, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
