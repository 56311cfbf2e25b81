"""Every reader on a tiny dataset generated in each of its published layouts
(tests/data_fixtures.py): sample format, modality counts, labels, class names (the
release's, with the old aliases), loss weights, protocol options and mask alignment (the
defect pixels carry a marker, which must land under the mask after preprocessing)."""
from __future__ import annotations

from pathlib import Path

import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import data_fixtures as F
import unimmad.data as D
from unimmad.data.preprocess import IMAGENET_MEAN, IMAGENET_STD

S = 32
PRE = D.Preprocess(image_size=S)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for name, make in (("mvtec", F.make_mvtec_ad), ("visa", F.make_visa),
                       ("mvtec3d", F.make_mvtec3d), ("eyecandies", F.make_eyecandies),
                       ("mulsen", F.make_mulsen), ("brats", F.make_brats),
                       ("liverct", F.make_bmad), ("meta", F.make_meta_json),
                       ("hyperkvasir", F.make_hyperkvasir)):
        root = base / name
        root.mkdir()
        out[name] = (root, make(root))
    return out


def denorm(slot: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return slot * std + mean


def marker(slot: torch.Tensor, rgb: bool) -> torch.Tensor:
    x = denorm(slot)
    if rgb:
        return (x[0] > 0.75) & (x[1] < 0.25)
    return x.mean(0) > 0.75


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def check_sample(x, n_mod, dataset, weight):
    """The unified sample's contract."""
    assert set(x) == {"images", "num_modalities", "mask", "label", "class_name", "dataset",
                      "loss_weight", "path", "modalities"}
    assert x["images"].shape == (4, 3, S, S) and x["images"].dtype == torch.float32
    assert x["num_modalities"] == n_mod
    assert torch.isfinite(x["images"]).all()
    assert (x["images"][n_mod:] == 0).all()                       # zero padding
    assert x["mask"].shape == (S, S) and set(x["mask"].unique().tolist()) <= {0.0, 1.0}
    assert x["label"] in (0, 1)
    assert x["dataset"] == dataset and x["class_name"].endswith("_" + dataset)
    assert x["loss_weight"] == weight
    if x["label"] == 0:
        assert x["mask"].sum() == 0


def anomalous(ds):
    return [i for i, r in enumerate(ds.records) if r.label == 1]


def test_mvtec_ad(roots):
    root, info = roots["mvtec"]
    tr = D.MVTecAD(root, "train", preprocess=PRE)
    te = D.MVTecAD(root, "test", preprocess=PRE)
    assert len(tr) == info["train"] and len(te) == info["test"]
    assert tr.classes == ["bottle_mvtec", "grid_mvtec"]
    assert sum(te.labels) == info["anomalous"]
    for i in range(len(te)):
        check_sample(te[i], 1, "mvtec", 1.0)
    g = tr[tr.class_names.index("grid_mvtec")]["images"][0]        # gray → replicated
    x = denorm(g)
    assert torch.allclose(x[0], x[1], atol=1e-5) and torch.allclose(x[1], x[2], atol=1e-5)
    for i in anomalous(te):
        x = te[i]
        assert x["mask"].sum() > 0 and iou(marker(x["images"][0], True), x["mask"]) > 0.8


def test_visa(roots):
    root, info = roots["visa"]
    tr = D.VisA(root, "train", preprocess=PRE)
    te = D.VisA(root, "test", classes=["pcb1"], preprocess=PRE)
    assert len(tr) == info["train"] and tr.classes == ["candle_visa", "pcb1_visa"]
    assert len(te) == info["test"] // 2 and te.classes == ["pcb1_visa"]
    for i in anomalous(te):                                         # masks with small ids
        x = te[i]
        check_sample(x, 1, "visa", 1.0)
        assert iou(marker(x["images"][0], True), x["mask"]) > 0.8
    with pytest.raises(D.DataLayoutError, match="'nope' is not in the split file"):
        D.VisA(root, "test", classes=["nope"])


@pytest.mark.parametrize("layout", ["pytorch", "csv_bom"])
def test_visa_other_published_forms(tmp_path, layout):
    """spot-diff's reorganised 1cls layout (MVTec-like, masks ``<stem>.png``), and a split
    file saved with a UTF-8 byte-order mark."""
    root = tmp_path / "visa"
    info = F.make_visa(root, layout="pytorch" if layout == "pytorch" else "csv",
                       bom=layout == "csv_bom")
    tr = D.VisA(root, "train", preprocess=PRE)
    te = D.VisA(root, "test", preprocess=PRE)
    assert tr.layout_used == ("pytorch" if layout == "pytorch" else "csv")
    assert len(tr) == info["train"] and len(te) == info["test"]
    assert sum(te.labels) == info["anomalous"] and te.classes == ["candle_visa", "pcb1_visa"]
    for i in anomalous(te):
        x = te[i]
        check_sample(x, 1, "visa", 1.0)
        assert iou(marker(x["images"][0], True), x["mask"]) > 0.8


@pytest.mark.parametrize("split", ["train", "validation", "val", "test"])
def test_mvtec3d(roots, split):
    root, info = roots["mvtec3d"]
    ds = D.MVTec3DAD(root, split, preprocess=PRE)
    assert len(ds) == info["validation" if split == "val" else split]
    assert ds.classes == ["bagel_mvtec3d", "foam_mvtec3d"]
    for i in range(len(ds)):
        x = ds[i]
        check_sample(x, 2, "mvtec3d", 1.0)
        assert x["modalities"] == "rgb+depth"
        depth = x["images"][1]
        assert torch.equal(depth[0], depth[1]) and torch.equal(depth[1], depth[2])
        assert abs(float(depth[0].mean())) < 0.5                   # standardised
        if x["label"]:
            m = x["mask"].bool()
            assert iou(marker(x["images"][0], True), x["mask"]) > 0.8
            assert float(depth[0][m].mean() - depth[0][~m].mean()) > 1.0   # raised defect


def test_mvtec3d_invalid_point_rule(roots):
    """Default: a point is valid only when all three coordinates are non-zero (3D-ADS, M3DM,
    CFM); ``invalid_points="all_zero"`` drops only (0, 0, 0)."""
    root, _ = roots["mvtec3d"]
    ref = D.MVTec3DAD(root, "train", preprocess=PRE)
    r = ref.records[0]
    path = r.files[1][1]
    import tifffile
    xyz = tifffile.imread(path)
    some_zero = (xyz == 0).any(axis=2) & ~(xyz == 0).all(axis=2) & np.isfinite(xyz).all(axis=2)
    assert some_zero.any()                      # x = 0 on the first column, y = 0 on the first row
    strict = ref.read_modality("depth", path, r).valid
    loose = D.MVTec3DAD(root, "train", invalid_points="all_zero", preprocess=PRE)
    lax = loose.read_modality("depth", path, r).valid
    assert not strict[some_zero].any() and lax[some_zero].all()
    assert (strict == (np.isfinite(xyz).all(axis=2) & (xyz != 0).all(axis=2))).all()
    with pytest.raises(ValueError, match="invalid_points"):
        D.MVTec3DAD(root, "train", invalid_points="nonzero")


def test_mvtec3d_single_modality_and_rename(roots):
    root, _ = roots["mvtec3d"]
    ds = D.MVTec3DAD(root, "test", modalities=("depth",), preprocess=PRE,
                     dataset_name="eyecandies")
    x = ds[0]
    check_sample(x, 1, "eyecandies", 0.5)
    assert x["modalities"] == "depth"
    with pytest.raises(ValueError, match="modalities"):
        D.MVTec3DAD(root, "test", modalities=("rgb", "normals"))


def test_eyecandies(roots):
    root, info = roots["eyecandies"]
    assert len(D.Eyecandies(root, "val", preprocess=PRE)) == info["val"]
    te = D.Eyecandies(root, "test", preprocess=PRE, rgb_index=3)
    assert te.split == "test_public" and len(te) == info["test_public"]
    assert sum(te.labels) == info["anomalous"]
    assert all(r.files[0][1].endswith("_image_3.png") for r in te.records)
    for i in range(len(te)):
        x = te[i]
        check_sample(x, 2, "eyecandies", 0.5)
        if x["label"]:
            m = x["mask"].bool()
            assert iou(marker(x["images"][0], True), x["mask"]) > 0.8
            assert float(x["images"][1, 0][m].mean() - x["images"][1, 0][~m].mean()) > 1.0


def test_eyecandies_protocol_defaults(roots, tmp_path):
    """Lighting image 4 and labels from the mask, as the M3DM / CFM preprocessing;
    ``label_from="metadata"`` reads the ``anomalous`` flag instead."""
    root, info = roots["eyecandies"]
    te = D.Eyecandies(root, "test", preprocess=PRE)
    assert te.rgb_index == 4 and te.label_from == "mask"
    r = te.records[0]
    assert r.files[0][1].endswith("_image_4.png")
    assert te.read_modality("rgb", r.files[0][1], r).data[0, 0, 0] == pytest.approx(40 / 255)
    import shutil
    import yaml
    copy = tmp_path / "eye"
    shutil.copytree(root, copy)
    data = copy / "CandyCane" / "test_public" / "data"
    with open(data / "00_metadata.yaml", "w") as f:          # flagged, but its mask is empty
        yaml.safe_dump({"anomalous": 1}, f)
    by_mask = D.Eyecandies(copy, "test", preprocess=PRE)
    by_meta = D.Eyecandies(copy, "test", label_from="metadata", preprocess=PRE)
    assert by_mask.labels[0] == 0 and by_meta.labels[0] == 1
    assert by_meta[0]["mask"].sum() == 0
    assert by_mask.labels[1:] == by_meta.labels[1:]


def test_mulsen_infrared_default(roots):
    root, info = roots["mulsen"]
    tr = D.MulSenAD(root, "train", preprocess=PRE)
    te = D.MulSenAD(root, "test", preprocess=PRE)
    assert len(tr) == info["train"] and len(te) == info["test"]
    labels = {Path(r.files[0][1]).parent.name + "/" + Path(r.files[0][1]).stem: r.label
              for r in te.records}
    # crack labels (rgb, infrared, pointcloud): 0 → (1,1,1), 1 → (0,1,0), 2 → (1,0,0)
    assert labels == {"crack/0": 1, "crack/1": 1, "crack/2": 0, "good/0": 0, "good/1": 0}
    for i in range(len(te)):
        x = te[i]
        check_sample(x, 1, "mulsen", 1.0)
        assert x["modalities"] == "infrared"
        if x["label"]:
            assert iou(marker(x["images"][0], False), x["mask"]) > 0.8


def test_mulsen_three_sensors(roots):
    pytest.importorskip("trimesh")
    root, _ = roots["mulsen"]
    te = D.MulSenAD(root, "test", modalities=("rgb", "infrared", "pointcloud"), preprocess=PRE)
    assert [r.label for r in te.records] == [1, 1, 1, 0, 0]        # any chosen sensor
    x = te[0]
    check_sample(x, 3, "mulsen", 1.0)
    assert x["modalities"] == "rgb+infrared+depth"
    assert float(x["images"][2].std()) > 0.5                       # a rendered depth map
    x1 = te[1]                                                     # infrared-only defect:
    assert x1["label"] == 1 and x1["mask"].sum() == 0             # the RGB mask is empty
    ir = D.MulSenAD(root, "test", modalities=("infrared",), label_from="any", preprocess=PRE)
    assert [r.label for r in ir.records] == [1, 1, 1, 0, 0]


def test_render_depth_orientation():
    v = np.array([[0, 0, 1.0], [1, 0, 2.0], [0, 1, 3.0], [1, 1, 4.0], [1, 1, 5.0]])
    d, valid = D.render_depth(v, 4)
    assert valid.sum() == 4
    assert d[-1, 0] == 1.0 and d[-1, -1] == 2.0 and d[0, 0] == 3.0 and d[0, -1] == 5.0
    assert np.all(d[~valid] == 0.0) and d.shape == valid.shape == (4, 4)    # no vertex: 0


def test_brats(roots):
    root, info = roots["brats"]
    tr = D.BraTS2020(root, "train", preprocess=PRE)
    te = D.BraTS2020(root, "test", preprocess=PRE)
    n_slices = info["shape"][2] - 1                                 # slice 0 has no brain
    n_tumour = len(info["tumour_slices"])
    assert len(tr) == 4 * (n_slices - n_tumour)                     # 4 training cases, healthy
    assert len(te) == n_slices and sum(te.labels) == n_tumour       # last case is the test one
    assert {r.files[0][1].split("/")[-2] for r in te.records} == {info["cases"][-1]}
    assert tr.classes == ["brats_brats"]
    assert D.BraTS2020(root, "train", classes=["brain"], preprocess=PRE).classes == ["brats_brats"]
    for i in range(len(te)):
        x = te[i]
        check_sample(x, 4, "brats", 10.0)
        assert x["modalities"] == "flair+t1+t1ce+t2"
        if x["label"]:
            for m in range(4):
                assert iou(marker(x["images"][m], False), x["mask"]) > 0.8
    sub = D.BraTS2020(root, "test", test_cases=[info["cases"][0]], modalities=("t2", "flair"),
                      slice_range=(2, None), slice_step=2, min_brain_fraction=0, preprocess=PRE)
    assert [r.extra[0] for r in sub.records] == [2, 4, 6, 8]
    assert sub[0]["num_modalities"] == 2


def test_brats_release_channel_stack(roots):
    """``channel_stack=("flair", "t1", "t2")``: one 3-channel slice per sample (the release's
    choice), channel c equal to sequence c read as its own (gray) modality."""
    root, info = roots["brats"]
    stack = D.BraTS2020(root, "test", channel_stack=("flair", "t1", "t2"), preprocess=PRE)
    sep = D.BraTS2020(root, "test", modalities=("flair", "t1", "t2"), preprocess=PRE)
    assert len(stack) == len(sep) and stack.labels == sep.labels
    for r in stack.records:          # listed under its first stacked sequence, all three read
        assert r.files == (("mri", r.extra[1][0]),) and r.files[0][1].endswith("_flair.nii")
        assert [p.rsplit("_", 1)[1] for p in r.extra[1]] == ["flair.nii", "t1.nii", "t2.nii"]
    for i in (0, stack.labels.index(1)):
        a, b = stack[i], sep[i]
        check_sample(a, 1, "brats", 10.0)
        assert a["modalities"] == "mri"
        for c in range(3):
            assert torch.allclose(a["images"][0, c], b["images"][c, c], atol=1e-6)
        assert not torch.allclose(a["images"][0, 0], a["images"][0, 1])
        assert torch.equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="either modalities or channel_stack"):
        D.BraTS2020(root, "test", modalities=("t1",), channel_stack=("flair", "t1", "t2"))
    with pytest.raises(ValueError, match="3 distinct"):
        D.BraTS2020(root, "test", channel_stack=("flair", "t1"))


