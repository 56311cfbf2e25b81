"""The UniMMAD model (SPEC §1): prior generator, general encoder + FCM, one C-MoE per level,
anomaly map and image score.  Every batch is packed into units (sample, modality) once; each
C-MoE runs once per level for all units, with no Python loop over samples or modalities.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
from ..config import UniMMADConfig
from ..losses import decompression_loss, moe_anneal_factor
from ..scoring import anomaly_map as reference_anomaly_map
from ..scoring import image_score as reference_image_score
from .backbone import PriorGenerator, build_trunks
from .cmoe import CMoE, CMoEAux
from .encoder import FeatureCompression, InputEmbedding

__all__ = ["UniMMAD", "UniMMADOutput", "pack_units"]


def pack_units(num_modalities: torch.Tensor, max_modalities: int
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Units of a batch: ``(unit_to_sample [U], unit_slot [U])``, samples in order and each
    sample's modalities in slot order (``U = Σ num_modalities``)."""
    if (not isinstance(num_modalities, torch.Tensor) or num_modalities.dim() != 1
            or num_modalities.is_floating_point() or num_modalities.is_complex()
            or num_modalities.dtype == torch.bool):
        raise TypeError(f"num_modalities must be a 1-D integer tensor [B], got "
                        f"{getattr(num_modalities, 'dtype', type(num_modalities).__name__)} "
                        f"{tuple(getattr(num_modalities, 'shape', ()))}")
    if not isinstance(max_modalities, torch.SymInt):     # symbolic under torch.compile
        max_modalities = check_int("max_modalities", max_modalities, low=1)
    B = num_modalities.shape[0]
    device = num_modalities.device
    slots = torch.arange(max_modalities, device=device).expand(B, max_modalities)
    present = slots < num_modalities[:, None]
    unit_to_sample = torch.arange(B, device=device)[:, None].expand(B, max_modalities)[present]
    return unit_to_sample, slots[present]


@dataclass
class UniMMADOutput:
    """What :meth:`UniMMAD.forward` returns.

    priors, predictions: per level ``[U, C_l, H_l, W_l]`` (u_l and p_l).
    unit_to_sample, unit_slot: ``[U]`` sample and modality slot of every unit.
    aux: one :class:`CMoEAux` per level (routing and load-balance loss).
    anomaly_map ``[B, H, W]`` and pred_score ``[B]``: set in eval mode.
    """

    priors: List[torch.Tensor]
    predictions: List[torch.Tensor]
    unit_to_sample: torch.Tensor
    unit_slot: torch.Tensor
    aux: List[CMoEAux]
    anomaly_map: Optional[torch.Tensor] = None
    pred_score: Optional[torch.Tensor] = None


