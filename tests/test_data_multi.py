"""Multi-dataset training set: concatenation, per-dataset loss weights, class-balanced
sampling (empirical frequencies uniform within a stated tolerance), collate into the
model's batch, DataLoader workers."""
from __future__ import annotations

import pickle
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

import data_fixtures as F
import unimmad.data as D

PRE = D.Preprocess(image_size=32)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    base = tmp_path_factory.mktemp("multi")
    F.make_mvtec_ad(base / "mvtec", classes=("bottle",), n_train=6)
    F.make_eyecandies(base / "eye", classes=("Lollipop",), n_train=2)
    F.make_brats(base / "brats", n_cases=2, shape=(24, 32, 4), tumour_slices=(2,))
    return [D.MVTecAD(base / "mvtec", "train", preprocess=PRE),
            D.Eyecandies(base / "eye", "train", preprocess=PRE),
            D.BraTS2020(base / "brats", "train", test_fraction=0.5, preprocess=PRE)]


def test_concatenation_and_loss_weights(parts):
    multi = D.MultiDataset(parts)
    assert len(multi) == sum(len(p) for p in parts) == 6 + 2 + 2
    assert multi.classes == ["Lollipop_eyecandies", "bottle_mvtec", "brats_brats"]
    got = [(multi[i]["dataset"], multi[i]["loss_weight"]) for i in (0, 6, 9, -1)]
    assert got == [("mvtec", 1.0), ("eyecandies", 0.5), ("brats", 10.0), ("brats", 10.0)]
    assert dict(D.DEFAULT_LOSS_WEIGHTS) == {"eyecandies": 0.5, "brats": 10.0, "liverct": 10.0}
    custom = D.MultiDataset(parts, loss_weights={"brats": 3.0})
    assert [custom[i]["loss_weight"] for i in (0, 6, 9)] == [1.0, 1.0, 3.0]
    with pytest.raises(IndexError):
        multi[len(multi)]
    with pytest.raises(ValueError, match="finite and >= 0"):
        D.MultiDataset(parts, loss_weights={"brats": -1.0})
    with pytest.raises(ValueError, match="image_size"):
        D.MultiDataset([parts[0], D.MVTecAD(parts[0].root, "train", preprocess=D.Preprocess(image_size=16))])


def test_class_balanced_sampler_is_uniform_over_classes():
    """Classes of 3, 30 and 300 samples: each drawn with probability 1/3.  With 60,000
    draws the standard error of a frequency is ≈ 0.0019; the tolerance 0.01 is > 5σ.
    Within the small class each sample is drawn 1/9 of the time (tolerance 0.01)."""
    names = ["a"] * 3 + ["b"] * 30 + ["c"] * 300
    sampler = D.ClassBalancedSampler(names, num_samples=60_000, seed=1)
    idx = list(sampler)
    assert len(idx) == len(sampler) == 60_000
    freq = Counter(names[i] for i in idx)
    for c in "abc":
        assert abs(freq[c] / 60_000 - 1 / 3) < 0.01, freq
    small = Counter(i for i in idx if i < 3)
    for i in range(3):
        assert abs(small[i] / 60_000 - 1 / 9) < 0.01
    w = D.class_balanced_weights(names)
    assert torch.allclose(w[[0, 3, 33]], torch.tensor([1 / 3, 1 / 30, 1 / 300], dtype=torch.float64))


def test_sampler_default_seed_is_0():
    """Without ``seed`` the draw is that of ``seed=0`` (and differs from seed 1)."""
    names = ["a"] * 3 + ["b"] * 40
    default = D.ClassBalancedSampler(names, num_samples=50)
    assert default.seed == 0
    assert list(default) == list(D.ClassBalancedSampler(names, num_samples=50, seed=0))
    assert list(D.ClassBalancedSampler(names, num_samples=50)) != \
        list(D.ClassBalancedSampler(names, num_samples=50, seed=1))


def test_sampler_determinism_and_epochs(parts):
    multi = D.MultiDataset(parts)
    s1, s2 = D.ClassBalancedSampler(multi, seed=7), D.ClassBalancedSampler(multi, seed=7)
    assert len(s1) == len(multi)
    s1.set_epoch(3)
    s2.set_epoch(3)
    assert list(s1) == list(s2)
    s1.set_epoch(3)
    s2.set_epoch(4)
    assert list(s1) != list(s2)
    s = D.ClassBalancedSampler(multi, num_samples=200, seed=7)
    first, second = list(s), list(s)                       # epochs advance by themselves
    assert first != second
    s.set_epoch(0)
    assert list(s) == first
    s.set_epoch(1)                    # the second iteration was epoch 1: one step per pass
    assert list(s) == second


def test_collate_batch_format(parts):
    multi = D.MultiDataset(parts)
    batch = D.collate([multi[i] for i in (0, 6, 9)])
    assert batch["images"].shape == (3, 4, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert batch["num_modalities"].tolist() == [1, 2, 4]
    assert batch["num_modalities"].dtype == torch.long
    assert batch["masks"].shape == (3, 32, 32) and batch["labels"].tolist() == [0, 0, 0]
    assert batch["sample_weight"].tolist() == [1.0, 0.5, 10.0]
    assert batch["class_names"] == ["bottle_mvtec", "Lollipop_eyecandies", "brats_brats"]
    assert batch["datasets"] == ["mvtec", "eyecandies", "brats"]
    assert batch["modalities"] == ["rgb", "rgb+depth", "flair+t1+t1ce+t2"]
    with pytest.raises(ValueError, match="different image shapes"):
        small = D.MVTecAD(parts[0].root, "train", preprocess=D.Preprocess(image_size=16))
        D.collate([multi[0], small[0]])
    with pytest.raises(ValueError, match="empty"):
        D.collate([])


def test_dataloader_workers_match_single_process(parts):
    multi = D.MultiDataset(parts)
    pickle.loads(pickle.dumps(multi))                       # picklable for workers
    sampler = D.ClassBalancedSampler(multi, seed=3)

    def run(workers):
        sampler.set_epoch(0)
        loader = DataLoader(multi, batch_size=4, sampler=sampler, collate_fn=D.collate,
                            num_workers=workers)
        return list(loader)

    a, b = run(0), run(2)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert torch.equal(x["images"], y["images"]) and x["paths"] == y["paths"]
        assert torch.equal(x["sample_weight"], y["sample_weight"])


def test_batch_feeds_the_model(tmp_path):
    """A collated batch of mixed modality counts goes straight into UniMMAD.loss / forward."""
    from unimmad import UniMMAD, UniMMADConfig

    cfg = UniMMADConfig.tiny()
    pre = D.Preprocess.from_config(cfg)
    F.make_mvtec3d(tmp_path / "m3d", classes=("bagel",), n_train=1)
    F.make_bmad(tmp_path / "liver", n_train=1)
    multi = D.MultiDataset([D.MVTec3DAD(tmp_path / "m3d", "train", preprocess=pre),
                            D.LiverCT(tmp_path / "liver", "train", preprocess=pre)])
    batch = D.collate([multi[0], multi[1]])
    model = UniMMAD(cfg)
    total, parts = model.loss(batch["images"], batch["num_modalities"],
                              sample_weight=batch["sample_weight"])
    assert torch.isfinite(total)
    model.eval()
    with torch.no_grad():
        out = model(batch["images"], batch["num_modalities"])
    assert out.anomaly_map.shape == batch["masks"].shape