def test_brats_gz_and_odd_seg_name(tmp_path):
    F.make_brats(tmp_path, n_cases=2, gz=True, odd_seg_name_case=2)
    ds = D.BraTS2020(tmp_path / "MICCAI_BraTS2020_TrainingData", "test", test_fraction=0.5,
                     preprocess=PRE)
    assert {Path(r.mask).name for r in ds.records if r.mask} == {"W39_1998.09.19_Segm.nii.gz"}
    x = ds[[r.label for r in ds.records].index(1)]
    assert x["mask"].sum() > 0


def test_brats_one_tumour_voxel_of_any_label_makes_the_slice_anomalous(tmp_path):
    """A slice is anomalous when it has one tumour voxel (seg > 0, whatever its label 1, 2
    or 4), normal with none; the mask is that voxel."""
    import nibabel as nib
    info = F.make_brats(tmp_path, n_cases=2, tumour_slices=())
    case = info["cases"][-1]
    seg_path = tmp_path / "MICCAI_BraTS2020_TrainingData" / case / f"{case}_seg.nii"
    seg = np.zeros(info["shape"], np.uint8)
    seg[3, 5, 2] = 1                     # one necrotic voxel in slice 2
    seg[7, 9, 6] = 4                     # one enhancing voxel in slice 6
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(seg_path))
    ds = D.BraTS2020(tmp_path / "MICCAI_BraTS2020_TrainingData", "test", test_cases=[case],
                     preprocess=PRE)
    by_slice = {r.extra[0]: r.label for r in ds.records}
    assert by_slice == {k: int(k in (2, 6)) for k in range(1, info["shape"][2])}
    for k, (x, y) in ((2, (3, 5)), (6, (7, 9))):
        r = [i for i, rec in enumerate(ds.records) if rec.extra[0] == k][0]
        m = ds.read_mask(ds.records[r])
        assert m.sum() == 1 and m[y, x]          # slices are [y, x] after the transpose


