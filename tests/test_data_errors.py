"""Bad input: every failure names the file or folder (both files where two disagree);
skipping broken files only behind ``skip_broken=True``, with every skipped file listed with
its reason."""
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
    shutil.rmtree(root / "test" / "Ungood" / "anomaly_mask")
    with pytest.raises(D.MissingPathError, match="mask of .* not found"):
        D.LiverCT(root, "test")
    ds = D.LiverCT(root, "test", require_masks=False, preprocess=PRE)
    assert sum(ds.labels) == 2 and ds[len(ds) - 1]["mask"].sum() == 0


# ----------------------------------------------------------------------------- broken links
def _mvtec3d(tmp_path):
    root = tmp_path / "m3d"
    F.make_mvtec3d(root, classes=("bagel",))
    return root


def _eyecandies(tmp_path):
    root = tmp_path / "eye"
    F.make_eyecandies(root)
    return root


def _hyperkvasir(tmp_path):
    root = tmp_path / "hk"
    F.make_hyperkvasir(root, n_per_finding=4)
    return root


BROKEN_LINK_CASES = {   # (make, path of the link, reader, kwargs, samples lost)
    "mvtec": (lambda t: mvtec(t), "bottle/test/crack/001.png", D.MVTecAD, {"split": "test"}, 1),
    "mvtec_defect_folder": (lambda t: mvtec(t), "bottle/test/scratch", D.MVTecAD,
                            {"split": "test"}, 0),
    "mvtec3d_rgb": (_mvtec3d, "bagel/test/hole/rgb/001.png", D.MVTec3DAD, {"split": "test"}, 1),
    "mvtec3d_xyz": (_mvtec3d, "bagel/train/good/xyz/002.tiff", D.MVTec3DAD, {"split": "train"}, 1),
    "eyecandies": (_eyecandies, "CandyCane/train/data/001_image_4.png", D.Eyecandies,
                   {"split": "train"}, 1),
    "bmad": (lambda t: (F.make_bmad(t / "liver"), t / "liver")[1], "test/good/img/00001_71.png",
             D.LiverCT, {"split": "test"}, 1),
    "hyperkvasir": (_hyperkvasir, "segmented-images/images/x-polyp.jpg", D.HyperKvasir,
                    {"split": "test"}, 0),
}


@pytest.mark.parametrize("case", sorted(BROKEN_LINK_CASES))
def test_dangling_symlink_is_an_error_or_listed_as_skipped(tmp_path, case):
    make, rel, cls, kw, lost = BROKEN_LINK_CASES[case]
    root = make(tmp_path)
    n_ok = len(cls(root, preprocess=PRE, **kw))
    link = F.dangling_symlink(root / rel)
    with pytest.raises(D.MissingPathError, match="broken symbolic link") as e:
        cls(root, preprocess=PRE, **kw)
    assert e.value.path == str(link)
    ds = cls(root, preprocess=PRE, skip_broken=True, **kw)
    assert [p for p, _ in ds.skipped] == [str(link)]            # listed once, with the reason
    assert "broken symbolic link" in ds.skipped[0][1]
    assert len(ds) == n_ok - lost


def test_dangling_symlink_listed_in_visa_and_mulsen(tmp_path):
    root = tmp_path / "visa"
    F.make_visa(root, classes=("candle",))
    link = F.dangling_symlink(root / "candle" / "Data" / "Images" / "Anomaly" / "001.JPG")
    with pytest.raises(D.MissingPathError, match=r"listed in .*1cls.csv \(line 8\) is a broken symbolic link"):
        D.VisA(root, "test")
    assert D.VisA(root, "test", skip_broken=True).skipped[0][0] == str(link)
    root = tmp_path / "mulsen"
    F.make_mulsen(root, pointcloud=False)
    link = F.dangling_symlink(root / "capsule" / "Infrared" / "test" / "crack" / "1.png")
    with pytest.raises(D.MissingPathError, match="broken symbolic link"):
        D.MulSenAD(root, "test")
    assert D.MulSenAD(root, "test", skip_broken=True).skipped[0][0] == str(link)


def test_every_skipped_file_is_listed_with_its_reason(tmp_path, caplog):
    root = mvtec(tmp_path)
    link = F.dangling_symlink(root / "bottle" / "test" / "good" / "000.png")
    bomb = F.write_png_bomb(root / "bottle" / "test" / "crack" / "000.png")
    (root / "bottle" / "ground_truth" / "hole" / "000_mask.png").unlink()
    with caplog.at_level(logging.WARNING, logger="unimmad.data"):
        ds = D.MVTecAD(root, "test", preprocess=PRE, skip_broken=True)
    paths = dict(ds.skipped)
    assert set(paths) == {str(link), str(bomb), str(root / "bottle/ground_truth/hole/000_mask.png")}
    assert "broken symbolic link" in paths[str(link)]
    assert "decompression-bomb" in paths[str(bomb)]
    assert "not found" in paths[str(root / "bottle/ground_truth/hole/000_mask.png")]
    for p in paths:
        assert p in caplog.text
    assert len(ds) == 5 - 3


