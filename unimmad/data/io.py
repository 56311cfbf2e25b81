"""File readers with errors that name the file.

Every reader goes through a well-kept library — Pillow (PNG/JPEG/BMP), tifffile (MVTec 3D-AD
``xyz.tiff``), nibabel (NIfTI), PyYAML (Eyecandies side files), numpy (``.npy``) and, only
for MulSen-AD point clouds, trimesh (STL) — and turns *any* failure (missing, a broken
symbolic link, unreadable, truncated, wrong shape, a header claiming more pixels than
:data:`MAX_PIXELS` — a decompression bomb) into a :class:`DataError` whose message starts
with the path.  Folder listings report what they cannot use (broken links, entries that
are not regular files) instead of dropping it (:func:`list_images`).
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "DataError", "DataReadError", "DataLayoutError", "MissingPathError",
    "IMAGE_EXTENSIONS", "MAX_PIXELS", "MAX_VOXELS", "read_image", "read_mask", "read_tiff",
    "read_npy", "read_yaml", "read_nifti_slice", "read_nifti_shape", "read_nifti",
    "read_mesh_vertices", "require_dir", "require_file", "list_images", "list_entries",
    "missing_path_error", "contained_path", "safe_component",
]

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Largest image (H·W) any reader decodes: Pillow's decompression-bomb limit
#: (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 Mpx), applied to TIFF and ``.npy`` files too.
#: A header claiming more raises a :class:`DataReadError` instead of allocating the memory.
MAX_PIXELS = 89_478_485
#: Largest NIfTI volume (voxels) a reader loads; a BraTS volume (240×240×155) has 8.9e6.
MAX_VOXELS = 2 ** 31


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


def missing_path_error(p: Path, what: str) -> "MissingPathError":
    """The error for an expected file or folder at ``p`` that is missing, a broken
    symbolic link, or of the wrong kind."""
    if p.is_symlink() and not p.exists():
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        return MissingPathError(p, f"{what} is a broken symbolic link (its target {target} "
                                   "does not exist)")
    if p.exists():
        kind = "a folder" if p.is_dir() else "not a regular file"
        return MissingPathError(p, f"{what} is {kind}")
    return MissingPathError(p, f"{what} not found")


def require_dir(path: PathLike, what: str = "folder") -> Path:
    p = Path(path)
    if not p.is_dir():
        if p.is_symlink() and not p.exists():
            raise missing_path_error(p, what)
        raise MissingPathError(p, f"{what} not found" if not p.exists() else f"{what} is not a folder")
    return p


def require_file(path: PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise missing_path_error(p, what)
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


def natural_key(p: PathLike):
    """Sort key putting ``2.png`` before ``10.png``."""
    name = Path(p).name
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def list_entries(folder: PathLike) -> List[Path]:
    """Every entry of a folder except hidden ones (names starting with ``.``, e.g. macOS
    ``._x.png`` resource forks), in natural order; a folder that cannot be listed raises a
    :class:`DataReadError`."""
    folder = Path(folder)
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as e:
        raise DataReadError(folder, f"cannot list folder ({type(e).__name__}: {e})") from None
    return sorted(entries, key=natural_key)


def list_images(folder: PathLike, extensions=IMAGE_EXTENSIONS,
                on_problem: Optional[Callable[["DataError"], None]] = None) -> List[Path]:
    """Image files of a folder (not recursive, hidden files left out), natural order.

    An entry with an image extension that is not a readable regular file — a broken
    symbolic link, a folder, a device — is a problem: ``on_problem(error)`` is called with
    a :class:`MissingPathError` naming it (default: raise it), and it is not listed."""
    out = []
    for p in list_entries(folder):
        if p.suffix.lower() not in extensions:
            continue
        if p.is_file():
            out.append(p)
            continue
        err = missing_path_error(p, "image file")
        if on_problem is None:
            raise err
        on_problem(err)
    return out


# ----------------------------------------------------------------------------- images
def _check_pixels(path: PathLike, h: int, w: int, what: str = "image") -> None:
    if int(h) * int(w) > MAX_PIXELS:
        raise DataReadError(path, f"{what} header claims {w}×{h} = {int(h) * int(w)} pixels, more "
                            f"than the decompression-bomb limit of {MAX_PIXELS} (unimmad.data.io."
                            "MAX_PIXELS); refusing to decode it")


def _open_pil(path: PathLike):
    from PIL import Image

    p = require_file(path, "image file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both alike
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(p)
            try:
                _check_pixels(p, img.size[1], img.size[0])
                img.load()                # decode now: truncated files fail here, not later
            except BaseException:
                img.close()
                raise
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataReadError(p, f"image exceeds the decompression-bomb limit ({e})") from None
    except Exception as e:          # Pillow raises many types for corrupt files
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


def read_mask(path: PathLike, threshold: float = 0) -> np.ndarray:
    """A ground-truth mask as bool ``[H, W]``: a value above ``threshold`` (any colour
    channel; an alpha channel is ignored) is defect — 0 for lossless masks (any non-zero value, e.g. 255 or VisA's ids), 127 for
    JPEG masks (Hyper-Kvasir), whose compression noise would otherwise count."""
    a = _pixels(path)
    if a.ndim == 3 and a.shape[2] in (2, 4):
        a = a[..., :-1]                  # an alpha channel is not part of the mask
    if a.ndim == 3:
        a = a.max(axis=2)
    if a.ndim != 2 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DataReadError(path, f"a mask must be a single image, got shape {a.shape}")
    return a > threshold


def image_size(path: PathLike) -> Tuple[int, int]:
    """``(H, W)`` from the header only."""
    from PIL import Image

    p = require_file(path, "image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
    except Exception as e:
        raise DataReadError(p, f"cannot read image ({type(e).__name__}: {e})") from None
    return h, w


# ----------------------------------------------------------------------------- other formats
def read_tiff(path: PathLike) -> np.ndarray:
    """A TIFF array via tifffile (e.g. an organised point cloud ``[H, W, 3]``)."""
    import tifffile

    p = require_file(path, "TIFF file")
    try:
        with tifffile.TiffFile(str(p)) as tf:
            shape = tuple(tf.series[0].shape)
            if len(shape) >= 2:
                hw = shape[:2] if len(shape) == 2 or shape[-1] <= 4 else shape[-2:]
                _check_pixels(p, hw[0], hw[1], "TIFF")
            return np.asarray(tf.asarray())
    except DataError:
        raise
    except Exception as e:  # tifffile raises many types for corrupt files
        raise DataReadError(p, f"cannot read TIFF ({type(e).__name__}: {e})") from None


def read_npy(path: PathLike) -> np.ndarray:
    p = require_file(path, ".npy file")
    try:
        a = np.load(str(p), mmap_mode="r", allow_pickle=False)   # header only, no data yet
        if a.ndim >= 2:
            _check_pixels(p, a.shape[0], a.shape[1], ".npy array")
        return np.array(a)
    except DataError:
        raise
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


def _check_voxels(path: PathLike, shape) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if n > MAX_VOXELS:
        raise DataReadError(path, f"volume header claims {tuple(shape)} = {n} voxels, more than "
                            f"the limit of {MAX_VOXELS} (unimmad.data.io.MAX_VOXELS)")


def read_nifti(path: PathLike) -> np.ndarray:
    """A whole NIfTI volume as a numpy array (stored values, no scaling beyond the header's)."""
    img = _nib_load(path)
    _check_voxels(path, img.shape)
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
    _check_pixels(path, img.shape[0], img.shape[1], "NIfTI slice")
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
