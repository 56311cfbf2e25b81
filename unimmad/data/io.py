"""File readers with errors that name the file.

Every reader goes through a well-kept library — Pillow (PNG/JPEG/BMP), tifffile (MVTec 3D-AD
``xyz.tiff``), nibabel (NIfTI), PyYAML (Eyecandies side files), numpy (``.npy``) and, only
for MulSen-AD point clouds, trimesh (STL) — and turns any failure (missing, unreadable,
truncated, wrong shape) into a :class:`DataReadError` whose message starts with the path.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Tuple, Union

import numpy as np

__all__ = [
    "DataError", "DataReadError", "DataLayoutError", "MissingPathError",
    "IMAGE_EXTENSIONS", "read_image", "read_mask", "read_tiff", "read_npy", "read_yaml",
    "read_nifti_slice", "read_nifti_shape", "read_nifti", "read_mesh_vertices",
    "require_dir", "require_file", "list_images", "contained_path", "safe_component",
]

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DataError(Exception):
    """Base of every dataset error; ``path`` is the file or folder at fault."""

    def __init__(self, path: PathLike, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class DataReadError(DataError, OSError):
    """A file exists but cannot be read (unreadable, truncated, wrong content)."""


class DataLayoutError(DataError, ValueError):
    """The files do not fit together (mask size ≠ image size, empty class, bad index)."""


class MissingPathError(DataError, FileNotFoundError):
    """An expected folder or file is missing."""


def require_dir(path: PathLike, what: str = "folder") -> Path:
    p = Path(path)
    if not p.is_dir():
        raise MissingPathError(p, f"{what} not found" if not p.exists() else f"{what} is not a folder")
    return p


def require_file(path: PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise MissingPathError(p, f"{what} not found")
    return p


def contained_path(root: PathLike, entry: Any, *, index: PathLike, where: str,
                   what: str = "path", allow_outside_root: bool = False) -> Path:
    """The file an index entry names, resolved (``..`` and every symlink followed).

    ``entry`` (relative to ``root``, or absolute) comes from an index or split file
    (``index``; ``where`` locates the entry in it, e.g. ``"train/bottle_mvtec[3]"`` or
    ``"line 12"``).  It must be a non-empty string and, unless ``allow_outside_root``, lie
    inside ``root`` once resolved — otherwise :class:`DataLayoutError` names the index, the
    entry and the root.  Returns the resolved path."""
    if not isinstance(entry, str) or not entry.strip():
        raise DataLayoutError(index, f"{where}: {what} must be a non-empty string, got "
                                     f"{type(entry).__name__} {entry!r}")
    if "\0" in entry:
        raise DataLayoutError(index, f"{where}: {what} {entry!r} contains a NUL byte")
    base = Path(root).resolve()
    full = (base / entry).resolve()
    if not allow_outside_root and full != base and base not in full.parents:
        raise DataLayoutError(
            index, f"{where}: {what} {entry!r} resolves to {full}, outside the dataset root "
                   f"{base} (pass allow_outside_root=True to read files outside the root)")
    return full


_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
             *(f"LPT{i}" for i in range(1, 10))}


def safe_component(name: Any, max_length: int = 96) -> str:
    """``name`` as one safe file or folder name (for class, dataset and item names that
    become part of an output path).

    Letters, digits and ``. _ + -`` are kept; every other character (``/``, ``\\``, spaces,
    control characters, non-ASCII) becomes ``_``; a leading ``.`` becomes ``_`` (no ``.``,
    ``..`` or hidden names); Windows device names and over-long names are changed too.
    When anything changed, a short hash of the original is appended, so two different
    names never share a folder.  Unchanged names (``bottle_mvtec``) stay as they are."""
    text = str(name)
    safe = _SAFE_CHARS.sub("_", text)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if not safe or safe.split(".")[0].upper() in _RESERVED or len(safe) > max_length:
        safe = (safe or "_")[:max_length]
        changed = True
    else:
        changed = safe != text
    if changed:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe}-{digest}"
    return safe


def list_images(folder: PathLike, extensions=IMAGE_EXTENSIONS) -> list:
    """Image files of a folder (not recursive), sorted by name (natural order for digits)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions]
    return sorted(files, key=natural_key)


def natural_key(p: PathLike):
    """Sort key putting ``2.png`` before ``10.png``."""
    import re
    name = Path(p).name
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


# ----------------------------------------------------------------------------- images
def _open_pil(path: PathLike):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise MissingPathError(p, "image file not found")
    try:
        img = Image.open(p)
        img.load()                    # decode now: truncated files fail here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataReadError(p, f"cannot read image ({type(e).__name__}: {e})") from None
    return img