# ----------------------------------------------------------------------------- bombs
def test_png_decompression_bomb_names_the_path(tmp_path):
    root = mvtec(tmp_path)
    bomb = F.write_png_bomb(root / "bottle" / "train" / "good" / "001.png")
    ds = D.MVTecAD(root, "train", preprocess=PRE)
    with pytest.raises(D.DataReadError, match=f"{bomb}: .*decompression-bomb") as e:
        ds[1]
    assert e.value.path == str(bomb) and "900000000 pixels" in str(e.value)
    ok = D.MVTecAD(root, "train", preprocess=PRE, skip_broken=True)
    assert len(ok) == 2 and ok.skipped[0][0] == str(bomb)
    mask = F.write_png_bomb(root / "bottle" / "ground_truth" / "crack" / "000_mask.png", 20000, 9000)
    te = D.MVTecAD(root, "test", preprocess=PRE)
    with pytest.raises(D.DataReadError, match=f"{mask}: .*decompression-bomb"):
        te[[r.mask for r in te.records].index(str(mask))]
    assert str(mask) in dict(D.MVTecAD(root, "test", preprocess=PRE, skip_broken=True).skipped)


def test_size_limit_applies_to_tiff_and_npy(tmp_path, monkeypatch):
    import unimmad.data.io as io
    root = _mvtec3d(tmp_path)
    np.save(tmp_path / "a.npy", np.zeros((24, 32, 4), np.float32))
    monkeypatch.setattr(io, "MAX_PIXELS", 100)                # every test file is 24×32
    ds = D.MVTec3DAD(root, "train", preprocess=PRE)
    with pytest.raises(D.DataReadError, match=r"\.png: .*24 = 768 pixels"):
        ds[0]
    with pytest.raises(D.DataReadError, match=r"000\.tiff: TIFF header claims 32×24"):
        io.read_tiff(root / "bagel" / "train" / "good" / "xyz" / "000.tiff")
    with pytest.raises(D.DataReadError, match=r"a\.npy: \.npy array header claims"):
        io.read_npy(tmp_path / "a.npy")


def test_npy_limit_counts_both_sides_of_a_tall_array(tmp_path, monkeypatch):
    """The limit is on height × width: a 40 × 10 array is 400 pixels (a 10 × 10 one fits)."""
    import unimmad.data.io as io
    np.save(tmp_path / "tall.npy", np.zeros((40, 10), np.float32))
    np.save(tmp_path / "wide.npy", np.zeros((10, 40), np.float32))
    np.save(tmp_path / "small.npy", np.zeros((10, 10, 3), np.float32))
    monkeypatch.setattr(io, "MAX_PIXELS", 300)
    with pytest.raises(D.DataReadError, match=r"tall\.npy: \.npy array header claims 10×40 = 400"):
        io.read_npy(tmp_path / "tall.npy")
    with pytest.raises(D.DataReadError, match=r"wide\.npy: \.npy array header claims 40×10 = 400"):
        io.read_npy(tmp_path / "wide.npy")
    assert io.read_npy(tmp_path / "small.npy").shape == (10, 10, 3)


