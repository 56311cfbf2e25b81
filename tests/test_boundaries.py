"""The edges of every documented range: the smallest (or largest) allowed value is
accepted and the next one out is refused, for the model config, the C-MoE, the trainer
config, the scoring and loss arguments and the checkers themselves.  Each pair pins one
bound and whether it is open or closed."""
import math

import numpy as np

import pytest
import torch

from unimmad import CMoE, UniMMADConfig
from unimmad.checks import check_int, check_real
from unimmad.engine import TrainConfig
from unimmad.scoring import gaussian_blur, image_score


# ----------------------------------------------------------------------------- checkers
@pytest.mark.parametrize("kw, ok, bad", [
    (dict(low=0.0), [0.0, 1e300], [-1e-300, -1.0]),
    (dict(low=0.0, low_open=True), [1e-300], [0.0, -1.0]),
    (dict(high=1.0), [1.0, -1e300], [1.0 + 1e-15]),
    (dict(high=1.0, high_open=True), [1.0 - 1e-15], [1.0]),
    (dict(low=-2.0, high=3.0), [-2.0, 3.0, 0.0], [-2.0001, 3.0001]),
    (dict(), [-1e300, 0.0, 5], [math.inf, -math.inf, math.nan]),
])
def test_check_real_bounds(kw, ok, bad):
    for v in ok:
        assert check_real("x", v, **kw) == float(v)
    for v in bad:
        with pytest.raises(ValueError, match=r"^x must be a finite number in [\[(]"):
            check_real("x", v, **kw)


def test_check_real_interval_text():
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        check_real("x", 0.0, low=0.0, high=1.0, low_open=True)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        check_real("x", 1.0, low=0.0, high=1.0, high_open=True)
    with pytest.raises(ValueError, match=r"in \(-inf, inf\)"):
        check_real("x", math.nan)


@pytest.mark.parametrize("kw, ok, bad", [
    (dict(low=1), [1, 2 ** 40], [0, -1]),
    (dict(low=0, high=3), [0, 3], [-1, 4]),
    (dict(high=-1), [-1, -5], [0]),
])
def test_check_int_bounds(kw, ok, bad):
    for v in ok:
        assert check_int("n", v, **kw) == v
    for v in bad:
        with pytest.raises(ValueError, match=r"^n "):
            check_int("n", v, **kw)


# ----------------------------------------------------------------------------- config
def _tiny(**kw):
    return UniMMADConfig.tiny().replace(**kw)


@pytest.mark.parametrize("field, ok, bad", [
    ("input_embedding_std", 0.0, -1e-9), ("base_expert_std", 0.0, -1e-9),
    ("leader_std", 0.0, -1e-9), ("focal_gamma", 0.0, -1e-9), ("z_loss_weight", 0.0, -1e-9),
    ("router_temperature", 1e-9, 0.0), ("blur_sigma", 1e-9, 0.0),
    ("top_fraction", 1.0, 1.0 + 1e-9), ("top_fraction", 1e-9, 0.0),
    ("num_base_experts", 1, 0), ("num_leaders", 2, 1), ("top_k", 1, 0),
    ("embed_dim", 1, 0), ("max_modalities", 1, 0), ("blur_kernel_size", 1, 0),
    ("image_size", 32, 48), ("fcm_width", 6, 5),
])
def test_model_config_edges(field, ok, bad):
    """One allowed edge value and the next refused one per field (top_k = 2 of the tiny
    preset needs num_leaders ≥ 2; fcm_width / 3 kernel sizes needs ≥ 2 channels each)."""
    assert getattr(_tiny(**{field: ok}), field) == ok
    with pytest.raises(ValueError, match=field):
        _tiny(**{field: bad})


def test_top_k_may_equal_but_not_exceed_the_leaders():
    assert _tiny(num_leaders=3, top_k=3).top_k == 3
    with pytest.raises(ValueError, match=r"top_k \(4\) cannot exceed num_leaders \(3\)"):
        _tiny(num_leaders=3, top_k=4)


@pytest.mark.parametrize("field, ok, bad", [
    ("backbone_layers", (1, 1, 1), (1, 0, 1)), ("cmoe_kernel_sizes", (1,), (1, 2)),
    ("fcm_kernel_sizes", (3,), (0,)),
])
def test_model_config_sequence_edges(field, ok, bad):
    assert tuple(getattr(_tiny(**{field: ok}), field)) == ok
    with pytest.raises(ValueError, match=field):
        _tiny(**{field: bad})


# ----------------------------------------------------------------------------- C-MoE
@pytest.mark.parametrize("kw, bad", [
    (dict(num_base_experts=1), dict(num_base_experts=0)),
    (dict(num_leaders=1, top_k=1), dict(num_leaders=0, top_k=1)),
    (dict(top_k=1), dict(top_k=0)),
    (dict(num_leaders=2, top_k=2), dict(num_leaders=2, top_k=3)),
    (dict(embed_dim=1), dict(embed_dim=0)),
    (dict(kernel_sizes=(1,)), dict(kernel_sizes=(0,))),
    (dict(temperature=1e-6), dict(temperature=0.0)),
    (dict(base_expert_std=0.0), dict(base_expert_std=-1e-6)),
    (dict(leader_std=0.0), dict(leader_std=-1e-6)),
    (dict(z_loss_weight=0.0), dict(z_loss_weight=-1e-6)),
])
def test_cmoe_argument_edges(kw, bad):
    m = CMoE(4, **dict(dict(embed_dim=8, num_base_experts=2, num_leaders=3, top_k=1), **kw))
    x = torch.randn(1, 4, 3, 3)
    p, aux = m(x, x, torch.zeros(1, dtype=torch.long))
    assert p.shape == (1, 4, 3, 3) and torch.isfinite(p).all()
    with pytest.raises(ValueError):
        CMoE(4, **dict(dict(embed_dim=8, num_base_experts=2, num_leaders=3, top_k=1), **bad))
    with pytest.raises(ValueError):
        CMoE(0, embed_dim=8)


