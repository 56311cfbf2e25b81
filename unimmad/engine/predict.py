"""Predictions for image files: each item is 1–4 files, one per modality.

:func:`expand_items` turns command-line item specs (files, folders, globs) into items;
:func:`predict_files` runs the model and writes, per item, the raw and normalised score,
the label, the binary mask (PNG), the anomaly map (NPY) and a picture, using the
thresholds :func:`~unimmad.engine.evaluate` stored with the model.
"""
from __future__ import annotations

import csv
import glob
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checks import check_int
from ..data.io import IMAGE_EXTENSIONS, list_images, read_image, read_tiff, safe_component
from ..data.preprocess import ModalityImage, Preprocess, depth_from_xyz, process_modality
from ..metrics.thresholds import check_record, is_anomalous, normalize
from .evaluate import describe_prediction, threshold_for
from .visualize import RAW_SCALE, modality_images, save_overlay

__all__ = ["load_item", "predict_files", "expand_items", "CSV_FIELDS", "RAW_SCALE"]

log = logging.getLogger(__name__)

#: Columns of ``scores.csv``.
CSV_FIELDS = ["item", "files", "score", "score_normalised", "label", "threshold_group",
              "map", "mask", "overlay"]
_GLOB_CHARS = set("*?[")


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


def _load(paths: Sequence[str], pre: Preprocess, modalities: Optional[Sequence[str]] = None
          ) -> Tuple[torch.Tensor, Tuple[int, int], List[str]]:
    """``(images [M_max, 3, S, S], (H, W) of the first file, modality names)``."""
    if not 1 <= len(paths) <= pre.max_modalities:
        raise ValueError(f"an item takes 1..{pre.max_modalities} files, got {len(paths)}: "
                         f"{list(paths)}")
    if modalities is not None and len(modalities) != len(paths):
        raise ValueError(f"--modalities names {len(modalities)} modalities for the "
                         f"{len(paths)} files of {list(paths)}")
    out = torch.zeros(pre.max_modalities, 3, pre.image_size, pre.image_size)
    hw, names = None, []
    for slot, path in enumerate(paths):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file not found: {path!r}")
        name = modalities[slot] if modalities is not None else None
        m = _modality_of(path, name)
        out[slot] = process_modality(m, pre)
        hw = hw or m.hw
        names.append(m.name)
    return out, hw, names


def load_item(paths: Sequence[str], pre: Preprocess,
              modalities: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Files of one item → ``[M_max, 3, S, S]`` (zero past the given modalities).
    ``modalities`` names each file's modality (``rgb``, ``depth``, ``infrared``, ``ct``, ...;
    default: ``depth`` for ``.tiff`` point clouds, else ``rgb``)."""
    return _load(paths, pre, modalities)[0]


def _expand_part(part: str) -> Optional[List[str]]:
    """One modality's part of an item spec: ``None`` for a plain file, else the files of a
    folder (image files, natural order, not recursive) or of a glob (sorted)."""
    if os.path.isfile(part):
        return None
    if os.path.isdir(part):
        files = [str(p) for p in list_images(part)]
        if not files:
            raise FileNotFoundError(f"no image file ({', '.join(IMAGE_EXTENSIONS)}) in the "
                                    f"folder {part!r}")
        return files
    if _GLOB_CHARS & set(part):
        files = sorted(p for p in glob.glob(part, recursive=True) if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"no file matches {part!r}")
        return files
    raise FileNotFoundError(f"input not found: {part!r} (not a file, a folder or a glob "
                            "pattern)")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def expand_items(specs: Sequence[str]) -> List[List[str]]:
    """Items (lists of files, one per modality) from command-line specs.

    A spec is one or more comma-separated parts, one per modality.  A part is a file, a
    folder (its image files, not recursive) or a glob pattern (quote it, e.g.
    ``"scans/*.png"``; ``**`` recurses).  A spec of files is one item; a spec of one
    folder or glob gives one item per file; with several folders / globs (e.g.
    ``rgb/,xyz/``) the files are paired by name without extension (``rgb/000.png`` with
    ``xyz/000.tiff``), and every name must be in every part."""
    items: List[List[str]] = []
    for spec in specs:
        parts = [p for p in str(spec).split(",") if p]
        if not parts:
            raise ValueError(f"empty item {spec!r}")
        expanded = [_expand_part(p) for p in parts]
        if all(e is None for e in expanded):
            items.append(parts)
            continue
        if any(e is None for e in expanded):
            raise ValueError(f"item {spec!r} mixes single files with folders or globs; give "
                             "either files (one item) or folders / globs (paired by name)")
        if len(expanded) == 1:
            items.extend([f] for f in expanded[0])
            continue
        by_stem = []
        for part, files in zip(parts, expanded):
            d: Dict[str, str] = {}
            for f in files:
                if _stem(f) in d:
                    raise ValueError(f"{part!r} holds two files named {_stem(f)!r} "
                                     f"({d[_stem(f)]}, {f}); files are paired by name")
                d[_stem(f)] = f
            by_stem.append(d)
        names = list(by_stem[0])
        for part, d in zip(parts[1:], by_stem[1:]):
            missing = sorted(set(names) ^ set(d))
            if missing:
                raise ValueError(f"item {spec!r}: {parts[0]!r} and {part!r} do not hold the "
                                 f"same file names (unpaired: {', '.join(missing[:5])}"
                                 f"{', ...' if len(missing) > 5 else ''})")
        items.extend([d[n] for d in by_stem] for n in names)
    return items


def _save_mask(path: str, mask: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray((mask.astype(np.uint8) * 255)).save(path)


def _mask_at(amap: np.ndarray, hw: Tuple[int, int], rec: Dict) -> np.ndarray:
    """The predicted mask at the first file's resolution (the map resized bilinearly)."""
    t = torch.from_numpy(np.ascontiguousarray(amap, np.float32))[None, None]
    if tuple(t.shape[-2:]) != tuple(hw):
        t = torch.nn.functional.interpolate(t, size=tuple(hw), mode="bilinear",
                                            align_corners=False)
    return is_anomalous(t[0, 0].numpy(), rec)


