"""Loading the authors' release checkpoints (SPEC §4) without their code: folders built from
SPEC §4's key names and shapes (tests/release_layout.py, written independently of
unimmad.release's mapping rules), random tensors."""
import json
import os
import pickle

import pytest
import torch.nn.functional as F
import torch
from safetensors.torch import load_file, save_file

from helpers import TOL, assert_rel
from release_layout import random_tensors, release_layout
from unimmad import CMoE, UniMMAD, UniMMADConfig, load_release_checkpoint
from unimmad.cli import main
from unimmad.models.backbone import WideResNet
from unimmad.release import (RELEASE_PARTS, ReleaseCheckpointError,
                             cmoe_state_dict_from_release, cmoe_state_dict_to_release,
                             expected_release_layout, from_release_state_dicts,
                             infer_release_config, release_config, to_release_state_dicts)

TINY = UniMMADConfig.tiny()
FILES = [names[0] for names in RELEASE_PARTS.values()]


def _unique_counters(data):
    """Distinct BatchNorm counters so that every tensor of a folder has unique values."""
    keys = [(f, k) for f, sd in data.items() for k in sd if k.endswith("num_batches_tracked")]
    for i, (f, k) in enumerate(keys):
        data[f][k] = torch.tensor(1000 + i)
    return data


def write_release(folder, cfg=TINY, seed=0, bin_files=False, edit=None):
    """A release checkpoint folder of random tensors; ``edit(file → dict)`` perturbs it."""
    gen = torch.Generator().manual_seed(seed)
    data = _unique_counters({f: random_tensors(lay, gen) for f, lay in release_layout(cfg).items()})
    if edit is not None:
        edit(data)
    os.makedirs(folder, exist_ok=True)
    for (st, bn), f in zip(RELEASE_PARTS.values(), FILES):
        if bin_files:
            torch.save(data[f], os.path.join(folder, bn))
        else:
            save_file(data[f], os.path.join(folder, st))
    return data


def write_backbone(path, cfg=TINY, seed=1):
    """An 'ImageNet' file in torchvision layout (with layer4 and fc, as the real one)."""
    torch.manual_seed(seed)
    net = WideResNet(tuple(cfg.backbone_layers) + (1,), cfg.backbone_base_planes,
                     cfg.backbone_width_factor, include_top=True)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = torch.rand_like(sd[k]) + 0.5
    save_file(sd, str(path))
    return sd


@pytest.fixture
def release(tmp_path):
    data = write_release(tmp_path / "epoch_199")
    backbone = write_backbone(tmp_path / "wrn.safetensors")
    return tmp_path / "epoch_199", tmp_path / "wrn.safetensors", data, backbone


