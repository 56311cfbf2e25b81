"""Bad input: every failure names the file or folder; skipping broken files only behind
``skip_broken=True``, with the count logged."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

import data_fixtures as F
import unimmad.data as D

PRE = D.Preprocess(image_size=16)


def mvtec(tmp_path, **kw):
    root = tmp_path / "mvtec"
    F.make_mvtec_ad(root, classes=("bottle",), **kw)
    return root


def test_missing_root_and_class(tmp_path):
    with pytest.raises(D.MissingPathError, match=str(tmp_path / "absent")) as e:
        D.MVTecAD(tmp_path / "absent")
    assert isinstance(e.value, FileNotFoundError) and e.value.path == str(tmp_path / "absent")
    root = mvtec(tmp_path)
    with pytest.raises(D.MissingPathError, match="cable"):
        D.MVTecAD(root, classes=["cable"])
    with pytest.raises(ValueError, match="split must be one of"):
        D.MVTecAD(root, "validation")
    with pytest.raises(D.MissingPathError, match="split_csv"):
        D.VisA(root)


def test_truncated_image_names_the_file(tmp_path, caplog):
    root = mvtec(tmp_path)
    bad = root / "bottle" / "test" / "crack" / "001.png"
    F.truncate(bad)
    ds = D.MVTecAD(root, "test", preprocess=PRE)           # indexing reads names only
    i = [r.files[0][1] for r in ds.records].index(str(bad))
    with pytest.raises(D.DataReadError, match=str(bad)) as e:
        ds[i]
    assert isinstance(e.value, OSError)
    assert ds.verify() == [(str(bad), str(e.value))]
    with caplog.at_level(logging.WARNING, logger="unimmad.data"):
        ok = D.MVTecAD(root, "test", preprocess=PRE, skip_broken=True)
    assert len(ok) == len(ds) - 1 and ok.skipped[0][0] == str(bad)
    assert "skipped 1 broken sample(s) of 5" in caplog.text
    for i in range(len(ok)):
        ok[i]


def test_unreadable_file_and_garbage(tmp_path):
    root = mvtec(tmp_path)
    bad = root / "bottle" / "train" / "good" / "000.png"
    bad.write_bytes(b"this is not a png")
    ds = D.MVTecAD(root, "train", preprocess=PRE)
    with pytest.raises(D.DataReadError, match="000.png: cannot read image"):
        ds[0]


def test_mask_size_mismatch(tmp_path):
    root = mvtec(tmp_path)
    mask = root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    F.save_png(mask, np.zeros((10, 10), np.uint8))
    ds = D.MVTecAD(root, "test", preprocess=PRE)
    i = [r.mask for r in ds.records].index(str(mask))
    with pytest.raises(D.DataLayoutError, match=r"000_mask.png: mask size \(10, 10\) differs .*000.png"):
        ds[i]
    assert len(D.MVTecAD(root, "test", preprocess=PRE, skip_broken=True)) == len(ds) - 1


def test_missing_mask_file(tmp_path, caplog):
    root = mvtec(tmp_path)
    mask = root / "bottle" / "ground_truth" / "hole" / "000_mask.png"
    mask.unlink()
    with pytest.raises(D.MissingPathError, match="000_mask.png: mask of .* not found"):
        D.MVTecAD(root, "test")
    with caplog.at_level(logging.WARNING, logger="unimmad.data"):
        ds = D.MVTecAD(root, "test", skip_broken=True)
    assert ds.skipped[0][0] == str(mask) and "skipped 1 broken sample(s) of 5" in caplog.text


def test_empty_class(tmp_path):
    root = mvtec(tmp_path)
    for p in (root / "bottle" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(D.DataLayoutError, match="class 'bottle' has no train image"):
        D.MVTecAD(root, "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(D.DataLayoutError, match="no mvtec class folder"):
        D.MVTecAD(empty)


def test_broken_tiff_and_missing_point_cloud(tmp_path):
    root = tmp_path / "m3d"
    F.make_mvtec3d(root, classes=("bagel",))
    tiff = root / "bagel" / "train" / "good" / "xyz" / "001.tiff"
    F.truncate(tiff, 0.3)
    ds = D.MVTec3DAD(root, "train", preprocess=PRE)
    with pytest.raises(D.DataReadError, match="001.tiff: cannot read TIFF"):
        ds[1]
    (root / "bagel" / "train" / "good" / "xyz" / "002.tiff").unlink()
    with pytest.raises(D.MissingPathError, match="002.tiff: point cloud of .*002.png not found"):
        D.MVTec3DAD(root, "train")
    assert len(D.MVTec3DAD(root, "train", modalities=("rgb",))) == 3   # RGB alone is fine
    ok = D.MVTec3DAD(root, "train", preprocess=PRE, skip_broken=True)
    assert len(ok) == 1 and len(ok.skipped) == 2


def test_broken_nifti(tmp_path):
    F.make_brats(tmp_path, n_cases=3)
    case = tmp_path / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_002"
    seg = case / "BraTS20_Training_002_seg.nii"
    F.truncate(seg, 0.5)
    with pytest.raises(D.DataReadError, match="BraTS20_Training_002_seg.nii"):
        D.BraTS2020(tmp_path, "train", test_fraction=0.3)
    ds = D.BraTS2020(tmp_path, "train", test_fraction=0.3, skip_broken=True)
    assert {r.files[0][1].split("/")[-2] for r in ds.records} == {"BraTS20_Training_001"}
    (case / "BraTS20_Training_002_t1ce.nii").unlink()
    with pytest.raises(D.MissingPathError, match="t1ce volume not found"):
        D.BraTS2020(tmp_path, "train", test_fraction=0.3)


def test_mulsen_label_file_errors(tmp_path):
    root = tmp_path / "mulsen"
    F.make_mulsen(root, pointcloud=False)
    csv_path = root / "capsule" / "RGB" / "GT" / "crack" / "data.csv"
    csv_path.write_text("object,label1,label2,label3\n0,1,1,1\n")
    with pytest.raises(D.DataLayoutError, match="data.csv: 1 label rows for 3 samples"):
        D.MulSenAD(root, "test")
    csv_path.unlink()
    with pytest.raises(D.MissingPathError, match="data.csv: label file not found"):
        D.MulSenAD(root, "test")


def test_meta_json_errors(tmp_path):
    root = tmp_path / "meta"
    root.mkdir()
    with pytest.raises(D.MissingPathError, match="meta.json"):
        D.MetaJsonDataset(root)
    meta = F.make_meta_json(root)
    with pytest.raises(D.DataLayoutError, match="'nope_x' is not in the 'test' split"):
        D.MetaJsonDataset(root, "test", classes=["nope_x"])
    missing = root / meta["train"]["bottle_mvtec"][0]["img_path"][0]
    missing.unlink()
    with pytest.raises(D.MissingPathError, match=str(missing)):
        D.MetaJsonDataset(root, "train")
    (root / "meta.json").write_text("{not json")
    with pytest.raises(D.DataReadError, match="meta.json: cannot read index"):
        D.MetaJsonDataset(root, "train")


def test_bmad_missing_label(tmp_path):
    root = tmp_path / "liver"
    F.make_bmad(root)
    shutil.rmtree(root / "test" / "Ungood" / "label")
    with pytest.raises(D.MissingPathError, match="mask of .* not found"):
        D.LiverCT(root, "test")
    ds = D.LiverCT(root, "test", require_masks=False, preprocess=PRE)
    assert sum(ds.labels) == 2 and ds[len(ds) - 1]["mask"].sum() == 0
