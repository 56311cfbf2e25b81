"""Behaviour pinned against independent statements of SPEC §1 (not against the code's own
helpers): each test here fails if the one line that implements the rule changes.

Covers: the Gaussian blur (closed form), the GroupNorm group rule, the inter-modal prior
(mean of the raw priors, per sample), the annealing of L_MoE, the router temperature, each
unit's prior coming from its own modality slot, the L2-normalised priors, the trainer's
cosine schedule and the epoch position it anneals with, and the continual-learning
trainable set.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unimmad
from unimmad import CMoE, UniMMAD, UniMMADConfig
from unimmad.engine import TrainConfig, Trainer, continual_parameter_names
from unimmad.models.layers import GroupNormReLU, gn_groups
from unimmad.scoring import gaussian_blur, gaussian_kernel1d

from engine_cases import SyntheticSet


# ----------------------------------------------------------------------------- blur
@pytest.mark.parametrize("sigma, ks", [(4.0, 15), (1.5, 7), (0.7, 3)])
def test_gaussian_taps_are_the_closed_form(sigma, ks):
    r = np.arange(ks) - ks // 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    np.testing.assert_allclose(gaussian_kernel1d(sigma, ks, torch.float64).numpy(),
                               g / g.sum(), rtol=1e-12, atol=0)


def test_blur_is_a_zero_padded_2d_gaussian_of_sigma_4():
    x = torch.rand(2, 23, 19, dtype=torch.float64)
    r = np.arange(15) - 7
    g = np.exp(-r ** 2 / 32.0)                        # σ = 4: 2σ² = 32
    k2 = torch.from_numpy(np.outer(g, g) / g.sum() ** 2)
    ref = F.conv2d(x[:, None], k2[None, None], padding=7)[:, 0]
    torch.testing.assert_close(gaussian_blur(x), ref, rtol=1e-12, atol=1e-14)


def test_model_map_uses_the_configured_blur():
    cfg = UniMMADConfig.tiny(blur_sigma=2.5, blur_kernel_size=9)
    torch.manual_seed(0)
    model = UniMMAD(cfg).eval()
    images, nm = torch.randn(2, 4, 3, 64, 64), torch.tensor([2, 1])
    with torch.no_grad():
        out = model(images, nm)
    # the map, recomputed from the model's own features with an independent blur
    sharp = unimmad.anomaly_map(out.priors, out.predictions, out.unit_to_sample, 64, 2,
                                sigma=1e-3, kernel_size=1)
    r = np.arange(9) - 4
    g = np.exp(-r ** 2 / (2 * 2.5 ** 2))
    k2 = torch.from_numpy(np.outer(g, g) / g.sum() ** 2).float()
    ref = F.conv2d(sharp[:, None], k2[None, None], padding=4)[:, 0]
    torch.testing.assert_close(out.anomaly_map, ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- GroupNorm
@pytest.mark.parametrize("channels, groups", [
    (256, 32), (96, 32), (48, 16), (80, 16), (24, 8), (40, 8), (20, 4), (12, 4), (6, 2),
    (10, 2), (3, 1), (7, 1)])
def test_groupnorm_group_rule(channels, groups):
    # SPEC: 32 groups, or the largest of 16, 8, 4, 2, 1 that divides the channels
    assert gn_groups(channels) == groups
    assert GroupNormReLU(channels).norm.num_groups == groups


def test_cmoe_norms_follow_the_rule():
    m = CMoE(20, 24, 3, 5, 2)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.GroupNorm):
            want = next(g for g in (32, 16, 8, 4, 2, 1) if mod.num_channels % g == 0)
            assert mod.num_groups == want, name


# ----------------------------------------------------------------------------- model
def _tiny(**kw):
    torch.manual_seed(0)
    return UniMMAD(UniMMADConfig.tiny(**kw)).eval()


def test_inter_modal_prior_adds_each_samples_mean_raw_prior():
    model = _tiny(inter_modal_prior=True)
    seen = {}
    model.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("enc", o))
    model.prior_generator.register_forward_hook(lambda m, i, o: seen.__setitem__("raw", o))
    model.fcm.register_forward_pre_hook(lambda m, i: seen.__setitem__("fcm_in", i[0]))
    images, nm = torch.randn(3, 4, 3, 64, 64), torch.tensor([1, 3, 2])
    with torch.no_grad():
        model(images, nm)
    owner = [0, 1, 1, 1, 2, 2]                       # units in sample order
    for enc, raw, fin in zip(seen["enc"], seen["raw"], seen["fcm_in"]):
        for b in range(3):
            units = [u for u, s in enumerate(owner) if s == b]
            want = enc[b] + raw[units].mean(0)       # raw priors, not the normalised ones
            torch.testing.assert_close(fin[b], want, rtol=1e-5, atol=1e-6)


def test_inter_modal_prior_off_leaves_the_encoder_features():
    model = _tiny(inter_modal_prior=False)
    seen = {}
    model.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("enc", o))
    model.fcm.register_forward_pre_hook(lambda m, i: seen.__setitem__("fcm_in", i[0]))
    with torch.no_grad():
        model(torch.randn(2, 4, 3, 64, 64), torch.tensor([2, 1]))
    for enc, fin in zip(seen["enc"], seen["fcm_in"]):
        torch.testing.assert_close(fin, enc, rtol=0, atol=0)


def test_each_units_prior_is_its_own_slots_l2_normalised_feature():
    model = _tiny()
    images, nm = torch.randn(2, 4, 3, 64, 64), torch.tensor([3, 2])
    with torch.no_grad():
        out = model(images, nm)
        pairs = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
        for u, (b, slot) in enumerate(pairs):
            raw = model.prior_generator(images[b, slot][None])
            for lvl, r in enumerate(raw):
                want = r[0] / r[0].norm(dim=0, keepdim=True).clamp_min(1e-12)
                torch.testing.assert_close(out.priors[lvl][u], want, rtol=1e-5, atol=1e-6)
                norms = out.priors[lvl][u].norm(dim=0)
                torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, e, total, factor", [
    ("quadratic", 5, 20, 0.75 ** 2), ("quadratic", 0, 20, 1.0), ("quadratic", 20, 20, 0.0),
    ("linear", 5, 20, 0.75), ("linear", 20, 20, 0.001)])
def test_loss_anneals_the_balance_term(mode, e, total, factor):
    model = _tiny(moe_anneal=mode).train()
    images, nm = torch.randn(2, 4, 3, 64, 64), torch.tensor([2, 1])
    torch.manual_seed(1)
    loss, parts = model.loss(images, nm, epoch=e, total_epochs=total)
    assert parts["anneal"] == pytest.approx(factor, rel=1e-12, abs=1e-15)
    assert float(parts["balance"].detach()) > 0
    torch.testing.assert_close(parts["moe"], parts["balance"] * factor)
    torch.testing.assert_close(loss, parts["dec"] + parts["balance"] * factor)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_router_divides_logits_by_the_temperature(temperature):
    cfg = UniMMADConfig.tiny(router_temperature=temperature)
    model = UniMMAD(cfg)
    for cmoe in model.cmoe:
        for branch in cmoe.branches:
            assert branch.temperature == temperature
    branch = model.cmoe[0].branches[0]
    g = torch.randn(5, cfg.embed_dim)
    idx, scores, probs, _ = branch.route(g, 1e-4)
    want = torch.softmax(branch.router(g) / temperature, dim=1)
    torch.testing.assert_close(probs, want)
    top = want.topk(cfg.top_k, dim=1)
    assert torch.equal(idx, top.indices)
    torch.testing.assert_close(scores, top.values / top.values.sum(1, keepdim=True))


# ----------------------------------------------------------------------------- trainer
def _trainer(tmp_path, epochs=2):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=epochs, batch_size=2, samples_per_epoch=6, accelerate=False,
                      device="cpu", progress=False, out_dir=str(tmp_path), lr=1e-3)
    return Trainer(UniMMAD(UniMMADConfig.tiny()), SyntheticSet(6), cfg)


def test_trainer_cosine_schedule_and_anneal_position(tmp_path):
    trainer = _trainer(tmp_path)
    steps_per_epoch = len(trainer.loader)
    total = 2 * steps_per_epoch
    seen = []
    real_loss = trainer.model.loss

    def spy(*args, **kw):
        seen.append((args[3] if len(args) > 3 else kw["epoch"],
                     args[4] if len(args) > 4 else kw["total_epochs"]))
        return real_loss(*args, **kw)

    trainer.model.loss = spy
    trainer._set_train_mode()
    lrs = []
    for epoch in range(2):
        trainer.epoch = epoch
        for batch in trainer.loader:
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.train_step(batch)
    want_lr = [1e-3 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)]
    np.testing.assert_allclose(lrs, want_lr, rtol=1e-9)
    want_pos = [e + i / steps_per_epoch for e in range(2) for i in range(steps_per_epoch)]
    np.testing.assert_allclose([p for p, _ in seen], want_pos, rtol=1e-12)
    assert all(t == 2 for _, t in seen)


def test_continual_trainable_set_is_exactly_the_documented_one():
    model = UniMMAD(UniMMADConfig.tiny())
    names = set(continual_parameter_names(model))
    want = set()
    for lvl, cmoe in enumerate(model.cmoe):
        for n, _ in cmoe.named_parameters():
            parts = n.split(".")
            if (parts[0] in ("key", "query", "cond", "aggregate")      # condition path, aggregation
                    or (parts[0] == "branches" and parts[2] in ("leaders", "router"))):
                want.add(f"cmoe.{lvl}.{n}")
    assert names == want
    assert not any(".base_experts" in n or ".fixed_expert" in n or ".post" in n
                   or ".value" in n for n in names)
    assert not any(n.startswith(("encoder", "fcm", "embedding", "prior_generator"))
                   for n in names)
    leaders = [n for n in names if n.endswith(".leaders")]
    assert len(leaders) == 3 * len(model.config.cmoe_kernel_sizes)
