import warnings

import pytest
import torch
from safetensors.torch import save_file

from unimmad import UniMMAD, UniMMADConfig, WideResNet, load_backbone_weights, wide_resnet50_2
from unimmad.models.backbone import PriorGenerator, read_state_dict


def test_full_wide_resnet50_2_parameter_count():
    # torchvision.models.wide_resnet50_2 has 68,883,240 parameters.
    assert sum(p.numel() for p in wide_resnet50_2(include_top=True).parameters()) == 68_883_240


def test_trunk_has_torchvision_keys_and_no_layer4():
    keys = set(wide_resnet50_2().state_dict())
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
              "layer2.3.conv2.weight", "layer3.5.bn3.num_batches_tracked",
              "layer3.0.downsample.1.bias"):
        assert k in keys
    assert not any(k.startswith(("layer4.", "fc.")) for k in keys)


def test_trunk_levels_shapes():
    net = WideResNet((1, 1, 1), base_planes=8).eval()
    f1, f2, f3 = net(torch.randn(2, 3, 64, 64))
    assert f1.shape == (2, 32, 16, 16) and f2.shape == (2, 64, 8, 8) and f3.shape == (2, 128, 4, 4)


def test_classify_needs_the_top_and_gives_logits():
    torch.manual_seed(0)
    full = _small_full().eval()
    with torch.no_grad():
        logits = full.classify(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    trunk = WideResNet((1, 1, 1), base_planes=8).eval()
    with pytest.raises(RuntimeError, match="include_top=False"):
        trunk.classify(torch.randn(1, 3, 64, 64))


def _small_full():
    return WideResNet((1, 1, 1, 1), base_planes=8, include_top=True, num_classes=10)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_checkpoint_round_trip(tmp_path, suffix):
    src = _small_full().eval()
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    if suffix == ".pth":
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    else:
        save_file(sd, str(path))
    trunk = WideResNet((1, 1, 1), base_planes=8).eval()
    report = load_backbone_weights(trunk, path)
    assert not report["missing"] and not report["unexpected"] and not report["mismatched"]
    assert any(k.startswith("layer4.") for k in report["ignored"])
    assert any(k.startswith("fc.") for k in report["ignored"])
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(src(x), trunk(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_weights_are_reported(tmp_path):
    sd = _small_full().state_dict()
    trunk = WideResNet((1, 1, 1), base_planes=8)
    missing = {k: v for k, v in sd.items() if k != "layer1.0.conv1.weight"}
    with pytest.raises(ValueError, match=r"missing \(1\).*layer1.0.conv1.weight"):
        load_backbone_weights(trunk, missing)
    extra = dict(sd, **{"head.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected \(1\).*head.weight"):
        load_backbone_weights(trunk, extra)
    wrong = dict(sd, **{"conv1.weight": torch.zeros(8, 3, 3, 3)})
    with pytest.raises(ValueError, match=r"mismatched.*conv1.weight"):
        load_backbone_weights(trunk, wrong)
    with pytest.warns(UserWarning, match="do not fit"):
        report = load_backbone_weights(trunk, wrong, strict=False)
    assert report["mismatched"]


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        read_state_dict(bad)


def test_model_loads_weights_from_config_and_env(tmp_path, monkeypatch):
    cfg = UniMMADConfig.tiny()
    full = WideResNet((1, 1, 1, 1), base_planes=16, include_top=True)
    path = tmp_path / "imagenet.pth"
    torch.save(full.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-init warning when weights are given
        m = UniMMAD(cfg.replace(backbone_weights=str(path)))
    w = full.state_dict()["layer2.0.conv2.weight"]
    assert torch.equal(m.prior_generator.backbone.layer2[0].conv2.weight, w)
    assert torch.equal(m.encoder.layer2[0].conv2.weight, w)
    monkeypatch.setenv("UNIMMAD_BACKBONE_WEIGHTS", str(path))
    m2 = UniMMAD(cfg)
    assert torch.equal(m2.prior_generator.backbone.conv1.weight, full.conv1.weight)
    with pytest.raises(ValueError, match="do not fit"):
        UniMMAD(UniMMADConfig.tiny(backbone_base_planes=8, backbone_weights=str(path)))


def test_random_init_warns(monkeypatch):
    monkeypatch.delenv("UNIMMAD_BACKBONE_WEIGHTS", raising=False)
    with pytest.warns(UserWarning, match="no ImageNet backbone weights"):
        UniMMAD(UniMMADConfig.tiny())


def test_prior_generator_is_frozen():
    pg = PriorGenerator(WideResNet((1, 1, 1), base_planes=8))
    pg.train()
    assert not pg.backbone.training
    assert all(not p.requires_grad for p in pg.parameters())
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    feats = pg(x)
    assert all(not f.requires_grad for f in feats)
    assert all(bool((f >= 0).all()) for f in feats)