@pytest.mark.parametrize("layout", F.BMAD_LAYOUTS)
@pytest.mark.parametrize("name,cls,modality,weight,klass", [
    ("liverct", D.LiverCT, "ct", 10.0, "liver"),
    ("retinaloct", D.RetinalOCT, "oct", 1.0, "retinal_edema"),
])
def test_bmad_layouts(tmp_path, layout, name, cls, modality, weight, klass):
    """Every published BMAD form: README tree (anomaly_mask), Ungood/label, split-level
    (Liver configs), RESC's Train/train + Val/val_label, and image-level folders."""
    root = tmp_path / name
    info = F.make_bmad(root, layout=layout)
    kw = {"require_masks": False} if layout == "flat" else {}
    tr = cls(root, "train", preprocess=PRE, **kw)
    assert len(tr) == info["train"] and tr.classes == [f"{klass}_{name}"]
    assert sum(tr.labels) == 0
    for split in ("valid", "val", "test"):
        te = cls(root, split, preprocess=PRE, **kw)
        assert len(te) == info["test"] and sum(te.labels) == info["anomalous"]
        mask_dir = info["mask_dir"]("valid" if split == "val" else split)
        for i in range(len(te)):
            x = te[i]
            check_sample(x, 1, name, weight)
            assert x["modalities"] == modality
            if x["label"] and mask_dir is not None:
                assert Path(te.records[i].mask).parent == mask_dir
                assert iou(marker(x["images"][0], False), x["mask"]) > 0.8
            elif x["label"]:
                assert x["mask"].sum() == 0                    # image-level only
    if layout == "flat":
        with pytest.raises(D.MissingPathError, match="mask of .* not found"):
            cls(root, "test")


