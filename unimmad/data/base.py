"""The reader base class and the unified sample.

Every reader is a :class:`torch.utils.data.Dataset` whose items are the **unified sample**,
a plain dict (picklable, ``num_workers``-safe)::

    images          float32 [max_modalities, 3, S, S]  modality slots, zero past the count
    num_modalities  int       1..max_modalities
    mask            float32 [S, S]                     1 = defect pixel
    label           int       0 normal, 1 anomalous
    class_name      str       "<class>_<dataset>", e.g. "bottle_mvtec"
    dataset         str       e.g. "mvtec"
    loss_weight     float     per-dataset training weight (DEFAULT_LOSS_WEIGHTS)
    path            str       the first modality's file
    modalities      str       modality names joined by "+", e.g. "rgb+depth"

:func:`unimmad.data.collate` stacks them into the batch of :meth:`unimmad.UniMMAD.forward`.

Readers index their files when constructed (cheap: names and folders only, except where a
label needs a small side file) and read and preprocess one sample per ``__getitem__``; no
file handle, cache or random state is kept, so any number of DataLoader workers is safe.

Bad input: a missing folder or file, an unreadable or truncated file, a mask whose size
differs from its image, or a class with no image raises a :class:`~unimmad.data.io.DataError`
that names the path.  ``skip_broken=True`` instead reads every sample once at construction
(with a progress bar), drops the ones that fail, logs how many (logger ``unimmad.data``) and
keeps them in ``dataset.skipped``.
"""
from __future__ import annotations

import abc

import logging
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .io import DataError, DataLayoutError, read_image, read_mask, read_tiff, require_dir
from .preprocess import ModalityImage, Preprocess, depth_from_xyz, process_mask, stack_modalities

__all__ = ["DEFAULT_LOSS_WEIGHTS", "loss_weight_for", "Record", "AnomalyDataset", "logger"]

logger = logging.getLogger("unimmad.data")

#: Per-dataset loss weights of the paper's training (SPEC §1); every other dataset: 1.
DEFAULT_LOSS_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"eyecandies": 0.5, "brats": 10.0, "liverct": 10.0})


def loss_weight_for(dataset: str, weights: Optional[Mapping[str, float]] = None) -> float:
    """The loss weight of ``dataset`` from ``weights`` (default :data:`DEFAULT_LOSS_WEIGHTS`),
    1.0 when not listed."""
    table = DEFAULT_LOSS_WEIGHTS if weights is None else weights
    w = float(table.get(dataset, 1.0))
    if not np.isfinite(w) or w < 0:
        raise ValueError(f"loss weight of dataset {dataset!r} must be finite and >= 0, got {w}")
    return w


@dataclass(frozen=True)
class Record:
    """One indexed sample.

    files: ``(modality, path)`` pairs in slot order.  mask: ground-truth file or ``None``
    (defect-free).  mask_modality: index in ``files`` of the image the mask is aligned with
    (its size must match).  cls: raw class name.  defect: defect-type folder ("good" for
    normal ones).  extra: reader-specific data (e.g. a slice index).  dataset: the sample's
    dataset name when it differs from the reader's (``meta.json`` indexes mix datasets)."""

    files: Tuple[Tuple[str, str], ...]
    label: int
    cls: str
    mask: Optional[str] = None
    mask_modality: int = 0
    defect: str = ""
    extra: Tuple = ()
    dataset: Optional[str] = None


