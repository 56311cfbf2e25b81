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
              n_good: int = 2, n_bad: int = 2) -> Dict:
    rows = []
    info = {"train": 0, "test": 0, "anomalous": 0}
    for ci, c in enumerate(classes):
        k = 0
        for split, n in (("train", n_train), ("test", n_good)):
            for _ in range(n):
                rel = f"{c}/Data/Images/Normal/{k:04d}.JPG"
                save_jpg(root / rel, rgb_image(10 * ci + k))
                rows.append({"object": c, "split": split, "label": "normal", "image": rel, "mask": ""})
                info[split] += 1
                k += 1
        for i in range(n_bad):
            rel = f"{c}/Data/Images/Anomaly/{i:03d}.JPG"
            save_jpg(root / rel, rgb_image(500 + i, defect=True))
            mrel = f"{c}/Data/Masks/Anomaly/{i:03d}.png"
            save_png(root / mrel, box_mask(value=1 + i))   # VisA masks hold small ids
            rows.append({"object": c, "split": "test", "label": "anomaly", "image": rel, "mask": mrel})
            info["test"] += 1
            info["anomalous"] += 1
    _mkdir(root / "split_csv")
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
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
            save_png(d / f"{sid}_image_{k}.png", rgb_image(seed + k, defect=defect))
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
        for i in range(n_good + n_bad):
            bad = i >= n_good
            sample(d, f"{i:03d}", 40 + i, bad, True)
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
def make_bmad(root: Path, n_train: int = 4, n_good: int = 2, n_bad: int = 2, rgb: bool = False,
              img_subfolder: bool = True) -> Dict:
    def img(seed, defect):
        a = rgb_image(seed, defect=defect, gray=not rgb)
        return a if rgb else a[..., 0]

    tr = root / "train" / "good" / ("img" if img_subfolder else "")
    for i in range(n_train):
        save_png(tr / f"{i:05d}_60.png", img(i, False))
    for split in ("valid", "test"):
        for i in range(n_good):
            save_png(root / split / "good" / "img" / f"{i:05d}_7{i}.png", img(30 + i, False))
        for i in range(n_bad):
            save_png(root / split / "Ungood" / "img" / f"{i:05d}_8{i}.png", img(40 + i, True))
            save_png(root / split / "Ungood" / "label" / f"{i:05d}_8{i}.png", box_mask())
    return {"train": n_train, "test": n_good + n_bad, "anomalous": n_bad}


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