def test_class_aliases():
    assert D.RetinalOCT.CLASS_ALIASES == {"retina": "retinal_edema"}
    assert D.BraTS2020.CLASS_ALIASES == {"brain": "brats"}


def test_retinal_oct_old_class_name(tmp_path):
    root = tmp_path / "resc"
    F.make_bmad(root, layout="resc")
    ds = D.RetinalOCT(root, "test", classes=["retina"], preprocess=PRE)
    assert ds.classes == ["retinal_edema_retinaloct"] and "Test/test" in ds.layout_used


def test_hyperkvasir_as_published(roots):
    """Normal = lower-GI cecum, ileum and bbps-2-3 images; anomalies = the segmented
    polyps with their (JPEG) masks; normal test images chosen by crc32(id)."""
    root, info = roots["hyperkvasir"]
    tr = D.HyperKvasir(root, "train", preprocess=PRE)
    te = D.HyperKvasir(root, "test", preprocess=PRE)
    assert tr.layout_used == "published" and tr.classes == ["colon_hyperkvasir"]
    in_test = {n for n in info["normal"] if zlib.crc32(n.encode()) % 10000 < 1000}
    assert 0 < len(in_test) < len(info["normal"])
    assert {Path(r.files[0][1]).stem for r in tr.records} == set(info["normal"]) - in_test
    assert sum(tr.labels) == 0
    normal_te = {Path(r.files[0][1]).stem for r in te.records if r.label == 0}
    bad_te = {Path(r.files[0][1]).stem for r in te.records if r.label == 1}
    assert normal_te == in_test and bad_te == set(info["segmented"])
    assert all("segmented-images" in r.files[0][1] for r in te.records if r.label)
    for i in anomalous(te):
        x = te[i]
        check_sample(x, 1, "hyperkvasir", 1.0)
        assert x["modalities"] == "endoscopy"
        assert iou(marker(x["images"][0], True), x["mask"]) > 0.8
        raw = np.asarray(Image.open(te.records[i].mask))
        box = np.zeros(raw.shape[:2], bool)
        box[F.BOX] = True
        noise = raw[~box]
        assert noise.max() > 0 and noise.max() <= 127        # JPEG noise, not defect
        assert (te.read_mask(te.records[i]) == box).all()
    for i in range(len(te)):
        check_sample(te[i], 1, "hyperkvasir", 1.0)
    with pytest.raises(ValueError, match="no validation split"):
        D.HyperKvasir(root, "valid")
    # its one class may be named, nothing else
    assert D.HyperKvasir(root, "train", classes=["colon"], preprocess=PRE).classes == \
        ["colon_hyperkvasir"]
    with pytest.raises(D.DataLayoutError, match="single class 'colon', got \\['polyps'\\]"):
        D.HyperKvasir(root, "train", classes=["polyps"], preprocess=PRE)


