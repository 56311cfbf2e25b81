"""Readers for the industrial datasets: MVTec AD, VisA, MVTec 3D-AD, Eyecandies, MulSen-AD.

Each docstring gives the folder layout(s) read and where the layout comes from.
"""
from __future__ import annotations

import csv
import numbers
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .base import AnomalyDataset, Record
from .io import (DataLayoutError, DataReadError, MissingPathError, contained_path,
                 list_entries, list_images, missing_path_error, natural_key, read_gray_raw,
                 read_image, read_mask, read_mesh_vertices, read_yaml, require_dir,
                 require_file)
from .preprocess import INVALID_POINT_RULES, ModalityImage

__all__ = ["MVTecAD", "VisA", "MVTec3DAD", "Eyecandies", "MulSenAD", "render_depth"]


def _stem_map(files: Iterable[Path]) -> Dict[str, Path]:
    return {p.stem: p for p in files}


def _modalities(name: str, given, allowed: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(given, str) or not isinstance(given, Sequence):
        raise TypeError(f"{name} modalities must be a sequence of names, got {given!r}")
    mods = tuple(given)
    if not mods or any(m not in allowed for m in mods) or len(set(mods)) != len(mods):
        raise ValueError(f"{name} modalities must be distinct of {tuple(allowed)}, got {mods}")
    return mods


def _index_folder_layout(reader: AnomalyDataset, base: Path, classes, mask_suffixes, what: str,
                         normal: str = "good"):
    """Records of the MVTec AD folder layout ``<class>/<split>/<defect>/<img>`` with masks
    ``<class>/ground_truth/<defect>/<stem><suffix>.png`` (first suffix found)."""
    out = []
    for c in classes:
        cdir = base / c
        split_dir = require_dir(cdir / reader.split, f"{what} {reader.split} folder")
        reader.class_dirs[c] = split_dir
        defects = [normal] if reader.split == "train" else [p.name for p in reader._subdirs(split_dir)]
        for d in defects:
            for img in reader._images(require_dir(split_dir / d, f"{what} defect folder")):
                mask = None
                if d != normal:
                    cands = [cdir / "ground_truth" / d / f"{img.stem}{sfx}.png" for sfx in mask_suffixes]
                    mask = next((m for m in cands if m.is_file()), None)
                    if mask is None:
                        reader._problem(missing_path_error(cands[0], f"mask of {img}"))
                        continue
                out.append(Record((("rgb", str(img)),), int(d != normal), c,
                                  None if mask is None else str(mask), defect=d))
    return out


class MVTecAD(AnomalyDataset):
    """MVTec AD (RGB; 15 classes), as downloaded (the archive's layout, read the same way by
    the MVTec AD evaluation code and anomalib)::

        <root>/<class>/train/good/000.png
        <root>/<class>/test/<defect or good>/000.png
        <root>/<class>/ground_truth/<defect>/000_mask.png

    Splits ``"train"`` (good only) and ``"test"``.  Gray images (grid, screw, zipper) are
    replicated to RGB.  Test images in ``good`` have no mask (all-zero mask).
    """

    dataset_name = "mvtec"
    SPLITS = ("train", "test")

    def _index(self, classes):
        return _index_folder_layout(self, self.root, self._discover_classes(classes, marker=self.split),
                                    ("_mask",), "MVTec AD")


class VisA(AnomalyDataset):
    """VisA (RGB; 12 classes) in either published form (the VisA authors' repository
    ``amazon-science/spot-diff``):

    * ``layout="csv"`` — the download plus the official 1-class split file::

          <root>/<class>/Data/Images/{Normal,Anomaly}/0000.JPG
          <root>/<class>/Data/Masks/Anomaly/000.png        small integer ids (non-zero = defect)
          <root>/split_csv/1cls.csv                        object,split,label,image,mask

      ``split_csv/`` comes from spot-diff, not from the download: copy it next to the class
      folders (or give ``split_file``, relative to ``root`` or absolute, e.g. another CSV
      of the same format such as ``2cls_fewshot.csv``).  Paths in the CSV are relative to
      ``root``; ``label`` is ``normal``/``anomaly``, ``split`` ``train``/``test``.
    * ``layout="pytorch"`` — the same split reorganised by spot-diff's
      ``utils/prepare_data.py --split-type 1cls`` (MVTec AD layout, masks binarised to 255)::

          <root>/[1cls/]<class>/train/good/0000.JPG
          <root>/[1cls/]<class>/test/{good,bad}/000.JPG
          <root>/[1cls/]<class>/ground_truth/bad/000.png

    ``layout="auto"`` (default) takes the CSV form when the split file exists, else the
    reorganised form.  Splits ``"train"`` and ``"test"``.  A row of the split file with a
    wrong field count, an unknown split or label, or an anomaly without a mask raises an
    error naming the file and line (``skip_broken=True``: listed in ``skipped``).
    Image and mask paths of the CSV must resolve inside ``root`` (symlinks followed) unless
    ``allow_outside_root=True``.
    """

    dataset_name = "visa"
    SPLITS = ("train", "test")
    LAYOUTS = ("auto", "csv", "pytorch")
    CSV_COLUMNS = ("object", "split", "label", "image", "mask")

    def __init__(self, root, split: str = "train", *, split_file: str = "split_csv/1cls.csv",
                 layout: str = "auto", allow_outside_root: bool = False, **kwargs):
        if not isinstance(split_file, (str, Path)):
            raise TypeError(f"VisA split_file must be a path, got {split_file!r}")
        if layout not in self.LAYOUTS:
            raise ValueError(f"VisA layout must be one of {self.LAYOUTS}, got {layout!r}")
        self.split_file = split_file
        self.layout = layout
        self.allow_outside_root = bool(allow_outside_root)
        super().__init__(root, split, **kwargs)

    def _split_path(self) -> Path:
        p = Path(self.split_file)
        return p if p.is_absolute() else self.root / p

    def _index(self, classes):
        csv_path = self._split_path()
        layout = self.layout
        if layout == "auto":
            base = self.root / "1cls" if (self.root / "1cls").is_dir() else self.root
            reorganised = any((p / "train").is_dir() and (p / "test").is_dir() and
                              {q.name for q in self._subdirs(p / "test")} == {"good", "bad"}
                              for p in self._subdirs(base))
            layout = "csv" if csv_path.exists() or not reorganised else "pytorch"
        self.layout_used = layout
        if layout == "pytorch":
            base = self.root / "1cls" if (self.root / "1cls").is_dir() else self.root
            if classes is None:
                classes = sorted(p.name for p in self._subdirs(base) if (p / self.split).is_dir())
                if not classes:
                    raise DataLayoutError(base, "no VisA class folder with a "
                                          f"'{self.split}' folder found")
            else:
                for c in classes:
                    require_dir(base / c, "VisA class folder")
            return _index_folder_layout(self, base, classes, ("",), "VisA", normal="good")
        if not csv_path.exists() and not csv_path.is_symlink():
            raise MissingPathError(csv_path, "VisA split file not found (copy split_csv/ of the "
                                   "VisA repository amazon-science/spot-diff next to the class "
                                   "folders, or pass split_file=...)")
        return self._index_csv(require_file(csv_path, "VisA split file"), classes)

    def _read_rows(self, csv_path: Path):
        """``[(line, {column: value})]`` of the split file; malformed rows → problems."""
        rows = []
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    raise DataLayoutError(csv_path, "split file is empty")
                cols = [h.strip().lower() for h in header]
                missing = [c for c in self.CSV_COLUMNS if c not in cols]
                if missing:
                    raise DataLayoutError(csv_path, f"line 1: the split file needs the columns "
                                          f"{list(self.CSV_COLUMNS)}; missing {missing} in {header}")
                where = {c: cols.index(c) for c in self.CSV_COLUMNS}
                for row in reader:
                    line = reader.line_num
                    if not any(cell.strip() for cell in row):
                        continue                                       # blank line
                    if len(row) != len(cols):
                        self._problem(DataLayoutError(
                            csv_path, f"line {line}: {len(row)} field(s), the header has "
                            f"{len(cols)} ({','.join(row)})"))
                        continue
                    rows.append((line, {c: row[i].strip() for c, i in where.items()}))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataReadError(csv_path, f"cannot read split file ({type(e).__name__}: {e})") from None
        return rows

    def _index_csv(self, csv_path: Path, classes):
        rows = self._read_rows(csv_path)
        known = sorted({r["object"] for _, r in rows if r["object"]})
        wanted = set(known) if classes is None else set(classes)
        for c in sorted(wanted):
            if c not in known:
                raise DataLayoutError(csv_path, f"class '{c}' is not in the split file")
            self.class_dirs[c] = self.root / c
        out = []
        for line, r in rows:
            c = r["object"]
            bad = None
            if not c:
                bad = "empty 'object'"
            elif r["split"] not in self.SPLITS:
                bad = f"unknown split {r['split']!r} (expected one of {self.SPLITS})"
            elif r["label"].lower() not in ("normal", "anomaly"):
                bad = f"unknown label {r['label']!r} (expected 'normal' or 'anomaly')"
            elif not r["image"]:
                bad = "empty 'image' path"
            elif r["label"].lower() == "anomaly" and not r["mask"]:
                bad = "an anomaly without a mask"
            if bad is not None:
                self._problem(DataLayoutError(csv_path, f"line {line}: {bad}"))
                continue
            if r["split"] != self.split or c not in wanted:
                continue
            label = int(r["label"].lower() == "anomaly")
            try:
                img = contained_path(self.root, r["image"], index=csv_path, where=f"line {line}",
                                     what="image", allow_outside_root=self.allow_outside_root)
            except DataLayoutError as e:
                self._problem(e)
                continue
            if not img.is_file():   # reported at the listed path: a broken link says so
                self._problem(missing_path_error(self.root / r["image"],
                                                 f"image listed in {csv_path} (line {line})"))
                continue
            mask = None
            if label:
                try:
                    mask = contained_path(self.root, r["mask"], index=csv_path,
                                          where=f"line {line}", what="mask",
                                          allow_outside_root=self.allow_outside_root)
                except DataLayoutError as e:
                    self._problem(e)
                    continue
                if not mask.is_file():
                    self._problem(missing_path_error(self.root / r["mask"],
                                                     f"mask listed in {csv_path} (line {line})"))
                    continue
            out.append(Record((("rgb", str(img)),), label, c, None if mask is None else str(mask),
                              defect="anomaly" if label else "good"))
        return out


class MVTec3DAD(AnomalyDataset):
    """MVTec 3D-AD (RGB + depth; 10 classes), as downloaded (the archive's layout, read the
    same way by its official evaluation code, 3D-ADS and M3DM)::

        <root>/<class>/{train,validation}/good/rgb/000.png
        <root>/<class>/{train,validation}/good/xyz/000.tiff
        <root>/<class>/test/<defect or good>/{rgb/000.png, xyz/000.tiff, gt/000.png}

    ``xyz.tiff`` is the organised point cloud ``[H, W, 3]`` (float32), pixel-aligned with the
    RGB image: an ``xyz.tiff`` of another size than its RGB raises an error naming both
    files (never resized into misalignment).  The depth modality is its z channel; the
    invalid points follow ``invalid_points`` (default ``"any_zero"``: a point is valid only
    when all three coordinates are non-zero, as 3D-ADS / M3DM / CFM; ``"all_zero"``: only
    (0, 0, 0) is invalid — see :func:`~unimmad.data.preprocess.depth_from_xyz`), then filled
    and normalised as set in :class:`~unimmad.data.Preprocess`.  Splits ``"train"``,
    ``"validation"`` (alias ``"val"``) and ``"test"``.  ``modalities`` picks and orders the
    slots (default ``("rgb", "depth")``).  A preprocessed Eyecandies copy in this layout (as
    made by the M3DM/CFM ``preprocess_eyecandies.py`` scripts) reads with
    ``MVTec3DAD(root, dataset_name="eyecandies")``.
    """

    dataset_name = "mvtec3d"
    SPLITS = ("train", "validation", "test")
    SPLIT_ALIASES = {"val": "validation"}
    aligned_modalities = True

    def __init__(self, root, split: str = "train", *, modalities: Sequence[str] = ("rgb", "depth"),
                 invalid_points: str = "any_zero", **kwargs):
        self.modalities = _modalities("MVTec3DAD", modalities, ("rgb", "depth"))
        if invalid_points not in INVALID_POINT_RULES:
            raise ValueError(f"invalid_points must be one of {INVALID_POINT_RULES}, got {invalid_points!r}")
        self.invalid_points = invalid_points
        super().__init__(root, split, **kwargs)

    def _index(self, classes):
        out = []
        for c in self._discover_classes(classes, marker=self.split):
            split_dir = require_dir(self.root / c / self.split, "MVTec 3D-AD split folder")
            self.class_dirs[c] = split_dir
            for ddir in self._subdirs(split_dir):
                d = ddir.name
                found, broken = {}, set()

                def problem(err):                  # a broken file: its sample is reported once
                    broken.add(Path(err.path).stem)
                    self._problem(err)

                if "rgb" in self.modalities:
                    found["rgb"] = _stem_map(list_images(
                        require_dir(ddir / "rgb", "MVTec 3D-AD rgb folder"), on_problem=problem))
                if "depth" in self.modalities:
                    found["depth"] = _stem_map(list_images(
                        require_dir(ddir / "xyz", "MVTec 3D-AD xyz folder"), (".tiff", ".tif"),
                        on_problem=problem))
                stems = sorted(set().union(*found.values()) - broken, key=natural_key)
                for stem in stems:
                    have = {m: found[m][stem] for m in self.modalities if stem in found[m]}
                    missing = [m for m in self.modalities if m not in have]
                    if missing:
                        rgb = missing[0] == "rgb"
                        want = ddir / ("rgb" if rgb else "xyz") / f"{stem}.{'png' if rgb else 'tiff'}"
                        self._problem(missing_path_error(
                            want, f"{'RGB image' if rgb else 'point cloud'} of {next(iter(have.values()))}"))
                        continue
                    ok, gt = self._optional_file(ddir / "gt" / f"{stem}.png", "mask")
                    if not ok:
                        continue
                    if d != "good" and gt is None:
                        self._problem(MissingPathError(ddir / "gt" / f"{stem}.png",
                                                       f"mask of {have[self.modalities[0]]} not found"))
                        continue
                    files = tuple((m, str(have[m])) for m in self.modalities)
                    out.append(Record(files, int(d != "good"), c, None if gt is None else str(gt),
                                      defect=d))
        return out


_EYE_FILE = re.compile(r"^(?P<id>.+?)_(?:image_(?P<k>\d+)|(?P<depth>depth))\.png$")


class Eyecandies(AnomalyDataset):
    """Eyecandies (synthetic RGB + depth; 10 classes), in its published layout (the
    download, as read by the M3DM and CFM ``preprocess_eyecandies.py`` scripts)::

        <root>/<Class>/<split>/data/000_image_<k>.png     k = 0..5 (lighting conditions)
        <root>/<Class>/<split>/data/000_depth.png         16-bit normalised depth
        <root>/<Class>/<split>/data/000_info_depth.yaml   normalization: {min, max} (metres)
        <root>/<Class>/<split>/data/00_mask.png           ground truth (test_public)
        <root>/<Class>/<split>/data/00_metadata.yaml      anomaly flags (test_public)

    Splits ``"train"``, ``"val"`` (alias ``"validation"``) and ``"test_public"`` (alias
    ``"test"``); the private test set has no labels.  Depth in metres is ``png / 65535 ·
    (max − min) + min`` (a depth PNG that is not 16-bit, or ``min``/``max`` that are not
    finite numbers with ``max > min``, raise an error naming the file); every pixel is
    valid (the conveyor belt is rendered), then normalised as the other depths.  RGB and
    depth are pixel-aligned (another size raises, naming both files).

    Protocol choices (named options, defaults = the common protocol of M3DM and CFM, which
    the UniMMAD release's ``EyePre`` data comes from):

    * ``rgb_index`` — the lighting condition of the RGB image, default **4** (M3DM and CFM
      copy ``<id>_image_4.png``).
    * ``label_from`` — ``"mask"`` (default; M3DM and CFM: anomalous ⇔ the mask has a defect
      pixel) or ``"metadata"`` (the ``anomalous`` entry of ``<id>_metadata.yaml``, which
      must be 0/1 or a bool).
    """

    dataset_name = "eyecandies"
    SPLITS = ("train", "val", "test_public")
    SPLIT_ALIASES = {"test": "test_public", "validation": "val"}
    LABEL_SOURCES = ("mask", "metadata")
    aligned_modalities = True

    def __init__(self, root, split: str = "train", *, modalities: Sequence[str] = ("rgb", "depth"),
                 rgb_index: int = 4, label_from: str = "mask", **kwargs):
        self.modalities = _modalities("Eyecandies", modalities, ("rgb", "depth"))
        if not isinstance(rgb_index, numbers.Integral) or isinstance(rgb_index, bool) \
                or not 0 <= rgb_index <= 5:
            raise ValueError(f"Eyecandies rgb_index must be an int in 0..5, got {rgb_index!r}")
        if label_from not in self.LABEL_SOURCES:
            raise ValueError(f"Eyecandies label_from must be one of {self.LABEL_SOURCES}, "
                             f"got {label_from!r}")
        self.rgb_index = int(rgb_index)
        self.label_from = label_from
        super().__init__(root, split, **kwargs)

    def _label(self, data: Path, sid: str) -> Tuple[int, Optional[str]]:
        if self.split != "test_public":
            return 0, None
        mask = data / f"{sid}_mask.png"
        if not mask.is_file():
            raise missing_path_error(mask, "mask of a test sample")
        if self.label_from == "mask":
            label = int(read_mask(mask).any())
        else:
            meta = require_file(data / f"{sid}_metadata.yaml", "metadata of a test sample")
            info = read_yaml(meta)
            if not isinstance(info, dict) or "anomalous" not in info:
                raise DataLayoutError(meta, "metadata must be a mapping with an 'anomalous' entry")
            v = info["anomalous"]
            if isinstance(v, bool) or (isinstance(v, numbers.Real) and v in (0, 1)):
                label = int(v)
            else:
                raise DataLayoutError(meta, f"'anomalous' must be 0, 1 or a bool, got {v!r}")
        return label, (str(mask) if label else None)

    def _index(self, classes):
        out = []
        for c in self._discover_classes(classes, marker=self.split):
            data = require_dir(self.root / c / self.split / "data", "Eyecandies data folder")
            self.class_dirs[c] = data
            files: Dict[str, Dict[str, Path]] = {}
            broken = set()
            for p in list_entries(data):
                m = _EYE_FILE.match(p.name)
                if m is None or (m.group("k") is not None and int(m.group("k")) != self.rgb_index):
                    continue
                mod = "depth" if m.group("depth") else "rgb"
                if mod not in self.modalities:
                    continue
                if not p.is_file():
                    self._problem(missing_path_error(p, f"{mod} file"))
                    broken.add(m.group("id"))
                    continue
                files.setdefault(m.group("id"), {})[mod] = p
            ids = sorted(set(files) - broken, key=natural_key)
            for sid in self._bar(ids, f"indexing eyecandies/{c}"):
                have = files[sid]
                missing = [m for m in self.modalities if m not in have]
                if missing:
                    want = data / (f"{sid}_image_{self.rgb_index}.png" if missing[0] == "rgb"
                                   else f"{sid}_depth.png")
                    self._problem(missing_path_error(
                        want, f"{missing[0]} file of sample {sid} (found {next(iter(have.values()))})"))
                    continue
                try:
                    label, mask = self._label(data, sid)
                except (MissingPathError, DataReadError, DataLayoutError) as e:
                    self._problem(e)
                    continue
                out.append(Record(tuple((m, str(have[m])) for m in self.modalities), label, c, mask,
                                  defect="anomalous" if label else "good"))
        return out

    def read_modality(self, modality, path, record):
        if modality != "depth":
            return super().read_modality(modality, path, record)
        raw = read_gray_raw(path)
        if raw.dtype != np.uint16:
            raise DataReadError(path, f"expected a 16-bit depth PNG, got {raw.dtype} pixels")
        info_path = Path(path[: -len("_depth.png")] + "_info_depth.yaml")
        info = read_yaml(info_path)
        try:
            lo, hi = info["normalization"]["min"], info["normalization"]["max"]
        except (TypeError, KeyError):
            raise DataLayoutError(info_path, "expected 'normalization: {min, max}'") from None
        for v in (lo, hi):
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not np.isfinite(v):
                raise DataLayoutError(info_path, f"normalization min/max must be finite numbers, "
                                      f"got min={lo!r}, max={hi!r}")
        if not hi > lo:
            raise DataLayoutError(info_path, f"normalization max ({hi}) must exceed min ({lo})")
        depth = raw.astype(np.float64) / 65535.0 * (float(hi) - float(lo)) + float(lo)
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
    """MulSen-AD (RGB, infrared, point cloud; 15 classes), as downloaded (the layout of the
    dataset's README and reference loader, ``ZZZBBBZZZ/MulSen-AD`` ``dataset.py``)::

        <root>/<class>/{RGB,Infrared}/train/0.png
        <root>/<class>/{RGB,Infrared}/test/<defect or good>/0.png
        <root>/<class>/{RGB,Infrared}/GT/<defect>/0.png        ground truth per modality
        <root>/<class>/RGB/GT/<defect>/data.csv                 per-sample labels:
                                                                object,rgb,infrared,pointcloud
        <root>/<class>/Pointcloud/{train,test/<defect>}/0.stl

    The paper uses the infrared modality only (its Table 8), the default
    ``modalities=("infrared",)``; ``("rgb", "infrared", "pointcloud")`` (any subset, any
    order) adds the others, the point cloud rendered by :func:`render_depth` (needs
    ``trimesh``).  Files pair up by their number; a number present for one chosen modality
    and missing for another is an error naming the missing file.  The label of a test
    sample is the largest of its labels for the chosen modalities (``label_from="any"``: of
    all three, the MulSen-AD "any sensor" rule); labels must be 0 or 1 (another value, or a
    short row, raises naming the CSV file and line).  CSV rows are matched to files by the
    ``object`` column when it holds the file numbers, else by row order over the
    numerically sorted files (the reference loader's rule).  The mask is the ground truth of
    the first chosen image modality (the sensors are not pixel-aligned), all-zero when that
    modality's label is 0; mask pixels above 127 are defect (the reference's ``> 0.5``
    after scaling to [0, 1]).
    """

    dataset_name = "mulsen"
    SPLITS = ("train", "test")
    FOLDERS = {"rgb": "RGB", "infrared": "Infrared", "pointcloud": "Pointcloud"}
    CSV_COLUMN = {"rgb": 1, "infrared": 2, "pointcloud": 3}
    CLOUD_EXTENSIONS = (".stl", ".ply", ".pcd", ".obj")

    def __init__(self, root, split: str = "train", *, modalities: Sequence[str] = ("infrared",),
                 label_from: str = "selected", **kwargs):
        self.modalities = _modalities("MulSenAD", modalities, tuple(self.FOLDERS))
        if label_from not in ("selected", "any"):
            raise ValueError(f"label_from must be 'selected' or 'any', got {label_from!r}")
        self.label_from = label_from
        super().__init__(root, split, **kwargs)

    def _files(self, folder: Path, modality: str, broken: set) -> Dict[str, Path]:
        def problem(err):                          # a broken file: its sample is reported once
            broken.add(Path(err.path).stem)
            self._problem(err)

        ext = self.CLOUD_EXTENSIONS if modality == "pointcloud" else None
        return _stem_map(list_images(folder, ext, on_problem=problem) if ext
                         else list_images(folder, on_problem=problem))

    def _labels(self, cdir: Path, defect: str, stems: List[str]) -> Dict[str, Tuple[int, int, int]]:
        csv_path = None
        for m in ("rgb",) + self.modalities:
            cand = cdir / self.FOLDERS[m] / "GT" / defect / "data.csv"
            if cand.is_file():
                csv_path = cand
                break
        if csv_path is None:
            raise MissingPathError(cdir / "RGB" / "GT" / defect / "data.csv", "label file not found")
        parsed = []
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                next(reader, None)                                   # header
                for row in reader:
                    if not any(cell.strip() for cell in row):
                        continue
                    line = reader.line_num
                    if len(row) < 4:
                        raise DataLayoutError(csv_path, f"line {line}: {len(row)} field(s), expected "
                                              "4 (object, rgb, infrared, pointcloud)")
                    labs = []
                    for x in row[1:4]:
                        try:
                            v = float(x)
                        except ValueError:
                            v = None
                        if v not in (0.0, 1.0):
                            raise DataLayoutError(csv_path, f"line {line}: label {x.strip()!r} must "
                                                  "be 0 or 1")
                        labs.append(int(v))
                    parsed.append((row[0].strip(), tuple(labs)))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataReadError(csv_path, f"cannot read labels ({type(e).__name__}: {e})") from None
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
            defects = [None] if self.split == "train" else [p.name for p in self._subdirs(base)]
            for d in defects:
                per_mod, broken = {}, set()
                for m in self.modalities:
                    folder = cdir / self.FOLDERS[m] / self.split
                    folder = require_dir(folder if d is None else folder / d, "MulSen-AD folder")
                    per_mod[m] = self._files(folder, m, broken)
                stems = sorted(set().union(*per_mod.values()) - broken, key=natural_key)
                complete = []
                for s in stems:
                    missing = [m for m in self.modalities if s not in per_mod[m]]
                    if missing:
                        m = missing[0]
                        have = next(per_mod[o][s] for o in self.modalities if s in per_mod[o])
                        where = cdir / self.FOLDERS[m] / self.split / (d or "")
                        self._problem(MissingPathError(where, f"no {m} file for sample {s} "
                                                       f"(found {have})"))
                        continue
                    complete.append(s)
                labels = {s: (0, 0, 0) for s in stems}
                if d is not None and d != "good":
                    try:
                        labels = self._labels(cdir, d, list(per_mod[first]))
                    except (MissingPathError, DataReadError, DataLayoutError) as e:
                        self._problem(e)
                        continue
                for s in complete:
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
                                self._problem(missing_path_error(gt, f"mask of sample {s}"))
                                continue
                            mask = str(gt)
                    files = tuple((m, str(per_mod[m][s])) for m in self.modalities)
                    out.append(Record(files, label, c, mask, mask_mod, defect=d or "good"))
        return out

    def read_mask(self, record):
        return None if record.mask is None else read_mask(record.mask, threshold=127)

    def read_modality(self, modality, path, record):
        if modality == "pointcloud":
            z, valid = render_depth(read_mesh_vertices(path), self.preprocess.image_size)
            return ModalityImage("depth", z, valid, path)
        return ModalityImage(modality, read_image(path), None, path)
