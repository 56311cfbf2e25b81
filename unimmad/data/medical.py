"""Readers for the medical datasets: BraTS2020 (NIfTI volumes → axial slices) and the
BMAD-style image folders of Hyper-Kvasir, Retinal OCT and Liver CT (the paper's UniMed)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .base import AnomalyDataset, Record
from .io import (DataError, DataLayoutError, MissingPathError, list_images, read_nifti,
                 read_nifti_shape, read_nifti_slice, require_dir)
from .preprocess import ModalityImage

__all__ = ["BraTS2020", "BMADStyle", "HyperKvasir", "RetinalOCT", "LiverCT", "normalize_slice"]


def normalize_slice(a: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """MRI slice → [0, 1]: divide by the ``percentile`` of its non-zero voxels, clip."""
    a = np.asarray(a, np.float64)
    nz = a[a > 0]
    if nz.size == 0:
        return np.zeros_like(a, dtype=np.float32)
    top = float(np.percentile(nz, percentile))
    if top <= 0:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip(a / top, 0.0, 1.0).astype(np.float32)


class BraTS2020(AnomalyDataset):
    """BraTS2020 (MRI flair / t1 / t1ce / t2 + tumour segmentation → axial slices).

    Layout as downloaded (``.nii`` or ``.nii.gz``)::

        <root>/BraTS20_Training_001/BraTS20_Training_001_flair.nii
        <root>/BraTS20_Training_001/BraTS20_Training_001_t1.nii
        <root>/BraTS20_Training_001/BraTS20_Training_001_t1ce.nii
        <root>/BraTS20_Training_001/BraTS20_Training_001_t2.nii
        <root>/BraTS20_Training_001/BraTS20_Training_001_seg.nii

    ``root`` may also be the folder above ``MICCAI_BraTS2020_TrainingData``.  A case whose
    segmentation is not named ``*_seg.nii*`` (case 355 of the release) uses the one file
    whose name contains ``seg``/``Segm``.

    Slices: the volume's third axis (axial for the BraTS orientation), each slice transposed
    so rows follow the second voxel axis; ``slice_range`` / ``slice_step`` choose the
    indices and slices whose flair has fewer than ``min_brain_fraction`` non-zero pixels are
    left out (set 0 to skip reading flair while indexing).  Cases are split by patient: the
    ``test_cases`` given, else the last ``ceil(test_fraction · n)`` cases in name order form
    the test split.  Training uses the **healthy** slices (no tumour voxel) of the training
    cases; the test split holds every selected slice of the test cases, label 1 with the
    tumour mask (``seg > 0``) where the slice has a tumour voxel.  Intensities: each slice is
    divided by the 99.5th percentile of its non-zero voxels and clipped to [0, 1].  The
    class is ``brain`` (``brain_brats``); indexing reads the segmentation volumes once.
    """

    dataset_name = "brats"
    SPLITS = ("train", "test")
    MODALITIES = ("flair", "t1", "t1ce", "t2")

    def __init__(self, root, split: str = "train", *,
                 modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"),
                 test_fraction: float = 0.2, test_cases: Optional[Sequence[str]] = None,
                 slice_range: Tuple[Optional[int], Optional[int]] = (None, None),
                 slice_step: int = 1, min_brain_fraction: float = 0.1, **kwargs):
        mods = tuple(modalities)
        if not mods or any(m not in self.MODALITIES for m in mods) or len(set(mods)) != len(mods):
            raise ValueError(f"BraTS2020 modalities must be distinct of {self.MODALITIES}, got {mods}")
        if not 0.0 <= float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        if int(slice_step) < 1:
            raise ValueError(f"slice_step must be >= 1, got {slice_step}")
        self.modalities = mods
        self.test_fraction = float(test_fraction)
        self.test_cases = None if test_cases is None else [str(c) for c in test_cases]
        self.slice_range = tuple(slice_range)
        self.slice_step = int(slice_step)
        self.min_brain_fraction = float(min_brain_fraction)
        super().__init__(root, split, **kwargs)

    @staticmethod
    def _find(case: Path, key: str) -> Optional[Path]:
        for ext in (".nii.gz", ".nii"):
            p = case / f"{case.name}_{key}{ext}"
            if p.is_file():
                return p
        cands = sorted(p for p in case.iterdir()
                       if p.is_file() and re.search(rf"_{key}\.nii(\.gz)?$", p.name))
        if len(cands) == 1:
            return cands[0]
        if key == "seg":
            cands = sorted(p for p in case.iterdir() if p.is_file() and ".nii" in p.name
                           and re.search(r"seg", p.name, re.IGNORECASE))
            if len(cands) == 1:
                return cands[0]
        return None

    def _cases(self) -> List[Path]:
        root = self.root
        inner = root / "MICCAI_BraTS2020_TrainingData"
        if inner.is_dir():
            root = inner
        cases = sorted(p for p in root.iterdir() if p.is_dir() and self._find(p, "flair"))
        if not cases:
            raise DataLayoutError(root, "no BraTS case folder (with a *_flair.nii[.gz]) found")
        return cases

    def _index(self, classes):
        if classes is not None and list(classes) != ["brain"]:
            raise DataLayoutError(self.root, f"BraTS2020 has the single class 'brain', got {classes}")
        self.class_dirs["brain"] = self.root
        cases = self._cases()
        names = [c.name for c in cases]
        if self.test_cases is not None:
            unknown = sorted(set(self.test_cases) - set(names))
            if unknown:
                raise MissingPathError(self.root / unknown[0], "test case not found")
            test = set(self.test_cases)
        else:
            k = int(math.ceil(self.test_fraction * len(cases))) if self.test_fraction > 0 else 0
            test = set(names[len(names) - k:]) if k else set()
        chosen = [c for c in cases if (c.name in test) == (self.split == "test")]
        out = []
        for case in self._bar(chosen, f"indexing brats/{self.split}"):
            paths = {}
            for key in self.modalities + ("seg",):
                p = self._find(case, key)
                if p is None:
                    paths = None
                    self._problem(MissingPathError(case / f"{case.name}_{key}.nii",
                                                   f"{key} volume not found"))
                    break
                paths[key] = p
            if paths is None:
                continue
            try:
                shape = read_nifti_shape(paths["seg"])
                seg = read_nifti(paths["seg"])
                if len(shape) < 3:
                    raise DataLayoutError(paths["seg"], f"expected a 3-D volume, got {shape}")
                for key in self.modalities:
                    s = read_nifti_shape(paths[key])
                    if s[:3] != shape[:3]:
                        raise DataLayoutError(paths[key], f"volume shape {s} differs from the "
                                              f"segmentation's {shape} ({paths['seg']})")
                tumour = (seg > 0).reshape(shape[0] * shape[1], shape[2]).sum(axis=0)
                brain = None
                if self.min_brain_fraction > 0:
                    fl = read_nifti(paths.get("flair") or paths[self.modalities[0]])
                    brain = (fl != 0).reshape(shape[0] * shape[1], shape[2]).mean(axis=0)
            except DataError as e:
                self._problem(e)
                continue
            start, stop = self.slice_range
            for k in range(shape[2])[slice(start, stop, self.slice_step)]:
                if brain is not None and brain[k] < self.min_brain_fraction:
                    continue
                label = int(tumour[k] > 0)
                if self.split == "train" and label:
                    continue
                files = tuple((m, str(paths[m])) for m in self.modalities)
                out.append(Record(files, label, "brain", str(paths["seg"]) if label else None,
                                  defect="tumour" if label else "good", extra=(k,)))
        return out

    def read_modality(self, modality, path, record):
        a = read_nifti_slice(path, record.extra[0], axis=2).T
        return ModalityImage(modality, normalize_slice(a), None, f"{path}[slice {record.extra[0]}]")

    def read_mask(self, record):
        if record.mask is None:
            return None
        return read_nifti_slice(record.mask, record.extra[0], axis=2).T > 0


class BMADStyle(AnomalyDataset):
    """A single-class medical dataset in the BMAD folder layout::

        <root>/train/good/img/x.png            (or <root>/train/good/x.png)
        <root>/{valid,test}/good/img/x.png
        <root>/{valid,test}/Ungood/img/x.png
        <root>/{valid,test}/Ungood/label/x.png ground truth, same name (any image extension)

    Splits ``"train"``, ``"valid"`` (alias ``"val"``) and ``"test"``.  With
    ``require_masks=False`` an anomalous image without a ``label`` file gets an empty mask
    (image-level-only data; its pixel metrics are then meaningless).

    Args:
        class_name, modality: the class (``<class>_<dataset>``) and the modality name
            (``"endoscopy"`` is photographic; ``"oct"``, ``"ct"``, ``"gray"`` are replicated
            single-channel images).
    """

    dataset_name = "bmad"
    class_name = "medical"
    modality = "gray"
    SPLITS = ("train", "valid", "test")
    SPLIT_ALIASES = {"val": "valid", "validation": "valid"}

    def __init__(self, root, split: str = "train", *, class_name: Optional[str] = None,
                 modality: Optional[str] = None, require_masks: bool = True, **kwargs):
        if class_name is not None:
            self.class_name = str(class_name)
        if modality is not None:
            self.modality = str(modality)
        self.require_masks = bool(require_masks)
        super().__init__(root, split, **kwargs)

    @staticmethod
    def _img_dir(folder: Path) -> Path:
        return folder / "img" if (folder / "img").is_dir() else folder

    def _index(self, classes):
        if classes is not None and list(classes) != [self.class_name]:
            raise DataLayoutError(self.root, f"{self.dataset_name} has the single class "
                                  f"'{self.class_name}', got {classes}")
        split_dir = require_dir(self.root / self.split, f"{self.dataset_name} {self.split} folder")
        self.class_dirs[self.class_name] = split_dir
        subdirs = {p.name.lower(): p for p in split_dir.iterdir() if p.is_dir()}
        out = []
        good = subdirs.get("good")
        if good is None:
            raise MissingPathError(split_dir / "good", "folder of normal images not found")
        for img in list_images(self._img_dir(good)):
            out.append(Record(((self.modality, str(img)),), 0, self.class_name, defect="good"))
        bad = subdirs.get("ungood")
        if self.split != "train" and bad is not None:
            labels = {}
            if (bad / "label").is_dir():
                labels = {p.stem: p for p in list_images(bad / "label")}
            for img in list_images(self._img_dir(bad)):
                mask = labels.get(img.stem)
                if mask is None and self.require_masks:
                    self._problem(MissingPathError(bad / "label" / img.name, f"mask of {img} not found"))
                    continue
                out.append(Record(((self.modality, str(img)),), 1, self.class_name,
                                  None if mask is None else str(mask), defect="Ungood"))
        return out


class HyperKvasir(BMADStyle):
    """Hyper-Kvasir endoscopy (class ``colon``; photographic, ImageNet-normalised) in the
    BMAD layout of :class:`BMADStyle`."""

    dataset_name = "hyperkvasir"
    class_name = "colon"
    modality = "endoscopy"


class RetinalOCT(BMADStyle):
    """Retinal OCT (class ``retina``; gray, replicated to 3 channels) in the BMAD layout of
    :class:`BMADStyle` (BMAD's ``RESC`` folder)."""

    dataset_name = "retinaloct"
    class_name = "retina"
    modality = "oct"


class LiverCT(BMADStyle):
    """Liver CT slices (class ``liver``; gray, replicated to 3 channels) in the BMAD layout
    of :class:`BMADStyle` (BMAD's ``Liver`` folder)."""

    dataset_name = "liverct"
    class_name = "liver"
    modality = "ct"