def test_hyperkvasir_options_and_archives(tmp_path):
    root = tmp_path / "hk"
    info = F.make_hyperkvasir(root, split_archives=True)
    te = D.HyperKvasir(root, "test", abnormal_findings=("polyps",), require_masks=False,
                       test_fraction=0.5, preprocess=PRE)
    bad = [r for r in te.records if r.label]
    assert len(bad) == len(info["polyps_labeled"])                # segmented ones deduplicated
    with_mask = {Path(r.files[0][1]).stem for r in bad if r.mask}
    assert with_mask == set(info["segmented"])
    normal = [r for r in te.records if not r.label]
    assert {Path(r.files[0][1]).stem for r in normal} == {
        n for n in info["normal"] if zlib.crc32(n.encode()) % 10000 < 5000}
    only = D.HyperKvasir(root, "train", normal_findings=("cecum",), test_fraction=0.0)
    assert all("/cecum/" in r.files[0][1] for r in only.records) and len(only) == 12
    with pytest.raises(D.MissingPathError, match="finding folder 'caecum' not found"):
        D.HyperKvasir(root, "train", normal_findings=("caecum",))
    with pytest.raises(D.MissingPathError, match="mask of"):
        D.HyperKvasir(root, "test", abnormal_findings=("polyps",))   # masks required


