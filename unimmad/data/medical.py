"""Readers for the medical datasets: BraTS2020 (NIfTI volumes → axial slices), the BMAD
folders of Retinal OCT and Liver CT, and Hyper-Kvasir as published (the paper's UniMed).

Each docstring gives the folder layout(s) read and where the layout comes from.
"""
from __future__ import annotations

import math
import numbers
import re
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import AnomalyDataset, Record
from .io import (DataError, DataLayoutError, MissingPathError, list_entries, list_images,
                 missing_path_error, read_mask, read_nifti, read_nifti_shape, read_nifti_slice,
                 require_dir)
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


def _real(name: str, v, lo: float, hi: float, hi_open: bool = False) -> float:
    if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)) or not math.isfinite(v) \
            or not lo <= v <= hi or (hi_open and v == hi):
        raise ValueError(f"{name} must be a number in [{lo}, {hi}{')' if hi_open else ']'}, got {v!r}")
    return float(v)


def _int(name: str, v, lo: int) -> int:
    if not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def _names(name: str, v) -> List[str]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or \
            not all(isinstance(x, str) for x in v):
        raise TypeError(f"{name} must be a list of str, got {v!r}")
    return list(v)


class BraTS2020(AnomalyDataset):
    """BraTS2020 (MRI flair / t1 / t1ce / t2 + tumour segmentation → axial slices).

    Layout as downloaded from the BraTS 2020 challenge (``.nii`` or ``.nii.gz``)::

        <root>/BraTS20_Training_001/BraTS20_Training_001_flair.nii
        <root>/BraTS20_Training_001/BraTS20_Training_001_t1.nii
        <root>/BraTS20_Training_001/BraTS20_Training_001_t1ce.nii
        <root>/BraTS20_Training_001/BraTS20_Training_001_t2.nii
        <root>/BraTS20_Training_001/BraTS20_Training_001_seg.nii

    ``root`` may also be the folder above ``MICCAI_BraTS2020_TrainingData``.  A case whose
    segmentation is not named ``*_seg.nii*`` (case 355 of the release) uses the one file
    whose name contains ``seg``/``Segm``.  Every sub-folder holding a NIfTI file is a case;
    a case missing a volume raises an error naming it (``skip_broken``: listed and dropped).

    Modalities (documented choice, two forms):

    * default — the four sequences as four modality slots ``flair, t1, t1ce, t2`` (the
      paper's Table 8: "Flair, T1, T2, T1CE", 4 images per item); ``modalities`` picks and
      orders a subset.
    * ``channel_stack=("flair", "t1", "t2")`` — the authors' release: one 3-channel image
      per slice whose channels are those sequences (modality ``"mri"``, ImageNet-normalised
      like a photograph, as the release reads its stacked slice).  Any three distinct
      sequences may be stacked; ``modalities`` must then be left unset.

    Slices: the volume's third axis (axial for the BraTS orientation), each slice transposed
    so rows follow the second voxel axis; ``slice_range`` / ``slice_step`` choose the
    indices and slices whose flair (the first chosen sequence when a case has none) has
    fewer than ``min_brain_fraction`` non-zero pixels are left out (set 0 to skip reading it
    while indexing).  Cases are split by patient: the
    ``test_cases`` given, else the last ``ceil(test_fraction · n)`` cases in name order form
    the test split.  Training uses the **healthy** slices (no tumour voxel) of the training
    cases; the test split holds every selected slice of the test cases, label 1 with the
    tumour mask (``seg > 0``) where the slice has a tumour voxel.  Intensities: each slice is
    divided by the 99.5th percentile of its non-zero voxels and clipped to [0, 1].  The
    class is ``brats`` (``brats_brats``; the release names it ``brats``; alias ``brain``);
    indexing reads the segmentation volumes once.  The release's own slices (``BratsAD1K``,
    preprocessed PNGs) are not public in a verifiable form: its slice selection is not
    reproduced here.
    """

    dataset_name = "brats"
    SPLITS = ("train", "test")
    MODALITIES = ("flair", "t1", "t1ce", "t2")
    CLASS_NAME = "brats"
    CLASS_ALIASES = {"brain": "brats"}
    aligned_modalities = True

    def __init__(self, root, split: str = "train", *,
                 modalities: Optional[Sequence[str]] = None,
                 channel_stack: Optional[Sequence[str]] = None,
                 test_fraction: float = 0.2, test_cases: Optional[Sequence[str]] = None,
                 slice_range: Tuple[Optional[int], Optional[int]] = (None, None),
                 slice_step: int = 1, min_brain_fraction: float = 0.1, **kwargs):
        if channel_stack is not None:
            if modalities is not None:
                raise ValueError("BraTS2020: give either modalities or channel_stack, not both")
            stack = tuple(_names("BraTS2020 channel_stack", channel_stack))
            if len(stack) != 3 or len(set(stack)) != 3 or any(m not in self.MODALITIES for m in stack):
                raise ValueError(f"BraTS2020 channel_stack must be 3 distinct of {self.MODALITIES}, "
                                 f"got {stack}")
            self.channel_stack: Optional[Tuple[str, ...]] = stack
            mods = stack
        else:
            self.channel_stack = None
            mods = tuple(_names("BraTS2020 modalities", modalities)) if modalities is not None \
                else self.MODALITIES
            if not mods or any(m not in self.MODALITIES for m in mods) or len(set(mods)) != len(mods):
                raise ValueError(f"BraTS2020 modalities must be distinct of {self.MODALITIES}, got {mods}")
        self.modalities = mods
        self.test_fraction = _real("test_fraction", test_fraction, 0.0, 1.0, hi_open=True)
        self.test_cases = None if test_cases is None else _names("test_cases", test_cases)
        if not isinstance(slice_range, Sequence) or len(slice_range) != 2 or not all(
                v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool))
                for v in slice_range):
            raise ValueError(f"slice_range must be (start, stop) of ints or None, got {slice_range!r}")
        self.slice_range = tuple(slice_range)
        self.slice_step = _int("slice_step", slice_step, 1)
        self.min_brain_fraction = _real("min_brain_fraction", min_brain_fraction, 0.0, 1.0)
        super().__init__(root, split, **kwargs)

    @staticmethod
    def _find(case: Path, key: str) -> Optional[Path]:
        for ext in (".nii.gz", ".nii"):
            p = case / f"{case.name}_{key}{ext}"
            if p.is_file() or p.is_symlink():       # a broken link fails later, named
                return p
        files = [p for p in list_entries(case) if p.is_file()]
        cands = [p for p in files if re.search(rf"_{key}\.nii(\.gz)?$", p.name)]
        if len(cands) == 1:
            return cands[0]
        if key == "seg":
            cands = [p for p in files if ".nii" in p.name and re.search(r"seg", p.name, re.IGNORECASE)]
            if len(cands) == 1:
                return cands[0]
        return None

    def _cases(self) -> List[Path]:
        root = self.root
        inner = root / "MICCAI_BraTS2020_TrainingData"
        if inner.is_dir():
            root = inner
        cases = [p for p in self._subdirs(root)
                 if any(".nii" in q.name for q in list_entries(p))]
        if not cases:
            raise DataLayoutError(root, "no BraTS case folder (a folder holding *.nii[.gz]) found")
        return sorted(cases, key=lambda p: p.name)

    def _index(self, classes):
        if classes is not None and list(classes) != [self.CLASS_NAME]:
            raise DataLayoutError(self.root, f"BraTS2020 has the single class '{self.CLASS_NAME}', "
                                  f"got {classes}")
        self.class_dirs[self.CLASS_NAME] = self.root
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
        need = self.modalities
        for case in self._bar(chosen, f"indexing brats/{self.split}"):
            paths = {}
            for key in need + ("seg",):
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
                if len(shape) < 3:
                    raise DataLayoutError(paths["seg"], f"expected a 3-D volume, got {shape}")
                for key in need:
                    s = read_nifti_shape(paths[key])
                    if s[:3] != shape[:3]:
                        raise DataLayoutError(paths[key], f"volume shape {s} differs from the "
                                              f"segmentation's {shape} ({paths['seg']})")
                seg = read_nifti(paths["seg"])
                tumour = (seg > 0).reshape(shape[0] * shape[1], shape[2]).sum(axis=0)
                brain = None
                if self.min_brain_fraction > 0:
                    fl_path = paths.get("flair") or self._find(case, "flair") or paths[need[0]]
                    if read_nifti_shape(fl_path)[:3] != shape[:3]:
                        raise DataLayoutError(fl_path, f"volume shape differs from the "
                                              f"segmentation's {shape} ({paths['seg']})")
                    fl = read_nifti(fl_path)
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
                if self.channel_stack is None:
                    files = tuple((m, str(paths[m])) for m in self.modalities)
                    extra: Tuple = (k,)
                else:
                    files = (("mri", str(paths[self.channel_stack[0]])),)
                    extra = (k, tuple(str(paths[m]) for m in self.channel_stack))
                out.append(Record(files, label, self.CLASS_NAME,
                                  str(paths["seg"]) if label else None,
                                  defect="tumour" if label else "good", extra=extra))
        return out

    def read_modality(self, modality, path, record):
        k = record.extra[0]
        if modality == "mri":
            chans = [normalize_slice(read_nifti_slice(p, k, axis=2).T) for p in record.extra[1]]
            return ModalityImage("mri", np.stack(chans, axis=2), None,
                                 f"{path}[slice {k}, channels {'+'.join(self.channel_stack)}]")
        a = read_nifti_slice(path, k, axis=2).T
        return ModalityImage(modality, normalize_slice(a), None, f"{path}[slice {k}]")

    def read_mask(self, record):
        if record.mask is None:
            return None
        return read_nifti_slice(record.mask, record.extra[0], axis=2).T > 0


