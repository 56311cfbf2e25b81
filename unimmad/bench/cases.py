"""One case factory per op, shared by ``unimmad bench``, the pytest-benchmark suites in
``benchmarks/`` and the GPU scripts (and the tests that need paper-dimension cases): the
same seeded weights and generated inputs everywhere, so numbers from different harnesses
describe the same computation.

Providers (one vocabulary everywhere):

* ``reference`` — the plain PyTorch model / layer / functions of :mod:`unimmad` (the
  paper's formulation);
* ``torch`` — the fast path in stock torch ops (:mod:`kernels`, ``backend="torch"``);
* ``triton`` — the fast path on the Triton kernels (``backend="triton"``, CUDA);
* ``compile`` — ``torch.compile`` of the reference.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import torch

import kernels
from kernels import FastCMoE

from .. import scoring
from ..config import UniMMADConfig
from ..losses import decompression_loss
from ..models.cmoe import CMoE
from ..models.model import UniMMAD

__all__ = ["PROVIDERS", "FAST_PROVIDERS", "PAPER_LEVELS", "fast_provider", "check_provider",
           "preset_config", "model_inputs", "build_model", "cmoe_case", "level_case",
           "cmoe_module", "amap_case", "feature_bytes", "loss_bytes", "map_and_score",
           "loss_step", "TILE_CASE", "conv_tile_case", "stream_tile_case"]

PROVIDERS = ("reference", "torch", "triton", "compile")
FAST_PROVIDERS = ("torch", "triton")
#: Paper dimensions per level: ``level → (channels, side)`` at 256² inputs.
PAPER_LEVELS: Dict[int, Tuple[int, int]] = {
    lvl: cs for lvl, cs in enumerate(zip(UniMMADConfig().level_channels,
                                          UniMMADConfig().level_sizes), start=1)}


def fast_provider(device) -> str:
    """The fast provider ``backend="auto"`` picks on ``device``: ``triton`` on CUDA, else
    ``torch``."""
    return "triton" if torch.device(device).type == "cuda" else "torch"


def check_provider(provider: str, allowed=PROVIDERS) -> str:
    if provider not in allowed:
        raise ValueError(f"provider must be one of {tuple(allowed)}, got {provider!r}")
    return provider


def preset_config(name: str, image_size: Optional[int] = None) -> UniMMADConfig:
    """``"paper"`` (the paper's dimensions) or ``"tiny"`` (the test preset), optionally at
    another input side."""
    if name == "paper":
        cfg = UniMMADConfig()
    elif name == "tiny":
        cfg = UniMMADConfig.tiny()
    else:
        raise ValueError(f"unknown preset {name!r} (paper | tiny)")
    return cfg.replace(image_size=image_size) if image_size else cfg


# ----------------------------------------------------------------------------- model
def model_inputs(cfg: UniMMADConfig, batch: int, modalities: int, seed: int = 0,
                 dtype=torch.float32, device="cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """Generated images ``[B, M_max, 3, S, S]`` (zero past ``modalities``) and counts."""
    g = torch.Generator().manual_seed(seed)
    S, M = cfg.image_size, cfg.max_modalities
    images = torch.zeros(batch, M, 3, S, S)
    images[:, :modalities] = torch.randn(batch, modalities, 3, S, S, generator=g)
    nm = torch.full((batch,), modalities, dtype=torch.long)
    return images.to(device=device, dtype=dtype), nm.to(device)


def build_model(cfg: UniMMADConfig, seed: int, dtype, device,
                provider: str = "reference", cache: str = "none",
                cache_mb: Optional[float] = None) -> torch.nn.Module:
    """The benchmarked model in eval mode, the same weights in every process (seeded
    init): the reference, :func:`unimmad.accelerate` on the ``torch`` or ``triton``
    backend with the folded-kernel memory policy ``cache`` (``cache_mb`` for
    ``"bounded"``), or ``torch.compile`` of the reference."""
    check_provider(provider)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone init is expected here
        model = UniMMAD(cfg)
    model = model.to(device=device, dtype=dtype).eval()
    if provider in FAST_PROVIDERS:
        kernels.accelerate(model, backend=provider, cache=cache, cache_mb=cache_mb)
    elif provider == "compile":
        model = torch.compile(model)
    return model


# ----------------------------------------------------------------------------- C-MoE
def cmoe_case(cfg: UniMMADConfig, level: int, units: int, samples: Optional[int] = None,
              seed: int = 0, dtype=torch.float32, device="cpu"):
    """A reference C-MoE of ``cfg``'s level ``level`` (1-3, seeded weights) and inputs with
    ``units`` units spread over ``samples`` samples (default one unit per sample; units of
    a sample are adjacent): ``(module, general [B, C, S, S], prior [U, C, S, S], uts [U])``."""
    C, S = cfg.level_channels[level - 1], cfg.level_sizes[level - 1]
    samples = samples or units
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = CMoE(C, cfg.embed_dim, cfg.num_base_experts, cfg.num_leaders, cfg.top_k,
                  cfg.cmoe_kernel_sizes, cfg.router_temperature, cfg.base_expert_std,
                  cfg.leader_std, cfg.z_loss_weight).to(device=device, dtype=dtype)
    uts = (torch.arange(units) * samples // units).to(device)
    general = torch.randn(samples, C, S, S, generator=g).to(device=device, dtype=dtype)
    prior = torch.randn(units, C, S, S, generator=g).to(device=device, dtype=dtype)
    return module, general, prior, uts


def level_case(level: int, units: int, samples: Optional[int] = None, seed: int = 0,
               dtype=torch.float32, device="cpu"):
    """:func:`cmoe_case` at the paper's dimensions (:data:`PAPER_LEVELS`)."""
    return cmoe_case(UniMMADConfig(), level, units, samples, seed, dtype, device)


def cmoe_module(reference: CMoE, provider: str, cache: str = "none",
                cache_mb: Optional[float] = None) -> torch.nn.Module:
    """The layer a provider runs: the reference itself, a :class:`kernels.FastCMoE` copy on
    the ``torch`` / ``triton`` backend (memory policy ``cache``), or ``torch.compile`` of
    the reference."""
    check_provider(provider)
    if provider in FAST_PROVIDERS:
        return FastCMoE.from_reference(reference, backend=provider, cache=cache,
                                       cache_mb=cache_mb)
    if provider == "compile":
        return torch.compile(reference)
    return reference


# ----------------------------------------------------------------------------- tiles
#: Shapes that leave a partial tile in every dimension of every autotune configuration:
#: 11 × 13 = 143 pixels, 24 input and 40 output channels (no size a multiple of 16; small
#: enough for the interpreter to run every configuration in CI).
TILE_CASE = {"pixels": (11, 13), "ci": 24, "co": 40}


def conv_tile_case(k: int = 5, dtype=torch.float32, device="cpu", seed: int = 0):
    """Inputs of the per-job convolution at :data:`TILE_CASE`: ``(x [2, Ci, H, W]
    channels-last, bank [3, Co, k·k·Ci] (Triton layout, scaled for unit-variance outputs),
    job_sample, job_weight [2], output gradient [2, Co, H, W])``; the jobs read the samples
    and weights out of order."""
    g = torch.Generator().manual_seed(seed)
    (h, w), ci, co = TILE_CASE["pixels"], TILE_CASE["ci"], TILE_CASE["co"]
    x = torch.randn(2, ci, h, w, generator=g)
    bank = torch.randn(3, co, k * k * ci, generator=g) / (k * ci ** 0.5)
    grad = torch.randn(2, co, h, w, generator=g)
    js, jw = torch.tensor([1, 0]), torch.tensor([2, 0])
    to = dict(device=device, dtype=dtype)
    cl = torch.channels_last
    return (x.to(**to).contiguous(memory_format=cl), bank.to(**to), js.to(device),
            jw.to(device), grad.to(**to).contiguous(memory_format=cl))


def stream_tile_case(dtype=torch.float32, device="cpu", channels_last: bool = False,
                     seed: int = 0):
    """Priors, predictions and ``unit_to_sample`` of 3 units (2 samples) on two levels with
    partial pixel and channel tiles (24 channels at 11 × 13, 40 at 5 × 7), cosines spread
    over (−1, 1)."""
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    pri, pre = [], []
    for c, (h, w) in ((TILE_CASE["ci"], TILE_CASE["pixels"]), (TILE_CASE["co"], (5, 7))):
        u = torch.randn(3, c, h, w, generator=g)
        p = 2 * torch.rand(3, 1, h, w, generator=g) * u + torch.randn(3, c, h, w, generator=g)
        pri.append(u.to(device=device, dtype=dtype).contiguous(memory_format=fmt))
        pre.append(p.to(device=device, dtype=dtype).contiguous(memory_format=fmt))
    return pri, pre, torch.tensor([0, 1, 1], device=device)


# ----------------------------------------------------------------------------- map
def amap_case(batch: int, modalities: int, levels=None, dtype=torch.float32, device="cpu",
              channels_last: bool = False, seed: int = 0):
    """Priors, predictions (``p = u + noise``, as after training) and ``unit_to_sample`` for
    ``batch`` samples of ``modalities`` units each; ``levels`` a list of ``(channels,
    side)`` (default the paper's)."""
    levels = list(levels or PAPER_LEVELS.values())
    gen = torch.Generator(device=device).manual_seed(seed)   # drawn where they are used
    U = batch * modalities
    pri: List[torch.Tensor] = []
    pre: List[torch.Tensor] = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for c, s in levels:
        u = torch.randn(U, c, s, s, generator=gen, device=device)
        p = u + 0.5 * torch.randn(U, c, s, s, generator=gen, device=device)
        pri.append(u.to(dtype).contiguous(memory_format=fmt))
        pre.append(p.to(dtype).contiguous(memory_format=fmt))
    uts = torch.arange(batch, device=device).repeat_interleave(modalities)
    return pri, pre, uts


def feature_bytes(priors, predictions) -> int:
    """Bytes of u and p at their dtype: what the map must read (once)."""
    return sum(t.numel() * t.element_size() for t in list(priors) + list(predictions))


def loss_bytes(priors, predictions) -> int:
    """Bytes a fused loss forward + backward must move: u and p read in the forward and
    again in the backward, the gradient of p written once."""
    return feature_bytes(priors, predictions) * 2 + sum(
        t.numel() * t.element_size() for t in predictions)


def map_and_score(provider: str, priors, predictions, uts, image_size: int, batch: int,
                  mode: str = "mean", sigma: float = 4.0, kernel_size: int = 15,
                  top_fraction: float = 0.001):
    """One map + score call of ``provider`` (``reference``, ``torch`` or ``triton``):
    ``(map [B, H, W], score [B])``."""
    check_provider(provider, ("reference",) + FAST_PROVIDERS)
    kw = dict(num_samples=batch, mode=mode, sigma=sigma, kernel_size=kernel_size)
    if provider == "reference":
        m = scoring.anomaly_map(priors, predictions, uts, image_size, **kw)
        return m, scoring.image_score(m, top_fraction)
    m = kernels.anomaly_map(priors, predictions, uts, image_size, backend=provider, **kw)
    return m, kernels.image_score(m, top_fraction, backend=provider)


def loss_step(provider: str, priors, predictions, uts) -> torch.Tensor:
    """L_Dec forward + backward of ``provider``; ``predictions`` must require grad."""
    check_provider(provider, ("reference",) + FAST_PROVIDERS)
    if provider == "reference":
        loss, _ = decompression_loss(priors, predictions, uts)
    else:
        loss, _ = kernels.decompression_loss(priors, predictions, uts, backend=provider)
    loss.backward()
    return loss