def test_hyperkvasir_bmad_copy(tmp_path):
    root = tmp_path / "hk_bmad"
    info = F.make_bmad(root, rgb=True, layout="published")
    te = D.HyperKvasir(root, "test", preprocess=PRE)
    assert te.layout_used.startswith("bmad") and len(te) == info["test"]
    for i in anomalous(te):
        x = te[i]
        check_sample(x, 1, "hyperkvasir", 1.0)
        assert iou(marker(x["images"][0], True), x["mask"]) > 0.8
    assert len(D.HyperKvasir(root, "valid", preprocess=PRE)) == info["test"]


def test_meta_json(roots):
    root, meta = roots["meta"]
    tr = D.MetaJsonDataset(root, "train", preprocess=PRE)
    te = D.MetaJsonDataset(root, "test", classes=["bagel_mvtec3d", "Lollipop_EyePre"],
                           preprocess=PRE)
    assert tr.classes == sorted(meta["train"]) and len(tr) == 6
    assert te.classes == ["Lollipop_EyePre", "bagel_mvtec3d"] and len(te) == 4
    weights = {}
    for i in range(len(te)):
        x = te[i]
        weights[x["dataset"]] = x["loss_weight"]
        assert x["num_modalities"] == 2 and x["modalities"] == "rgb+depth"
        if x["label"]:
            m = x["mask"].bool()
            assert iou(marker(x["images"][0], True), x["mask"]) > 0.8
            assert float(x["images"][1, 0][m].mean() - x["images"][1, 0][~m].mean()) > 1.0
    assert weights == {"EyePre": 0.5, "mvtec3d": 1.0}             # release suffix → alias
    custom = D.MetaJsonDataset(root, "train", loss_weights={"EyePre": 2.0}, preprocess=PRE)
    assert {x["dataset"]: x["loss_weight"] for x in custom} == {
        "EyePre": 2.0, "mvtec3d": 1.0, "mvtec": 1.0}
    release = D.MetaJsonDataset(root, "test", classes=["bagel_mvtec3d"],
                                preprocess=PRE.replace(depth_fill="mean", depth_norm="center"))
    d = np.load(root / meta["test"]["bagel_mvtec3d"][0]["img_path"][1])
    fg = d[:, :, 3] > 0
    want = (np.where(fg, d[:, :, 0], d[:, :, 0][fg].mean()) - d[:, :, 0][fg].mean()) * 100
    got = release[0]["images"][1, 0]
    assert torch.allclose(got, torch.nn.functional.interpolate(
        torch.tensor(want, dtype=torch.float32)[None, None], size=(S, S), mode="bilinear",
        align_corners=False)[0, 0], atol=1e-4)


