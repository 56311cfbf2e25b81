import pytest

from unimmad import UniMMADConfig


def test_paper_defaults():
    cfg = UniMMADConfig()
    assert cfg.image_size == 256 and cfg.max_modalities == 4
    assert cfg.level_channels == (256, 512, 1024)
    assert cfg.level_sizes == (64, 32, 16)
    assert (cfg.embed_dim, cfg.num_base_experts, cfg.num_leaders, cfg.top_k) == (256, 8, 32, 2)
    assert cfg.cmoe_kernel_sizes == (1, 3, 5)
    assert cfg.focal_gamma == 2.0 and cfg.blur_sigma == 4.0 and cfg.blur_kernel_size == 15
    assert cfg.map_mode == "mean" and cfg.moe_anneal == "quadratic" and cfg.inter_modal_prior


def test_tiny_preset_and_round_trip():
    cfg = UniMMADConfig.tiny(top_k=1)
    assert cfg.image_size == 64 and cfg.top_k == 1
    assert UniMMADConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("changes, match", [
    ({"image_size": 100}, "divisible by 32"),
    ({"top_k": 40}, "top_k"),
    ({"map_mode": "max"}, "map_mode"),
    ({"moe_anneal": "cosine"}, "moe_anneal"),
    ({"cmoe_kernel_sizes": (2,)}, "odd"),
    ({"blur_kernel_size": 14}, "odd"),
    ({"top_fraction": 0.0}, "top_fraction"),
    ({"embed_dim": 0}, "embed_dim"),
])
def test_invalid_config(changes, match):
    with pytest.raises(ValueError, match=match):
        UniMMADConfig(**changes)


def test_unknown_field():
    with pytest.raises(ValueError, match="unknown"):
        UniMMADConfig.from_dict({"imagesize": 3})