# ----------------------------------------------------------------------------- trainer
@pytest.mark.parametrize("field, ok, bad", [
    ("epochs", 1, 0), ("batch_size", 1, 0), ("checkpoint_every", 1, 0), ("log_every", 1, 0),
    ("num_workers", 0, -1), ("samples_per_epoch", 1, 0), ("lr", 1e-12, 0.0),
    ("weight_decay", 0.0, -1e-12), ("grad_clip", 1e-12, 0.0),
])
def test_train_config_edges(field, ok, bad):
    assert getattr(TrainConfig(**{field: ok}), field) == ok
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: bad})


def test_betas_in_the_half_open_unit_interval():
    assert TrainConfig(betas=(0.0, 0.999999)).betas == (0.0, 0.999999)
    for bad in ((1.0, 0.9), (0.9, 1.0), (-1e-9, 0.9)):
        with pytest.raises(ValueError, match=r"betas\[[01]\]"):
            TrainConfig(betas=bad)


# ----------------------------------------------------------------------------- scoring
def test_scoring_argument_edges():
    m = torch.rand(1, 8, 8)
    assert gaussian_blur(m, sigma=1e-6, kernel_size=1).shape == (1, 8, 8)
    torch.testing.assert_close(gaussian_blur(m, 1e-6, 1), m)      # a 1-tap blur is identity
    for kw in (dict(sigma=0.0), dict(kernel_size=0)):
        with pytest.raises(ValueError):
            gaussian_blur(m, **kw)
    torch.testing.assert_close(image_score(m, 1.0), m.mean((1, 2)))  # all pixels
    with pytest.raises(ValueError, match="top_fraction"):
        image_score(m, 1.0 + 1e-9)
    with pytest.raises(ValueError, match="top_fraction"):
        image_score(m, 0.0)


def test_pack_units_with_one_modality_slot():
    from unimmad import pack_units
    uts, slots = pack_units(torch.tensor([1, 1, 0, 1]), 1)
    assert uts.tolist() == [0, 1, 3] and slots.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="max_modalities"):
        pack_units(torch.tensor([1]), 0)


def test_display_image_undoes_the_imagenet_normalisation():
    from unimmad.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
    from unimmad.engine.visualize import display_image
    rgb = torch.rand(3, 5, 4) * 0.8 + 0.1
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    got = display_image((rgb - mean) / std)
    assert got.dtype == np.uint8 and got.shape == (5, 4, 3)
    np.testing.assert_allclose(got / 255.0, rgb.permute(1, 2, 0).numpy(), atol=1 / 255 + 1e-6)
    depth = torch.linspace(-3, 4, 60).reshape(3, 5, 4)           # not a photo: stretched
    d = display_image(depth)
    assert d.min() == 0 and d.max() == 255


def test_modality_images_names_and_count():
    """The first ``num_modalities`` slots, named by ``names`` and then ``modality <i+1>``
    (1-based, as the docstring says)."""
    from unimmad.engine.visualize import display_image, modality_images
    images = torch.linspace(-2, 2, 4 * 3 * 5 * 4).reshape(4, 3, 5, 4)
    got = modality_images(images, 3, names=["rgb"])
    assert [n for n, _ in got] == ["rgb", "modality 2", "modality 3"]
    for i, (_, img) in enumerate(got):
        assert np.array_equal(img, display_image(images[i]))
    assert [n for n, _ in modality_images(images, 2)] == ["modality 1", "modality 2"]
    assert modality_images(images, 0) == []


def test_image_size_edges():
    from unimmad.scoring import check_image_size
    assert check_image_size(1) == (1, 1)
    assert check_image_size((3, 1)) == (3, 1) and check_image_size([1, 4]) == (1, 4)
    assert check_image_size(torch.Size([2, 5])) == (2, 5)
    assert check_image_size(np.array([7, 1])) == (7, 1)
    # check_int takes 0-d integer tensors (shapes under tracing), not 1-element ones
    from unimmad.checks import check_int
    assert check_int("n", torch.tensor(5)) == 5 and check_int("n", torch.tensor(3, dtype=torch.uint8)) == 3
    with pytest.raises(TypeError, match="n must be an int, got Tensor"):
        check_int("n", torch.tensor([5]))
    # a pair of 0-d numpy arrays: their elements count as the ints they hold
    assert check_image_size((np.array(6), np.array(2, np.int16))) == (6, 2)
    for bad in (0, (0, 3), (3, 0), (-1, 2)):
        with pytest.raises(ValueError, match="image_size"):
            check_image_size(bad)