def test_build_dataset_registry(roots):
    ds = D.build_dataset("mvtec", roots["mvtec"][0], "test", preprocess=PRE)
    assert isinstance(ds, D.MVTecAD) and "MVTecAD(" in repr(ds)
    with pytest.raises(ValueError, match="unknown dataset"):
        D.build_dataset("imagenet", roots["mvtec"][0])


# ----------------------------------------------------------------------------- preprocessing
def test_depth_fill_and_normalisation():
    from unimmad.data.preprocess import depth_from_xyz, fill_depth, normalize_depth

    xyz = np.ones((3, 4, 3), np.float32)
    xyz[..., 2] = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    xyz[0, 0] = 0.0                    # missing point
    xyz[2, 3, 1] = np.nan              # broken point
    z, valid = depth_from_xyz(xyz)
    assert not valid[0, 0] and not valid[2, 3] and valid.sum() == 10
    xyz[1, 1, 0] = 0.0                 # one zero coordinate: invalid only by the default rule
    assert not depth_from_xyz(xyz)[1][1, 1] and depth_from_xyz(xyz, "all_zero")[1][1, 1]
    near = fill_depth(z, valid, "nearest")
    assert near[0, 0] in (2.0, 5.0) and near[2, 3] in (11.0, 8.0)
    mean = fill_depth(z, valid, "mean")
    assert mean[0, 0] == pytest.approx(z[valid].mean())
    st = normalize_depth(near, valid, "standardize")
    assert st[valid].mean() == pytest.approx(0.0, abs=1e-9) and st[valid].std() == pytest.approx(1.0)
    c = normalize_depth(mean, valid, "center", 100.0)
    assert c[0, 0] == pytest.approx(0.0) and c[valid].mean() == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="depth_fill"):
        D.Preprocess(depth_fill="zero")


@pytest.mark.parametrize("extra", [0.0, np.nan, 7.0])
def test_channels_after_xyz_are_ignored(extra):
    """A cloud with more than three channels (e.g. an intensity channel): only x, y, z
    decide validity and depth, whatever the fourth channel holds."""
    from unimmad.data.preprocess import depth_from_xyz
    rng = np.random.default_rng(4)
    xyz = rng.uniform(0.5, 2.0, (4, 5, 3))
    xyz[0, 0] = 0.0
    xyz[3, 4, 1] = np.nan
    four = np.concatenate([xyz, np.full((4, 5, 1), extra)], axis=2)
    z3, v3 = depth_from_xyz(xyz)
    z4, v4 = depth_from_xyz(four)
    assert v3.sum() == 18 and np.array_equal(v4, v3)
    assert np.array_equal(z4, z3) and np.array_equal(z3[v3], xyz[..., 2][v3])
    with pytest.raises(ValueError, match=r"\[H, W, 3\], got \(4, 5, 2\)"):
        depth_from_xyz(xyz[..., :2])


