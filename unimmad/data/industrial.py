"""Readers for the industrial datasets: MVTec AD, VisA, MVTec 3D-AD, Eyecandies, MulSen-AD."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .base import AnomalyDataset, Record
from .io import (DataLayoutError, DataReadError, MissingPathError, contained_path,
                 list_images, natural_key,
                 read_gray_raw, read_image, read_mask, read_mesh_vertices, read_yaml,
                 require_dir, require_file)
from .preprocess import ModalityImage

__all__ = ["MVTecAD", "VisA", "MVTec3DAD", "Eyecandies", "MulSenAD", "render_depth"]


def _stem_map(files: Iterable[Path]) -> Dict[str, Path]:
    return {p.stem: p for p in files}


class MVTecAD(AnomalyDataset):
    """MVTec AD (RGB; 15 classes), as downloaded::

        <root>/<class>/train/good/000.png
        <root>/<class>/test/<defect or good>/000.png
        <root>/<class>/ground_truth/<defect>/000_mask.png

    Splits ``"train"`` (good only) and ``"test"``.  Gray images (grid, screw, zipper) are
    replicated to RGB.  Test images in ``good`` have no mask (all-zero mask).
    """

    dataset_name = "mvtec"
    SPLITS = ("train", "test")

    def _index(self, classes):
        out = []
        for c in self._discover_classes(classes, marker=self.split):
            cdir = self.root / c
            self.class_dirs[c] = cdir / self.split
            split_dir = require_dir(cdir / self.split, f"MVTec AD {self.split} folder")
            defects = ["good"] if self.split == "train" else sorted(
                p.name for p in split_dir.iterdir() if p.is_dir())
            for d in defects:
                for img in list_images(require_dir(split_dir / d, "MVTec AD defect folder")):
                    mask = None
                    if d != "good":
                        mask = cdir / "ground_truth" / d / f"{img.stem}_mask.png"
                        if not mask.is_file():
                            self._problem(MissingPathError(mask, f"mask of {img} not found"))
                            continue
                    out.append(Record((("rgb", str(img)),), int(d != "good"), c,
                                      None if mask is None else str(mask), defect=d))
        return out


class VisA(AnomalyDataset):
    """VisA (RGB; 12 classes) with its 1-class split file::

        <root>/split_csv/1cls.csv        columns object,split,label,image,mask
        <root>/<class>/Data/Images/{Normal,Anomaly}/000.JPG
        <root>/<class>/Data/Masks/Anomaly/000.png

    Paths in the CSV are relative to ``root``; ``label`` is ``normal``/``anomaly``; masks hold
    small integer ids (any non-zero value is a defect).  Splits ``"train"`` and ``"test"``.
    ``split_file`` selects another CSV of the same format (e.g. ``split_csv/2cls_fewshot.csv``).
    Image and mask paths of the CSV must resolve inside ``root`` (symlinks followed) unless
    ``allow_outside_root=True``.
    """

    dataset_name = "visa"
    SPLITS = ("train", "test")

    def __init__(self, root, split: str = "train", *, split_file: str = "split_csv/1cls.csv",
                 allow_outside_root: bool = False, **kwargs):
        self.split_file = split_file
        self.allow_outside_root = bool(allow_outside_root)
        super().__init__(root, split, **kwargs)

    def _index(self, classes):
        csv_path = require_file(self.root / self.split_file, "VisA split file")
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataReadError(csv_path, f"cannot read split file ({e})") from None
        need = {"object", "split", "label", "image", "mask"}
        if not rows or not need <= set(rows[0]):
            raise DataLayoutError(csv_path, f"split file needs the columns {sorted(need)}")
        known = sorted({r["object"] for r in rows})
        wanted = set(known) if classes is None else set(classes)
        for c in sorted(wanted):
            if c not in known:
                raise DataLayoutError(csv_path, f"class '{c}' is not in the split file")
            self.class_dirs[c] = self.root / c
        out = []
        for i, r in enumerate(rows, start=2):
            c = r["object"]
            if r["split"] != self.split or c not in wanted:
                continue
            label = r["label"].strip().lower()
            if label not in ("normal", "anomaly"):
                self._problem(DataLayoutError(csv_path, f"line {i}: unknown label {r['label']!r}"))
                continue
            try:
                img = contained_path(self.root, r["image"], index=csv_path, where=f"line {i}",
                                     what="image", allow_outside_root=self.allow_outside_root)
            except DataLayoutError as e:
                self._problem(e)
                continue
            if not img.is_file():
                self._problem(MissingPathError(img, f"image listed in {csv_path} (line {i}) not found"))
                continue
            mask = None
            if label == "anomaly":
                if not r["mask"]:
                    self._problem(DataLayoutError(csv_path, f"line {i}: anomaly without a mask"))
                    continue
                try:
                    mask = contained_path(self.root, r["mask"], index=csv_path, where=f"line {i}",
                                          what="mask", allow_outside_root=self.allow_outside_root)
                except DataLayoutError as e:
                    self._problem(e)
                    continue
                if not mask.is_file():
                    self._problem(MissingPathError(mask, f"mask of {img} not found"))
                    continue
            out.append(Record((("rgb", str(img)),), int(label == "anomaly"), c,
                              None if mask is None else str(mask),
                              defect="good" if label == "normal" else "anomaly"))
        return out


class MVTec3DAD(AnomalyDataset):
    """MVTec 3D-AD (RGB + depth; 10 classes), as downloaded::

        <root>/<class>/{train,validation}/good/rgb/000.png
        <root>/<class>/{train,validation}/good/xyz/000.tiff
        <root>/<class>/test/<defect or good>/{rgb/000.png, xyz/000.tiff, gt/000.png}

    ``xyz.tiff`` is the organised point cloud ``[H, W, 3]`` (float32); the depth modality is
    its z channel, invalid points ((0, 0, 0) or NaN) filled and normalised as set in
    :class:`~unimmad.data.Preprocess` (default: nearest valid depth, standardised).  Splits
    ``"train"``, ``"validation"`` and ``"test"``.  ``modalities`` picks and orders the slots
    (default ``("rgb", "depth")``).  A preprocessed Eyecandies copy in this layout (as made by
    the M3DM/CFM scripts) reads with ``MVTec3DAD(root, dataset_name="eyecandies")``.
    """

    dataset_name = "mvtec3d"
    SPLITS = ("train", "validation", "test")
    SPLIT_ALIASES = {"val": "validation"}

    def __init__(self, root, split: str = "train", *, modalities: Sequence[str] = ("rgb", "depth"),
                 **kwargs):
        mods = tuple(modalities)
        if not mods or any(m not in ("rgb", "depth") for m in mods) or len(set(mods)) != len(mods):
            raise ValueError(f"MVTec3DAD modalities must be distinct of ('rgb', 'depth'), got {mods}")
        self.modalities = mods
        super().__init__(root, split, **kwargs)

    def _index(self, classes):
        out = []
        for c in self._discover_classes(classes, marker=self.split):
            split_dir = require_dir(self.root / c / self.split, "MVTec 3D-AD split folder")
            self.class_dirs[c] = split_dir
            for d in sorted(p.name for p in split_dir.iterdir() if p.is_dir()):
                ddir = split_dir / d
                rgb_dir = require_dir(ddir / "rgb", "MVTec 3D-AD rgb folder")
                for rgb in list_images(rgb_dir):
                    xyz = ddir / "xyz" / f"{rgb.stem}.tiff"
                    if "depth" in self.modalities and not xyz.is_file():
                        self._problem(MissingPathError(xyz, f"point cloud of {rgb} not found"))
                        continue
                    gt = ddir / "gt" / f"{rgb.stem}.png"
                    mask = str(gt) if gt.is_file() else None
                    if d != "good" and mask is None:
                        self._problem(MissingPathError(gt, f"mask of {rgb} not found"))
                        continue
                    files = tuple((m, str(rgb) if m == "rgb" else str(xyz)) for m in self.modalities)
                    out.append(Record(files, int(d != "good"), c, mask, defect=d))
        return out


class Eyecandies(AnomalyDataset):
    """Eyecandies (synthetic RGB + depth; 10 classes), in its published layout::

        <root>/<Class>/<split>/data/000_image_<k>.png     k = 0..5 (lighting conditions)
        <root>/<Class>/<split>/data/000_depth.png         16-bit normalised depth
        <root>/<Class>/<split>/data/000_info_depth.yaml   normalization: {min, max} (metres)
        <root>/<Class>/<split>/data/000_mask.png          ground truth (test_public)
        <root>/<Class>/<split>/data/000_metadata.yaml     anomaly flags (test_public)

    Splits ``"train"``, ``"val"`` and ``"test_public"`` (alias ``"test"``); the private test
    set has no labels.  Depth in metres is ``png / 65535 · (max − min) + min``; every pixel is
    valid (the conveyor belt is rendered), then normalised as the other depths.  The label of
    a test sample is the ``anomalous`` entry of its metadata (else any entry equal to 1;
    without metadata: whether the mask has a defect pixel).  ``rgb_index`` selects the
    lighting (default 0; not verified which one the paper used).
    """

    dataset_name = "eyecandies"
    SPLITS = ("train", "val", "test_public")
    SPLIT_ALIASES = {"test": "test_public", "validation": "val"}

    def __init__(self, root, split: str = "train", *, modalities: Sequence[str] = ("rgb", "depth"),
                 rgb_index: int = 0, **kwargs):
        mods = tuple(modalities)
        if not mods or any(m not in ("rgb", "depth") for m in mods) or len(set(mods)) != len(mods):
            raise ValueError(f"Eyecandies modalities must be distinct of ('rgb', 'depth'), got {mods}")
        if not 0 <= int(rgb_index) <= 5:
            raise ValueError(f"Eyecandies rgb_index must be in 0..5, got {rgb_index}")
        self.modalities = mods
        self.rgb_index = int(rgb_index)
        super().__init__(root, split, **kwargs)

    def _label(self, data: Path, sid: str) -> Tuple[int, Optional[str]]:
        mask = data / f"{sid}_mask.png"
        mask_s = str(mask) if mask.is_file() else None
        if self.split != "test_public":
            return 0, None
        meta = data / f"{sid}_metadata.yaml"
        if meta.is_file():
            info = read_yaml(meta)
            if not isinstance(info, dict):
                raise DataReadError(meta, "metadata is not a mapping")
            if "anomalous" in info:
                label = int(bool(info["anomalous"]))
            else:
                label = int(any(v == 1 for v in info.values() if isinstance(v, (int, float))))
        elif mask_s is not None:
            label = int(read_mask(mask).any())
        else:
            raise MissingPathError(meta, "neither metadata nor mask found for this sample")
        if label and mask_s is None:
            raise MissingPathError(mask, "mask of an anomalous sample not found")
        return label, (mask_s if label else None)

    def _index(self, classes):
        out = []
        for c in self._discover_classes(classes, marker=self.split):
            data = require_dir(self.root / c / self.split / "data", "Eyecandies data folder")
            self.class_dirs[c] = data
            suffix = f"_image_{self.rgb_index}.png"
            ids = sorted((p.name[: -len(suffix)] for p in data.iterdir()
                          if p.name.endswith(suffix)), key=natural_key)
            for sid in self._bar(ids, f"indexing eyecandies/{c}"):
                files = []
                ok = True
                for m in self.modalities:
                    p = data / (f"{sid}{suffix}" if m == "rgb" else f"{sid}_depth.png")
                    if not p.is_file():
                        self._problem(MissingPathError(p, f"{m} file of sample {sid} not found"))
                        ok = False
                        break
                    files.append((m, str(p)))
                if not ok:
                    continue
                try:
                    label, mask = self._label(data, sid)
                except (MissingPathError, DataReadError) as e:
                    self._problem(e)
                    continue
                out.append(Record(tuple(files), label, c, mask,
                                  defect="anomalous" if label else "good"))
        return out

    def read_modality(self, modality, path, record):
        if modality != "depth":
            return super().read_modality(modality, path, record)
        raw = read_gray_raw(path).astype(np.float64)
        info_path = Path(path[: -len("_depth.png")] + "_info_depth.yaml")
        info = read_yaml(info_path)
        try:
            lo = float(info["normalization"]["min"])
            hi = float(info["normalization"]["max"])
        except (TypeError, KeyError, ValueError):
            raise DataReadError(info_path, "expected 'normalization: {min, max}'") from None
        depth = raw / 65535.0 * (hi - lo) + lo
        return ModalityImage("depth", depth, np.isfinite(depth), path)


def render_depth(vertices: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Orthographic z-buffer of a point cloud seen from +z: ``(depth, valid)`` ``[size, size]``.

    x → columns, y → rows (flipped so +y is up); the square window is the vertices' x–y
    bounding box (the longer side, centred, 2 % margin); each pixel keeps the largest z of
    the vertices falling in it (the surface nearest to a viewer looking down −z); pixels
    without a vertex are invalid (filled later like any depth)."""
    v = np.asarray(vertices, np.float64)
    xy = v[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    centre = (lo + hi) / 2.0
    half = max(float((hi - lo).max()) / 2.0, 1e-12) * 1.02
    u = np.clip(((xy - (centre - half)) / (2 * half) * size).astype(np.int64), 0, size - 1)
    col, row = u[:, 0], size - 1 - u[:, 1]
    flat = row * size + col
    depth = np.full(size * size, -np.inf)
    np.maximum.at(depth, flat, v[:, 2])
    valid = np.isfinite(depth)
    depth[~valid] = 0.0
    return depth.reshape(size, size), valid.reshape(size, size)


class MulSenAD(AnomalyDataset):
    """MulSen-AD (RGB, infrared, point cloud; 15 classes), as downloaded::

        <root>/<class>/{RGB,Infrared}/train/0.png
        <root>/<class>/{RGB,Infrared}/test/<defect or good>/0.png
        <root>/<class>/{RGB,Infrared}/GT/<defect>/0.png        ground truth per modality
        <root>/<class>/RGB/GT/<defect>/data.csv                 per-sample labels:
                                                                object,rgb,infrared,pointcloud
        <root>/<class>/Pointcloud/{train,test/<defect>}/0.stl

    The paper uses the infrared modality only (its Table 8), the default
    ``modalities=("infrared",)``; ``("rgb", "infrared", "pointcloud")`` (any subset, any
    order) adds the others, the point cloud rendered by :func:`render_depth` (needs
    ``trimesh``).  Files pair up by their number.  The label of a test sample is the largest
    of its labels for the chosen modalities (``label_from="any"``: of all three, the
    MulSen-AD "any sensor" rule); the mask is the ground truth of the first chosen image
    modality (the sensors are not pixel-aligned), all-zero when that modality's label is 0.
    CSV rows are matched to files by the ``object`` column when it holds the file number,
    else by row order over the numerically sorted files (not verified on the real files).
    """

    dataset_name = "mulsen"
    SPLITS = ("train", "test")
    FOLDERS = {"rgb": "RGB", "infrared": "Infrared", "pointcloud": "Pointcloud"}
    CSV_COLUMN = {"rgb": 1, "infrared": 2, "pointcloud": 3}

    def __init__(self, root, split: str = "train", *, modalities: Sequence[str] = ("infrared",),
                 label_from: str = "selected", **kwargs):
        mods = tuple(modalities)
        if not mods or any(m not in self.FOLDERS for m in mods) or len(set(mods)) != len(mods):
            raise ValueError(f"MulSenAD modalities must be distinct of {tuple(self.FOLDERS)}, got {mods}")
        if label_from not in ("selected", "any"):
            raise ValueError(f"label_from must be 'selected' or 'any', got {label_from!r}")
        self.modalities = mods
        self.label_from = label_from
        super().__init__(root, split, **kwargs)

    def _files(self, folder: Path, modality: str) -> Dict[str, Path]:
        if modality == "pointcloud":
            files = [p for p in folder.iterdir() if p.suffix.lower() in (".stl", ".ply", ".pcd", ".obj")]
        else:
            files = list_images(folder)
        return _stem_map(sorted(files, key=natural_key))

    def _labels(self, cdir: Path, defect: str, stems: List[str]) -> Dict[str, Tuple[int, int, int]]:
        csv_path = None
        for m in ("rgb",) + self.modalities:
            cand = cdir / self.FOLDERS[m] / "GT" / defect / "data.csv"
            if cand.is_file():
                csv_path = cand
                break
        if csv_path is None:
            raise MissingPathError(cdir / "RGB" / "GT" / defect / "data.csv", "label file not found")
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.reader(f)][1:]
            parsed = [(r[0].strip(), tuple(int(float(x)) for x in r[1:4])) for r in rows if r]
        except (OSError, ValueError, IndexError, csv.Error) as e:
            raise DataReadError(csv_path, f"cannot parse labels ({type(e).__name__}: {e})") from None
        ordered = sorted(stems, key=natural_key)
        if len(parsed) != len(ordered):
            raise DataLayoutError(csv_path, f"{len(parsed)} label rows for {len(ordered)} samples")
        keys = [Path(k).stem for k, _ in parsed]
        if set(keys) == set(ordered):
            return {k: lab for k, (_, lab) in zip(keys, parsed)}
        return {s: lab for s, (_, lab) in zip(ordered, parsed)}

    def _index(self, classes):
        out = []
        first = self.modalities[0]
        for c in self._discover_classes(classes, marker=self.FOLDERS[first]):
            cdir = self.root / c
            self.class_dirs[c] = cdir
            base = require_dir(cdir / self.FOLDERS[first] / self.split, "MulSen-AD split folder")
            defects = [None] if self.split == "train" else sorted(
                p.name for p in base.iterdir() if p.is_dir())
            for d in defects:
                per_mod = {}
                for m in self.modalities:
                    folder = cdir / self.FOLDERS[m] / self.split
                    folder = require_dir(folder if d is None else folder / d, "MulSen-AD folder")
                    per_mod[m] = self._files(folder, m)
                stems = list(per_mod[first])
                labels = {s: (0, 0, 0) for s in stems}
                if d is not None and d != "good":
                    try:
                        labels = self._labels(cdir, d, stems)
                    except (MissingPathError, DataReadError, DataLayoutError) as e:
                        self._problem(e)
                        continue
                for s in sorted(stems, key=natural_key):
                    missing = [m for m in self.modalities if s not in per_mod[m]]
                    if missing:
                        self._problem(MissingPathError(
                            cdir / self.FOLDERS[missing[0]], f"no {missing[0]} file for sample {s}"))
                        continue
                    lab = labels[s]
                    cols = self.modalities if self.label_from == "selected" else tuple(self.FOLDERS)
                    label = int(max(lab[self.CSV_COLUMN[m] - 1] for m in cols))
                    mask, mask_mod = None, 0
                    img_mods = [i for i, m in enumerate(self.modalities) if m != "pointcloud"]
                    if img_mods and d not in (None, "good"):
                        mask_mod = img_mods[0]
                        mm = self.modalities[mask_mod]
                        if lab[self.CSV_COLUMN[mm] - 1]:
                            gt = cdir / self.FOLDERS[mm] / "GT" / d / per_mod[mm][s].name
                            if not gt.is_file():
                                self._problem(MissingPathError(gt, f"mask of sample {s} not found"))
                                continue
                            mask = str(gt)
                    files = tuple((m, str(per_mod[m][s])) for m in self.modalities)
                    out.append(Record(files, label, c, mask, mask_mod, defect=d or "good"))
        return out

    def read_modality(self, modality, path, record):
        if modality == "pointcloud":
            z, valid = render_depth(read_mesh_vertices(path), self.preprocess.image_size)
            return ModalityImage("depth", z, valid, path)
        return ModalityImage(modality, read_image(path), None, path)
