"""Model configuration.

``UniMMADConfig()`` holds the paper's defaults (SPEC §1); every deviation from the paper
or from the authors' public release is a named field here, documented in the README.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Optional, Tuple

__all__ = ["UniMMADConfig", "dataclass_from_dict"]


def dataclass_from_dict(cls, d: dict, where: Optional[str] = None):
    """``cls(**d)`` for a mapping read from a file or the command line: unknown keys are
    refused (named, with the known ones), and every value is checked against its field's
    type hint first (:func:`unimmad.checks.check_type`: booleans are not numbers, numbers
    are finite, strings are not lists).  ``where`` names the section in messages
    (default: the class name), e.g. ``train`` → ``train.lr: expected a number, got str
    'abc'``."""
    from .checks import check_type
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise TypeError(f"{where}: expected a mapping of {cls.__name__} fields, got "
                        f"{type(d).__name__} {d!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(d) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} field(s) {unknown}; known: "
                         f"{', '.join(names)}")
    hints = typing.get_type_hints(cls)
    for k, v in d.items():
        check_type(f"{where}.{k}", v, hints[k])
    try:
        return cls(**d)
    except (TypeError, ValueError) as exc:  # name the fields as the caller knows them
        raise type(exc)(str(exc).replace(f"{cls.__name__}.", f"{where}.")) from None


@dataclass
class UniMMADConfig:
    """All hyper-parameters of :class:`unimmad.UniMMAD`.

    Backbone (WideResNet50-2 by default):
        image_size: side of the square input images (must be divisible by 32).
        max_modalities: modality slots per sample (the paper uses 4).
        backbone_base_planes: planes of the first stage (64 for WRN50-2); stage ``i`` has
            ``base_planes * 2**i`` planes and ``4x`` that many output channels.
        backbone_width_factor: bottleneck width multiplier (2 for *wide* ResNet).
        backbone_layers: bottleneck blocks of layer1..layer3 (layer4 is never built).
        backbone_weights: path of an ImageNet ``.pth``/``.safetensors`` state dict in
            torchvision key layout.  ``None`` reads the ``UNIMMAD_BACKBONE_WEIGHTS``
            environment variable; with neither, random init and a warning.
        encoder_from_pretrained: initialise the trainable general encoder from the same
            weights file as the prior generator.

    Encoder / FCM:
        input_embedding_std: std of the learnable input embedding ``E_in``.
        inter_modal_prior: add each sample's mean raw prior to its encoder features.
        fcm_width: width of the Feature Compression Module (512).
        fcm_kernel_sizes: kernel sizes of the inner multi-scale bottleneck.
        embedding_autocast: ``None`` (default: the input embedding + stem in the model's
            dtype) or ``"bfloat16"`` / ``"float16"``: run that module alone under
            ``torch.autocast`` at this dtype, its output cast back to the input's dtype.
            The authors' runs (accelerate ``mixed_precision="bf16"``) did this with
            ``"bfloat16"``: accelerate autocasts the forward of the modules it prepared, and
            of those their code calls only the input stem itself (trunk, FCM and C-MoEs are
            called as submodules and run in fp32).

    C-MoE:
        embed_dim, num_base_experts, num_leaders, top_k, cmoe_kernel_sizes,
        router_temperature, base_expert_std, leader_std.

    Losses and inference:
        focal_gamma, z_loss_weight, moe_anneal ("quadratic" paper | "linear" release),
        map_mode ("mean" paper eq. 4 | "joint" release), blur_sigma, blur_kernel_size,
        top_fraction (image score = mean of the top ``max(1, floor(H*W*top_fraction))``).
    """

    image_size: int = 256
    max_modalities: int = 4
    backbone_base_planes: int = 64
    backbone_width_factor: int = 2
    backbone_layers: Tuple[int, int, int] = (3, 4, 6)
    backbone_weights: Optional[str] = None
    encoder_from_pretrained: bool = True

    input_embedding_std: float = 0.02
    inter_modal_prior: bool = True
    fcm_width: int = 512
    fcm_kernel_sizes: Tuple[int, ...] = (1, 3, 5)
    embedding_autocast: Optional[str] = None

    embed_dim: int = 256
    num_base_experts: int = 8
    num_leaders: int = 32
    top_k: int = 2
    cmoe_kernel_sizes: Tuple[int, ...] = (1, 3, 5)
    router_temperature: float = 1.0
    base_expert_std: float = 0.05
    leader_std: float = 0.02

    focal_gamma: float = 2.0
    z_loss_weight: float = 1e-4
    moe_anneal: str = "quadratic"
    map_mode: str = "mean"
    blur_sigma: float = 4.0
    blur_kernel_size: int = 15
    top_fraction: float = 0.001

    def __post_init__(self) -> None:
        from .checks import check_int
        for name in ("backbone_layers", "fcm_kernel_sizes", "cmoe_kernel_sizes"):
            v = getattr(self, name)
            if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
                raise TypeError(f"UniMMADConfig.{name} must be a list or tuple of ints, got {v!r}")
            setattr(self, name, tuple(check_int(f"UniMMADConfig.{name}[{i}]", k)
                                      for i, k in enumerate(v)))
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def level_channels(self) -> Tuple[int, int, int]:
        """Output channels of backbone layer1..layer3 (256, 512, 1024 for WRN50-2)."""
        p = self.backbone_base_planes
        return (4 * p, 8 * p, 16 * p)

    @property
    def level_sizes(self) -> Tuple[int, int, int]:
        """Spatial side of the three feature levels (64, 32, 16 at 256²)."""
        s = self.image_size
        return (s // 4, s // 8, s // 16)

    @property
    def input_channels(self) -> int:
        """Channels seen by the general encoder (3 per modality slot)."""
        return 3 * self.max_modalities

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides) -> "UniMMADConfig":
        """A small preset for fast tests and demos (64² images, narrow widths)."""
        base = dict(
            image_size=64,
            backbone_base_planes=16,
            backbone_layers=(1, 1, 1),
            fcm_width=96,
            embed_dim=32,
            num_base_experts=4,
            num_leaders=8,
        )
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> "UniMMADConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: Optional[str] = None) -> "UniMMADConfig":
        """Fields from a mapping (unknown keys and wrong types refused, named with
        ``where``, e.g. ``"model"``)."""
        return dataclass_from_dict(cls, d, where)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        from .checks import check_real
        for name in ("encoder_from_pretrained", "inter_modal_prior"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"UniMMADConfig.{name} must be True or False, got "
                                f"{getattr(self, name)!r}")
        if self.backbone_weights is not None and not isinstance(self.backbone_weights,
                                                                (str, os.PathLike)):
            raise TypeError(f"UniMMADConfig.backbone_weights must be None or a path, got "
                            f"{self.backbone_weights!r}")
        for name, low, low_open, high in (
                ("input_embedding_std", 0.0, False, None), ("router_temperature", 0.0, True, None),
                ("base_expert_std", 0.0, False, None), ("leader_std", 0.0, False, None),
                ("focal_gamma", 0.0, False, None), ("z_loss_weight", 0.0, False, None),
                ("blur_sigma", 0.0, True, None), ("top_fraction", 0.0, True, 1.0)):
            check_real(f"UniMMADConfig.{name}", getattr(self, name), low=low,
                       low_open=low_open, high=high)

        def pos(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"UniMMADConfig.{name} must be a positive int, got {v!r}")

        for name in ("image_size", "max_modalities", "backbone_base_planes",
                     "backbone_width_factor", "fcm_width", "embed_dim",
                     "num_base_experts", "num_leaders", "top_k", "blur_kernel_size"):
            pos(name)
        if self.image_size % 32:
            raise ValueError(
                f"UniMMADConfig.image_size must be divisible by 32 (the encoder compresses "
                f"to 1/32 of the input), got {self.image_size}")
        if len(self.backbone_layers) != 3 or min(self.backbone_layers) < 1:
            raise ValueError(
                f"UniMMADConfig.backbone_layers needs 3 positive block counts, got "
                f"{self.backbone_layers}")
        if self.top_k > self.num_leaders:
            raise ValueError(
                f"UniMMADConfig.top_k ({self.top_k}) cannot exceed num_leaders "
                f"({self.num_leaders})")
        for name in ("fcm_kernel_sizes", "cmoe_kernel_sizes"):
            ks = getattr(self, name)
            if not ks or any(k < 1 or k % 2 == 0 for k in ks):
                raise ValueError(f"UniMMADConfig.{name} must be odd positive sizes, got {ks}")
        if self.fcm_width // len(self.fcm_kernel_sizes) < 2:
            raise ValueError("UniMMADConfig.fcm_width is too small for its kernel sizes")
        if self.embedding_autocast not in (None, "bfloat16", "float16"):
            raise ValueError(
                f"UniMMADConfig.embedding_autocast must be None, 'bfloat16' or 'float16', got "
                f"{self.embedding_autocast!r}")
        if self.moe_anneal not in ("quadratic", "linear"):
            raise ValueError(
                f"UniMMADConfig.moe_anneal must be 'quadratic' or 'linear', got "
                f"{self.moe_anneal!r}")
        if self.map_mode not in ("mean", "joint"):
            raise ValueError(
                f"UniMMADConfig.map_mode must be 'mean' or 'joint', got {self.map_mode!r}")
        if self.blur_kernel_size % 2 == 0:
            raise ValueError(
                f"UniMMADConfig.blur_kernel_size must be odd, got {self.blur_kernel_size}")
        if not self.blur_sigma > 0:
            raise ValueError(f"UniMMADConfig.blur_sigma must be > 0, got {self.blur_sigma}")
        if not 0 < self.top_fraction <= 1:
            raise ValueError(
                f"UniMMADConfig.top_fraction must be in (0, 1], got {self.top_fraction}")
        if not self.router_temperature > 0:
            raise ValueError("UniMMADConfig.router_temperature must be > 0")
