"""Reader for the authors' ``meta.json`` index format (the UniMMAD release)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Mapping, Optional

import numpy as np

from .base import DEFAULT_LOSS_WEIGHTS, AnomalyDataset, Record, loss_weight_for
from .io import (DataLayoutError, DataReadError, MissingPathError, contained_path,
                 missing_path_error, read_npy)
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


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _strings(value) -> Optional[List[str]]:
    """A string or a non-empty list of strings as a list; ``None`` for anything else."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


_LABEL_WORDS = {"0": 0, "1": 1, "normal": 0, "good": 0, "anomaly": 1, "anomalous": 1}


class MetaJsonDataset(AnomalyDataset):
    """Samples listed in a ``meta.json`` index (the format the authors' release reads)::

        {"train": {"<class>_<dataset>": [item, ...], ...},
         "test":  {"<class>_<dataset>": [item, ...], ...}}

        item = {"img_path": "rel/path.png" | ["rel/a.png", "rel/b.npy", ...],
                "img_type": "rgb" | ["rgb", "depth", ...],      (default "rgb")
                "mask_path": "rel/mask.png" | "" | null,
                "cls_name": "<class>_<dataset>", "anomaly": 0 | 1, ...}

    Paths are relative to ``root`` (absolute ones are taken as they are) and, once resolved
    (``..`` and symlinks followed), must lie inside ``root``: an entry pointing elsewhere is
    refused naming the index, the entry and the root, unless ``allow_outside_root=True``.
    Image types: ``rgb`` (photograph), ``gray`` (replicated
    to 3 channels), ``depth`` (``.npy`` ``[H, W, C]``: channel 0 depth, last channel the
    foreground mask — background pixels are invalid) and ``wofg_depth`` (``.npy``, every
    pixel valid); ``.tif(f)`` depth files are read as organised point clouds.  Depth is
    filled and normalised by :class:`~unimmad.data.Preprocess` (``depth_fill="mean",
    depth_norm="center"`` reproduces the release).  The dataset of an item is the text
    after the last ``_`` of its ``cls_name`` (as in the release); its loss weight comes
    from ``loss_weights`` (by that suffix) or else from :data:`DEFAULT_LOSS_WEIGHTS` through
    :data:`RELEASE_DATASET_ALIASES`.

    Field types are checked: ``img_path`` a string or a list of strings, ``img_type`` the
    same (one per path), ``mask_path`` a string or null, ``specie_name`` a string or null,
    and the label ``anomaly`` (or ``label``) one of ``true``/``false``, ``0``/``1`` or the
    strings ``"0"``, ``"1"``, ``"normal"``, ``"good"``, ``"anomaly"``, ``"anomalous"``
    (anything else — ``2``, ``0.5``, ``"yes"`` — is refused; a test item must carry it, a
    train item without one is normal).  A wrong entry raises
    :class:`~unimmad.data.io.DataLayoutError` naming the index and the entry
    (``test/bagel_mvtec3d[4]``), or is skipped and listed with ``skip_broken=True``.

    Args:
        meta_file: the index, relative to ``root`` or absolute (default ``meta.json``).
        classes: ``<class>_<dataset>`` keys to read (default all of the split).
        loss_weights: ``{dataset suffix: weight}``.
        allow_outside_root: accept image and mask paths that resolve outside ``root``.
    """

    dataset_name = "meta"
    SPLITS = ("train", "test")

    def __init__(self, root, split: str = "train", *, meta_file: str = "meta.json",
                 loss_weights: Optional[Mapping[str, float]] = None,
                 allow_outside_root: bool = False, **kwargs):
        if not isinstance(meta_file, (str, os.PathLike)):
            raise TypeError(f"meta_file must be a path (str or os.PathLike), got {meta_file!r}")
        self.meta_file = meta_file
        self.loss_weights = None if loss_weights is None else dict(loss_weights)
        if not isinstance(allow_outside_root, bool):
            raise TypeError(f"allow_outside_root must be True or False, got {allow_outside_root!r}")
        self.allow_outside_root = allow_outside_root
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
            if not isinstance(name, str) or name not in table:
                raise DataLayoutError(path, f"class {name!r} is not in the '{self.split}' split")
            items = table[name]
            if not isinstance(items, list) or not items:
                raise DataLayoutError(path, f"{self.split}/{name}: expected a non-empty list of "
                                            f"items, got {_describe(items)}")
            cls, ds = name.rsplit("_", 1) if "_" in name else (name, "meta")
            for i, item in enumerate(items):
                try:
                    rec = self._record(path, name, cls, ds, i, item)
                except (DataLayoutError, MissingPathError) as e:
                    self._problem(e)
                    continue
                out.append(rec)
        return out

    def _record(self, meta_path, name, cls, ds, i, item) -> Record:
        where = f"{self.split}/{name}[{i}]"

        def bad(message):
            return DataLayoutError(meta_path, f"{where}: {message}")

        if not isinstance(item, dict):
            raise bad(f"an item must be a mapping, got {_describe(item)}")
        if "img_path" not in item:
            raise bad("item needs an 'img_path'")
        paths = _strings(item["img_path"])
        if paths is None:
            raise bad(f"img_path must be a path string or a non-empty list of them, got "
                      f"{_describe(item['img_path'])}")
        types = _strings(item.get("img_type", ["rgb"] * len(paths)))
        if types is None:
            raise bad(f"img_type must be a string or a list of strings, got "
                      f"{_describe(item['img_type'])}")
        if len(types) != len(paths):
            raise bad(f"{len(paths)} paths, {len(types)} types")
        if len(paths) > self.preprocess.max_modalities:
            raise bad(f"{len(paths)} modalities > {self.preprocess.max_modalities}")
        files = []
        for k, (p, t) in enumerate(zip(paths, types)):
            if t.lower() not in _TYPES:
                raise bad(f"unknown img_type {t!r} (known: {sorted(_TYPES)})")
            full = contained_path(self.root, p, index=meta_path, where=f"{where}.img_path[{k}]",
                                  what="image path", allow_outside_root=self.allow_outside_root)
            if not full.is_file():   # reported at the listed path: a broken link says so
                raise missing_path_error(self.root / p, f"image listed in {meta_path} ({where})")
            files.append((t.lower(), str(full)))
        label = self._label(item, bad)
        mask_entry = item.get("mask_path")
        if mask_entry is not None and not isinstance(mask_entry, str):
            raise bad(f"mask_path must be a path string, \"\" or null, got {_describe(mask_entry)}")
        mask = None
        if label and mask_entry:
            full = contained_path(self.root, mask_entry, index=meta_path,
                                  where=f"{where}.mask_path", what="mask path",
                                  allow_outside_root=self.allow_outside_root)
            if not full.is_file():
                raise missing_path_error(self.root / mask_entry,
                                         f"mask listed in {meta_path} ({where})")
            mask = str(full)
        defect = item.get("specie_name")
        if defect is not None and not isinstance(defect, str):
            raise bad(f"specie_name must be a string or null, got {_describe(defect)}")
        return Record(tuple(files), label, cls, mask, defect=defect or "", dataset=ds)

    def _label(self, item, bad) -> int:
        """0/1 from ``anomaly`` (or ``label``): booleans, the integers 0/1 and the strings of
        ``_LABEL_WORDS`` only."""
        found = {}
        for key in ("anomaly", "label"):
            if key not in item:
                continue
            v = item[key]
            if isinstance(v, bool):
                found[key] = int(v)
            elif isinstance(v, int) and v in (0, 1):
                found[key] = v
            elif isinstance(v, str) and v.strip().lower() in _LABEL_WORDS:
                found[key] = _LABEL_WORDS[v.strip().lower()]
            else:
                raise bad(f"{key} must be true/false, 0/1 or one of {sorted(_LABEL_WORDS)}, got "
                          f"{_describe(v)}")
        if len(set(found.values())) > 1:
            raise bad(f"'anomaly' ({item['anomaly']!r}) and 'label' ({item['label']!r}) disagree")
        if not found:
            if self.split == "test":
                raise bad("a test item needs an 'anomaly' field (0 normal, 1 anomalous)")
            return 0
        return next(iter(found.values()))

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
