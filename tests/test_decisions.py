"""Decisions a user gets out: thresholds (F1-optimal, or the normal-only rule when the
evaluation data holds no anomaly), normalised scores, ``predict`` on files / folders /
globs writing labels, masks and maps, and pictures on one colour scale per class."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from unimmad import UniMMAD, UniMMADConfig
from unimmad.cli import main
from unimmad.engine import evaluate, expand_items, predict_files, save_weights
from unimmad.engine.demo import demo_datasets, make_demo_data
from unimmad.metrics import MetricAccumulator
from unimmad.metrics.thresholds import (check_record, image_threshold, is_anomalous,
                                        normalize, threshold_record)


# ----------------------------------------------------------------------------- references
def _f1_at(t, neg, pos):
    """F1 of the decision ``score >= t`` (written out, float64)."""
    tp = float(np.sum(pos >= t))
    fp = float(np.sum(neg >= t))
    fn = float(pos.size) - tp
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _brute_force_f1(neg, pos):
    """(best F1, the highest threshold that reaches it) over every cut between two
    distinct sorted scores — an independent search over all decisions."""
    vals = np.unique(np.concatenate([neg, pos]))
    cuts = np.concatenate([[vals[0] - 1.0], (vals[:-1] + vals[1:]) / 2, [vals[-1] + 1.0]])
    f1 = np.array([_f1_at(t, neg, pos) for t in cuts])
    best = f1.max()
    return best, cuts[np.flatnonzero(np.isclose(f1, best, rtol=0, atol=1e-12))].max()


# ----------------------------------------------------------------------------- rules
@pytest.mark.parametrize("seed", range(6))
def test_f1_optimal_threshold_matches_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    neg = rng.normal(0.3, 0.05, 40).round(3)          # rounding: ties among scores
    pos = rng.normal(0.38, 0.06, 15).round(3)
    rec = image_threshold(np.concatenate([neg, pos]), np.r_[np.zeros(40), np.ones(15)])
    best, t_ref = _brute_force_f1(neg, pos)
    assert rec["rule"] == "f1_optimal"
    assert rec["f1"] == pytest.approx(best, abs=1e-12)
    assert _f1_at(rec["threshold"], neg, pos) == pytest.approx(best, abs=1e-12)
    # the same decisions as the highest optimal cut (halfway between two scores)
    allv = np.concatenate([neg, pos])
    assert np.array_equal(allv >= rec["threshold"], allv >= t_ref)
    assert rec["threshold"] == pytest.approx(t_ref, abs=1e-12)
    assert not np.any(allv == rec["threshold"])
    assert rec["num_normal"] == 40 and rec["num_anomalous"] == 15


def test_normal_only_rule_without_anomalies_flags_no_normal_image():
    rng = np.random.default_rng(1)
    s = rng.normal(0.2, 0.03, 50)
    rec = image_threshold(s, np.zeros(50))
    assert rec["rule"] == "normal_only" and rec["f1"] is None
    assert rec["threshold"] == pytest.approx(s.max() + s.std(), rel=1e-12)
    assert not is_anomalous(s, rec).any()
    assert "no anomaly" in rec["note"]
    # a constant normal score still gets a threshold above it
    rec = image_threshold(np.full(5, 0.4), np.zeros(5))
    assert rec["threshold"] > 0.4 and not is_anomalous(0.4, rec)


def test_optimum_that_flags_every_normal_image_falls_back_to_the_normal_only_rule():
    # anomalies scored below the normal images: the F1 optimum flags everything
    neg, pos = np.array([0.5, 0.6, 0.7]), np.array([0.1, 0.2])
    rec = image_threshold(np.r_[neg, pos], np.r_[0, 0, 0, 1, 1])
    assert rec["rule"] == "normal_only"
    assert "flagged every normal" in rec["note"]
    assert not is_anomalous(neg, rec).any()


def test_optimum_that_spares_only_the_lowest_normal_image_keeps_the_f1_rule():
    """The fallback is for an optimum that flags *every* normal image: a cut between the
    lowest normal score and the next one still spares one normal image and is kept."""
    neg = np.array([0.1, 0.45, 0.5])
    pos = np.array([0.2, 0.3, 0.35, 0.4, 0.42, 0.6, 0.7])
    rec = image_threshold(np.r_[neg, pos], np.r_[np.zeros(3), np.ones(7)])
    assert rec["rule"] == "f1_optimal" and "note" not in rec
    assert rec["threshold"] == pytest.approx(0.15) and rec["f1"] == pytest.approx(14 / 16)
    assert is_anomalous(neg, rec).tolist() == [False, True, True]


def test_threshold_needs_normal_images():
    with pytest.raises(ValueError, match="normal"):
        image_threshold([0.3, 0.4], [1, 1])


@pytest.mark.parametrize("bins", [None, 4096])
def test_pixel_threshold_exact_and_binned(bins):
    rng = np.random.default_rng(3)
    maps = rng.normal(0.2, 0.04, (6, 16, 16))
    masks = np.zeros_like(maps, bool)
    masks[3:, 4:9, 4:9] = True
    maps[masks] += rng.normal(0.12, 0.04, masks.sum())
    acc = MetricAccumulator(pixel_bins=bins)
    acc.update(maps.max(axis=(1, 2)), [0, 0, 0, 1, 1, 1], maps, masks)
    rec = acc.thresholds()["pixel"]
    neg, pos = maps[~masks], maps[masks]
    best, _ = _brute_force_f1(neg, pos)
    assert rec["rule"] == "f1_optimal" and rec["num_anomalous"] == pos.size
    if bins is None:
        assert rec["f1"] == pytest.approx(best, abs=1e-12)
        assert _f1_at(rec["threshold"], neg, pos) == pytest.approx(best, abs=1e-12)
    else:  # binned: the decision at the stored threshold is as good as claimed, near best
        assert _f1_at(rec["threshold"], neg, pos) == pytest.approx(rec["f1"], abs=2e-3)
        assert rec["f1"] >= best - 5e-3
    # only normal pixels (no defect in the data): the normal-only rule, nothing flagged
    acc = MetricAccumulator(pixel_bins=bins)
    acc.update(maps[:3].max(axis=(1, 2)), [0, 0, 0], maps[:3], np.zeros((3, 16, 16), bool))
    rec = acc.thresholds()["pixel"]
    assert rec["rule"] == "normal_only"
    assert not is_anomalous(maps[:3], rec).any()


@pytest.mark.parametrize("bins", [None, 64])
def test_one_defect_pixel_is_enough_for_the_f1_rule(bins):
    # a single anomalous pixel above every normal one: the F1-optimal threshold flags just
    # it (F1 = 1), exact or binned
    from unimmad.metrics.pixel import ExactPixelStore, PixelHistogram
    from unimmad.metrics.thresholds import threshold_record
    neg = np.linspace(0.1, 0.5, 50)
    store = ExactPixelStore() if bins is None else PixelHistogram(bins)
    store.add(neg, np.array([0.9]), np.ones(1), 1)
    rec = threshold_record(**store.threshold_stats())
    assert rec["rule"] == "f1_optimal" and rec["f1"] == 1.0 and rec["num_anomalous"] == 1
    assert 0.5 < rec["threshold"] <= 0.9


@pytest.mark.parametrize("pos_where", ["inside", "below", "above"])
def test_pixel_threshold_statistics_are_the_scores_own(pos_where):
    # the statistics behind a record, against numpy: normal min / max / std and the range
    # of all scores, whichever side the defect scores lie on
    from unimmad.metrics.pixel import ExactPixelStore, PixelHistogram
    rng = np.random.default_rng(11)
    neg = rng.uniform(0.3, 0.7, 200)
    pos = {"inside": rng.uniform(0.4, 0.6, 30), "below": rng.uniform(0.0, 0.2, 30),
           "above": rng.uniform(0.8, 1.0, 30)}[pos_where]
    exact = ExactPixelStore()
    exact.add(neg[:120], pos[:10], np.ones(10), 1)
    exact.add(neg[120:], pos[10:], np.ones(20), 1)
    st = exact.threshold_stats()
    both = np.concatenate((neg, pos))
    assert (st["min_normal"], st["max_normal"]) == (neg.min(), neg.max())
    assert st["std_normal"] == pytest.approx(neg.std(), rel=1e-12)
    assert (st["low"], st["high"]) == (both.min(), both.max())
    assert (st["num_normal"], st["num_anomalous"]) == (200, 30)
    # the histogram's bounds hold the true values within one bin
    hist = PixelHistogram(num_bins=1024)
    hist.add(neg, pos, np.ones(30), 1)
    hs = hist.threshold_stats()
    width = (both.max() - both.min()) / 1024
    for key, want in (("min_normal", neg.min()), ("max_normal", neg.max()),
                      ("low", both.min()), ("high", both.max())):
        assert abs(hs[key] - want) <= width, key
    assert hs["std_normal"] == pytest.approx(neg.std(), rel=1e-2)
    assert (hs["num_normal"], hs["num_anomalous"]) == (200, 30)


# ----------------------------------------------------------------------------- normalisation
def test_normalisation_puts_the_threshold_at_one_half():
    rec = {"threshold": 0.3, "low": 0.1, "high": 0.9}
    assert normalize(0.3, rec) == pytest.approx(0.5, abs=1e-15)
    assert normalize(0.1, rec) == 0.0 and normalize(0.9, rec) == 1.0
    assert normalize(-5.0, rec) == 0.0 and normalize(5.0, rec) == 1.0     # clipped
    assert normalize(0.2, rec) == pytest.approx(0.25)                      # linear below
    assert normalize(0.6, rec) == pytest.approx(0.75)                      # and above
    x = np.random.default_rng(0).uniform(-0.2, 1.2, 1000)
    n = normalize(x, rec)
    assert np.all(np.diff(n[np.argsort(x)]) >= 0)                          # monotone
    assert np.array_equal(n >= 0.5, x >= 0.3)                              # same decision
    assert np.array_equal(n >= 0.5, is_anomalous(x, rec))


def test_normal_only_record_has_room_above_the_threshold():
    rec = threshold_record(f1_threshold=None, f1=None, min_normal=0.1, max_normal=0.2,
                           std_normal=0.05, low=0.1, high=0.2, num_normal=4, num_anomalous=0)
    assert rec["low"] < rec["threshold"] < rec["high"]
    assert normalize(0.2, rec) < 0.5 and normalize(rec["threshold"], rec) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [None, {"low": 0, "threshold": 1}, {"low": 0, "threshold": 2,
                                 "high": 1}, {"low": 0, "threshold": float("nan"), "high": 1},
                                 {"low": 0, "threshold": True, "high": 2}])
def test_bad_records_are_refused(bad):
    with pytest.raises(ValueError, match="record"):
        check_record(bad, "record")


# ----------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Demo data, a fresh tiny model (seeded) and the thresholds ``evaluate`` gives it."""
    root = tmp_path_factory.mktemp("dec")
    paths = make_demo_data(str(root / "data"), size=64, train_per_class=2, test_good=3,
                           test_bad=2)
    cfg = UniMMADConfig.tiny()
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = UniMMAD(cfg).eval()
    report = evaluate(model, demo_datasets(paths, "test", cfg), str(root / "eval"),
                      overlays=1, progress=False)
    ckpt = save_weights(model, str(root / "weights"), {"thresholds": report.thresholds})
    return {"paths": paths, "model": model, "report": report, "ckpt": ckpt, "root": root}


