"""Writers of tiny datasets in the real folder layouts (anomalib's ``tests/helpers/data.py``
idea): images, masks, TIFF point clouds, NIfTI volumes, STL meshes, CSV/YAML/JSON side
files.  Nothing here is a copy of a dataset; every file is synthesised into a temporary
folder by the tests.

Every anomalous sample carries a **marker**: the defect pixels (the mask) are painted in a
distinctive value, so a test can check that mask and image stay aligned through reading and
resizing.  Images are 24×32 (H×W, not square) to catch transposed axes.
"""
from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

H, W = 24, 32
MARK = (255, 0, 0)                 # defect pixels of RGB images are pure red
BOX = (slice(6, 18), slice(8, 24))  # defect rectangle (rows, cols): 12×16, centred


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def rgb_image(seed: int, defect: bool = False, gray: bool = False) -> np.ndarray:
    """A dim noise image (values ≤ 120) with the red defect box when ``defect``."""
    rng = _rng(seed)
    a = rng.integers(20, 120, size=(H, W, 3), dtype=np.uint8)
    if gray:
        a = np.repeat(a[:, :, :1], 3, axis=2)
    if defect:
        a[BOX] = MARK if not gray else (255, 255, 255)
    return a


def box_mask(value: int = 255) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[BOX] = value
    return m


def save_png(path: Path, arr: np.ndarray) -> Path:
    _mkdir(path.parent)
    Image.fromarray(arr).save(path)
    return path


def save_jpg(path: Path, arr: np.ndarray) -> Path:
    _mkdir(path.parent)
    Image.fromarray(arr).save(path, quality=100, subsampling=0)
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to a fraction of its bytes (a truncated download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(8, int(len(data) * keep))])


# ----------------------------------------------------------------------------- MVTec AD
def make_mvtec_ad(root: Path, classes: Sequence[str] = ("bottle", "grid"), n_train: int = 3,
                  n_good: int = 2, defects: Dict[str, int] = None,
                  gray_classes: Sequence[str] = ("grid",)) -> Dict:
    defects = {"crack": 2, "hole": 1} if defects is None else defects
    info = {"train": 0, "test": 0, "anomalous": 0}
    for ci, c in enumerate(classes):
        gray = c in gray_classes
        for i in range(n_train):
            save_png(root / c / "train" / "good" / f"{i:03d}.png", rgb_image(100 * ci + i, gray=gray)[..., 0] if gray else rgb_image(100 * ci + i))
            info["train"] += 1
        for i in range(n_good):
            save_png(root / c / "test" / "good" / f"{i:03d}.png", rgb_image(200 + i, gray=gray))
            info["test"] += 1
        for d, n in defects.items():
            for i in range(n):
                save_png(root / c / "test" / d / f"{i:03d}.png", rgb_image(300 + i, defect=True))
                save_png(root / c / "ground_truth" / d / f"{i:03d}_mask.png", box_mask())
                info["test"] += 1
                info["anomalous"] += 1
    (root / "license.txt").write_text("synthetic test data\n")
    return info