def _ci(base: Path, *parts: str) -> Optional[Path]:
    """``base/parts...`` matching each folder name case-insensitively (exact name first)."""
    p = base
    for part in parts:
        if (p / part).is_dir():
            p = p / part
            continue
        if not p.is_dir():
            return None
        hits = [q for q in list_entries(p) if q.name.lower() == part.lower() and q.is_dir()]
        if len(hits) != 1:
            return None
        p = hits[0]
    return p


def _first(base: Path, candidates) -> Tuple[Optional[Path], Optional[str]]:
    for parts in candidates:
        p = _ci(base, *parts.split("/"))
        if p is not None:
            return p, parts
    return None, None


class BMADStyle(AnomalyDataset):
    """A single-class medical dataset in one of BMAD's folder layouts (BMAD, Bao et al.
    CVPR 2024, repository ``DorisBao/BMAD``).  Every published form is read:

    1. *Published tree* (BMAD README, the Brain / RESC / Liver downloads)::

           <root>/train/good/img/x.png
           <root>/{valid,test}/good/img/x.png
           <root>/{valid,test}/Ungood/img/x.png
           <root>/{valid,test}/Ungood/anomaly_mask/x.png    ground truth, same name

       (``Ungood/label/`` instead of ``anomaly_mask/``, as BMAD's own Brain loaders use, is
       read too; so are images directly in ``good/`` / ``Ungood/`` without ``img/``, BMAD's
       image-level-only form.)
    2. *Split-level* folders (BMAD's Liver configs, e.g. ``config/liver_RD4AD.yaml``)::

           <root>/train/good/x.png
           <root>/{valid,test}/img/{good,Ungood}/x.png
           <root>/{valid,test}/label/Ungood/x.png
    3. *RESC* (BMAD's RESC configs, e.g. ``config/RESC_RD4AD.yaml``)::

           <root>/Train/train/good/x.png
           <root>/Val/val/{good,Ungood}/x.png,   <root>/Val/val_label/Ungood/x.png
           <root>/Test/test/{good,Ungood}/x.png, <root>/Test/test_label/Ungood/x.png

    Folder names match case-insensitively; masks pair with images by file stem (any image
    extension).  Splits ``"train"``, ``"valid"`` (alias ``"val"``) and ``"test"``; the
    layout found is in ``dataset.layout_used``.  With ``require_masks=False`` an anomalous
    image without a mask gets an empty mask (image-level-only data; its pixel metrics are
    then meaningless).

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
    SPLIT_DIRS = {"train": ("Train/train", "train"),        # RESC's nested form first
                  "valid": ("Val/val", "Valid/valid", "valid", "val"),
                  "test": ("Test/test", "test")}
    GOOD_DIRS = ("good/img", "img/good", "good")
    BAD_DIRS = ("Ungood/img", "img/Ungood", "Ungood")
    MASK_DIRS = ("Ungood/anomaly_mask", "Ungood/label", "label/Ungood")

    def __init__(self, root, split: str = "train", *, class_name: Optional[str] = None,
                 modality: Optional[str] = None, require_masks: bool = True, **kwargs):
        for name, v in (("class_name", class_name), ("modality", modality)):
            if v is not None and (not isinstance(v, str) or not v):
                raise TypeError(f"{type(self).__name__}: {name} must be a non-empty str, got {v!r}")
        if class_name is not None:
            self.class_name = class_name
        if modality is not None:
            self.modality = modality
        if not isinstance(require_masks, bool):
            raise TypeError(f"require_masks must be True or False, got {require_masks!r}")
        self.require_masks = require_masks
        super().__init__(root, split, **kwargs)

    def _index(self, classes):
        if classes is not None and list(classes) != [self.class_name]:
            raise DataLayoutError(self.root, f"{self.dataset_name} has the single class "
                                  f"'{self.class_name}', got {classes}")
        split_dir, split_form = _first(self.root, self.SPLIT_DIRS[self.split])
        if split_dir is None:
            raise MissingPathError(self.root / self.split, f"{self.dataset_name} {self.split} folder "
                                   f"not found (looked for {', '.join(self.SPLIT_DIRS[self.split])})")
        self.class_dirs[self.class_name] = split_dir
        good, good_form = _first(split_dir, self.GOOD_DIRS)
        if good is None:
            raise MissingPathError(split_dir / "good", "folder of normal images not found (looked "
                                   f"for {', '.join(self.GOOD_DIRS)})")
        self.layout_used = f"{split_form}/{good_form}"
        out = [Record(((self.modality, str(img)),), 0, self.class_name, defect="good")
               for img in self._images(good)]
        bad, bad_form = _first(split_dir, self.BAD_DIRS)
        if self.split == "train" or bad is None:
            return out
        mask_dir, mask_form = _first(split_dir, self.MASK_DIRS)
        if mask_dir is None:                          # RESC: <Split>/<split>_label/Ungood
            mask_dir = _ci(split_dir.parent, f"{split_dir.name}_label", "Ungood")
            mask_form = f"{split_dir.name}_label/Ungood" if mask_dir is not None else None
        self.layout_used += f" + {bad_form}" + (f" + masks {mask_form}" if mask_form else "")
        broken: set = set()
        masks = {} if mask_dir is None else _stem_map_images(self, mask_dir, broken)
        for img in self._images(bad):
            mask = masks.get(img.stem)
            if mask is None and img.stem in broken:
                continue                                   # its broken mask is listed already
            if mask is None and self.require_masks:
                where = mask_dir if mask_dir is not None else split_dir / "Ungood" / "anomaly_mask"
                self._problem(MissingPathError(where / img.name, f"mask of {img} not found"))
                continue
            out.append(Record(((self.modality, str(img)),), 1, self.class_name,
                              None if mask is None else str(mask), defect="Ungood"))
        return out


def _stem_map_images(reader: AnomalyDataset, folder: Path,
                     broken: Optional[set] = None) -> Dict[str, Path]:
    """``{stem: file}`` of a folder's images; stems of broken entries go to ``broken``."""
    def problem(err):
        if broken is not None:
            broken.add(Path(err.path).stem)
        reader._problem(err)

    return {p.stem: p for p in list_images(folder, on_problem=problem)}