def test_evaluate_stores_thresholds_per_class_and_overall(small):
    th = small["report"].thresholds
    assert th["format"] == "unimmad-thresholds"
    assert set(th["classes"]) == {"plate_demo3d", "tile_demo3d", "scan_demoscan"}
    for c, rec in th["classes"].items():   # every class's test data holds anomalies
        assert rec["image"]["rule"] in ("f1_optimal", "normal_only")
        assert rec["image"]["num_normal"] == 3 and rec["image"]["num_anomalous"] == 2
        check_record(rec["image"]), check_record(rec["pixel"])
    on_disk = json.load(open(small["root"] / "eval" / "thresholds.json"))
    assert on_disk == json.loads(json.dumps(th))


def test_evaluate_on_normal_data_only_uses_the_normal_only_rule(small, tmp_path):
    ds = demo_datasets(small["paths"], "test", small["model"].config)
    good = [i for i in range(len(ds)) if int(ds[i]["label"]) == 0]
    sub = torch.utils.data.Subset(ds, good)
    report = evaluate(small["model"], sub, None, progress=False)
    for rec in report.thresholds["classes"].values():
        assert rec["image"]["rule"] == "normal_only" and rec["pixel"]["rule"] == "normal_only"
    with torch.no_grad():
        scores = [float(small["model"](ds[i]["images"][None],
                                       torch.tensor([ds[i]["num_modalities"]])).pred_score)
                  for i in good[:3]]
    rec = report.thresholds["overall"]["image"]
    assert not any(is_anomalous(s, rec) for s in scores)