# ----------------------------------------------------------------------------- VisA
def make_visa(root: Path, classes: Sequence[str] = ("candle", "pcb1"), n_train: int = 3,
              n_good: int = 2, n_bad: int = 2, layout: str = "csv", bom: bool = False) -> Dict:
    """VisA as downloaded plus ``split_csv/1cls.csv`` (``layout="csv"``), or as reorganised
    by spot-diff's ``prepare_data.py`` (``layout="pytorch"``: ``1cls/<class>/train/good``,
    ``test/{good,bad}``, ``ground_truth/bad/<stem>.png`` binarised to 255)."""
    rows = []
    info = {"train": 0, "test": 0, "anomalous": 0}
    for ci, c in enumerate(classes):
        k = 0
        for split, n in (("train", n_train), ("test", n_good)):
            for _ in range(n):
                rel = f"{c}/Data/Images/Normal/{k:04d}.JPG"
                img = rgb_image(10 * ci + k)
                if layout == "csv":
                    save_jpg(root / rel, img)
                else:
                    save_jpg(root / "1cls" / c / split / "good" / f"{k:04d}.JPG", img)
                rows.append({"object": c, "split": split, "label": "normal", "image": rel, "mask": ""})
                info[split] += 1
                k += 1
        for i in range(n_bad):
            rel = f"{c}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{c}/Data/Masks/Anomaly/{i:03d}.png"
            if layout == "csv":
                save_jpg(root / rel, rgb_image(500 + i, defect=True))
                save_png(root / mrel, box_mask(value=1 + i))   # VisA masks hold small ids
            else:
                save_jpg(root / "1cls" / c / "test" / "bad" / f"{i:03d}.JPG", rgb_image(500 + i, defect=True))
                save_png(root / "1cls" / c / "ground_truth" / "bad" / f"{i:03d}.png", box_mask())
            rows.append({"object": c, "split": "test", "label": "anomaly", "image": rel, "mask": mrel})
            info["test"] += 1
            info["anomalous"] += 1
    if layout == "csv":
        _mkdir(root / "split_csv")
        with open(root / "split_csv" / "1cls.csv", "w", newline="",
                  encoding="utf-8-sig" if bom else "utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["object", "split", "label", "image", "mask"])
            w.writeheader()
            w.writerows(rows)
    return info


# ----------------------------------------------------------------------------- MVTec 3D-AD
def xyz_cloud(seed: int, defect: bool = False) -> np.ndarray:
    """Organised point cloud [H, W, 3] float32: a tilted plane with a raised defect box,
    a band of missing points (0, 0, 0) on the left and one NaN point."""
    rng = _rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    z = 0.5 + 0.0002 * xx + 0.0001 * yy + rng.normal(0, 1e-4, size=(H, W)).astype(np.float32)
    if defect:
        z[BOX] += 0.02
    xyz = np.stack([xx * 1e-3, yy * 1e-3, z], axis=2).astype(np.float32)
    xyz[:, :3] = 0.0
    xyz[0, W - 1] = np.nan
    return xyz


def make_mvtec3d(root: Path, classes: Sequence[str] = ("bagel", "foam"), n_train: int = 3,
                 n_val: int = 1, n_good: int = 2, n_bad: int = 2) -> Dict:
    import tifffile

    info = {"train": 0, "validation": 0, "test": 0, "anomalous": 0}

    def sample(d: Path, i: int, seed: int, defect: bool, gt: bool):
        save_png(d / "rgb" / f"{i:03d}.png", rgb_image(seed, defect=defect))
        _mkdir(d / "xyz")
        tifffile.imwrite(str(d / "xyz" / f"{i:03d}.tiff"), xyz_cloud(seed, defect), photometric="rgb")
        if gt:
            save_png(d / "gt" / f"{i:03d}.png", box_mask() if defect else np.zeros((H, W), np.uint8))

    for c in classes:
        for i in range(n_train):
            sample(root / c / "train" / "good", i, i, False, False)
            info["train"] += 1
        for i in range(n_val):
            sample(root / c / "validation" / "good", i, 50 + i, False, False)
            info["validation"] += 1
        for i in range(n_good):
            sample(root / c / "test" / "good", i, 60 + i, False, True)
            info["test"] += 1
        for i in range(n_bad):
            sample(root / c / "test" / "hole", i, 70 + i, True, True)
            info["test"] += 1
            info["anomalous"] += 1
        _mkdir(root / c / "calibration")
    return info


# ----------------------------------------------------------------------------- Eyecandies
def make_eyecandies(root: Path, classes: Sequence[str] = ("CandyCane",), n_train: int = 3,
                    n_val: int = 1, n_good: int = 2, n_bad: int = 2) -> Dict:
    import yaml

    info = {"train": 0, "val": 0, "test_public": 0, "anomalous": 0}

    def sample(d: Path, sid: str, seed: int, defect, test: bool):
        for k in range(6):
            img = rgb_image(seed + k, defect=defect)
            img[0, 0] = (10 * k, 10 * k, 10 * k)          # the lighting index, readable back
            save_png(d / f"{sid}_image_{k}.png", img)
        depth = np.full((H, W), 30000, np.uint16) + _rng(seed).integers(0, 200, (H, W)).astype(np.uint16)
        if defect:
            depth[BOX] += 5000
        save_png(d / f"{sid}_depth.png", depth)
        with open(d / f"{sid}_info_depth.yaml", "w") as f:
            yaml.safe_dump({"normalization": {"min": 0.3, "max": 0.9}}, f)
        save_png(d / f"{sid}_normals.png", rgb_image(seed))
        np.savetxt(d / f"{sid}_pose.txt", np.eye(4))
        if test:
            save_png(d / f"{sid}_mask.png", box_mask() if defect else np.zeros((H, W), np.uint8))
            with open(d / f"{sid}_metadata.yaml", "w") as f:
                yaml.safe_dump({"anomalous": int(defect), "bumps": int(defect), "colors": 0,
                                "dents": 0, "normals": 0}, f)

    for c in classes:
        for split, n in (("train", n_train), ("val", n_val)):
            d = _mkdir(root / c / split / "data")
            for i in range(n):
                sample(d, f"{i:03d}", i, False, False)
                info[split] += 1
        d = _mkdir(root / c / "test_public" / "data")
        for i in range(n_good + n_bad):               # test ids have two digits (00_mask.png)
            bad = i >= n_good
            sample(d, f"{i:02d}", 40 + i, bad, True)
            info["test_public"] += 1
            info["anomalous"] += int(bad)
    return info


# ----------------------------------------------------------------------------- MulSen-AD
def write_stl(path: Path, seed: int, dent: bool = False) -> Path:
    """A small height-field mesh (grid 12×12) written as binary STL via trimesh."""
    import trimesh

    n = 12
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    zz = 5.0 + 0.1 * xx + _rng(seed).normal(0, 0.01, (n, n))
    if dent:
        zz[4:8, 4:8] -= 1.0
    verts = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            i = r * n + c
            faces += [[i, i + 1, i + n], [i + 1, i + n + 1, i + n]]
    mesh = trimesh.Trimesh(verts, np.asarray(faces), process=False)
    _mkdir(path.parent)
    mesh.export(str(path))
    return path


def make_mulsen(root: Path, classes: Sequence[str] = ("capsule",), n_train: int = 3,
                n_good: int = 2, n_bad: int = 3, pointcloud: Optional[bool] = None) -> Dict:
    """Labels of the ``crack`` samples (rgb, infrared, pointcloud): sample 0 is anomalous
    in every sensor, 1 only in infrared, 2 only in RGB.  Point clouds (STL) are written
    when ``pointcloud`` (default: when trimesh is installed)."""
    if pointcloud is None:
        import importlib.util
        pointcloud = importlib.util.find_spec("trimesh") is not None
    info = {"train": 0, "test": 0, "labels": {}}
    rows = [(1, 1, 1), (0, 1, 0), (1, 0, 0)][:n_bad]
    for c in classes:
        for i in range(n_train):
            save_png(root / c / "RGB" / "train" / f"{i}.png", rgb_image(i))
            save_png(root / c / "Infrared" / "train" / f"{i}.png", rgb_image(20 + i, gray=True)[..., 0])
            if pointcloud:
                write_stl(root / c / "Pointcloud" / "train" / f"{i}.stl", i)
            info["train"] += 1
        for i in range(n_good):
            save_png(root / c / "RGB" / "test" / "good" / f"{i}.png", rgb_image(40 + i))
            save_png(root / c / "Infrared" / "test" / "good" / f"{i}.png", rgb_image(60 + i, gray=True)[..., 0])
            if pointcloud:
                write_stl(root / c / "Pointcloud" / "test" / "good" / f"{i}.stl", 40 + i)
            info["test"] += 1
        for i, (lr, li, lp) in enumerate(rows):
            save_png(root / c / "RGB" / "test" / "crack" / f"{i}.png", rgb_image(80 + i, defect=bool(lr)))
            ir = rgb_image(90 + i, gray=True, defect=bool(li))[..., 0]
            save_png(root / c / "Infrared" / "test" / "crack" / f"{i}.png", ir)
            if lr:
                save_png(root / c / "RGB" / "GT" / "crack" / f"{i}.png", box_mask())
            if li:
                save_png(root / c / "Infrared" / "GT" / "crack" / f"{i}.png", box_mask())
            if pointcloud:
                write_stl(root / c / "Pointcloud" / "test" / "crack" / f"{i}.stl", 80 + i, dent=bool(lp))
            info["test"] += 1
            info["labels"][(c, "crack", str(i))] = (lr, li, lp)
        with open(_mkdir(root / c / "RGB" / "GT" / "crack") / "data.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["object", "label1", "label2", "label3"])
            for i, r in enumerate(rows):
                w.writerow([i, *r])
        with open(_mkdir(root / c / "RGB" / "GT" / "good") / "data.csv", "w", newline="") as f:
            csv.writer(f).writerow(["object", "label1", "label2", "label3"])
    return info


# ----------------------------------------------------------------------------- BraTS2020
BRATS_SHAPE = (H, W, 10)          # x, y, z voxels: slices are [H, W] before the transpose


def make_brats(root: Path, n_cases: int = 5, shape: Tuple[int, int, int] = BRATS_SHAPE,
               tumour_slices: Sequence[int] = (4, 5, 6), gz: bool = False,
               odd_seg_name_case: int = -1) -> Dict:
    """Cases ``BraTS20_Training_00k``; an empty slice 0 (no brain); a bright tumour in the
    given slices at voxels ``[x 6:18, y 8:24]``; ``odd_seg_name_case`` names its seg file like
    the release's case 355."""
    import nibabel as nib

    base = _mkdir(root / "MICCAI_BraTS2020_TrainingData")
    ext = ".nii.gz" if gz else ".nii"
    cases = []
    for k in range(1, n_cases + 1):
        name = f"BraTS20_Training_{k:03d}"
        d = _mkdir(base / name)
        rng = _rng(k)
        seg = np.zeros(shape, np.uint8)
        for z in tumour_slices:
            seg[6:18, 8:24, z] = 2
        for mi, mod in enumerate(("flair", "t1", "t1ce", "t2")):
            vol = (rng.random(shape) * 100 + 50).astype(np.int16)
            vol[:, :, 0] = 0                         # no brain in slice 0
            vol[seg > 0] = 1000                      # tumour is bright
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(d / f"{name}_{mod}{ext}"))
        seg_name = f"{name}_seg{ext}" if k != odd_seg_name_case else f"W39_1998.09.19_Segm{ext}"
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(d / seg_name))
        cases.append(name)
    return {"cases": cases, "shape": shape, "tumour_slices": tuple(tumour_slices)}


