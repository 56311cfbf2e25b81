"""Preprocessing in torch: modality images → the unified ``[M_max, 3, S, S]`` slots.

Per modality (all deterministic; no global state, no randomness):

* **Intensity images** (RGB, endoscopy, and the single-channel gray, infrared, OCT, CT and
  MRI slices, replicated to 3 channels): values in [0, 1] → bilinear resize to ``S×S``
  (antialiased when shrinking) → ImageNet mean/std.  The prior generator is an ImageNet
  network, so the authors' release normalises gray modalities with ImageNet statistics
  too; ``Preprocess(normalize_gray=False)`` keeps gray ones in [0, 1] instead.
* **Depth** (from an organised point cloud's z, a depth PNG or a rendered point cloud):
  invalid points (missing measurements, NaN, background; for organised point clouds the
  rule of :func:`depth_from_xyz`) are **filled** — ``depth_fill="nearest"``
  (default: each invalid pixel takes the depth of the nearest valid pixel, Euclidean
  distance transform; no step at the object border) or ``"mean"`` (the mean valid depth,
  as the release) — then **normalised** over the valid pixels —
  ``depth_norm="standardize"`` (default: ``(d − mean) / std``, unit-free, so metres,
  millimetres and rendered units all land on the scale of the ImageNet-normalised
  channels) or ``"center"`` (``(d − mean) · depth_scale``, the release's rule with
  ``depth_scale=100``, i.e. metres → centimetres) — then resized bilinearly and
  replicated to 3 channels.  With ``depth_fill="mean"``, ``depth_norm="center"`` the
  result equals the release's ``(fg·d + (1−fg)·mean_fg − mean_fg) · 100``.
* **Masks**: binarised (any non-zero value is a defect) then resized with
  ``nearest-exact`` interpolation (no dilation), as float {0, 1}.

Slots past a sample's modality count are zero.
"""
from __future__ import annotations

import numbers

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Preprocess", "ModalityImage", "MODALITY_KINDS", "IMAGENET_MEAN", "IMAGENET_STD",
    "INVALID_POINT_RULES", "depth_from_xyz", "fill_depth", "normalize_depth",
    "process_modality", "process_mask",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Known modality names and how they are preprocessed: "photo" (3-channel photographs),
#: "gray" (single-channel intensity replicated to 3 channels), "depth".
MODALITY_KINDS = {
    "rgb": "photo", "endoscopy": "photo",
    "gray": "gray", "infrared": "gray", "oct": "gray", "ct": "gray",
    "flair": "gray", "t1": "gray", "t1ce": "gray", "t2": "gray",
    "mri": "photo",            # BraTS slices of three sequences stacked as channels (release)
    "depth": "depth",
}

#: Rules for the invalid points of an organised point cloud (:func:`depth_from_xyz`).
INVALID_POINT_RULES = ("any_zero", "all_zero")

DEPTH_FILLS = ("nearest", "mean")
DEPTH_NORMS = ("standardize", "center")