# ----------------------------------------------------------------------------- misalignment
def test_mvtec3d_xyz_of_another_size_names_both_files(tmp_path):
    import tifffile
    root = _mvtec3d(tmp_path)
    xyz = root / "bagel" / "test" / "hole" / "xyz" / "000.tiff"
    rgb = root / "bagel" / "test" / "hole" / "rgb" / "000.png"
    tifffile.imwrite(str(xyz), np.ones((F.H // 2, F.W // 2, 3), np.float32), photometric="rgb")
    ds = D.MVTec3DAD(root, "test", preprocess=PRE)
    i = [r.files[1][1] for r in ds.records].index(str(xyz))
    with pytest.raises(D.DataLayoutError, match=f"{xyz}: depth size .12, 16. differs .* {rgb}"):
        ds[i]
    assert str(xyz) in dict(D.MVTec3DAD(root, "test", preprocess=PRE, skip_broken=True).skipped)
    gt = root / "bagel" / "test" / "hole" / "gt" / "000.png"
    assert D.MVTec3DAD(root, "test", modalities=("depth",), preprocess=PRE).verify() == [(
        str(gt), f"{gt}: mask size (24, 32) differs from the size (12, 16) of its image {xyz}")]
    bad = root / "bagel" / "train" / "good" / "xyz" / "000.tiff"
    tifffile.imwrite(str(bad), np.ones((F.H, F.W), np.float32))        # not [H, W, 3]
    with pytest.raises(D.DataReadError, match=f"{bad}: an organised point cloud"):
        D.MVTec3DAD(root, "train", preprocess=PRE)[0]
    empty = root / "bagel" / "train" / "good" / "xyz" / "001.tiff"
    tifffile.imwrite(str(empty), np.zeros((F.H, F.W, 3), np.float32),  # no valid point
                     photometric="rgb")
    with pytest.raises(D.DataReadError, match=f"{empty}: depth map has no valid pixel"):
        D.MVTec3DAD(root, "train", preprocess=PRE)[1]


def test_eyecandies_depth_of_another_size_names_both_files(tmp_path):
    root = _eyecandies(tmp_path)
    depth = root / "CandyCane" / "train" / "data" / "000_depth.png"
    F.save_png(depth, np.full((F.H, F.W + 2), 30000, np.uint16))
    with pytest.raises(D.DataLayoutError, match=f"{depth}: depth size .*/000_image_4.png"):
        D.Eyecandies(root, "train", preprocess=PRE)[0]


# ----------------------------------------------------------------------------- index files
@pytest.mark.parametrize("line,match", [
    ("candle,train,normal", "line 3: 3 field"),
    ("candle,train,normal,candle/Data/Images/Normal/0000.JPG,,extra", "line 3: 6 field"),
    ("candle,training,normal,candle/Data/Images/Normal/0000.JPG,", "line 3: unknown split"),
    ("candle,test,bad,candle/Data/Images/Normal/0000.JPG,", "line 3: unknown label"),
    ("candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,", "line 3: an anomaly without a mask"),
    (",test,normal,candle/Data/Images/Normal/0000.JPG,", "line 3: empty 'object'"),
])
def test_visa_bad_rows_name_file_and_line(tmp_path, line, match):
    root = tmp_path / "visa"
    F.make_visa(root, classes=("candle",))
    csv_path = root / "split_csv" / "1cls.csv"
    rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(rows[:2] + [line] + rows[2:]) + "\n")
    with pytest.raises(D.DataLayoutError, match=f"{csv_path}: {match}"):
        D.VisA(root, "train")
    ds = D.VisA(root, "train", skip_broken=True)
    assert ds.skipped[0][0] == str(csv_path) and "line 3" in ds.skipped[0][1]
    assert len(ds) == 3


def test_visa_split_file_problems(tmp_path):
    root = tmp_path / "visa"
    F.make_visa(root, classes=("candle",))
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_text("object,split,image\n")
    with pytest.raises(D.DataLayoutError, match="line 1: the split file needs the columns"):
        D.VisA(root)
    csv_path.write_text("")
    with pytest.raises(D.DataLayoutError, match="split file is empty"):
        D.VisA(root)
    csv_path.write_bytes(b"object,split,label,image,mask\n\xff\xfe,train\n")
    with pytest.raises(D.DataReadError, match="cannot read split file"):
        D.VisA(root)
    csv_path.unlink()
    with pytest.raises(D.MissingPathError, match="spot-diff"):
        D.VisA(root)


@pytest.mark.parametrize("field,value,match", [
    ("min", "abc", "must be finite numbers"),
    ("min", True, "must be finite numbers"),
    ("max", float("nan"), "must be finite numbers"),
    ("max", 0.1, "must exceed min"),
])
def test_eyecandies_wrong_field_types_name_the_yaml(tmp_path, field, value, match):
    import yaml
    root = _eyecandies(tmp_path)
    info = root / "CandyCane" / "train" / "data" / "000_info_depth.yaml"
    norm = {"min": 0.3, "max": 0.9}
    norm[field] = value
    info.write_text(yaml.safe_dump({"normalization": norm}))
    with pytest.raises(D.DataLayoutError, match=f"{info}: .*{match}"):
        D.Eyecandies(root, "train", preprocess=PRE)[0]


def test_eyecandies_depth_and_metadata_types(tmp_path):
    import yaml
    root = _eyecandies(tmp_path)
    data = root / "CandyCane" / "test_public" / "data"
    depth = F.save_png(data / "00_depth.png", np.full((F.H, F.W), 200, np.uint8))
    with pytest.raises(D.DataReadError, match=f"{depth}: expected a 16-bit depth PNG"):
        D.Eyecandies(root, "test", preprocess=PRE)[0]
    meta = data / "01_metadata.yaml"
    meta.write_text(yaml.safe_dump({"anomalous": "0"}))
    with pytest.raises(D.DataLayoutError, match=f"{meta}: 'anomalous' must be 0, 1 or a bool, got '0'"):
        D.Eyecandies(root, "test", label_from="metadata")
    meta.write_text(yaml.safe_dump(["anomalous", 1]))
    with pytest.raises(D.DataLayoutError, match=f"{meta}: metadata must be a mapping"):
        D.Eyecandies(root, "test", label_from="metadata")
    (data / "02_mask.png").unlink()
    with pytest.raises(D.MissingPathError, match="02_mask.png: mask of a test sample not found"):
        D.Eyecandies(root, "test")


@pytest.mark.parametrize("row,match", [
    ("1,0,2,0", "line 3: label '2' must be 0 or 1"),
    ("1,0,x,0", "line 3: label 'x' must be 0 or 1"),
    ("1,0", "line 3: 2 field"),
])
def test_mulsen_bad_label_rows_name_file_and_line(tmp_path, row, match):
    root = tmp_path / "mulsen"
    F.make_mulsen(root, pointcloud=False)
    csv_path = root / "capsule" / "RGB" / "GT" / "crack" / "data.csv"
    rows = csv_path.read_text().splitlines()
    rows[2] = row
    csv_path.write_text("\n".join(rows) + "\n")
    with pytest.raises(D.DataLayoutError, match=f"{csv_path}: {match}"):
        D.MulSenAD(root, "test")


def test_mulsen_file_missing_in_one_modality(tmp_path):
    root = tmp_path / "mulsen"
    F.make_mulsen(root, pointcloud=False)
    (root / "capsule" / "RGB" / "train" / "2.png").unlink()
    assert len(D.MulSenAD(root, "train")) == 3                       # infrared alone: complete
    with pytest.raises(D.MissingPathError, match="no rgb file for sample 2 .*Infrared/train/2.png"):
        D.MulSenAD(root, "train", modalities=("rgb", "infrared"))


def test_brats_case_without_a_volume_is_reported(tmp_path):
    F.make_brats(tmp_path, n_cases=3)
    case = tmp_path / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_001"
    (case / "BraTS20_Training_001_flair.nii").unlink()
    with pytest.raises(D.MissingPathError, match="BraTS20_Training_001_flair.nii: flair volume not found"):
        D.BraTS2020(tmp_path, "train", test_fraction=0.3)
    ds = D.BraTS2020(tmp_path, "train", test_fraction=0.3, skip_broken=True)
    assert "flair volume not found" in ds.skipped[0][1]


@pytest.mark.parametrize("kwargs,err", [
    ({"classes": "bottle"}, TypeError),
    ({"classes": [1]}, TypeError),
    ({"skip_broken": "yes"}, TypeError),
    ({"progress": 1}, TypeError),
    ({"loss_weight": "2"}, ValueError),
    ({"loss_weight": True}, ValueError),
    ({"loss_weight": float("nan")}, ValueError),
    ({"split": 1}, TypeError),
    ({"dataset_name": ""}, TypeError),
    ({"preprocess": "fast"}, TypeError),
])
def test_reader_arguments_are_checked(tmp_path, kwargs, err):
    root = mvtec(tmp_path)
    with pytest.raises(err):
        D.MVTecAD(root, **kwargs)


@pytest.mark.parametrize("kwargs", [
    {"test_cases": "BraTS20_Training_001"}, {"slice_step": 0}, {"slice_step": True},
    {"slice_range": (0.5, None)}, {"min_brain_fraction": 2.0}, {"test_fraction": 1.0},
    {"modalities": "flair"}, {"channel_stack": ("flair", "flair", "t1")},
])
def test_brats_arguments_are_checked(tmp_path, kwargs):
    F.make_brats(tmp_path, n_cases=2)
    with pytest.raises((TypeError, ValueError)):
        D.BraTS2020(tmp_path, "train", **kwargs)


@pytest.mark.parametrize("cls,kwargs", [
    (D.Eyecandies, {"rgb_index": 6}), (D.Eyecandies, {"rgb_index": True}),
    (D.Eyecandies, {"label_from": "meta"}), (D.MVTec3DAD, {"modalities": "rgb"}),
    (D.VisA, {"layout": "folders"}), (D.HyperKvasir, {"layout": "kvasir"}),
    (D.HyperKvasir, {"normal_findings": "cecum"}), (D.HyperKvasir, {"test_fraction": -0.1}),
    (D.LiverCT, {"require_masks": "no"}),
])
def test_protocol_options_are_checked(tmp_path, cls, kwargs):
    with pytest.raises((TypeError, ValueError)):
        cls(tmp_path, **kwargs)


def test_broken_links_elsewhere_are_named_and_listed_once(tmp_path):
    """A broken mask link (BMAD), a broken volume link (BraTS), a broken mask link of a
    good MVTec 3D-AD image: each named as a broken link, each sample listed once."""
    root = tmp_path / "liver"
    F.make_bmad(root)
    link = F.dangling_symlink(root / "test" / "Ungood" / "anomaly_mask" / "00001_81.png")
    with pytest.raises(D.MissingPathError, match="broken symbolic link"):
        D.LiverCT(root, "test")
    assert [p for p, _ in D.LiverCT(root, "test", skip_broken=True).skipped] == [str(link)]
    F.make_brats(tmp_path / "brats", n_cases=2)
    vol = F.dangling_symlink(tmp_path / "brats" / "MICCAI_BraTS2020_TrainingData" /
                             "BraTS20_Training_001" / "BraTS20_Training_001_t2.nii")
    with pytest.raises(D.MissingPathError, match=f"{vol}: .*broken symbolic link"):
        D.BraTS2020(tmp_path / "brats", "train", test_fraction=0.5)
    root = _mvtec3d(tmp_path)
    gt = F.dangling_symlink(root / "bagel" / "test" / "good" / "gt" / "000.png")
    with pytest.raises(D.MissingPathError, match=f"{gt}: mask is a broken symbolic link"):
        D.MVTec3DAD(root, "test")
    assert [p for p, _ in D.MVTec3DAD(root, "test", skip_broken=True).skipped] == [str(gt)]
    root = mvtec(tmp_path)
    F.dangling_symlink(root / "license.pdf")                 # not a class folder: ignored
    assert len(D.MVTecAD(root, "train")) == 3
    F.dangling_symlink(root / "cable")                       # a class folder: reported
    with pytest.raises(D.MissingPathError, match="cable: folder is a broken symbolic link"):
        D.MVTecAD(root, "train")


def test_mask_alpha_channel_is_ignored(tmp_path):
    root = mvtec(tmp_path)
    mask = root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    rgba = np.zeros((F.H, F.W, 4), np.uint8)
    rgba[..., 3] = 255                                        # opaque everywhere
    rgba[F.BOX] = (255, 255, 255, 255)
    F.save_png(mask, rgba)
    ds = D.MVTecAD(root, "test", preprocess=D.Preprocess(image_size=F.W))
    m = ds.read_mask(ds.records[[r.mask for r in ds.records].index(str(mask))])
    box = np.zeros((F.H, F.W), bool)
    box[F.BOX] = True
    assert (m == box).all()


def test_root_must_be_a_path():
    with pytest.raises(TypeError, match="root must be a path"):
        D.MVTecAD(3)


def test_planar_point_cloud_and_repeated_classes(tmp_path):
    import tifffile
    root = _mvtec3d(tmp_path)
    path = root / "bagel" / "train" / "good" / "xyz" / "000.tiff"
    xyz = tifffile.imread(str(path))
    ds = D.MVTec3DAD(root, "train", preprocess=PRE)
    ref = ds.read_modality("depth", str(path), ds.records[0])
    tifffile.imwrite(str(path), np.ascontiguousarray(np.moveaxis(xyz, 2, 0)), photometric="rgb",
                     planarconfig="separate")
    got = ds.read_modality("depth", str(path), ds.records[0])
    assert np.array_equal(got.data, ref.data) and np.array_equal(got.valid, ref.valid)
    tifffile.imwrite(str(path), np.ones((F.H, F.W, 4), np.float32), photometric="rgb",
                     extrasamples=["unspecified"])
    with pytest.raises(D.DataReadError, match="numeric \\[H, W, 3\\]"):
        ds[0]
    assert len(D.MVTec3DAD(root, "train", classes=["bagel", "bagel"])) == 3


def test_volume_size_limit_names_the_file(tmp_path, monkeypatch):
    import unimmad.data.io as io
    F.make_brats(tmp_path, n_cases=2)
    monkeypatch.setattr(io, "MAX_VOXELS", 1000)             # every test volume is 24×32×10
    with pytest.raises(D.DataReadError, match=r"_seg\.nii: volume header claims \(24, 32, 10\)"):
        D.BraTS2020(tmp_path, "train", test_fraction=0.5)