def _rows(out):
    with open(os.path.join(out, "scores.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("quiet", [True, False])
def test_predict_progress_follows_quiet(small, tmp_path, monkeypatch, quiet):
    """``unimmad predict`` asks for the progress bar unless ``--quiet`` (tqdm itself then
    hides it where stderr is not a terminal, as here)."""
    import unimmad.cli as cli
    seen = {}

    def fake(*a, **kw):
        seen.update(kw)
        return []
    monkeypatch.setattr(cli, "predict_files", fake)
    img = os.path.join(small["paths"]["scan"], "test", "good", "img", "000.png")
    argv = ["predict", "--checkpoint", small["ckpt"], "--out", str(tmp_path / "p"),
            "--device", "cpu", "--no-overlays", img] + (["--quiet"] if quiet else [])
    assert main(argv) == 0
    assert seen["progress"] is (not quiet) and seen["overlays"] is False


def test_predict_folder_and_glob_write_labels_masks_and_maps(small, tmp_path):
    scan = os.path.join(small["paths"]["scan"], "test")
    out = str(tmp_path / "pred")
    argv = ["predict", "--checkpoint", small["ckpt"], "--out", out, "--device", "cpu",
            "--quiet", os.path.join(scan, "good", "img"),             # a folder: 3 items
            os.path.join(scan, "Ungood", "img", "*.png")]             # a glob: 2 items
    assert main(argv) == 0
    rows = _rows(out)
    assert len(rows) == 5
    th = small["report"].thresholds["overall"]
    from PIL import Image
    for r in rows:
        score = float(r["score"])
        assert r["label"] == ("anomalous" if score >= th["image"]["threshold"] else "normal")
        assert float(r["score_normalised"]) == pytest.approx(normalize(score, th["image"]),
                                                             abs=1e-6)
        amap = np.load(os.path.join(out, r["map"]))
        assert amap.shape == (64, 64) and amap.dtype == np.float32
        mask = np.asarray(Image.open(os.path.join(out, r["mask"])))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, amap >= th["pixel"]["threshold"])  # same size
        assert os.path.isfile(os.path.join(out, r["overlay"]))
        assert r["label"] in os.path.basename(r["overlay"])
    # the folder's files, then the glob's, in order
    assert [os.path.basename(r["files"]) for r in rows] == ["000.png", "001.png", "002.png",
                                                            "000.png", "001.png"]


def test_predict_pairs_folders_by_name_and_uses_class_thresholds(small, tmp_path):
    d = os.path.join(small["paths"]["mvtec3d"], "plate", "test", "good")
    items = expand_items([f"{d}/rgb,{d}/xyz"])
    assert [[os.path.relpath(p, d) for p in it] for it in items] == \
        [[f"rgb/{i:03d}.png", f"xyz/{i:03d}.tiff"] for i in range(3)]
    th = small["report"].thresholds
    rows = predict_files(small["model"], items, str(tmp_path / "p"), thresholds=th,
                         class_name="plate_demo3d", progress=False, overlays=False)
    rec = th["classes"]["plate_demo3d"]["image"]
    assert all(r["threshold_group"] == "plate_demo3d" for r in rows)
    assert all(r["label"] == ("anomalous" if r["score"] >= rec["threshold"] else "normal")
               for r in rows)
    with pytest.raises(ValueError, match="no thresholds for class 'nope'"):
        predict_files(small["model"], items, str(tmp_path / "q"), thresholds=th,
                      class_name="nope", progress=False)


def test_predict_in_batches_keeps_each_item_its_own_row_and_map(small, tmp_path):
    d = os.path.join(small["paths"]["mvtec3d"], "plate", "test", "good")
    items = expand_items([f"{d}/rgb,{d}/xyz"])
    assert len(items) == 3
    one = predict_files(small["model"], items, str(tmp_path / "one"), batch_size=1,
                        progress=False, overlays=False, thresholds=small["report"].thresholds,
                        class_name="plate_demo3d")
    two = predict_files(small["model"], items, str(tmp_path / "two"), batch_size=2,
                        progress=False, overlays=False, thresholds=small["report"].thresholds,
                        class_name="plate_demo3d")
    assert [r["item"] for r in two] == [0, 1, 2]
    assert [r["files"] for r in two] == [";".join(it) for it in items]
    assert len({r["map"] for r in two}) == 3
    for a, b in zip(one, two):  # a batch of 2 + a batch of 1 gives each item its own outputs
        assert b["score"] == pytest.approx(a["score"], rel=1e-5, abs=1e-7)
        np.testing.assert_allclose(np.load(tmp_path / "two" / b["map"]),
                                   np.load(tmp_path / "one" / a["map"]), rtol=1e-5, atol=1e-6)
    assert len({r["score"] for r in two}) == 3  # distinct items: a mix-up would show


def test_expand_items_errors_name_the_input(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("1.png", "2.png"):
        (tmp_path / "a" / name).write_bytes(b"")
    (tmp_path / "b" / "1.png").write_bytes(b"")
    with pytest.raises(ValueError, match="unpaired: 2"):
        expand_items([f"{tmp_path}/a,{tmp_path}/b"])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_items([f"{tmp_path}/*.jpg"])
    with pytest.raises(FileNotFoundError, match="not a file, a folder or a glob"):
        expand_items([f"{tmp_path}/missing.png"])
    with pytest.raises(ValueError, match="mixes single files"):
        expand_items([f"{tmp_path}/a/1.png,{tmp_path}/b"])


def test_expand_items_folders_globs_and_files(tmp_path):
    for rel in ("a/10.png", "a/2.png", "a/notes.txt", "b/2.tiff", "b/10.tiff", "n/x/3.png",
                "n/1.png", "n/d.png/keep.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    t = str(tmp_path)
    # a folder: one item per image file, in natural order
    assert expand_items([f"{t}/a"]) == [[f"{t}/a/2.png"], [f"{t}/a/10.png"]]
    # two folders: paired by name without extension, in the first folder's order
    assert expand_items([f"{t}/a,{t}/b"]) == [[f"{t}/a/2.png", f"{t}/b/2.tiff"],
                                              [f"{t}/a/10.png", f"{t}/b/10.tiff"]]
    # a glob: sorted files only (the folder named d.png is not one); ** recurses
    assert expand_items([f"{t}/n/*.png"]) == [[f"{t}/n/1.png"]]
    assert expand_items([f"{t}/n/**/*.png"]) == [[f"{t}/n/1.png"], [f"{t}/n/x/3.png"]]
    # files: one item, empty parts ignored; several specs keep their order
    assert expand_items([f"{t}/a/2.png,,{t}/b/2.tiff,", f"{t}/a/10.png"]) == [
        [f"{t}/a/2.png", f"{t}/b/2.tiff"], [f"{t}/a/10.png"]]
    with pytest.raises(ValueError, match="empty item ','"):
        expand_items([","])
    with pytest.raises(FileNotFoundError, match="no image file .* in the folder"):
        expand_items([f"{t}/n/d.png"])
    (tmp_path / "a" / "2.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds two files named '2' \("):
        expand_items([f"{t}/a,{t}/b"])


def test_unpaired_names_are_listed_five_at_most(tmp_path):
    for i in range(7):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / f"{i}.png").write_bytes(b"")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "0.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\(unpaired: 1, 2, 3, 4, 5, \.\.\.\)"):
        expand_items([f"{tmp_path}/a,{tmp_path}/b"])
    (tmp_path / "a" / "6.png").unlink()
    with pytest.raises(ValueError, match=r"\(unpaired: 1, 2, 3, 4, 5\)"):
        expand_items([f"{tmp_path}/a,{tmp_path}/b"])


def _overlay_item(path, label, defect=False):
    mask = np.zeros((4, 4))
    if defect:
        mask[1:3, 1:3] = 1.0
    return {"modalities": [], "map": np.linspace(0, 1, 16).reshape(4, 4), "mask": mask,
            "label": label, "path": path}


def test_overlay_files_are_named_by_rank_verdict_score_and_path(tmp_path, monkeypatch):
    """Per class, the kept highest- and lowest-scored items become
    ``overlays/<class>/{highest|lowest}<rank>_<verdict>_<normalised score>_<last 3 path
    parts>.png``, titled with the class, the short path and the rank; without thresholds
    the verdict is "unscored" and the score raw, on the fixed raw colour scale."""
    import importlib

    from unimmad.data.io import safe_component
    from unimmad.engine.visualize import RAW_SCALE
    E = importlib.import_module("unimmad.engine.evaluate")     # the module, not the function
    calls = []
    monkeypatch.setattr(E, "save_overlay", lambda path, *a, **k: calls.append((path, a, k)))
    keep = {"cls/x": {"high": [(0.25, 1, _overlay_item("/d/bagel/test/crack/000.png", 1, True)),
                               (0.75, 2, _overlay_item("/d/bagel/test/hole/001.png", 1))],
                      "low": [(-0.5, 3, _overlay_item("/d/bagel/test/good/002.png", 0))]}}
    assert E._write_overlays(str(tmp_path), keep, None) == 3
    folder = os.path.join(str(tmp_path), "overlays", safe_component("cls/x"))
    assert [c[0] for c in calls] == [
        os.path.join(folder, "highest1_unscored_0.75_test_hole_001.png"),
        os.path.join(folder, "highest2_unscored_0.25_test_crack_000.png"),
        os.path.join(folder, "lowest1_unscored_0.50_test_good_002.png")]
    first = calls[0][2]
    assert first["title"] == "cls/x · test/hole/001.png · highest-scored #1 of the class"
    assert first["prediction"] == "score 0.7500 (raw; no threshold stored) · ground truth defect"
    assert (first["scale"], first["pixel_record"], first["pred_mask"], first["gt_mask"],
            first["gt_label"]) == (RAW_SCALE, None, None, None, 1)
    assert calls[1][2]["gt_mask"].sum() == 4                   # the defect's own mask
    assert calls[2][2]["title"].endswith("lowest-scored #1 of the class")
    # with the class's thresholds: the verdict, the normalised score, the predicted mask
    rec = {"threshold": 0.5, "low": 0.0, "high": 1.0, "rule": "f1_optimal"}
    calls.clear()
    E._write_overlays(str(tmp_path), keep, {"classes": {"cls/x": {"image": rec, "pixel": rec}}})
    names = [os.path.basename(c[0]) for c in calls]
    assert names == ["highest1_anomalous_0.75_test_hole_001.png",
                     "highest2_normal_0.25_test_crack_000.png",
                     "lowest1_anomalous_0.50_test_good_002.png"]
    assert calls[1][2]["prediction"].endswith(" · ground truth defect: missed")
    assert calls[2][2]["prediction"].endswith(" · ground truth good: false alarm")
    assert calls[0][2]["prediction"].endswith(" · ground truth defect: correct")
    assert calls[0][2]["scale"] is None and calls[0][2]["pixel_record"] is rec
    assert calls[0][2]["pred_mask"].sum() == 8                 # map values >= 0.5


def test_predict_without_thresholds_says_so_and_writes_no_labels(small, tmp_path):
    img = os.path.join(small["paths"]["scan"], "test", "good", "img", "000.png")
    with pytest.warns(UserWarning, match="no thresholds stored"):
        rows = predict_files(small["model"], [[img]], str(tmp_path / "p"), progress=False)
    assert rows[0]["label"] == "" and rows[0]["mask"] == ""
    assert os.path.isfile(tmp_path / "p" / rows[0]["overlay"])


# ----------------------------------------------------------------------------- pictures
def test_colour_scale_is_the_class_scale_not_the_picture_range():
    from unimmad.engine.visualize import colour_scale
    rec = {"threshold": 0.3, "low": 0.1, "high": 0.9}
    cold = np.full((4, 4), 0.12)
    cold[0, 0] = 0.15                         # its own maximum: red under per-image scaling
    hot = np.full((4, 4), 0.8)
    for amap in (cold, hot):
        shown, vmin, vmax = colour_scale(amap, rec)
        assert (vmin, vmax) == (0.0, 1.0)
        np.testing.assert_allclose(shown, normalize(amap, rec))
    assert colour_scale(cold, rec)[0].max() < 0.2 < 0.7 < colour_scale(hot, rec)[0].min()
    shown, vmin, vmax = colour_scale(cold, None, (0.0, 1.0))
    assert (vmin, vmax) == (0.0, 1.0) and np.array_equal(shown, cold)
    with pytest.raises(ValueError, match="pixel_record or a fixed scale"):
        colour_scale(cold)


def test_every_overlay_of_a_class_uses_that_class_scale(small, tmp_path, monkeypatch):
    import importlib
    E = importlib.import_module("unimmad.engine.evaluate")  # the module, not the function
    calls = []
    monkeypatch.setattr(E, "save_overlay", lambda path, mods, amap, **kw: calls.append(
        (path, mods, kw)))
    report = evaluate(small["model"], demo_datasets(small["paths"], "test",
                                                    small["model"].config),
                      str(tmp_path / "ev"), overlays=2, progress=False)
    assert len(calls) == 3 * 4
    for path, mods, kw in calls:
        cls = os.path.basename(os.path.dirname(path))
        assert kw["pixel_record"] == report.thresholds["classes"][cls]["pixel"]
        # every modality of the item, named; prediction in the title and the file name
        assert [n for n, _ in mods] == (["rgb", "depth"] if cls != "scan_demoscan" else ["ct"])
        label = "ANOMALOUS" if "_anomalous_" in os.path.basename(path) else "NORMAL"
        assert kw["prediction"].startswith(f"predicted {label}")
        truth = "defect" if kw["gt_label"] else "good"
        right = (label == "ANOMALOUS") == bool(kw["gt_label"])
        assert kw["prediction"].endswith(f"ground truth {truth}: " + (
            "correct" if right else "missed" if kw["gt_label"] else "false alarm"))
        assert os.path.basename(path).startswith(("highest", "lowest"))


def test_predicted_mask_is_at_the_files_resolution(small, tmp_path):
    """A file of another size than the model's input gets its mask at its own size: the
    map resized bilinearly (corners not aligned), then thresholded."""
    from PIL import Image
    rng = np.random.default_rng(0)
    src = tmp_path / "odd.png"
    Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(src)
    import copy
    th = copy.deepcopy(small["report"].thresholds)
    first = predict_files(small["model"], [[str(src)]], str(tmp_path / "q"), thresholds=th,
                          progress=False, overlays=False)
    amap = np.load(os.path.join(str(tmp_path / "q"), first[0]["map"]))
    # a pixel threshold at the map's median: half the pixels flagged, so the resizing rule
    # decides many of them
    th["overall"]["pixel"]["threshold"] = float(np.median(amap))
    out = str(tmp_path / "p")
    rows = predict_files(small["model"], [[str(src)]], out, thresholds=th, progress=False,
                         overlays=False)
    mask = np.asarray(Image.open(os.path.join(out, rows[0]["mask"])))
    assert amap.shape == (64, 64) and mask.shape == (40, 52)
    up = torch.nn.functional.interpolate(torch.from_numpy(amap)[None, None], size=(40, 52),
                                         mode="bilinear", align_corners=False)[0, 0].numpy()
    t = th["overall"]["pixel"]["threshold"]
    assert 0.3 < (mask == 255).mean() < 0.7
    assert np.array_equal(mask == 255, up >= t)
    corners = torch.nn.functional.interpolate(torch.from_numpy(amap)[None, None], size=(40, 52),
                                              mode="bilinear", align_corners=True)[0, 0].numpy()
    assert not np.array_equal(mask == 255, corners >= t)      # the rule is observable here


def test_a_depth_file_given_as_a_gray_image_counts_zero_as_invalid(tmp_path):
    """``load_item`` with ``modalities=["rgb", "depth"]``: a 2-D depth's zeros (and
    non-finite values) are the invalid pixels filled by the depth rule."""
    import tifffile
    from unimmad.data import Preprocess
    from unimmad.engine.predict import _modality_of, load_item
    z = np.random.default_rng(1).uniform(0.4, 0.6, (8, 8)).astype(np.float32)
    z[:2] = 0.0
    z[2, 0] = np.nan
    p = tmp_path / "d.tiff"
    tifffile.imwrite(str(p), z)
    m = _modality_of(str(p), None)
    assert m.name == "depth" and m.valid.sum() == 64 - 17
    assert not m.valid[:2].any() and not m.valid[2, 0]
    rgb = tmp_path / "c.png"
    from PIL import Image
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(rgb)
    item = load_item([str(rgb), str(p)], Preprocess(image_size=8, max_modalities=3),
                     modalities=["rgb", "depth"])
    assert item.shape == (3, 3, 8, 8) and torch.isfinite(item).all()
    assert (item[2] == 0).all() and item[1].abs().sum() > 0


def test_thresholds_table_rows_per_class_and_overall():
    """One row per class (sorted) and the overall row, each with both levels' threshold
    (4 significant digits) and rule (F1 with 3 decimals when set by it); '—' where a level
    has no record."""
    from unimmad.engine.evaluate import thresholds_table
    img = {"threshold": 0.123456, "rule": "f1_optimal", "f1": 0.87654}
    pix = {"threshold": 0.5, "rule": "normal_only", "f1": None}
    table = thresholds_table({"classes": {"b_x": {"image": img, "pixel": pix},
                                          "a_x": {"image": img}},
                              "overall": {"image": pix, "pixel": img}})
    assert table.splitlines() == [
        "| class | image threshold | rule | pixel threshold | rule |",
        "|---|---:|---|---:|---|",
        "| a_x | 0.1235 | f1-optimal (F1 0.877) | — | — |",
        "| b_x | 0.1235 | f1-optimal (F1 0.877) | 0.5 | normal-only |",
        "| **overall** | 0.5 | normal-only | 0.1235 | f1-optimal (F1 0.877) |"]
    assert thresholds_table({}).splitlines()[-1] == "| **overall** | — | — | — | — |"
