"""A file the layout promises but the folder lacks is named, path and reason, by every
industrial reader; with ``skip_broken`` the sample is listed as skipped with that reason."""
from __future__ import annotations

import pytest

import data_fixtures as F
import unimmad.data as D

PRE = D.Preprocess(image_size=16)


def _both(make, path, match):
    """The reader raises naming ``path``; with skip_broken it lists ``path`` once."""
    with pytest.raises(D.MissingPathError, match=match) as e:
        make(skip_broken=False)
    assert e.value.path == str(path) or str(path) in str(e.value)
    ds = make(skip_broken=True)
    assert [p for p, _ in ds.skipped] == [str(path)]
    assert str(path) in str(e.value) and ds.skipped[0][1] == str(e.value)
    return ds


@pytest.mark.parametrize("modality, name", [("depth", "01_depth.png"), ("rgb", "01_image_4.png")])
def test_eyecandies_sample_missing_one_modality(tmp_path, modality, name):
    root = tmp_path / "eye"
    F.make_eyecandies(root)
    missing = root / "CandyCane" / "test_public" / "data" / name
    missing.unlink()
    other = "01_image_4.png" if modality == "depth" else "01_depth.png"
    ds = _both(lambda **kw: D.Eyecandies(root, "test", preprocess=PRE, **kw), missing,
               rf"{modality} file of sample 01 \(found .*{other}\)")
    assert len(ds) == 3                                  # the other three test samples stay


def test_mvtec3d_anomalous_sample_without_its_mask(tmp_path):
    root = tmp_path / "m3d"
    F.make_mvtec3d(root, classes=("bagel",))
    gt = root / "bagel" / "test" / "hole" / "gt" / "001.png"
    gt.unlink()
    ds = _both(lambda **kw: D.MVTec3DAD(root, "test", preprocess=PRE, **kw), gt,
               r"gt/001.png: mask of .*hole/rgb/001.png not found")
    assert len(ds) == 3
    good_gt = root / "bagel" / "test" / "good" / "gt" / "000.png"
    good_gt.unlink()                      # a good sample's mask may be absent: all zeros
    assert len(D.MVTec3DAD(root, "test", preprocess=PRE, skip_broken=True)) == 3


def test_visa_mask_listed_in_the_split_file_but_absent(tmp_path):
    root = tmp_path / "visa"
    F.make_visa(root, classes=("candle",))
    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    csv_path = root / "split_csv" / "1cls.csv"
    ds = _both(lambda **kw: D.VisA(root, "test", preprocess=PRE, **kw), mask,
               rf"mask listed in {csv_path} \(line 8\) not found")   # header, 3 train, 2 good, 000
    assert len(ds) == 3


def test_visa_class_asked_for_but_absent(tmp_path):
    root = tmp_path / "visa"
    F.make_visa(root, classes=("candle",), layout="pytorch")
    with pytest.raises(D.MissingPathError, match=r"1cls/pcb9.*VisA class folder"):
        D.VisA(root, "train", classes=["candle", "pcb9"], preprocess=PRE)
    assert len(D.VisA(root, "train", classes=["candle"], preprocess=PRE)) == 3


@pytest.mark.parametrize("progress, shown", [(True, True), (False, False)])
def test_indexing_bar_follows_progress(tmp_path, capsys, progress, shown):
    root = tmp_path / "eye"
    F.make_eyecandies(root)
    capsys.readouterr()
    D.Eyecandies(root, "test", preprocess=PRE, progress=progress)
    err = capsys.readouterr().err
    assert ("indexing eyecandies/CandyCane" in err) is shown