@pytest.mark.parametrize("shape, shrink", [((3, 128, 32), True), ((3, 32, 128), True),
                                           ((3, 40, 48), False), ((1, 200, 64), True)])
def test_resize_antialiases_when_either_side_shrinks(shape, shrink):
    """Bilinear to [C, 64, 64], antialiased when the height or the width is above 64."""
    import torch.nn.functional as TF

    from unimmad.data.preprocess import _resize
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    want = TF.interpolate(x[None], size=(64, 64), mode="bilinear", align_corners=False,
                          antialias=shrink)[0]
    other = TF.interpolate(x[None], size=(64, 64), mode="bilinear", align_corners=False,
                           antialias=not shrink)[0]
    got = _resize(x, 64)
    assert torch.equal(got, want)
    if shrink:                                  # (enlarging, antialiasing changes nothing)
        assert not torch.allclose(got, other)
    assert _resize(x[:, :64, :64].contiguous(), 64).shape == (shape[0], 64, 64)


def test_values_in_messages_are_cut_after_60_characters():
    from unimmad.data.meta import _describe
    assert _describe("a" * 58) == "str '" + "a" * 58 + "'"                 # repr of 60 chars
    assert _describe("a" * 59) == "str '" + "a" * 56 + "..."               # 61: cut to 57 + ...
    assert _describe(7) == "int 7"


def test_preprocess_from_config():
    from unimmad import UniMMADConfig

    pre = D.Preprocess.from_config(UniMMADConfig.tiny(), depth_norm="center")
    assert pre.image_size == 64 and pre.max_modalities == 4 and pre.depth_norm == "center"


def test_gray_normalisation_switch(roots):
    root, _ = roots["liverct"]
    raw = D.LiverCT(root, "train", preprocess=PRE.replace(normalize_gray=False))[0]["images"][0]
    assert 0.0 <= float(raw.min()) and float(raw.max()) <= 1.0
    # the documented default: gray modalities get the ImageNet normalisation too
    assert D.Preprocess().normalize_gray is True
    norm = D.LiverCT(root, "train", preprocess=PRE)[0]["images"][0]
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    torch.testing.assert_close(norm, (raw - mean) / std, rtol=1e-5, atol=1e-5)


def test_mulsen_label_rows_are_matched_by_name_not_order(tmp_path):
    """The label file's rows name their sample (``object`` column): listed out of order,
    each sample still gets its own row; rows naming other files fall back to file order."""
    import csv
    root = tmp_path / "mulsen"
    F.make_mulsen(root, pointcloud=False)
    path = root / "capsule" / "RGB" / "GT" / "crack" / "data.csv"
    rows = {"0": (1, 1, 1), "1": (0, 1, 0), "2": (1, 0, 0)}

    def labels(order, names):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["object", "label1", "label2", "label3"])
            for k, name in zip(order, names):
                w.writerow([name, *rows[k]])
        te = D.MulSenAD(root, "test", modalities=("rgb",), preprocess=PRE)
        return {Path(r.files[0][1]).stem: r.label for r in te.records
                if Path(r.files[0][1]).parent.name == "crack"}

    # RGB labels: 0 → 1, 1 → 0, 2 → 1, whatever the row order
    assert labels(["2", "0", "1"], ["2.png", "0.png", "1.png"]) == {"0": 1, "1": 0, "2": 1}
    assert labels(["1", "2", "0"], ["1", "2", "0"]) == {"0": 1, "1": 0, "2": 1}
    # names that are not the files' stems: the rows are taken in file order
    assert labels(["0", "1", "2"], ["a", "b", "c"]) == {"0": 1, "1": 0, "2": 1}
    with pytest.raises(D.MissingPathError, match=r"crack/1.png: mask of sample 1 not found"):
        labels(["2", "0", "1"], ["a", "b", "c"])       # order says 1 is an RGB defect
