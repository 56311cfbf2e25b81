"""Reader for the authors' ``meta.json`` index format (the UniMMAD release)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .base import DEFAULT_LOSS_WEIGHTS, AnomalyDataset, Record, loss_weight_for
from .io import DataLayoutError, DataReadError, MissingPathError, read_npy
from .preprocess import ModalityImage

__all__ = ["MetaJsonDataset", "RELEASE_DATASET_ALIASES"]

#: Dataset suffixes of the release's class names → this package's dataset names (used only
#: to find a default loss weight).
RELEASE_DATASET_ALIASES: Mapping[str, str] = {
    "mvtec": "mvtec", "visa1cls": "visa", "mvtec3d": "mvtec3d", "EyePre": "eyecandies",
    "AD": "mulsen", "BratsAD1K": "brats", "BratsAD": "brats", "RetinaAD": "retinaloct",
    "LiverAD": "liverct", "HyperAD": "hyperkvasir",
}

_TYPES = {"rgb": "rgb", "gray": "gray", "depth": "depth", "wofg_depth": "depth"}


class MetaJsonDataset(AnomalyDataset):
    """Samples listed in a ``meta.json`` index (the format the authors' release reads)::

        {"train": {"<class>_<dataset>": [item, ...], ...},
         "test":  {"<class>_<dataset>": [item, ...], ...}}

        item = {"img_path": "rel/path.png" | ["rel/a.png", "rel/b.npy", ...],
                "img_type": "rgb" | ["rgb", "depth", ...],      (default "rgb")
                "mask_path": "rel/mask.png" | "" | null,
                "cls_name": "<class>_<dataset>", "anomaly": 0 | 1, ...}

    Paths are relative to ``root``.  Image types: ``rgb`` (photograph), ``gray`` (replicated
    to 3 channels), ``depth`` (``.npy`` ``[H, W, C]``: channel 0 depth, last channel the
    foreground mask — background pixels are invalid) and ``wofg_depth`` (``.npy``, every
    pixel valid); ``.tif(f)`` depth files are read as organised point clouds.  Depth is
    filled and normalised by :class:`~unimmad.data.Preprocess` (``depth_fill="mean",
    depth_norm="center"`` reproduces the release).  The dataset of an item is the text
    after the last ``_`` of its ``cls_name`` (as in the release); its loss weight comes
    from ``loss_weights`` (by that suffix) or else from :data:`DEFAULT_LOSS_WEIGHTS` through
    :data:`RELEASE_DATASET_ALIASES`.

    Args:
        meta_file: the index, relative to ``root`` or absolute (default ``meta.json``).
        classes: ``<class>_<dataset>`` keys to read (default all of the split).
        loss_weights: ``{dataset suffix: weight}``.
    """

    dataset_name = "meta"
    SPLITS = ("train", "test")

    def __init__(self, root, split: str = "train", *, meta_file: str = "meta.json",
                 loss_weights: Optional[Mapping[str, float]] = None, **kwargs):
        self.meta_file = meta_file
        self.loss_weights = None if loss_weights is None else dict(loss_weights)
        super().__init__(root, split, **kwargs)

    def _index(self, classes):
        path = Path(self.meta_file)
        if not path.is_absolute():
            path = self.root / path
        if not path.is_file():
            raise MissingPathError(path, "meta.json index not found")
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataReadError(path, f"cannot read index ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get(self.split), dict):
            raise DataLayoutError(path, f"no '{self.split}' mapping of classes in the index")
        table = meta[self.split]
        names = list(table) if classes is None else list(classes)
        out = []
        for name in names:
            if name not in table:
                raise DataLayoutError(path, f"class '{name}' is not in the '{self.split}' split")
            items = table[name]
            if not isinstance(items, list) or not items:
                raise DataLayoutError(path, f"class '{name}' has no {self.split} item")
            cls, ds = name.rsplit("_", 1) if "_" in name else (name, "meta")
            for i, item in enumerate(items):
                rec = self._record(path, name, cls, ds, i, item)
                if rec is not None:
                    out.append(rec)
        return out

    def _record(self, meta_path, name, cls, ds, i, item) -> Optional[Record]:
        where = f"{self.split}/{name}[{i}]"
        if not isinstance(item, dict) or "img_path" not in item:
            self._problem(DataLayoutError(meta_path, f"{where}: item needs an 'img_path'"))
            return None
        paths = item["img_path"]
        paths = [paths] if isinstance(paths, str) else list(paths)
        types = item.get("img_type", ["rgb"] * len(paths))
        types = [types] if isinstance(types, str) else list(types)
        if len(types) != len(paths) or not paths:
            self._problem(DataLayoutError(meta_path, f"{where}: {len(paths)} paths, {len(types)} types"))
            return None
        if len(paths) > self.preprocess.max_modalities:
            self._problem(DataLayoutError(
                meta_path, f"{where}: {len(paths)} modalities > {self.preprocess.max_modalities}"))
            return None
        files = []
        for p, t in zip(paths, types):
            if str(t).lower() not in _TYPES:
                self._problem(DataLayoutError(meta_path, f"{where}: unknown img_type {t!r}"))
                return None
            full = self.root / p
            if not full.is_file():
                self._problem(MissingPathError(full, f"image listed in {meta_path} ({where}) not found"))
                return None
            files.append((str(t).lower(), str(full)))
        label = int(bool(item.get("anomaly", item.get("label", 0))))
        mask = None
        if label and item.get("mask_path"):
            mask = self.root / item["mask_path"]
            if not mask.is_file():
                self._problem(MissingPathError(mask, f"mask listed in {meta_path} ({where}) not found"))
                return None
            mask = str(mask)
        return Record(tuple(files), label, cls, mask,
                      defect=str(item.get("specie_name", "")), dataset=ds)

    def read_modality(self, modality, path, record):
        if modality in ("depth", "wofg_depth") and path.lower().endswith(".npy"):
            a = read_npy(path).astype(np.float64)
            if a.ndim == 2:
                a = a[:, :, None]
            if a.ndim != 3:
                raise DataReadError(path, f"depth .npy must be [H, W] or [H, W, C], got {a.shape}")
            depth = a[:, :, 0]
            valid = np.isfinite(depth)
            if modality == "depth" and a.shape[2] > 1:
                valid &= a[:, :, -1] > 0
            return ModalityImage("depth", depth, valid, path)
        if modality == "wofg_depth":
            modality = "depth"
        return super().read_modality(modality, path, record)

    def loss_weight_of(self, record: Record) -> float:
        ds = record.dataset or self.dataset_name
        if self.loss_weights is not None and ds in self.loss_weights:
            return loss_weight_for(ds, self.loss_weights)
        return loss_weight_for(RELEASE_DATASET_ALIASES.get(ds, ds), DEFAULT_LOSS_WEIGHTS)