class RetinalOCT(BMADStyle):
    """Retinal OCT (class ``retinal_edema`` as the release names it, alias ``retina``; gray,
    replicated to 3 channels): BMAD's ``RESC`` folder in any layout of
    :class:`BMADStyle`."""

    dataset_name = "retinaloct"
    class_name = "retinal_edema"
    modality = "oct"
    CLASS_ALIASES = {"retina": "retinal_edema"}


class LiverCT(BMADStyle):
    """Liver CT slices (class ``liver``; gray, replicated to 3 channels): BMAD's ``Liver``
    folder in any layout of :class:`BMADStyle`."""

    dataset_name = "liverct"
    class_name = "liver"
    modality = "ct"


class HyperKvasir(AnomalyDataset):
    """Hyper-Kvasir endoscopy (class ``colon`` as the release names it; photographic,
    ImageNet-normalised), read **as published** (Borgli et al., Scientific Data 2020; the
    Simula / OSF download, possibly as its separate ``hyper-kvasir-labeled-images`` and
    ``hyper-kvasir-segmented-images`` archives, one folder below ``root``)::

        <root>/labeled-images/{lower-gi-tract,upper-gi-tract}/<category>/<finding>/<id>.jpg
              category: anatomical-landmarks, pathological-findings,
                        quality-of-mucosal-views, therapeutic-interventions
        <root>/segmented-images/images/<id>.jpg          1000 polyp images
        <root>/segmented-images/masks/<id>.jpg           their masks (JPEG)

    Hyper-Kvasir is a classification / segmentation dataset, so which images are *normal*
    and which *anomalous* is a choice, made here as follows (``layout="published"``):

    * **normal** (label 0): the lower-GI (colon, the class) findings without lesion —
      ``normal_findings=("cecum", "ileum", "bbps-2-3")``: the cecum and ileum anatomical
      landmarks and the well-cleansed mucosa views (Boston Bowel Preparation Scale 2–3).
      Excluded: every pathological finding, the therapeutic-intervention images (dyed
      polyps and resection margins), poor-preparation views (``bbps-0-1``,
      ``impacted-stool``, whose stool would read as anomalies), ``retroflex-rectum``
      (the endoscope itself fills the view) and the upper GI tract (another organ).
    * **anomalous** (label 1, test split only): the ``segmented-images`` polyps, the only
      Hyper-Kvasir images with pixel masks (needed for the pixel metrics).  Mask pixels
      above 127 are defect (the masks are JPEGs; compression noise near 0 is not).
      ``abnormal_findings`` adds whole lower-GI finding folders (e.g. ``"polyps"``,
      ``"ulcerative-colitis-grade-2"``) as image-level anomalies; their masks come from
      ``segmented-images`` when one has the same id, else they are empty (pixel metrics
      meaningless for them).
    * **split**: a normal image is in the test split when ``crc32(id) mod 10000 <
      test_fraction · 10000`` (default 0.1), a split that does not depend on which other
      files exist; all anomalies are test images.

    The paper reports 2020 training / 184 test images for its Hyper-Kvasir part; the
    authors' preprocessed copy is not public in a verifiable form, so those counts are not
    reproduced.  ``layout="bmad"`` reads instead a copy arranged in a :class:`BMADStyle`
    layout (no public copy in that layout is known; BMAD does not contain Hyper-Kvasir);
    ``layout="auto"`` (default) takes the published layout when ``labeled-images`` or
    ``segmented-images`` is found.  Splits: ``"train"``, ``"test"`` (and ``"valid"`` in the
    BMAD layout).
    """

    dataset_name = "hyperkvasir"
    class_name = "colon"
    modality = "endoscopy"
    SPLITS = ("train", "valid", "test")
    SPLIT_ALIASES = {"val": "valid", "validation": "valid"}
    LAYOUTS = ("auto", "published", "bmad")
    CATEGORIES = ("anatomical-landmarks", "pathological-findings", "quality-of-mucosal-views",
                  "therapeutic-interventions")

    def __init__(self, root, split: str = "train", *, layout: str = "auto",
                 normal_findings: Sequence[str] = ("cecum", "ileum", "bbps-2-3"),
                 abnormal_findings: Sequence[str] = (), test_fraction: float = 0.1,
                 require_masks: bool = True, **kwargs):
        if layout not in self.LAYOUTS:
            raise ValueError(f"HyperKvasir layout must be one of {self.LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.normal_findings = _names("normal_findings", normal_findings)
        self.abnormal_findings = _names("abnormal_findings", abnormal_findings)
        if not self.normal_findings:
            raise ValueError("normal_findings must name at least one finding folder")
        overlap = set(self.normal_findings) & set(self.abnormal_findings)
        if overlap:
            raise ValueError(f"findings both normal and abnormal: {sorted(overlap)}")
        self.test_fraction = _real("test_fraction", test_fraction, 0.0, 1.0, hi_open=True)
        if not isinstance(require_masks, bool):
            raise TypeError(f"require_masks must be True or False, got {require_masks!r}")
        self.require_masks = require_masks
        self._bmad: Optional[BMADStyle] = None
        super().__init__(root, split, **kwargs)

    def _find(self, name: str) -> Optional[Path]:
        if (self.root / name).is_dir():
            return self.root / name
        hits = [p / name for p in self._subdirs(self.root) if (p / name).is_dir()]
        return hits[0] if len(hits) == 1 else None

    def _index(self, classes):
        if classes is not None and list(classes) != [self.class_name]:
            raise DataLayoutError(self.root, f"hyperkvasir has the single class "
                                  f"'{self.class_name}', got {classes}")
        labeled, segmented = self._find("labeled-images"), self._find("segmented-images")
        layout = self.layout
        if layout == "auto":
            layout = "published" if (labeled or segmented) else "bmad"
        self.layout_used = layout
        if layout == "bmad":
            self._bmad = BMADStyle(self.root, self.split, class_name=self.class_name,
                                   modality=self.modality, require_masks=self.require_masks,
                                   preprocess=self.preprocess, skip_broken=self.skip_broken,
                                   dataset_name=self.dataset_name, progress=self.progress)
            self.skipped.extend(self._bmad.skipped)
            self.class_dirs.update(self._bmad.class_dirs)
            self.layout_used = f"bmad: {self._bmad.layout_used}"
            return list(self._bmad.records)
        if self.split == "valid":
            raise ValueError("Hyper-Kvasir as published has no validation split; use 'train' or "
                             "'test' (or layout='bmad' for a BMAD-style copy)")
        if labeled is None:
            raise MissingPathError(self.root / "labeled-images", "Hyper-Kvasir labeled-images "
                                   "folder not found (needed for the normal images)")
        lower = require_dir(labeled / "lower-gi-tract", "Hyper-Kvasir lower-gi-tract folder")
        self.class_dirs[self.class_name] = lower
        normal = self._finding_images(lower, self.normal_findings)
        out = []
        for img in normal:
            in_test = zlib.crc32(img.stem.encode("utf-8")) % 10000 < self.test_fraction * 10000
            if in_test == (self.split == "test"):
                out.append(Record(((self.modality, str(img)),), 0, self.class_name, defect="normal"))
        if self.split != "test":
            return out
        seg_images: Dict[str, Path] = {}
        seg_masks: Dict[str, Path] = {}
        broken: set = set()
        if segmented is not None:
            seg_images = _stem_map_images(self, require_dir(segmented / "images",
                                                            "Hyper-Kvasir segmented images folder"),
                                          broken)
            seg_masks = _stem_map_images(self, require_dir(segmented / "masks",
                                                           "Hyper-Kvasir masks folder"), broken)
        elif not self.abnormal_findings:
            raise MissingPathError(self.root / "segmented-images", "Hyper-Kvasir segmented-images "
                                   "folder not found (the anomalous test images with masks)")
        abnormal = dict(seg_images)
        for img in self._finding_images(lower, self.abnormal_findings):
            abnormal.setdefault(img.stem, img)
        for stem in sorted(set(abnormal) - broken):
            img = abnormal[stem]
            mask = seg_masks.get(stem)
            if mask is None and (stem in seg_images or self.require_masks):
                self._problem(missing_path_error(
                    (segmented / "masks" if segmented is not None else self.root) / f"{stem}.jpg",
                    f"mask of {img}"))
                continue
            out.append(Record(((self.modality, str(img)),), 1, self.class_name,
                              None if mask is None else str(mask),
                              defect="polyp" if stem in seg_images else img.parent.name))
        return out

    def _finding_images(self, lower: Path, findings: Sequence[str]) -> List[Path]:
        out: Dict[str, Path] = {}
        for f in findings:
            folders = [lower / cat / f for cat in self.CATEGORIES if (lower / cat / f).is_dir()]
            if not folders:
                raise MissingPathError(lower / "*" / f, f"Hyper-Kvasir finding folder '{f}' not found "
                                       f"under {lower} (categories {', '.join(self.CATEGORIES)})")
            for folder in folders:
                for img in self._images(folder):
                    out.setdefault(img.stem, img)
        return [out[k] for k in sorted(out)]

    def read_mask(self, record):
        if record.mask is None:
            return None
        if self._bmad is not None:
            return self._bmad.read_mask(record)
        return read_mask(record.mask, threshold=127)