class AnomalyDataset(Dataset, abc.ABC):
    """Base reader: indexing hooks, checks, preprocessing and the unified sample.

    Subclasses set ``dataset_name`` and ``SPLITS`` and implement :meth:`_index` (and
    :meth:`read_modality` where a format needs special reading).

    Args:
        root: the dataset folder, as downloaded.
        split: one of ``SPLITS``.
        classes: class names to read (default: every class found).
        preprocess: :class:`~unimmad.data.Preprocess` (image size, normalisation).
        loss_weight: training weight of this dataset's samples (default from
            :data:`DEFAULT_LOSS_WEIGHTS`).
        skip_broken: drop (and log) samples that cannot be read instead of raising.
        dataset_name: override the dataset name (e.g. a preprocessed Eyecandies copy in the
            MVTec 3D-AD layout read by :class:`MVTec3DAD`).
        progress: tqdm bars while indexing/verifying (``None``: only on a terminal).
    """

    dataset_name = "generic"
    SPLITS: Tuple[str, ...] = ("train", "test")
    SPLIT_ALIASES: Mapping[str, str] = {}

    def __init__(self, root, split: str = "train", *, classes: Optional[Sequence[str]] = None,
                 preprocess: Optional[Preprocess] = None, loss_weight: Optional[float] = None,
                 skip_broken: bool = False, dataset_name: Optional[str] = None,
                 progress: Optional[bool] = None):
        super().__init__()
        if dataset_name is not None:
            self.dataset_name = str(dataset_name)
        self.root = require_dir(root, f"{type(self).__name__} dataset folder")
        split = self.SPLIT_ALIASES.get(split, split)
        if split not in self.SPLITS:
            raise ValueError(f"{type(self).__name__}: split must be one of {self.SPLITS}, got {split!r}")
        self.split = split
        self.preprocess = preprocess if preprocess is not None else Preprocess()
        if not isinstance(self.preprocess, Preprocess):
            raise TypeError("preprocess must be a unimmad.data.Preprocess")
        self.loss_weight = (loss_weight_for(self.dataset_name) if loss_weight is None
                            else loss_weight_for(self.dataset_name, {self.dataset_name: loss_weight}))
        self.skip_broken = bool(skip_broken)
        self.progress = progress
        self.skipped: List[Tuple[str, str]] = []
        self.class_dirs: Dict[str, Path] = {}
        records = list(self._index(list(classes) if classes is not None else None))
        if self.skip_broken:
            records = self._drop_broken(records)
        self.records: List[Record] = records
        self._check_classes()

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _index(self, classes: Optional[List[str]]) -> Iterable[Record]:
        """Yield the split's records; fill ``self.class_dirs`` {class: folder}."""

    def read_modality(self, modality: str, path: str, record: Record) -> ModalityImage:
        """Read one modality file (default: images via Pillow, ``.tiff`` depth as an
        organised point cloud's z)."""
        if modality == "depth" and path.lower().endswith((".tif", ".tiff")):
            z, valid = depth_from_xyz(read_tiff(path))
            return ModalityImage("depth", z, valid, path)
        return ModalityImage(modality, read_image(path), None, path)

    def read_mask(self, record: Record) -> Optional[np.ndarray]:
        return None if record.mask is None else read_mask(record.mask)

    # ------------------------------------------------------------------ helpers for readers
    def _problem(self, err: DataError) -> None:
        """An index-time problem: raise it, or record it when ``skip_broken``."""
        if not self.skip_broken:
            raise err
        self.skipped.append((err.path, str(err)))

    def _discover_classes(self, classes: Optional[List[str]], marker=None) -> List[str]:
        """Class folders under ``root`` (those holding ``marker`` when given), or check the
        requested ones exist."""
        if classes is not None:
            for c in classes:
                require_dir(self.root / c, f"{self.dataset_name} class folder")
            return list(classes)
        found = sorted(p.name for p in self.root.iterdir()
                       if p.is_dir() and not p.name.startswith(".")
                       and (marker is None or (p / marker).exists()))
        if not found:
            raise DataLayoutError(self.root, f"no {self.dataset_name} class folder found"
                                  + (f" (folders containing '{marker}')" if marker else ""))
        return found

    def _bar(self, it, desc: str, total: Optional[int] = None):
        disable = None if self.progress is None else not self.progress
        return tqdm(it, desc=desc, total=total, disable=disable, leave=False)

    # ------------------------------------------------------------------ checks
    def _check_classes(self) -> None:
        counts: Dict[str, int] = {c: 0 for c in self.class_dirs}
        for r in self.records:
            counts[r.cls] = counts.get(r.cls, 0) + 1
        for c, n in counts.items():
            if n == 0:
                raise DataLayoutError(self.class_dirs.get(c, self.root),
                                      f"class '{c}' has no {self.split} image")
        if not self.records:
            raise DataLayoutError(self.root, f"no {self.split} image found")

    def _drop_broken(self, records: List[Record]) -> List[Record]:
        total = len(records) + len(self.skipped)        # index-time problems already dropped
        keep = []
        for r in self._bar(records, f"verifying {self.dataset_name}/{self.split}"):
            try:
                self._load(r)
            except (DataError, ValueError) as e:
                self.skipped.append((getattr(e, "path", r.files[0][1]), str(e)))
                continue
            keep.append(r)
        if self.skipped:
            logger.warning("%s/%s: skipped %d broken sample(s) of %d; first: %s",
                           self.dataset_name, self.split, len(self.skipped), total,
                           self.skipped[0][1])
        return keep

    def verify(self) -> List[Tuple[str, str]]:
        """Read every sample once; ``[(path, error message)]`` of those that fail."""
        bad = []
        for r in self._bar(self.records, f"verifying {self.dataset_name}/{self.split}"):
            try:
                self._load(r)
            except (DataError, ValueError) as e:
                bad.append((getattr(e, "path", r.files[0][1]), str(e)))
        return bad

    # ------------------------------------------------------------------ sample
    def _load(self, r: Record):
        mods = [self.read_modality(m, p, r) for m, p in r.files]
        mask = self.read_mask(r)
        if mask is not None:
            ref = mods[r.mask_modality]
            if tuple(mask.shape[:2]) != ref.hw:
                raise DataLayoutError(
                    r.mask, f"mask size {tuple(mask.shape[:2])} differs from the size "
                    f"{ref.hw} of its image {ref.source}")
        return mods, mask

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict[str, object]:
        r = self.records[index]
        mods, mask = self._load(r)
        images, n = stack_modalities(mods, self.preprocess)
        return {
            "images": images,
            "num_modalities": n,
            "mask": process_mask(mask, self.preprocess),
            "label": int(r.label),
            "class_name": self.full_class_name(r.cls, r.dataset),
            "dataset": r.dataset or self.dataset_name,
            "loss_weight": self.loss_weight_of(r),
            "path": r.files[0][1],
            "modalities": "+".join(m.name for m in mods),
        }

    # ------------------------------------------------------------------ info
    def full_class_name(self, cls: str, dataset: Optional[str] = None) -> str:
        return f"{cls}_{dataset or self.dataset_name}"

    def loss_weight_of(self, record: Record) -> float:
        """Training weight of one sample (the reader's ``loss_weight``)."""
        return float(self.loss_weight)

    @property
    def class_names(self) -> List[str]:
        """``<class>_<dataset>`` of every sample, in index order (no file is read)."""
        return [self.full_class_name(r.cls, r.dataset) for r in self.records]

    @property
    def datasets(self) -> List[str]:
        """Dataset name of every sample, in index order."""
        return [r.dataset or self.dataset_name for r in self.records]

    @property
    def labels(self) -> List[int]:
        return [int(r.label) for r in self.records]

    @property
    def classes(self) -> List[str]:
        """Sorted distinct ``<class>_<dataset>`` names."""
        return sorted(set(self.class_names))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
                f"samples={len(self)}, classes={len(set(r.cls for r in self.records))}, "
                f"loss_weight={self.loss_weight})")
