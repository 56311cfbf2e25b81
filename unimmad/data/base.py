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

Bad input: a missing folder or file, a broken symbolic link, an unreadable or truncated
file, a decompression bomb, a side file with fields of the wrong type, a mask whose size
differs from its image, modalities of a pixel-aligned dataset whose sizes differ (they are
never resized into alignment), or a class with no image raises a
:class:`~unimmad.data.io.DataError` that names the file (both files where two disagree).
``skip_broken=True`` instead reads every sample once at construction (with a progress bar),
drops the ones that fail and lists *every* dropped file with its reason in
``dataset.skipped`` (``[(path, message)]``) and in one warning of logger ``unimmad.data``.

Class names are the ones of the authors' release (e.g. ``retinal_edema``, ``brats``); each
reader's ``CLASS_ALIASES`` maps older names (``retina``, ``brain``) to them for
``classes=``.
"""
from __future__ import annotations

import abc
import logging
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .io import (DataError, DataLayoutError, DataReadError, list_entries, list_images,
                 missing_path_error, read_image, read_mask, read_tiff, require_dir)
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
    w = table.get(dataset, 1.0)
    if not isinstance(w, numbers.Real) or isinstance(w, (bool, np.bool_)) \
            or not np.isfinite(float(w)) or float(w) < 0:
        raise ValueError(f"loss_weight of dataset {dataset!r} must be a number, finite and >= 0, "
                         f"got {w!r}")
    return float(w)


@dataclass(frozen=True)
class Record:
    """One indexed sample.

    files: ``(modality, path)`` pairs in slot order.  mask: ground-truth file or ``None``
    (defect-free).  mask_modality: index in ``files`` of the image the mask is aligned with
    (its size must match).  cls: raw class name.  defect: defect-type folder ("good" for
    normal ones).  extra: reader-specific data (e.g. a slice index).  dataset: the sample's
    dataset name when it differs from the reader's (``meta.json`` indexes mix datasets).

    Immutable and hashable: a record can be shared between datasets or kept in sets
    without one holder changing it for another."""

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
    #: Older class names → the release's (accepted in ``classes=``).
    CLASS_ALIASES: Mapping[str, str] = {}
    #: Whether the modalities of one sample are pixel-aligned (same H×W required).
    aligned_modalities = False

    def __init__(self, root, split: str = "train", *, classes: Optional[Sequence[str]] = None,
                 preprocess: Optional[Preprocess] = None, loss_weight: Optional[float] = None,
                 skip_broken: bool = False, dataset_name: Optional[str] = None,
                 progress: Optional[bool] = None):
        super().__init__()
        name = type(self).__name__
        if dataset_name is not None:
            if not isinstance(dataset_name, str) or not dataset_name:
                raise TypeError(f"{name}: dataset_name must be a non-empty str, got {dataset_name!r}")
            self.dataset_name = dataset_name
        if not isinstance(split, str):
            raise TypeError(f"{name}: split must be a str, got {split!r}")
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"{name}: root must be a path (str or os.PathLike), got {root!r}")
        for flag, value in (("skip_broken", skip_broken), ("progress", progress)):
            if not (isinstance(value, bool) or (flag == "progress" and value is None)):
                raise TypeError(f"{name}: {flag} must be True or False, got {value!r}")
        self.root = require_dir(root, f"{name} dataset folder")
        split = self.SPLIT_ALIASES.get(split, split)
        if split not in self.SPLITS:
            raise ValueError(f"{name}: split must be one of {self.SPLITS}, got {split!r}")
        self.split = split
        self.preprocess = preprocess if preprocess is not None else Preprocess()
        if not isinstance(self.preprocess, Preprocess):
            raise TypeError("preprocess must be a unimmad.data.Preprocess")
        self.loss_weight = (loss_weight_for(self.dataset_name) if loss_weight is None
                            else loss_weight_for(self.dataset_name, {self.dataset_name: loss_weight}))
        self.skip_broken = skip_broken
        self.progress = progress
        self.skipped: List[Tuple[str, str]] = []
        self.class_dirs: Dict[str, Path] = {}
        records = list(self._index(self._resolve_classes(classes)))
        if self.skip_broken:
            records = self._drop_broken(records)
        self.records: List[Record] = records
        self._check_classes()

    def _resolve_classes(self, classes) -> Optional[List[str]]:
        """``classes=`` checked (a sequence of str) with :attr:`CLASS_ALIASES` applied."""
        if classes is None:
            return None
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise TypeError(f"{type(self).__name__}: classes must be a list of class names, got "
                            f"{classes!r}")
        out = []
        for c in classes:
            if not isinstance(c, str):
                raise TypeError(f"{type(self).__name__}: class names must be str, got {c!r}")
            out.append(self.CLASS_ALIASES.get(c, c))
        return list(dict.fromkeys(out))                    # each class once

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _index(self, classes: Optional[List[str]]) -> Iterable[Record]:
        """Yield the split's records; fill ``self.class_dirs`` {class: folder}."""

    #: Rule for the invalid points of organised point clouds (``.tiff`` depth), see
    #: :func:`~unimmad.data.preprocess.depth_from_xyz`.
    invalid_points = "any_zero"

    def read_modality(self, modality: str, path: str, record: Record) -> ModalityImage:
        """Read one modality file (default: images via Pillow, ``.tiff`` depth as an
        organised point cloud's z, invalid points by :attr:`invalid_points`)."""
        if modality == "depth" and path.lower().endswith((".tif", ".tiff")):
            xyz = read_tiff(path)
            if xyz.ndim == 3 and xyz.shape[2] != 3 and xyz.shape[0] == 3:
                xyz = np.moveaxis(xyz, 0, 2)                 # a planar (3, H, W) TIFF
            if xyz.ndim != 3 or xyz.shape[2] != 3 or not np.issubdtype(xyz.dtype, np.number):
                raise DataReadError(path, f"an organised point cloud must be a numeric [H, W, 3] "
                                    f"array, got {xyz.dtype} {xyz.shape}")
            z, valid = depth_from_xyz(xyz, self.invalid_points)
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

    def _images(self, folder) -> List[Path]:
        """Image files of a folder; broken links and non-files go to :meth:`_problem`."""
        return list_images(folder, on_problem=self._problem)

    def _optional_file(self, path: Path, what: str) -> Tuple[bool, Optional[Path]]:
        """``(usable, path or None)`` for a file that may be absent (e.g. the all-zero mask
        of a good image): absent → ``(True, None)``; a broken link or a folder in its place
        goes to :meth:`_problem` → ``(False, None)``."""
        if path.is_file():
            return True, path
        if not path.exists() and not path.is_symlink():
            return True, None
        self._problem(missing_path_error(path, what))
        return False, None

    def _subdirs(self, folder) -> List[Path]:
        """Sub-folders of a folder (natural order, hidden ones left out); a broken symbolic
        link among them with a folder-like name (no extension) goes to :meth:`_problem`."""
        out = []
        for p in list_entries(folder):
            if p.is_dir():
                out.append(p)
            elif p.is_symlink() and not p.exists() and not p.suffix:
                self._problem(missing_path_error(p, "folder"))   # a class / defect / case folder
        return out

    def _discover_classes(self, classes: Optional[List[str]], marker=None) -> List[str]:
        """Class folders under ``root`` (those holding ``marker`` when given), or check the
        requested ones exist."""
        if classes is not None:
            for c in classes:
                require_dir(self.root / c, f"{self.dataset_name} class folder")
            return list(classes)
        found = sorted(p.name for p in self._subdirs(self.root)
                       if marker is None or (p / marker).exists())
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
            except DataError as e:
                self.skipped.append((e.path, str(e)))
                continue
            keep.append(r)
        if self.skipped:
            logger.warning("%s/%s: skipped %d broken sample(s) of %d:\n  %s",
                           self.dataset_name, self.split, len(self.skipped), total,
                           "\n  ".join(msg for _, msg in self.skipped))
        return keep

    def verify(self) -> List[Tuple[str, str]]:
        """Read every sample once; ``[(path, error message)]`` of those that fail."""
        bad = []
        for r in self._bar(self.records, f"verifying {self.dataset_name}/{self.split}"):
            try:
                self._load(r)
            except DataError as e:
                bad.append((e.path, str(e)))
        return bad

    # ------------------------------------------------------------------ sample
    def _load(self, r: Record):
        """Read and preprocess one record: ``(images, num_modalities, mask tensor,
        modality names)``.  Every failure is a :class:`DataError` naming a file."""
        try:
            mods = [self.read_modality(m, p, r) for m, p in r.files]
            mask = self.read_mask(r)
        except DataError:
            raise
        except Exception as e:            # a reader or library error: name the sample's file
            raise DataReadError(r.files[0][1], f"cannot read sample ({type(e).__name__}: {e})") from e
        if self.aligned_modalities:
            ref = mods[0]
            for m in mods[1:]:
                if m.hw != ref.hw:
                    raise DataLayoutError(
                        m.source, f"{m.name} size {m.hw} differs from the size {ref.hw} of its "
                        f"{ref.name} {ref.source}; the modalities of a {self.dataset_name} sample "
                        "are pixel-aligned and are not resized into alignment")
        if mask is not None:
            ref = mods[r.mask_modality]
            if tuple(mask.shape[:2]) != ref.hw:
                raise DataLayoutError(
                    r.mask, f"mask size {tuple(mask.shape[:2])} differs from the size "
                    f"{ref.hw} of its image {ref.source}")
        try:
            images, n = stack_modalities(mods, self.preprocess)
            mask_t = process_mask(mask, self.preprocess)
        except DataError:
            raise
        except Exception as e:
            raise DataReadError(r.files[0][1], f"cannot preprocess sample ({e})") from e
        return images, n, mask_t, [m.name for m in mods]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict[str, object]:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, numbers.Integral):
            raise TypeError(f"{type(self).__name__}: index must be an int, got {index!r}")
        if not -len(self.records) <= index < len(self.records):
            raise IndexError(f"{type(self).__name__}: index {index} out of range for "
                             f"{len(self.records)} samples")
        r = self.records[index]
        images, n, mask, names = self._load(r)
        return {
            "images": images,
            "num_modalities": n,
            "mask": mask,
            "label": int(r.label),
            "class_name": self.full_class_name(r.cls, r.dataset),
            "dataset": r.dataset or self.dataset_name,
            "loss_weight": self.loss_weight_of(r),
            "path": r.files[0][1],
            "modalities": "+".join(names),
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