# ----------------------------------------------------------------------------- BMAD-style
BMAD_LAYOUTS = ("published", "label", "split_level", "resc", "flat")


def make_bmad(root: Path, n_train: int = 4, n_good: int = 2, n_bad: int = 2, rgb: bool = False,
              layout: str = "published") -> Dict:
    """A BMAD-style dataset in one of BMAD's published forms:

    * ``published`` — README tree: ``<split>/{good,Ungood}/img/``, masks
      ``<split>/Ungood/anomaly_mask/``;
    * ``label`` — the same with masks in ``<split>/Ungood/label/`` (BMAD's Brain loaders);
    * ``split_level`` — Liver configs: ``train/good/``, ``<split>/img/{good,Ungood}/``,
      ``<split>/label/Ungood/``;
    * ``resc`` — RESC configs: ``Train/train/good/``, ``Val/val/{good,Ungood}/`` +
      ``Val/val_label/Ungood/``, ``Test/test/...`` + ``Test/test_label/Ungood/``;
    * ``flat`` — image-level only: ``<split>/{good,Ungood}/`` without masks."""
    def img(seed, defect):
        a = rgb_image(seed, defect=defect, gray=not rgb)
        return a if rgb else a[..., 0]

    def dirs(split):
        S = {"resc": {"train": "Train/train", "valid": "Val/val", "test": "Test/test"}}.get(
            layout, {"train": "train", "valid": "valid", "test": "test"})[split]
        if layout in ("published", "label"):
            return (f"{S}/good/img", f"{S}/Ungood/img",
                    f"{S}/Ungood/{'anomaly_mask' if layout == 'published' else 'label'}")
        if layout == "split_level":
            return ((f"{S}/good" if split == "train" else f"{S}/img/good"), f"{S}/img/Ungood",
                    f"{S}/label/Ungood")
        if layout == "resc":
            return f"{S}/good", f"{S}/Ungood", f"{S}_label/Ungood"
        return f"{S}/good", f"{S}/Ungood", None

    good, _, _ = dirs("train")
    for i in range(n_train):
        save_png(root / good / f"{i:05d}_60.png", img(i, False))
    for split in ("valid", "test"):
        good, bad, masks = dirs(split)
        for i in range(n_good):
            save_png(root / good / f"{i:05d}_7{i}.png", img(30 + i, False))
        for i in range(n_bad):
            save_png(root / bad / f"{i:05d}_8{i}.png", img(40 + i, True))
            if masks is not None:
                save_png(root / masks / f"{i:05d}_8{i}.png", box_mask())
    return {"train": n_train, "test": n_good + n_bad, "anomalous": n_bad, "layout": layout,
            "mask_dir": lambda split: None if dirs(split)[2] is None else root / dirs(split)[2]}