# ----------------------------------------------------------------------------- layout
def test_paper_layout_is_spec_section_4_key_for_key():
    """At paper dims (meta tensors, nothing allocated) the loader expects exactly SPEC §4's
    keys and shapes, and the FCM has the release's 56,760,308 parameters."""
    cfg = release_config()
    expected = expected_release_layout(cfg)
    spec = release_layout(cfg, with_unused=False)
    for part, (name, _) in RELEASE_PARTS.items():
        assert expected[part] == spec[name], part
    assert sum(len(v) for v in expected.values()) == 607 + 19 + 159
    with torch.device("meta"):
        model = UniMMAD(cfg)
    assert sum(p.numel() for p in model.fcm.parameters()) == 56_760_308
    # every conv of the stem and its shortcut has a bias (release checkpoints hold them)
    assert all(m.bias is not None for m in model.embedding.modules()
               if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("cfg", [TINY, UniMMADConfig()], ids=["tiny", "paper"])
def test_sizes_inferred_from_tensor_shapes(cfg):
    parts = {p: {k: torch.empty(s, device="meta") for k, s in release_layout(cfg)[n].items()}
             for p, (n, _) in RELEASE_PARTS.items()}
    assert infer_release_config(parts) == cfg


def test_a_stage_without_blocks_keeps_the_paper_block_counts():
    """A trunk stage with no block in the checkpoint implies no block counts: the paper's
    stay (and the strict load reports the missing tensors); the others are still read."""
    cfg = TINY
    parts = {p: {k: torch.empty(s, device="meta") for k, s in release_layout(cfg)[n].items()}
             for p, (n, _) in RELEASE_PARTS.items()}
    enc = parts["encoder"]
    for k in [k for k in enc if k.startswith("0.model.layer3.")]:
        del enc[k]
    got = infer_release_config(parts)
    assert got.backbone_layers == UniMMADConfig().backbone_layers != cfg.backbone_layers
    assert got.backbone_base_planes == cfg.backbone_base_planes
    assert got.fcm_width == cfg.fcm_width


# ----------------------------------------------------------------------------- loading
def test_release_folder_loads_every_tensor(release):
    folder, bb_path, data, backbone = release
    model, report = load_release_checkpoint(folder, bb_path, return_report=True)
    assert not model.training
    cfg = model.config
    assert (cfg.inter_modal_prior, cfg.map_mode, cfg.moe_anneal) == (False, "joint", "linear")
    assert cfg.image_size == TINY.image_size and cfg.fcm_width == TINY.fcm_width
    ours = model.state_dict()
    # every release tensor but layer4 / conv_out_second / prior_head is in the model, each
    # in exactly one place (values are unique random draws: matched by value and shape)
    by_value = {}
    for k, v in ours.items():
        by_value.setdefault((tuple(v.shape), v.numpy().tobytes()), []).append(k)
    used, skipped = set(), []
    for f, sd in data.items():
        for k, v in sd.items():
            hits = by_value.get((tuple(v.shape), v.numpy().tobytes()), [])
            hits = [h for h in hits if not h.startswith("prior_generator.")]
            if ".layer4." in k or ".conv_out_second." in k or ".prior_head." in k:
                assert not hits, k
                skipped.append(f"{f}: {k}")
                continue
            assert len(hits) == 1, (f, k, hits)
            used.add(hits[0])
    assert sorted(skipped) == report.skipped
    assert used == {k for k in ours if not k.startswith("prior_generator.")}
    assert sum(report.loaded.values()) == len(used)
    assert report.not_read == [] and sorted(report.backbone_ignored)[0].startswith("fc.")
    # the prior generator comes from the backbone file, the trained trunk from the folder
    for k, v in backbone.items():
        if not k.startswith(("layer4.", "fc.")):
            assert torch.equal(ours[f"prior_generator.backbone.{k}"], v), k
    assert torch.equal(ours["encoder.conv1.weight"], data["model.safetensors"]["0.model.conv1.weight"])
    # some placements checked by meaning: heads are per level (the release lists level 1
    # first, ours runs level 3 first), the C-MoE base bank sits in the release's C_MoE
    enc = data["model.safetensors"]
    assert torch.equal(model.fcm.heads[2].weight, enc["1.final.0.weight"])
    assert torch.equal(model.fcm.align[2].shortcut.bias, enc["1.conv_x3.0.upsample.bias"])
    cm = data["model_2.safetensors"]
    assert torch.equal(model.cmoe[1].branches[2].base_experts, cm["1.expert_bases.2"])
    assert torch.equal(model.cmoe[2].branches[0].leaders, cm["2.MoEs.0.experts"])
    images = torch.randn(2, 4, 3, 64, 64)
    images[1, 1:] = 0
    with torch.no_grad():
        out = model(images, torch.tensor([4, 1]))
    assert torch.isfinite(out.pred_score).all() and out.anomaly_map.shape == (2, 64, 64)


def test_round_trip_ours_release_ours_key_for_key():
    model = UniMMAD(TINY)
    sd = model.state_dict()
    parts = to_release_state_dicts(sd, TINY)
    spec = release_layout(TINY, with_unused=False)
    for part, (name, _) in RELEASE_PARTS.items():
        assert {k: tuple(v.shape) for k, v in parts[part].items()} == spec[name]
    back, skipped = from_release_state_dicts(parts, TINY)
    assert skipped == []
    assert sorted(back) == sorted(k for k in sd if not k.startswith("prior_generator."))
    assert all(back[k] is sd[k] for k in back)


def test_bin_files_read_weights_only_and_rng_pickle_never_opened(tmp_path):
    folder = tmp_path / "epoch_199"
    data = write_release(folder, bin_files=True)
    sentinel = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    with open(folder / "random_states_0.pkl", "wb") as f:
        pickle.dump(Trap(), f)
    write_backbone(tmp_path / "wrn.safetensors")
    model, report = load_release_checkpoint(folder, tmp_path / "wrn.safetensors",
                                            return_report=True)
    assert not sentinel.exists() and report.not_read == ["random_states_0.pkl"]
    assert os.path.basename(report.files["cmoe"]) == "pytorch_model_2.bin"
    assert torch.equal(model.cmoe[0].branches[1].fixed_expert,
                       data["model_2.safetensors"]["0.MoEs.1.soft_expert"])
    # a .bin that needs more than weights_only unpickling is refused, not executed
    torch.save({"a": Trap()}, folder / "pytorch_model_1.bin")
    with pytest.raises(ValueError, match="cannot read .*pytorch_model_1.bin"):
        load_release_checkpoint(folder, tmp_path / "wrn.safetensors")
    assert not sentinel.exists()


# ----------------------------------------------------------------------------- bad folders
def _drop(f, k):
    return lambda d: d[f].pop(k)


def _add(f, k, shape=(3,)):
    return lambda d: d[f].__setitem__(k, torch.zeros(shape))


def _reshape(f, k):
    return lambda d: d[f].__setitem__(k, torch.zeros(tuple(d[f][k].shape) + (1,)))


@pytest.mark.parametrize("edit, kind, key", [
    (_drop("model.safetensors", "1.conv_x2.0.downsample.weight"), "missing",
     "model.safetensors: 1.conv_x2.0.downsample.weight"),
    (_drop("model_1.safetensors", "stem.0.bias"), "missing", "model_1.safetensors: stem.0.bias"),
    (_drop("model_2.safetensors", "2.MoEs.1.gate.gate.bias"), "missing",
     "model_2.safetensors: 2.MoEs.1.gate.gate.bias"),
    (_add("model.safetensors", "1.conv_x1.0.downsample.1.weight"), "unexpected",
     "model.safetensors: 1.conv_x1.0.downsample.1.weight"),
    (_add("model_2.safetensors", "3.prior_head.weight"), "unexpected",
     "model_2.safetensors: 3.prior_head.weight"),
    (_add("model.safetensors", "1.bn3.post.2.weight"), "unexpected",
     "model.safetensors: 1.bn3.post.2.weight"),
    (_reshape("model.safetensors", "1.conv_x3.0.upsample.weight"), "mismatched",
     "model.safetensors: 1.conv_x3.0.upsample.weight"),
    (_reshape("model_2.safetensors", "0.expert_bases.2"), "mismatched",
     "model_2.safetensors: 0.expert_bases.2"),
])
def test_perturbed_folder_names_the_offending_tensor(tmp_path, edit, kind, key):
    write_release(tmp_path / "ck", edit=edit)
    write_backbone(tmp_path / "wrn.safetensors")
    with pytest.raises(ReleaseCheckpointError) as e:
        load_release_checkpoint(tmp_path / "ck", tmp_path / "wrn.safetensors", config=release_config(TINY))
    assert key in str(e.value)
    listed = {"missing": e.value.missing, "unexpected": e.value.unexpected,
              "mismatched": e.value.mismatched}
    assert any(x.startswith(key) for x in listed[kind]), listed
    assert sum(map(len, listed.values())) == 1


def test_all_problems_are_listed_in_one_error(tmp_path):
    def edit(d):
        d["model.safetensors"].pop("0.model.layer2.0.bn1.running_var")
        d["model_1.safetensors"]["shortcut.weight"] = torch.zeros(3, 12, 3, 3)
        d["model_2.safetensors"]["1.extra"] = torch.zeros(1)
        d["model_2.safetensors"].pop("0.conv_cond.0.1.num_batches_tracked")

    write_release(tmp_path / "ck", edit=edit)
    write_backbone(tmp_path / "wrn.safetensors")
    with pytest.raises(ReleaseCheckpointError) as e:
        load_release_checkpoint(tmp_path / "ck", tmp_path / "wrn.safetensors")
    msg = str(e.value)
    for key in ("0.model.layer2.0.bn1.running_var", "shortcut.weight", "1.extra",
                "0.conv_cond.0.1.num_batches_tracked"):
        assert key in msg
    assert "2 missing, 1 unexpected, 1 mis-shaped" in msg


def test_v11_stem_is_refused_naming_its_tensors(tmp_path):
    def edit(d):
        emb = d["model_1.safetensors"]
        emb.clear()
        emb["input_embedding"] = torch.randn(6, 64, 64)
        emb["stem.weight"] = torch.randn(3, 6, 3, 3)
        emb["stem.bias"] = torch.randn(3)

    write_release(tmp_path / "ck", edit=edit)
    write_backbone(tmp_path / "wrn.safetensors")
    with pytest.raises(ReleaseCheckpointError, match="V1.1") as e:
        load_release_checkpoint(tmp_path / "ck", tmp_path / "wrn.safetensors")
    msg = str(e.value)
    for key in ("stem.weight [3, 6, 3, 3]", "input_embedding [6, 64, 64]", "stem.0.weight",
                "shortcut.weight"):
        assert key in msg
    assert "model_1.safetensors: stem.weight" in e.value.unexpected


def test_v11_embedding_is_recognised_by_its_missing_shortcut():
    # the V1.1 stem without its stem conv in the file: a 6-channel embedding and no
    # 2026.5 shortcut is still V1.1; with the shortcut it is the release's own layout
    from unimmad.release import _v11_problems
    e6 = torch.randn(6, 64, 64)
    assert _v11_problems({"input_embedding": e6}) == ["input_embedding [6, 64, 64]"]
    assert _v11_problems({"input_embedding": e6, "shortcut.weight": torch.randn(3, 6, 1, 1)}) == []
    assert _v11_problems({"input_embedding": torch.randn(3, 64, 64)}) == []


def test_missing_files_and_backbone(tmp_path):
    write_release(tmp_path / "ck")
    os.remove(tmp_path / "ck" / "model_2.safetensors")
    write_backbone(tmp_path / "wrn.safetensors")
    with pytest.raises(FileNotFoundError, match="model_2.safetensors or pytorch_model_2.bin"):
        load_release_checkpoint(tmp_path / "ck", tmp_path / "wrn.safetensors")
    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_release_checkpoint(tmp_path / "nowhere", tmp_path / "wrn.safetensors")
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        load_release_checkpoint(tmp_path / "ck", tmp_path / "none.safetensors")


def test_a_backbone_file_missing_a_tensor_is_refused(tmp_path):
    # the ImageNet trunk is loaded strictly: a file without one of its tensors is an error
    # naming it, never a model with that layer left at its random init
    write_release(tmp_path / "ck")
    sd = write_backbone(tmp_path / "wrn.safetensors")
    sd.pop("layer2.0.conv2.weight")
    save_file(sd, str(tmp_path / "wrn.safetensors"))
    with pytest.raises(ValueError, match=r"do not fit the WideResNet: missing \(1\): "
                                         r"\['layer2.0.conv2.weight'\]"):
        load_release_checkpoint(tmp_path / "ck", tmp_path / "wrn.safetensors")


def test_backbone_is_required(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIMMAD_BACKBONE_WEIGHTS", raising=False)
    write_release(tmp_path / "ck")
    with pytest.raises(ValueError, match="backbone_weights is needed"):
        load_release_checkpoint(tmp_path / "ck")


# ----------------------------------------------------------------------------- C-MoE alone
def test_cmoe_converters_both_ways():
    from kernels import FastCMoE
    cm = CMoE(64, embed_dim=32, num_base_experts=4, num_leaders=8)
    theirs = cmoe_state_dict_to_release(cm.state_dict())
    spec = {k[2:]: s for k, s in release_layout(TINY)["model_2.safetensors"].items()
            if k.startswith("0.")}
    assert {k: tuple(v.shape) for k, v in theirs.items()} == spec  # incl. the unused heads
    assert not theirs["conv_out_second.weight"].any()
    back = cmoe_state_dict_from_release(theirs)
    assert back.keys() == cm.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in cm.state_dict().items())
    fast = FastCMoE(64, embed_dim=32, num_base_experts=4, num_leaders=8, backend="torch")
    fast.load_state_dict(back, strict=True)
    assert "conv_out_second.weight" not in cmoe_state_dict_to_release(cm.state_dict(),
                                                                      fill_unused=False)


def test_cmoe_from_release_file_prefix_and_errors():
    gen = torch.Generator().manual_seed(0)
    model2 = random_tensors(release_layout(TINY)["model_2.safetensors"], gen)
    lvl2 = cmoe_state_dict_from_release(model2, prefix="1.")
    cm = CMoE(TINY.level_channels[1], TINY.embed_dim, TINY.num_base_experts, TINY.num_leaders)
    cm.load_state_dict(lvl2, strict=True)
    assert torch.equal(cm.branches[0].router.weight, model2["1.MoEs.0.gate.gate.weight"])
    bad = {k: v for k, v in model2.items() if k.startswith("0.") and "pre.0" not in k}
    bad["0.surprise"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        cmoe_state_dict_from_release(bad, prefix="0.")
    assert "0.MoEs.0.pre.0.weight" in str(e.value) and "0.surprise" in str(e.value)
    with pytest.raises(ValueError, match="branches.0.post.weight"):
        cmoe_state_dict_to_release({k: v for k, v in cm.state_dict().items()
                                    if k != "branches.0.post.weight"})


# ----------------------------------------------------------------------------- CLI
def test_convert_release_then_eval_and_predict(tmp_path, capsys):
    from unimmad.engine.demo import make_demo_data
    write_release(tmp_path / "epoch_199")
    write_backbone(tmp_path / "wrn.safetensors")
    out = tmp_path / "converted"
    assert main(["convert-release", str(tmp_path / "epoch_199"), "--backbone-weights",
                 str(tmp_path / "wrn.safetensors"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped as unused: conv_out_second (6 tensors), layer4" in err
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "unimmad-weights" and meta["format_version"] == 1
    assert meta["files"]["model.safetensors"]["bytes"] == os.path.getsize(out / "model.safetensors")
    assert meta["model_config"]["map_mode"] == "joint"
    assert meta["model_config"]["backbone_weights"] is None  # its weights are in the file
    assert meta["source"]["backbone_weights"] == str(tmp_path / "wrn.safetensors")
    direct = load_release_checkpoint(tmp_path / "epoch_199", tmp_path / "wrn.safetensors")
    saved = load_file(str(out / "model.safetensors"))
    assert saved.keys() == direct.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in direct.state_dict().items())

    paths = make_demo_data(str(tmp_path / "data"), size=64, train_per_class=1, test_good=2,
                           test_bad=2)
    run = {"data": {"test": [{"name": "mvtec3d", "root": paths["mvtec3d"]}],
                    "preprocess": {"depth_fill": "mean", "depth_norm": "center"}},
           "eval": {"overlays": 0, "out_dir": str(tmp_path / "eval"), "batch_size": 4}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert main(["eval", "--checkpoint", str(out), "--config", str(tmp_path / "run.json")]) == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res and (tmp_path / "eval" / "results.md").exists()
    d = os.path.join(paths["mvtec3d"], "plate", "test", "color")
    assert main(["predict", "--checkpoint", str(out), "--out", str(tmp_path / "pred"),
                 f"{d}/rgb/000.png,{d}/xyz/000.tiff"]) == 0
    assert len(open(tmp_path / "pred" / "scores.csv").read().splitlines()) == 2
    # a corrupted weights file is refused
    with open(out / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    assert main(["eval", "--checkpoint", str(out), "--config", str(tmp_path / "run.json")]) == 2
    assert "SHA-256" in capsys.readouterr().err


def test_convert_release_reports_bad_folder(tmp_path, capsys):
    write_release(tmp_path / "ck", edit=_drop("model_1.safetensors", "stem.4.running_mean"))
    write_backbone(tmp_path / "wrn.safetensors")
    assert main(["convert-release", str(tmp_path / "ck"), "--backbone-weights",
                 str(tmp_path / "wrn.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "model_1.safetensors: stem.4.running_mean" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # never written over the release's own files
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()
    for out in (tmp_path / "ck", tmp_path / "ck" / "."):
        assert main(["convert-release", str(tmp_path / "ck"), "--backbone-weights",
                     str(tmp_path / "wrn.safetensors"), "--out", str(out)]) == 2
        assert "release folder itself" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"foreign")
    assert main(["convert-release", str(tmp_path / "ck"), "--backbone-weights",
                 str(tmp_path / "wrn.safetensors"), "--out", str(other)]) == 2
    assert "not a unimmad checkpoint; refusing to replace it" in capsys.readouterr().err
    assert (other / "model.safetensors").read_bytes() == b"foreign"
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before


# ----------------------------------------------------------------------------- structure
def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean.double(), bn.running_var.double(),
                        bn.weight.detach().double(), bn.bias.detach().double(), False, 0.0, bn.eps)


@pytest.mark.parametrize("mode", ["down", "same", "up"])
def test_alignment_blocks_follow_spec(mode):
    """SPEC §1 step 1 written with functional ops in float64: strides, paddings, biases and
    shortcuts of the three level-alignment blocks (eval-mode BatchNorm, random statistics)."""
    from unimmad.models.encoder import BasicBlock
    # "same" with cin == cout, as level 2 (512 → 512): still a 1×1 conv shortcut, not identity
    cin, cout, size = {"down": (8, 12, 16), "same": (12, 12, 16), "up": (16, 12, 8)}[mode]
    blk = BasicBlock(cin, cout, mode).eval()
    for bn in (blk.bn1, blk.bn2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_()
    x = torch.randn(2, cin, size, size, dtype=torch.float64)
    w = {k: v.detach().double() for k, v in blk.state_dict().items()}
    if mode == "up":
        y = F.conv_transpose2d(x, w["conv1.weight"], stride=2)
        short = F.conv_transpose2d(x, w["shortcut.weight"], w["shortcut.bias"], stride=2, padding=1)
    else:
        s = 2 if mode == "down" else 1
        y = F.conv2d(x, w["conv1.weight"], stride=s, padding=1)
        short = F.conv2d(x, w["shortcut.weight"], stride=s)
        assert blk.shortcut.bias is None
    y = F.conv2d(torch.relu(_bn(y, blk.bn1)), w["conv2.weight"], padding=1)
    ref = torch.relu(_bn(y, blk.bn2) + short)
    with torch.no_grad():
        out = blk.double()(x)
    assert out.shape == ref.shape == (2, cout) + ((size * 2,) * 2 if mode == "up" else
                                                  (size // 2,) * 2 if mode == "down" else (size,) * 2)
    assert float((out - ref).norm() / ref.norm()) < 1e-12


@pytest.mark.parametrize("autocast, low", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_embedding_autocast_runs_the_stem_alone_in_low_precision(autocast, low):
    # The authors' runs autocast only their input stem (accelerate's mixed precision on
    # the one prepared module their code calls itself): embedding_autocast reproduces it.
    torch.manual_seed(0)
    cfg = TINY.replace(embedding_autocast=autocast)
    model = UniMMAD(cfg).eval()
    emb = model.embedding
    with torch.no_grad():
        for m in emb.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    x = torch.randn(2, cfg.input_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        y = emb(x)
    assert y.dtype == torch.float32
    # every value is a low-precision number: the module's last op ran in that dtype
    assert torch.equal(y, y.to(low).float())

    # float64 reference rounding to the low dtype at every op boundary, as autocast does
    def rnd(t):
        return t.to(low).double()

    def conv(t, c):
        return rnd(F.conv2d(rnd(t), rnd(c.weight.double()), rnd(c.bias.double()), padding=c.padding))

    def bn(t, b):
        return rnd(F.batch_norm(t, b.running_mean.double(), b.running_var.double(),
                                b.weight.double(), b.bias.double(), False, 0.0, b.eps))

    s = emb.stem
    a = (x + emb.embedding).double()
    h = bn(conv(a, s[0]), s[1]).relu()
    h = bn(conv(h, s[3]), s[4]).relu()
    ref = rnd(conv(h, s[6]) + conv(a, emb.shortcut))
    assert_rel(y, ref, TOL["bf16"], f"stem under {autocast} autocast")
    full = UniMMAD(TINY).eval()
    full.load_state_dict(model.state_dict())
    with torch.no_grad():
        y32 = full.embedding(x)
    # the default stays in fp32: the same reference without rounding
    def conv64(t, c):
        return F.conv2d(t, c.weight.double(), c.bias.double(), padding=c.padding)

    def bn64(t, b):
        return F.batch_norm(t, b.running_mean.double(), b.running_var.double(),
                            b.weight.double(), b.bias.double(), False, 0.0, b.eps)

    h = bn64(conv64(a, s[0]), s[1]).relu()
    h = bn64(conv64(h, s[3]), s[4]).relu()
    assert_rel(y32, conv64(h, s[6]) + conv64(a, emb.shortcut), TOL["fp32"], "fp32 stem")
    assert not torch.equal(y32, y32.to(low).float())
    # the rest of the model runs in the model's dtype
    images = torch.randn(2, cfg.max_modalities, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        out = model(images, torch.tensor([2, 1]))
    assert all(p.dtype == torch.float32 for p in out.predictions)
    assert torch.isfinite(out.anomaly_map).all()


def test_embedding_autocast_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="embedding_autocast"):
        TINY.replace(embedding_autocast="bf16")
    cfg = TINY.replace(embedding_autocast="bfloat16")
    assert UniMMADConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert UniMMADConfig.from_dict({k: v for k, v in TINY.to_dict().items()
                                    if k != "embedding_autocast"}).embedding_autocast is None


def test_problems_name_each_parts_file_with_the_release_names_by_default():
    """``names`` labels the entries of the error; a part it does not name is labelled with
    the release's file name (model.safetensors / model_1 / model_2)."""
    sd = UniMMAD(TINY).state_dict()
    parts = to_release_state_dicts(sd, TINY)
    parts["encoder"].pop("0.model.layer2.0.bn1.running_var")
    parts["embedding"].pop("shortcut.weight")
    parts["cmoe"].pop("0.conv_cond.0.1.num_batches_tracked")
    with pytest.raises(ReleaseCheckpointError) as e:
        from_release_state_dicts(parts, TINY, names={"encoder": "pytorch_model.bin"})
    msg = str(e.value)
    assert "pytorch_model.bin: 0.model.layer2.0.bn1.running_var" in msg
    assert "model_1.safetensors: shortcut.weight" in msg
    assert "model_2.safetensors: 0.conv_cond.0.1.num_batches_tracked" in msg
    with pytest.raises(ReleaseCheckpointError) as e:
        from_release_state_dicts(parts, TINY)
    assert "model.safetensors: 0.model.layer2.0.bn1.running_var" in str(e.value)


def test_load_report_summary_names_files_counts_and_skips():
    from unimmad.release import ReleaseLoadReport
    r = ReleaseLoadReport(
        checkpoint_dir="/ck", backbone_weights="/wrn.safetensors",
        files={"encoder": "/ck/model.safetensors", "embedding": "/ck/model_1.safetensors",
               "cmoe": "/ck/pytorch_model_2.bin"},
        loaded={"encoder": 120, "embedding": 7},
        skipped=["model.safetensors: 0.model.layer4.0.conv1.weight",
                 "model.safetensors: 0.model.layer4.0.bn1.weight",
                 "model_2.safetensors: 1.conv_out_second.0.weight",
                 "model_2.safetensors: 2.prior_head.0.weight"],
        not_read=["random_states_0.pkl"])
    assert r.summary() == (
        "release checkpoint /ck: read model.safetensors (120 tensors), model_1.safetensors "
        "(7 tensors), pytorch_model_2.bin (0 tensors); prior generator from /wrn.safetensors; "
        "skipped as unused: conv_out_second (1 tensors), layer4 (2 tensors), prior_head "
        "(1 tensors); not read: random_states_0.pkl")
    empty = ReleaseLoadReport(checkpoint_dir="/ck", backbone_weights="/w")
    assert empty.summary().endswith("skipped as unused: none; not read: nothing")
