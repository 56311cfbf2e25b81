"""Index files never lead a reader outside its dataset root, names never lead an output
outside its folder, and meta.json entries of the wrong type or value are refused naming the
file and the entry."""
import csv
import json
import os

import pytest
import torch

import unimmad.data as D
from unimmad.data.io import contained_path, safe_component
from unimmad.engine.runconfig import build_datasets

import data_fixtures as F

S = 64
PRE = D.Preprocess(image_size=S)


@pytest.fixture
def meta_root(tmp_path):
    root = tmp_path / "meta"
    root.mkdir()
    meta = F.make_meta_json(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    F.save_png(outside / "secret.png", F.rgb_image(1))
    F.save_png(outside / "secret_mask.png", F.box_mask())
    return root, meta, outside


def _write(root, meta):
    (root / "meta.json").write_text(json.dumps(meta))


def _one_item(meta, **change):
    """meta.json with the first test item of bottle_mvtec changed (the anomalous one)."""
    meta = json.loads(json.dumps(meta))
    items = meta["test"]["bottle_mvtec"]
    bad = next(i for i, it in enumerate(items) if it["anomaly"])
    items[bad].update(change)
    return meta, bad


# ----------------------------------------------------------------------------- containment
def test_meta_json_paths_outside_the_root_are_refused(meta_root):
    root, meta, outside = meta_root
    (root / "bottle_mvtec" / "link.png").symlink_to(outside / "secret.png")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    cases = {"..": "../outside/secret.png",
             "absolute": str(outside / "secret.png"),
             "symlinked file": "bottle_mvtec/link.png",
             "symlinked folder": "escape/secret.png"}
    for name, entry in cases.items():
        m, i = _one_item(meta, img_path=[entry])
        _write(root, m)
        with pytest.raises(D.DataLayoutError) as e:
            D.MetaJsonDataset(root, "test", classes=["bottle_mvtec"], preprocess=PRE)
        msg = str(e.value)
        assert msg.startswith(str(root / "meta.json")), name
        assert f"test/bottle_mvtec[{i}].img_path[0]" in msg and "outside the dataset root" in msg
        assert str(root.resolve()) in msg, name
        # the explicit option reads it (the image is a real one outside the root)
        ds = D.MetaJsonDataset(root, "test", classes=["bottle_mvtec"], preprocess=PRE,
                               allow_outside_root=True)
        assert ds.records[i].files[0][1] == str((outside / "secret.png").resolve())
        # skip_broken drops it and lists it, never reads it
        ds = D.MetaJsonDataset(root, "test", classes=["bottle_mvtec"], preprocess=PRE,
                               skip_broken=True)
        assert len(ds.skipped) == 1 and "outside the dataset root" in ds.skipped[0][1]
    # the mask path is checked the same way
    m, i = _one_item(meta, mask_path="../outside/secret_mask.png")
    _write(root, m)
    with pytest.raises(D.DataLayoutError, match=rf"bottle_mvtec\[{i}\].mask_path: mask path .*outside"):
        D.MetaJsonDataset(root, "test", classes=["bottle_mvtec"], preprocess=PRE)
    # paths that stay inside the root (.. included, absolute included) are fine
    good = meta["test"]["bottle_mvtec"][0]["img_path"][0]
    m, i = _one_item(meta, img_path=[f"bagel_mvtec3d/../{good}"])
    m["test"]["bottle_mvtec"][0]["img_path"] = [str(root / good)]
    _write(root, m)
    assert len(D.MetaJsonDataset(root, "test", classes=["bottle_mvtec"], preprocess=PRE)) == 2


def test_allow_outside_root_is_plumbed_through_the_run_config(meta_root):
    from unimmad import UniMMADConfig
    root, meta, outside = meta_root
    m, _ = _one_item(meta, img_path=[str(outside / "secret.png")])
    _write(root, m)
    spec = {"name": "meta", "root": str(root), "classes": ["bottle_mvtec"]}
    with pytest.raises(D.DataLayoutError, match="outside the dataset root"):
        build_datasets([spec], "test", UniMMADConfig.tiny())
    ds = build_datasets([dict(spec, allow_outside_root=True)], "test", UniMMADConfig.tiny())
    assert len(ds) == 2
    with pytest.raises(TypeError, match="allow_outside_root"):
        build_datasets([dict(spec, allow_outside_root="yes")], "test", UniMMADConfig.tiny())


def test_visa_split_file_paths_outside_the_root_are_refused(tmp_path):
    root = tmp_path / "visa"
    F.make_visa(root, classes=("candle",))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    F.save_jpg(outside / "x.JPG", F.rgb_image(3))
    F.save_png(outside / "x.png", F.box_mask())
    csv_path = root / "split_csv" / "1cls.csv"
    rows = list(csv.DictReader(open(csv_path, newline="")))
    bad = next(i for i, r in enumerate(rows) if r["label"] == "anomaly")
    for column, entry in (("image", "../elsewhere/x.JPG"), ("mask", str(outside / "x.png"))):
        changed = [dict(r) for r in rows]
        changed[bad][column] = entry
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(changed)
        with pytest.raises(D.DataLayoutError, match=rf"1cls.csv: line {bad + 2}: {column} .*outside "
                                                    rf"the dataset root {root.resolve()}"):
            D.VisA(root, "test", preprocess=PRE)
        ds = D.VisA(root, "test", preprocess=PRE, allow_outside_root=True)
        used = [r.files[0][1] if column == "image" else r.mask for r in ds.records]
        assert str((outside / os.path.basename(entry)).resolve()) in used


def test_contained_path_contract(tmp_path):
    (tmp_path / "a").mkdir()
    assert contained_path(tmp_path, "a/../a/x.png", index="i.json", where="e") == \
        (tmp_path / "a" / "x.png").resolve()
    for entry in (None, 3, "", ["a"], "a\0b"):
        with pytest.raises(D.DataLayoutError, match="i.json: e: "):
            contained_path(tmp_path, entry, index="i.json", where="e")


# ----------------------------------------------------------------------------- output names
def test_safe_component_gives_one_safe_unique_name():
    hostile = ["/abs/dir/x_mvtec", "../../x", "..", ".", "", "a/b", "a_b", "a\\b", "CON",
               "x" * 300, "tab\tname", "ünï", ".hidden"]
    names = [safe_component(n) for n in hostile]
    for raw, n in zip(hostile, names):
        assert n and "/" not in n and "\\" not in n and not n.startswith("."), (raw, n)
        assert n not in (".", "..") and len(n) <= 110 and n.isprintable()
        assert os.path.basename(n) == n
    assert len(set(names)) == len(names)                 # a/b and a_b never share a folder
    assert safe_component("bottle_mvtec") == "bottle_mvtec"
    assert safe_component("Lollipop_EyePre") == "Lollipop_EyePre"


class _Hostile(torch.utils.data.Dataset):
    CLASSES = ("/abs/dir/x_mvtec", "../../x_y", "../escape", "ok_z")

    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        images = torch.zeros(4, 3, S, S)
        images[0] = torch.randn(3, S, S, generator=g)
        mask = torch.zeros(S, S)
        label = i % 2
        if label:
            mask[8:20, 8:20] = 1
        return {"images": images, "num_modalities": 1, "mask": mask, "label": label,
                "class_name": self.CLASSES[(i // 2) % 4],
                "dataset": "../ds", "loss_weight": 1.0, "path": f"item{i}", "modalities": "rgb"}


def test_overlays_stay_under_out_whatever_the_class_names(tmp_path):
    from unimmad import UniMMAD, UniMMADConfig
    from unimmad.engine import evaluate
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = UniMMAD(UniMMADConfig.tiny())
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    out = work / "out"
    old = os.getcwd()
    os.chdir(work)  # relative escapes would land beside out/
    try:
        evaluate(model, _Hostile(), str(out), batch_size=4, overlays=1, pixel_bins=50,
                 progress=False)
    finally:
        os.chdir(old)
    written = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert written and all(p.startswith(str(out) + os.sep) for p in written), written
    folders = sorted(os.listdir(out / "overlays"))
    assert len(folders) == 4 and "ok_z" in folders
    assert not os.path.exists("/abs/dir/x_mvtec")


def test_predict_output_names_are_safe(tmp_path):
    from unimmad import UniMMAD, UniMMADConfig
    from unimmad.engine import predict_files
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = UniMMAD(UniMMADConfig.tiny())
    src = tmp_path / "in"
    src.mkdir()
    F.save_png(src / "we ird;name.png", F.rgb_image(2))
    with pytest.warns(UserWarning, match="no thresholds stored"):    # an untrained model
        rows = predict_files(model, [[str(src / "we ird;name.png")]], str(tmp_path / "out"))
    assert rows[0]["map"].startswith("maps/00000_we_ird_name-")
    assert sorted(os.listdir(tmp_path / "out" / "maps"))[0].startswith("00000_we_ird_name-")


# ----------------------------------------------------------------------------- meta.json fields
@pytest.mark.parametrize("value, label", [(0, 0), (1, 1), (True, 1), (False, 0), ("0", 0),
                                          ("1", 1), ("normal", 0), (" Anomaly ", 1), ("good", 0)])
def test_meta_json_labels_accepted(meta_root, value, label):
    root, meta, _ = meta_root
    m, i = _one_item(meta, anomaly=value)
    _write(root, m)
    ds = D.MetaJsonDataset(root, "test", classes=["bottle_mvtec"], preprocess=PRE)
    assert ds.records[i].label == label
    assert (ds.records[i].mask is not None) == bool(label)


@pytest.mark.parametrize("value", [2, -1, 0.5, 1.0, "yes", "", None, [1], {"v": 1}])
def test_meta_json_labels_refused(meta_root, value):
    root, meta, _ = meta_root
    m, i = _one_item(meta, anomaly=value)
    _write(root, m)
    with pytest.raises(D.DataLayoutError, match=rf"meta.json: test/bottle_mvtec\[{i}\]: anomaly "
                                                r"must be true/false, 0/1"):
        D.MetaJsonDataset(root, "test", classes=["bottle_mvtec"], preprocess=PRE)


@pytest.mark.parametrize("change, message", [
    ({"img_path": 3}, r"img_path must be a path string or a non-empty list of them, got int 3"),
    ({"img_path": []}, r"img_path must be"),
    ({"img_path": ["a.png", 4]}, r"img_path must be"),
    ({"img_type": 7}, r"img_type must be a string or a list of strings, got int 7"),
    ({"img_type": ["rgb", "rgb"]}, r"1 paths, 2 types"),
    ({"img_type": "hologram"}, r"unknown img_type 'hologram'"),
    ({"mask_path": 5}, r"mask_path must be a path string, \"\" or null, got int 5"),
    ({"mask_path": ["m.png"]}, r"mask_path must be"),
    ({"specie_name": 12}, r"specie_name must be a string or null, got int 12"),
    ({"anomaly": 1, "label": 0}, r"'anomaly' \(1\) and 'label' \(0\) disagree"),
])
def test_meta_json_wrong_field_types_name_the_file_and_entry(meta_root, change, message):
    root, meta, _ = meta_root
    m, i = _one_item(meta, **change)
    _write(root, m)
    with pytest.raises(D.DataLayoutError, match=rf"meta.json: test/bottle_mvtec\[{i}\]: {message}"):
        D.MetaJsonDataset(root, "test", classes=["bottle_mvtec"], preprocess=PRE)


def test_meta_json_structure_errors(meta_root):
    root, meta, _ = meta_root
    for broken, message in [({"train": {}, "test": []}, "no 'test' mapping"),
                            ({"test": {"bottle_mvtec": 5}}, r"test/bottle_mvtec: expected a "
                                                            r"non-empty list of items, got int 5"),
                            ({"test": {"bottle_mvtec": ["x"]}}, r"test/bottle_mvtec\[0\]: an item "
                                                                r"must be a mapping, got str 'x'")]:
        _write(root, broken)
        with pytest.raises(D.DataLayoutError, match=message):
            D.MetaJsonDataset(root, "test", preprocess=PRE)
    m = json.loads(json.dumps(meta))
    for it in m["test"]["bottle_mvtec"]:
        it.pop("anomaly")
    _write(root, m)
    with pytest.raises(D.DataLayoutError, match=r"test/bottle_mvtec\[0\]: a test item needs an "
                                                r"'anomaly' field"):
        D.MetaJsonDataset(root, "test", classes=["bottle_mvtec"], preprocess=PRE)
    for it in m["train"]["bottle_mvtec"]:
        it.pop("anomaly")
    _write(root, m)
    assert D.MetaJsonDataset(root, "train", classes=["bottle_mvtec"], preprocess=PRE).labels == [0, 0]


def test_records_are_immutable_and_hashable():
    import dataclasses

    from unimmad.data.base import Record
    r = Record((("rgb", "a.png"),), 1, "bagel", mask="m.png")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.label = 0
    same = Record((("rgb", "a.png"),), 1, "bagel", mask="m.png")
    assert {r, same} == {r} and hash(r) == hash(same)