# ----------------------------------------------------------------------------- Hyper-Kvasir
HK_NORMAL = ("cecum", "ileum", "bbps-2-3")


def _hk_id(i: int, tag: str) -> str:
    """A uuid-like image id, unique per (finding, index)."""
    return f"{zlib.crc32(f'{tag}/{i}'.encode()):08x}-{i:04x}-4c1e-9d1f-0a0b0c0d0e0f"


def make_hyperkvasir(root: Path, n_per_finding: int = 12, n_polyps: int = 3,
                     split_archives: bool = False) -> Dict:
    """Hyper-Kvasir as published: ``labeled-images/<tract>/<category>/<finding>/<id>.jpg``
    (normal lower-GI findings, an excluded one, a pathological one and an upper-GI one)
    and ``segmented-images/{images,masks}/<id>.jpg`` with JPEG masks.  With
    ``split_archives`` the two parts sit one folder down, as the separate downloads."""
    lab = root / ("hyper-kvasir-labeled-images" if split_archives else "") / "labeled-images"
    seg = root / ("hyper-kvasir-segmented-images" if split_archives else "") / "segmented-images"
    layout = {
        ("lower-gi-tract", "anatomical-landmarks"): ("cecum", "ileum", "retroflex-rectum"),
        ("lower-gi-tract", "quality-of-mucosal-views"): ("bbps-2-3", "bbps-0-1"),
        ("lower-gi-tract", "pathological-findings"): ("polyps",),
        ("upper-gi-tract", "anatomical-landmarks"): ("pylorus",),
    }
    info = {"normal": [], "polyps_labeled": [], "segmented": []}
    for (tract, cat), findings in layout.items():
        for f in findings:
            for i in range(n_per_finding):
                name = _hk_id(i, f)
                save_jpg(lab / tract / cat / f / f"{name}.jpg", rgb_image(i + 7 * len(f)))
                if f in HK_NORMAL:
                    info["normal"].append(name)
                elif f == "polyps":
                    info["polyps_labeled"].append(name)
    for i in range(n_polyps):
        name = info["polyps_labeled"][i]           # segmented polyps are labeled polyps too
        save_jpg(seg / "images" / f"{name}.jpg", rgb_image(900 + i, defect=True))
        _mkdir(seg / "masks")
        Image.fromarray(box_mask()).save(seg / "masks" / f"{name}.jpg", quality=60)
        info["segmented"].append(name)
    return info