@dataclass(frozen=True)
class Preprocess:
    """Preprocessing settings shared by every reader (see the module docstring).

    Args:
        image_size: side ``S`` of the square output (``UniMMADConfig.image_size``).
        max_modalities: modality slots per sample (``UniMMADConfig.max_modalities``).
        imagenet_normalize: apply ImageNet mean/std to intensity modalities.
        normalize_gray: also to gray (replicated single-channel) modalities.
        depth_fill: ``"nearest"`` or ``"mean"`` fill of invalid depth pixels.
        depth_norm: ``"standardize"`` or ``"center"``.
        depth_scale: multiplier of ``"center"`` (100: metres → centimetres).
    """

    image_size: int = 256
    max_modalities: int = 4
    imagenet_normalize: bool = True
    normalize_gray: bool = True
    depth_fill: str = "nearest"
    depth_norm: str = "standardize"
    depth_scale: float = 100.0

    def __post_init__(self):
        for name in ("image_size", "max_modalities"):
            v = getattr(self, name)
            if (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral)
                    or v < 1):
                raise ValueError(f"Preprocess.{name} must be a positive int, got {v!r}")
            object.__setattr__(self, name, int(v))       # numpy ints become ints
        for name in ("imagenet_normalize", "normalize_gray"):
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"Preprocess.{name} must be True or False, got {v!r}")
            object.__setattr__(self, name, bool(v))
        if (isinstance(self.depth_scale, (bool, np.bool_))
                or not isinstance(self.depth_scale, numbers.Real)):
            raise TypeError(f"Preprocess.depth_scale must be a number > 0, got {self.depth_scale!r}")
        if self.depth_fill not in DEPTH_FILLS:
            raise ValueError(f"Preprocess.depth_fill must be one of {DEPTH_FILLS}, got {self.depth_fill!r}")
        if self.depth_norm not in DEPTH_NORMS:
            raise ValueError(f"Preprocess.depth_norm must be one of {DEPTH_NORMS}, got {self.depth_norm!r}")
        if not np.isfinite(self.depth_scale) or self.depth_scale <= 0:
            raise ValueError(f"Preprocess.depth_scale must be > 0, got {self.depth_scale!r}")

    @classmethod
    def from_config(cls, config, **overrides) -> "Preprocess":
        """Image size and modality slots from a :class:`unimmad.UniMMADConfig`."""
        base = dict(image_size=int(config.image_size), max_modalities=int(config.max_modalities))
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> "Preprocess":
        return replace(self, **changes)


@dataclass
class ModalityImage:
    """One modality of one sample as read from disk (before preprocessing).

    ``data``: float32 ``[H, W, 3]`` in [0, 1] for intensity modalities; float ``[H, W]``
    for depth, with ``valid`` (bool ``[H, W]``) marking measured pixels.
    ``source``: the file it came from (named in errors)."""

    name: str
    data: np.ndarray
    valid: Optional[np.ndarray] = None
    source: str = ""

    @property
    def kind(self) -> str:
        return MODALITY_KINDS.get(self.name, "gray" if self.data.ndim == 2 else "photo")

    @property
    def hw(self) -> Tuple[int, int]:
        return int(self.data.shape[0]), int(self.data.shape[1])


# ----------------------------------------------------------------------------- depth
def depth_from_xyz(xyz: np.ndarray, invalid: str = "any_zero") -> Tuple[np.ndarray, np.ndarray]:
    """``(z [H, W] float64, valid [H, W] bool)`` from an organised point cloud ``[H, W, 3]``.

    A point with a NaN/Inf coordinate is always invalid.  MVTec 3D-AD marks missing
    measurements with (0, 0, 0); ``invalid`` says which zeros make a point invalid:

    * ``"any_zero"`` (default) — a point is valid only when *all three* coordinates are
      non-zero: the rule of the reference implementations (3D-ADS, M3DM and CFM keep the
      points with ``np.all(pc != 0, axis=1)``).
    * ``"all_zero"`` — only the exact (0, 0, 0) points are invalid.

    Real scans essentially never hold an exact 0.0 coordinate away from the missing points,
    so the two rules differ only on synthetic or re-quantised clouds."""
    if invalid not in INVALID_POINT_RULES:
        raise ValueError(f"invalid_points must be one of {INVALID_POINT_RULES}, got {invalid!r}")
    if xyz.ndim != 3 or xyz.shape[2] < 3:
        raise ValueError(f"an organised point cloud must be [H, W, 3], got {xyz.shape}")
    xyz = xyz[..., :3].astype(np.float64)
    finite = np.isfinite(xyz).all(axis=2)
    nonzero = np.where(np.isfinite(xyz), xyz, 0.0) != 0.0
    valid = finite & (nonzero.all(axis=2) if invalid == "any_zero" else nonzero.any(axis=2))
    z = np.where(valid, xyz[..., 2], 0.0)
    return z, valid