class UniMMAD(nn.Module):
    """Unified multi-modal, multi-class anomaly detector (reference PyTorch model).

    ``forward(images [B, M_max, 3, H, W], num_modalities [B] long)``: sample ``b`` carries
    modalities in slots ``0 .. num_modalities[b]-1``; later slots are ignored (treated as
    zero).  In eval mode the output has ``anomaly_map [B, H, W]`` and ``pred_score [B]``.
    ``loss(...)`` returns ``(total, parts)`` for training.
    """

    def __init__(self, config: Optional[UniMMADConfig] = None):
        super().__init__()
        cfg = config if config is not None else UniMMADConfig()
        if not isinstance(cfg, UniMMADConfig):
            raise TypeError(f"config must be a UniMMADConfig, got {type(cfg).__name__}")
        self.config = cfg
        prior_trunk, encoder_trunk = build_trunks(cfg)
        self.prior_generator = PriorGenerator(prior_trunk)
        self.embedding = InputEmbedding(cfg.input_channels, cfg.image_size, cfg.input_embedding_std,
                                        cfg.embedding_autocast)
        self.encoder = encoder_trunk
        self.fcm = FeatureCompression(cfg.level_channels, cfg.fcm_width, cfg.fcm_kernel_sizes,
                                      cfg.backbone_layers)
        self.cmoe = nn.ModuleList(
            CMoE(c, cfg.embed_dim, cfg.num_base_experts, cfg.num_leaders, cfg.top_k,
                 cfg.cmoe_kernel_sizes, cfg.router_temperature, cfg.base_expert_std,
                 cfg.leader_std, cfg.z_loss_weight)
            for c in cfg.level_channels)
        # Swapped for fused versions by ``unimmad.accelerate``.
        self.anomaly_map_fn = reference_anomaly_map
        self.image_score_fn = reference_image_score
        self.decompression_loss_fn = decompression_loss
        # Input validation synchronises with the device (it reads values); switch it off
        # for CUDA-graph capture or maximum throughput once inputs are known to be good.
        self.validate_inputs = True
        self.check_finite = True

    # --------------------------------------------------------------------------- inputs
    def check_inputs(self, images: torch.Tensor, num_modalities: torch.Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` naming the argument and the expected shape."""
        cfg = self.config
        M, S = cfg.max_modalities, cfg.image_size
        expected = f"[B, {M}, 3, {S}, {S}]"
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor {expected}, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating tensor {expected}, got {images.dtype}")
        if images.dim() != 5 or images.shape[1] != M or images.shape[2] != 3:
            raise ValueError(f"images must be {expected}, got {tuple(images.shape)}")
        if tuple(images.shape[3:]) != (S, S):
            raise ValueError(
                f"images must be {expected}: this model takes {S}×{S} inputs "
                f"(config.image_size), got {tuple(images.shape[3:])}")
        if images.shape[0] == 0:
            raise ValueError("images: the batch is empty")
        if not isinstance(num_modalities, torch.Tensor):
            raise TypeError("num_modalities must be a long tensor [B]")
        if num_modalities.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8,
                                        torch.uint8):
            raise TypeError(f"num_modalities must be an integer tensor [B], got {num_modalities.dtype}")
        if num_modalities.shape != (images.shape[0],):
            raise ValueError(
                f"num_modalities must be [B={images.shape[0]}], got {tuple(num_modalities.shape)}")
        if num_modalities.device != images.device:
            raise ValueError(
                f"num_modalities is on {num_modalities.device} but images on {images.device}")
        param = self.embedding.embedding
        if images.device != param.device:   # before any value is read (meta, other device)
            raise ValueError(f"images are on {images.device} but the model on {param.device}")
        if images.dtype != param.dtype and not torch.is_autocast_enabled(images.device.type):
            raise TypeError(
                f"images are {images.dtype} but the model's parameters {param.dtype}; cast one "
                "of them or run under torch.autocast")
        lo, hi = int(num_modalities.min()), int(num_modalities.max())
        if lo < 1 or hi > M:
            raise ValueError(
                f"num_modalities must lie in [1, {M}] (each sample carries 1..{M} modalities), "
                f"got values in [{lo}, {hi}]")
        if self.check_finite and not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or Inf values")

    def check_units(self, units, num_modalities: torch.Tensor) -> None:
        """``units`` of :meth:`features`: the pair ``(unit_to_sample [U], unit_slot [U])``
        of long tensors on the device of ``num_modalities`` with, on the CPU, every unit a
        modality the sample carries (what :func:`pack_units` gives)."""
        if not isinstance(units, (tuple, list)) or len(units) != 2:
            raise TypeError("units must be the pair (unit_to_sample, unit_slot) of pack_units")
        for name, t in zip(("unit_to_sample", "unit_slot"), units):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.dim() != 1:
                raise TypeError(f"units: {name} must be a 1-D long tensor [U]")
            if t.device != num_modalities.device:
                raise ValueError(f"units: {name} is on {t.device} but num_modalities on "
                                 f"{num_modalities.device}")
        uts, slot = units
        if uts.shape != slot.shape or uts.numel() == 0:
            raise ValueError(f"units: unit_to_sample {tuple(uts.shape)} and unit_slot "
                             f"{tuple(slot.shape)} must be one non-empty length")
        if uts.device.type == "cpu" and not torch.compiler.is_compiling():
            B = num_modalities.shape[0]
            if int(uts.min()) < 0 or int(uts.max()) >= B:
                raise ValueError(f"units: unit_to_sample values must lie in [0, B={B})")
            if int(slot.min()) < 0 or bool((slot >= num_modalities[uts]).any()):
                raise ValueError("units: unit_slot names a modality slot the sample does not "
                                 "carry (slots 0 .. num_modalities - 1)")

    # --------------------------------------------------------------------------- forward
    def features(self, images: torch.Tensor, num_modalities: torch.Tensor,
                 units: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                 validate: Optional[bool] = None) -> UniMMADOutput:
        """Priors, predictions and routing for a batch (no map).  ``units`` — the
        ``pack_units(num_modalities, M)`` pair, precomputed — avoids the host
        synchronisation of packing (for CUDA graphs, and for ``torch.export``, where the
        boolean-mask packing would give data-dependent shapes).  ``validate`` overrides
        ``self.validate_inputs`` for this call (``False``: no check that reads values)."""
        validate = self.validate_inputs if validate is None else validate
        if validate:
            self.check_inputs(images, num_modalities)
        num_modalities = num_modalities.long()
        B, M = images.shape[:2]
        if units is not None and validate:
            self.check_units(units, num_modalities)
        unit_to_sample, unit_slot = units if units is not None else pack_units(num_modalities, M)
        unit_images = images.flatten(0, 1)[unit_to_sample * M + unit_slot]
        raw = self.prior_generator(unit_images)                    # per unit, frozen
        priors = [F.normalize(r, dim=1) for r in raw]

        present = (torch.arange(M, device=images.device) < num_modalities[:, None])
        stacked = (images * present[:, :, None, None, None].to(images.dtype)).flatten(1, 2)
        enc = self.encoder(self.embedding(stacked))
        if self.config.inter_modal_prior:
            counts = num_modalities.to(enc[0].dtype)[:, None, None, None]
            enc = [e + torch.zeros_like(e).index_add_(0, unit_to_sample, r.to(e.dtype)) / counts
                   for e, r in zip(enc, raw)]
        general = self.fcm(enc)
        predictions, aux = [], []
        for cmoe, f, u in zip(self.cmoe, general, priors):
            p, a = cmoe(f, u.to(f.dtype), unit_to_sample)
            predictions.append(p)
            aux.append(a)
        return UniMMADOutput(priors, predictions, unit_to_sample, unit_slot, aux)

    def forward(self, images: torch.Tensor, num_modalities: torch.Tensor,
                units: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> UniMMADOutput:
        out = self.features(images, num_modalities, units)
        if not self.training:
            out.anomaly_map, out.pred_score = self.map_and_score(out, images.shape[0])
        return out

    def map_and_score(self, out: UniMMADOutput, num_samples: int
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(anomaly_map [B, H, W], pred_score [B])`` of the output of :meth:`features`."""
        cfg = self.config
        amap = self.anomaly_map_fn(
            out.priors, out.predictions, out.unit_to_sample, cfg.image_size,
            num_samples=num_samples, mode=cfg.map_mode, sigma=cfg.blur_sigma,
            kernel_size=cfg.blur_kernel_size)
        return amap, self.image_score_fn(amap, cfg.top_fraction)

    # --------------------------------------------------------------------------- training
    def loss(self, images: torch.Tensor, num_modalities: torch.Tensor,
             sample_weight: Optional[torch.Tensor] = None, epoch: float = 0,
             total_epochs: float = 200) -> Tuple[torch.Tensor, Dict[str, object]]:
        """``L = L_Dec + a(epoch)·L_MoE`` (SPEC §1).  Returns ``(total, parts)`` where
        ``parts`` holds ``dec``, ``moe`` (annealed), ``balance`` (un-annealed), ``anneal``,
        ``dec_levels``, ``balance_levels`` and the forward ``output``."""
        # The arguments first: a bad epoch fails before the forward pass, not after it.
        anneal = moe_anneal_factor(epoch, total_epochs, self.config.moe_anneal)
        if self.validate_inputs:
            self.check_inputs(images, num_modalities)
        if sample_weight is not None:
            if not isinstance(sample_weight, torch.Tensor) or sample_weight.shape != (images.shape[0],):
                raise ValueError(
                    f"sample_weight must be a tensor [B={images.shape[0]}], got "
                    f"{getattr(sample_weight, 'shape', type(sample_weight).__name__)}")
            if not sample_weight.is_floating_point():
                raise TypeError(f"sample_weight must be a floating tensor, got {sample_weight.dtype}")
            if sample_weight.device != images.device:
                raise ValueError("sample_weight must be on the device of images")
            if not bool(torch.isfinite(sample_weight).all()) or bool((sample_weight < 0).any()):
                raise ValueError("sample_weight must be finite and non-negative")
        out = self.features(images, num_modalities, validate=False)
        dec, dec_levels = self.decompression_loss_fn(
            out.priors, out.predictions, out.unit_to_sample, sample_weight,
            self.config.focal_gamma)
        balance_levels = [a.balance_loss for a in out.aux]
        balance = torch.stack(balance_levels).mean()
        moe = anneal * balance
        total = dec + moe
        return total, {"dec": dec, "moe": moe, "balance": balance, "anneal": anneal,
                       "dec_levels": dec_levels, "balance_levels": balance_levels,
                       "output": out}

    # --------------------------------------------------------------------------- info
    def parameter_counts(self) -> Dict[str, int]:
        """Parameter counts: total, trainable, frozen (prior generator), C-MoE."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        cmoe = sum(p.numel() for p in self.cmoe.parameters())
        return {"total": total, "trainable": trainable, "frozen": total - trainable,
                "cmoe": cmoe}