def read_image(path: PathLike) -> np.ndarray:
    """An image as float32 ``[H, W, 3]`` in [0, 1] (gray replicated, alpha dropped;
    16-bit images scaled by 65535)."""
    img = _open_pil(path)
    try:
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            a = np.asarray(img, dtype=np.float32) / 65535.0
        elif img.mode == "I":
            a = np.asarray(img, dtype=np.float64)
            a = (a / (65535.0 if a.max() > 255 else 255.0)).astype(np.float32)
        elif img.mode == "F":
            a = np.asarray(img, dtype=np.float32)
        else:
            return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    finally:
        img.close()
    a = np.clip(a, 0.0, 1.0)
    return np.repeat(a[:, :, None], 3, axis=2)


def _pixels(path: PathLike) -> np.ndarray:
    """The stored pixel values, as decoded (no conversion), with the file closed."""
    img = _open_pil(path)
    try:
        return np.asarray(img)
    finally:
        img.close()


def read_gray_raw(path: PathLike) -> np.ndarray:
    """Raw gray values ``[H, W]`` (no scaling), e.g. Eyecandies' 16-bit depth PNGs."""
    a = _pixels(path)
    if a.ndim == 3:
        a = a[..., 0]
    return a


def read_mask(path: PathLike) -> np.ndarray:
    """A ground-truth mask as bool ``[H, W]``: any non-zero value (any channel) is defect."""
    a = _pixels(path)
    if a.ndim == 3:
        a = a.max(axis=2)
    return a > 0


def image_size(path: PathLike) -> Tuple[int, int]:
    """``(H, W)`` from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise MissingPathError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataReadError(path, f"cannot read image ({type(e).__name__}: {e})") from None
    return h, w


# ----------------------------------------------------------------------------- other formats
def read_tiff(path: PathLike) -> np.ndarray:
    """A TIFF array via tifffile (e.g. an organised point cloud ``[H, W, 3]``)."""
    import tifffile

    p = require_file(path, "TIFF file")
    try:
        return np.asarray(tifffile.imread(str(p)))
    except Exception as e:  # tifffile raises many types for corrupt files
        raise DataReadError(p, f"cannot read TIFF ({type(e).__name__}: {e})") from None


def read_npy(path: PathLike) -> np.ndarray:
    p = require_file(path, ".npy file")
    try:
        return np.load(str(p), allow_pickle=False)
    except Exception as e:
        raise DataReadError(p, f"cannot read .npy ({type(e).__name__}: {e})") from None


def read_yaml(path: PathLike) -> Any:
    import yaml

    p = require_file(path, "YAML file")
    try:
        with open(p, "r", encoding="utf-8") as f:
            return yaml.safe_load(f)
    except Exception as e:
        raise DataReadError(p, f"cannot read YAML ({type(e).__name__}: {e})") from None


def _nib_load(path: PathLike):
    import nibabel as nib

    p = require_file(path, "NIfTI file")
    try:
        return nib.load(str(p))
    except Exception as e:
        raise DataReadError(p, f"cannot read NIfTI ({type(e).__name__}: {e})") from None


def read_nifti_shape(path: PathLike) -> Tuple[int, ...]:
    """Shape of a NIfTI volume from its header."""
    return tuple(int(s) for s in _nib_load(path).shape)


def read_nifti(path: PathLike) -> np.ndarray:
    """A whole NIfTI volume as a numpy array (stored values, no scaling beyond the header's)."""
    img = _nib_load(path)
    try:
        return np.asarray(img.dataobj)
    except Exception as e:
        raise DataReadError(path, f"cannot read NIfTI data ({type(e).__name__}: {e})") from None


def read_nifti_slice(path: PathLike, index: int, axis: int = 2) -> np.ndarray:
    """One slice of a 3-D NIfTI volume (only that slice is read from uncompressed files)."""
    img = _nib_load(path)
    if len(img.shape) < 3:
        raise DataReadError(path, f"expected a 3-D volume, got shape {img.shape}")
    if not 0 <= index < img.shape[axis]:
        raise DataReadError(path, f"slice {index} out of range for axis {axis} of {img.shape}")
    sl = [slice(None)] * len(img.shape)
    sl[axis] = index
    try:
        a = np.asarray(img.dataobj[tuple(sl)])
    except Exception as e:
        raise DataReadError(path, f"cannot read NIfTI data ({type(e).__name__}: {e})") from None
    while a.ndim > 2:
        a = a[..., 0]
    return a


def read_mesh_vertices(path: PathLike) -> np.ndarray:
    """Vertices ``[V, 3]`` of a mesh / point-cloud file (STL, PLY, OBJ, ...) via trimesh.

    trimesh is needed only for MulSen-AD point clouds (``pip install trimesh``)."""
    p = require_file(path, "point-cloud file")
    try:
        import trimesh
    except ImportError:
        raise ImportError(
            f"reading the point cloud {p} needs the optional dependency 'trimesh' "
            "(pip install trimesh)") from None
    try:
        geom = trimesh.load(str(p), force="mesh", process=False)
        v = np.asarray(geom.vertices, dtype=np.float64)
    except Exception as e:
        raise DataReadError(p, f"cannot read point cloud ({type(e).__name__}: {e})") from None
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] == 0:
        raise DataReadError(p, f"point cloud has no vertices (shape {v.shape})")
    return v