def fill_depth(depth: np.ndarray, valid: np.ndarray, mode: str = "nearest") -> np.ndarray:
    """Fill invalid pixels: ``"nearest"`` valid pixel (Euclidean) or the ``"mean"`` valid depth."""
    depth = np.asarray(depth, np.float64)
    if valid.all():
        return depth.copy()
    if not valid.any():
        raise ValueError("depth map has no valid pixel")
    if mode == "mean":
        return np.where(valid, depth, depth[valid].mean())
    if mode != "nearest":
        raise ValueError(f"depth fill must be one of {DEPTH_FILLS}, got {mode!r}")
    from scipy import ndimage
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return depth[tuple(idx)]


def normalize_depth(filled: np.ndarray, valid: np.ndarray, mode: str = "standardize",
                    scale: float = 100.0) -> np.ndarray:
    """Normalise a filled depth map with the statistics of its valid pixels."""
    v = filled[valid] if valid.any() else filled.ravel()
    mean = float(v.mean())
    if mode == "center":
        return (filled - mean) * scale
    if mode != "standardize":
        raise ValueError(f"depth normalisation must be one of {DEPTH_NORMS}, got {mode!r}")
    std = float(v.std())
    return (filled - mean) / (std if std > 1e-12 else 1.0)


# ----------------------------------------------------------------------------- tensors
def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``[C, H, W]`` to ``[C, size, size]`` (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    shrink = x.shape[-2] > size or x.shape[-1] > size
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink)[0]


def process_modality(m: ModalityImage, pre: Preprocess) -> torch.Tensor:
    """One modality → float32 ``[3, S, S]``."""
    S = pre.image_size
    if m.kind == "depth":
        d = np.asarray(m.data, np.float64)
        valid = np.isfinite(d) if m.valid is None else (m.valid & np.isfinite(d))
        if not valid.any():
            raise ValueError(f"{m.source}: depth map has no valid pixel")
        d = np.where(valid, d, 0.0)
        d = normalize_depth(fill_depth(d, valid, pre.depth_fill), valid, pre.depth_norm,
                            pre.depth_scale)
        t = _resize(torch.from_numpy(d.astype(np.float32))[None], S)
        return t.expand(3, S, S).contiguous()
    a = np.asarray(m.data, np.float32)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{m.source}: expected an image [H, W, 3], got {a.shape}")
    t = _resize(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1), S)
    if pre.imagenet_normalize and (m.kind == "photo" or pre.normalize_gray):
        mean = torch.tensor(IMAGENET_MEAN, dtype=t.dtype)[:, None, None]
        std = torch.tensor(IMAGENET_STD, dtype=t.dtype)[:, None, None]
        t = (t - mean) / std
    return t.contiguous()


def process_mask(mask: Optional[np.ndarray], pre: Preprocess) -> torch.Tensor:
    """Mask (any dtype, non-zero = defect; ``None`` = defect-free) → float32 ``[S, S]`` {0, 1}."""
    S = pre.image_size
    if mask is None:
        return torch.zeros(S, S)
    m = torch.from_numpy(np.ascontiguousarray(np.asarray(mask) > 0)).float()
    if tuple(m.shape) != (S, S):
        m = F.interpolate(m[None, None], size=(S, S), mode="nearest-exact")[0, 0]
    return (m > 0.5).float()


def stack_modalities(mods: Sequence[ModalityImage], pre: Preprocess) -> Tuple[torch.Tensor, int]:
    """``(images [max_modalities, 3, S, S], num_modalities)`` with zero padding."""
    if not 1 <= len(mods) <= pre.max_modalities:
        raise ValueError(
            f"a sample needs 1..{pre.max_modalities} modalities, got {len(mods)}")
    from .io import DataReadError

    S = pre.image_size
    out = torch.zeros(pre.max_modalities, 3, S, S)
    for i, m in enumerate(mods):
        try:
            out[i] = process_modality(m, pre)
        except ValueError as e:
            msg = str(e)
            if m.source and msg.startswith(m.source + ": "):
                msg = msg[len(m.source) + 2:]
            raise DataReadError(m.source or "?", msg) from None
    return out, len(mods)
