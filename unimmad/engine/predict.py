"""Anomaly maps and scores for image files: each item is 1–4 files, one per modality."""
from __future__ import annotations

import csv
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..data.io import read_image, read_tiff, safe_component
from ..data.preprocess import ModalityImage, Preprocess, depth_from_xyz, process_modality

__all__ = ["load_item", "predict_files"]


def _modality_of(path: str, name: Optional[str]) -> ModalityImage:
    if path.lower().endswith((".tif", ".tiff")) or name == "depth":
        arr = read_tiff(path) if path.lower().endswith((".tif", ".tiff")) else read_image(path)[..., 0]
        if arr.ndim == 3 and arr.shape[2] >= 3:
            z, valid = depth_from_xyz(arr)
        else:
            z = np.asarray(arr, np.float64)
            valid = np.isfinite(z) & (z != 0)
        return ModalityImage("depth", z, valid, path)
    return ModalityImage(name or "rgb", read_image(path), None, path)


def load_item(paths: Sequence[str], pre: Preprocess,
              modalities: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Files of one item → ``[M_max, 3, S, S]`` (zero past the given modalities).
    ``modalities`` names each file's modality (``rgb``, ``depth``, ``infrared``, ``ct``, ...;
    default: ``depth`` for ``.tiff`` point clouds, else ``rgb``)."""
    if not 1 <= len(paths) <= pre.max_modalities:
        raise ValueError(f"an item takes 1..{pre.max_modalities} files, got {len(paths)}: {paths}")
    if modalities is not None and len(modalities) != len(paths):
        raise ValueError(f"{len(modalities)} modality names for {len(paths)} files")
    out = torch.zeros(pre.max_modalities, 3, pre.image_size, pre.image_size)
    for slot, path in enumerate(paths):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file not found: {path!r}")
        name = modalities[slot] if modalities is not None else None
        out[slot] = process_modality(_modality_of(path, name), pre)
    return out


def predict_files(model, items: List[Sequence[str]], out_dir: str,
                  modalities: Optional[Sequence[str]] = None, batch_size: int = 8) -> List[dict]:
    """Run ``model`` on ``items`` (lists of files) and write, per item, the anomaly map as
    ``<out_dir>/maps/<i>_<stem>.npy`` and ``.png`` (heatmap), and all scores in
    ``<out_dir>/scores.csv``.  Returns the CSV rows."""
    from .evaluate import _display_image, save_overlay
    pre = Preprocess.from_config(model.config)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    os.makedirs(os.path.join(out_dir, "maps"), exist_ok=True)
    rows = []
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        images = torch.stack([load_item(p, pre, modalities) for p in chunk])
        nm = torch.tensor([len(p) for p in chunk])
        with torch.inference_mode():
            out = model(images.to(device, dtype), nm.to(device))
        for j, paths in enumerate(chunk):
            i = start + j
            stem = f"{i:05d}_{safe_component(os.path.splitext(os.path.basename(paths[0]))[0])}"
            amap = out.anomaly_map[j].float().cpu().numpy()
            np.save(os.path.join(out_dir, "maps", stem + ".npy"), amap)
            save_overlay(os.path.join(out_dir, "maps", stem + ".png"),
                         _display_image(images[j]), amap, None,
                         f"score {float(out.pred_score[j]):.4f}")
            rows.append({"item": i, "files": ";".join(paths),
                         "score": float(out.pred_score[j]), "map": f"maps/{stem}.npy"})
    with open(os.path.join(out_dir, "scores.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["item", "files", "score", "map"])
        w.writeheader()
        w.writerows(rows)
    return rows