# ----------------------------------------------------------------------------- meta.json
def make_meta_json(root: Path) -> Dict:
    """A release-style index with an RGB class (``bottle_mvtec``) and an RGB + depth(.npy)
    class (``bagel_mvtec3d``), plus an Eyecandies class for the loss-weight alias."""
    meta = {"train": {}, "test": {}}
    for cls, depth in (("bottle_mvtec", False), ("bagel_mvtec3d", True), ("Lollipop_EyePre", True)):
        for split, n_good, n_bad in (("train", 2, 0), ("test", 1, 1)):
            items = []
            for i in range(n_good + n_bad):
                bad = i >= n_good
                rel = f"{cls}/{split}/{i:03d}.png"
                save_png(root / rel, rgb_image(7 * i + len(cls), defect=bad))
                paths, types = [rel], ["rgb"]
                if depth:
                    d = np.zeros((H, W, 4), np.float32)
                    d[:, :, 0] = 0.5 + (0.02 if bad else 0.0) * np.pad(np.ones((12, 16)), ((6, 6), (8, 8)))
                    d[:, :, 3] = 1.0
                    d[:, :4, 3] = 0.0          # background on the left
                    nrel = f"{cls}/{split}/{i:03d}.npy"
                    np.save(root / nrel, d)
                    paths.append(nrel)
                    types.append("depth")
                mrel = ""
                if bad:
                    mrel = f"{cls}/{split}/{i:03d}_mask.png"
                    save_png(root / mrel, box_mask())
                items.append({"img_path": paths, "img_type": types, "mask_path": mrel,
                              "cls_name": cls, "specie_name": "bad" if bad else "good",
                              "anomaly": int(bad)})
            meta[split][cls] = items
    with open(root / "meta.json", "w") as f:
        json.dump(meta, f)
    return meta


# ----------------------------------------------------------------------------- broken files
def write_png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid 1×1 PNG whose header claims ``width``×``height`` pixels (a decompression
    bomb as Pillow sees it: refused at open, before any pixel is decoded)."""
    import io
    import struct

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:20] = struct.pack(">I", width)          # IHDR data starts at byte 16
    data[20:24] = struct.pack(">I", height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    _mkdir(path.parent)
    path.write_bytes(bytes(data))
    return path


def dangling_symlink(path: Path) -> Path:
    """Replace ``path`` (if any) by a symbolic link to a file that does not exist."""
    import os

    if path.exists() or path.is_symlink():
        path.unlink()
    _mkdir(path.parent)
    os.symlink(path.parent / "does-not-exist.png", path)
    return path
