import io

import pytest
import torch

from unimmad import CMoE, UniMMAD, UniMMADConfig, pack_units


def tiny_model(**overrides):
    return UniMMAD(UniMMADConfig.tiny(**overrides))


def batch(num_modalities, size=64):
    nm = torch.tensor(num_modalities)
    images = torch.randn(len(num_modalities), 4, 3, size, size)
    images[torch.arange(4)[None, :].expand(len(nm), 4) >= nm[:, None]] = 0
    return images, nm


def test_pack_units():
    uts, slot = pack_units(torch.tensor([2, 1, 4]), 4)
    assert uts.tolist() == [0, 0, 1, 2, 2, 2, 2]
    assert slot.tolist() == [0, 1, 0, 0, 1, 2, 3]


def test_mixed_modality_counts_shapes():
    m = tiny_model().eval()
    images, nm = batch([1, 2, 3, 4])
    with torch.no_grad():
        out = m(images, nm)
    assert out.anomaly_map.shape == (4, 64, 64) and out.pred_score.shape == (4,)
    assert out.unit_to_sample.tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    cfg = m.config
    for lvl, (u, p) in enumerate(zip(out.priors, out.predictions)):
        shape = (10, cfg.level_channels[lvl], cfg.level_sizes[lvl], cfg.level_sizes[lvl])
        assert u.shape == shape and p.shape == shape
    for a in out.aux:
        assert all(i.shape == (10, cfg.top_k) for i in a.indices)
    assert torch.isfinite(out.anomaly_map).all()


def test_each_cmoe_runs_once_per_level_for_all_units():
    m = tiny_model().eval()
    calls = []
    for c in m.cmoe:
        c.register_forward_hook(lambda mod, args, out: calls.append(args[1].shape[0]))
    with torch.no_grad():
        m(*batch([4, 1, 3]))
    assert calls == [8, 8, 8]


def test_training_step_gradients():
    m = tiny_model().train()
    images, nm = batch([1, 3, 2])
    total, parts = m.loss(images, nm, sample_weight=torch.tensor([1.0, 10.0, 0.5]),
                          epoch=3, total_epochs=10)
    assert torch.isfinite(total) and total > 0
    torch.testing.assert_close(total, parts["dec"] + parts["moe"])
    assert parts["anneal"] == pytest.approx(0.49)
    total.backward()
    for name, p in m.named_parameters():
        if name.startswith("prior_generator."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad, name
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
            assert p.grad.abs().sum() > 0, name


def test_padding_slots_are_ignored():
    m = tiny_model().eval()
    images, nm = batch([2, 1])
    noisy = images.clone()
    noisy[0, 2:] = torch.randn_like(noisy[0, 2:])
    noisy[1, 1:] = torch.randn_like(noisy[1, 1:])
    with torch.no_grad():
        a, b = m(images, nm), m(noisy, nm)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)


def test_eval_is_deterministic_and_batch_independent():
    m = tiny_model().eval()
    images, nm = batch([2, 4, 1])
    with torch.no_grad():
        a, b = m(images, nm), m(images, nm)
        single = m(images[1:2], nm[1:2])
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)
    torch.testing.assert_close(a.anomaly_map[1:2], single.anomaly_map, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip():
    m = tiny_model().eval()
    images, nm = batch([3, 1])
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = tiny_model().eval()
    m2.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(m(images, nm).anomaly_map, m2(images, nm).anomaly_map,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("flag", [False, True])
def test_inter_modal_prior_flag(flag):
    m = tiny_model(inter_modal_prior=flag, map_mode="joint").eval()
    with torch.no_grad():
        out = m(*batch([2, 3]))
    assert torch.isfinite(out.pred_score).all()


def test_bad_inputs():
    m = tiny_model()
    images, nm = batch([1, 2])
    with pytest.raises(ValueError, match=r"images must be \[B, 4, 3, 64, 64\]"):
        m(images[:, :3], nm)
    with pytest.raises(ValueError, match=r"images must be"):
        m(images[0], nm)
    with pytest.raises(ValueError, match="64×64"):
        m(torch.zeros(2, 4, 3, 96, 96), nm)
    with pytest.raises(ValueError, match=r"num_modalities must lie in \[1, 4\]"):
        m(images, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"num_modalities must lie in \[1, 4\]"):
        m(images, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match=r"num_modalities must be \[B=2\]"):
        m(images, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        m(images, nm.float())
    with pytest.raises(TypeError, match="floating"):
        m(images.long(), nm)
    with pytest.raises(TypeError, match="float64"):
        m(images.double(), nm)
    bad = images.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(bad, nm)
    with pytest.raises(ValueError, match="sample_weight"):
        m.loss(images, nm, sample_weight=torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        m.loss(images, nm, sample_weight=torch.tensor([1.0, -1.0]))
    with pytest.raises(TypeError, match="UniMMADConfig"):
        UniMMAD({"image_size": 64})


def test_precomputed_units_and_no_validation_give_the_same_output():
    m = tiny_model().eval()
    images, nm = batch([3, 1, 2])
    with torch.no_grad():
        a = m(images, nm)
        m.validate_inputs = False
        b = m(images, nm, units=pack_units(nm, 4))
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)


def test_paper_dims_parameter_counts():
    """Release-exact FCM and stem (SPEC §1): the FCM has the authors' 56,760,308 parameters
    (meta tensors: nothing allocated)."""
    with torch.device("meta"):
        m = UniMMAD(UniMMADConfig())
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert n(m.fcm) == 56_760_308
    assert n(m.embedding) == 800_946
    assert n(m.embedding) - m.embedding.embedding.numel() == 14_514  # stem + shortcut, biased
    assert n(m.encoder) == n(m.prior_generator) == 24_862_528
    assert n(m.cmoe) == 70_414_624
    assert m.parameter_counts() == {"total": 177_700_934, "trainable": 152_838_406,
                                    "frozen": 24_862_528, "cmoe": 70_414_624}