def predict_files(model, items: List[Sequence[str]], out_dir: str,
                  modalities: Optional[Sequence[str]] = None, batch_size: int = 8,
                  thresholds: Optional[Dict] = None, class_name: Optional[str] = None,
                  progress: bool = True, overlays: bool = True) -> List[dict]:
    """Run ``model`` on ``items`` (lists of files, one per modality) and write into
    ``out_dir``, per item ``i`` (``<stem>`` = ``<i>_<first file's name>``, made safe):

    * ``maps/<stem>.npy`` — the raw anomaly map, float32 ``[S, S]`` (model resolution);
    * ``masks/<stem>.png`` — the predicted mask (255 = defect: map ≥ the pixel threshold),
      at the first file's resolution;
    * ``overlays/<stem>_<label>_<score>.png`` — the picture (every modality, the map on
      the stored colour scale with a colour bar, the predicted-mask contour);
    * one row of ``scores.csv`` (:data:`CSV_FIELDS`): raw score, normalised score
      (threshold at 0.5), label (``anomalous`` / ``normal``), which thresholds were used.

    ``thresholds``: the record :func:`~unimmad.engine.evaluate` computed (stored in the
    checkpoint's ``config.json``); ``class_name`` picks a class's thresholds (default: the
    overall ones).  Without thresholds, labels, normalised scores and masks are left
    empty (a warning says so) and pictures use the raw range :data:`RAW_SCALE`.
    Returns the CSV rows."""
    batch_size = check_int("batch_size", batch_size, 1)
    if not items:
        raise ValueError("predict: no items")
    img_rec = threshold_for(thresholds, "image", class_name)
    pix_rec = threshold_for(thresholds, "pixel", class_name)
    if class_name is not None and thresholds and class_name not in (thresholds.get("classes") or {}):
        known = ", ".join(sorted(thresholds.get("classes") or {}))
        raise ValueError(f"no thresholds for class {class_name!r} (known: {known})")
    for level, rec in (("image", img_rec), ("pixel", pix_rec)):
        if rec is not None:
            check_record(rec, f"thresholds ({level} level)")
    if img_rec is None:
        warnings.warn("no thresholds stored with this model (run `unimmad eval` on it first, "
                      "or give --thresholds eval/thresholds.json): writing raw scores and "
                      "maps only, no labels, normalised scores or masks", UserWarning,
                      stacklevel=2)
    group = class_name or ("overall" if img_rec else "")
    pre = Preprocess.from_config(model.config)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    folders = {k: os.path.join(out_dir, k) for k in ("maps", "masks", "overlays")}
    for k, f in folders.items():
        if k != "masks" or pix_rec is not None:
            os.makedirs(f, exist_ok=True)
    rows = []
    model.eval()
    from tqdm.auto import tqdm
    bar = tqdm(total=len(items), desc="predict", unit="item", file=sys.stderr,
               disable=None if progress else True)
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            loaded = [_load(p, pre, modalities) for p in chunk]
            images = torch.stack([x[0] for x in loaded])
            nm = torch.tensor([len(p) for p in chunk])
            with torch.inference_mode():
                out = model(images.to(device, dtype), nm.to(device))
            for j, paths in enumerate(chunk):
                i = start + j
                stem = f"{i:05d}_{safe_component(_stem(paths[0]))}"
                amap = out.anomaly_map[j].float().cpu().numpy()
                score = float(out.pred_score[j])
                np.save(os.path.join(folders["maps"], stem + ".npy"), amap)
                row = {"item": i, "files": ";".join(paths), "score": score,
                       "score_normalised": "", "label": "", "threshold_group": group,
                       "map": f"maps/{stem}.npy", "mask": "", "overlay": ""}
                name = stem
                if img_rec is not None:
                    row["score_normalised"] = round(normalize(score, img_rec), 6)
                    row["label"] = "anomalous" if is_anomalous(score, img_rec) else "normal"
                    name = f"{stem}_{row['label']}_{row['score_normalised']:.2f}"
                pred_mask = None
                if pix_rec is not None:
                    pred_mask = is_anomalous(amap, pix_rec)
                    _save_mask(os.path.join(folders["masks"], stem + ".png"),
                               _mask_at(amap, loaded[j][1], pix_rec))
                    row["mask"] = f"masks/{stem}.png"
                if overlays:
                    save_overlay(os.path.join(folders["overlays"], name + ".png"),
                                 modality_images(images[j], len(paths), loaded[j][2]), amap,
                                 pixel_record=pix_rec, scale=None if pix_rec else RAW_SCALE,
                                 pred_mask=pred_mask,
                                 title=" + ".join(os.path.basename(p) for p in paths),
                                 prediction=describe_prediction(score, img_rec))
                    row["overlay"] = f"overlays/{name}.png"
                rows.append(row)
            bar.update(len(chunk))
    finally:
        bar.close()
    with open(os.path.join(out_dir, "scores.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return rows
