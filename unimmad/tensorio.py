"""Reading and writing tensor files without running code.

Every file of tensors this package reads goes through this module: ``.safetensors`` files
(a JSON header and raw bytes: nothing in them can execute) and, for files written by
``torch.save`` (torchvision ``.pth`` backbones, checkpoints of unimmad < 0.2), ``torch.load``
with ``weights_only=True`` only — tensors, containers, numbers and strings (plus, where a
caller asks, the numpy array types of an RNG state); any other pickled object (a class, a
function, an ``exec``/``eval`` payload) is refused by torch's restricted unpickler before
it is built.  Nothing here ever unpickles with the full pickle machinery.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Dict, Sequence, Union

import torch

__all__ = ["TensorFileError", "sha256_file", "fsync_dir", "write_safetensors",
           "read_safetensors", "read_torch_weights_only", "read_state_dict_file", "fsync_file",
           "current_umask",
           "NUMPY_ARRAY_GLOBALS"]

PathLike = Union[str, os.PathLike]
_CHUNK = 1 << 22


class TensorFileError(ValueError):
    """A tensor file cannot be read safely (corrupt, foreign, or holding code)."""

    def __init__(self, path: PathLike, message: str):
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {message}")


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_file(path: PathLike) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    """Make the entries of a folder (creations, renames) durable, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux
    ``/proc/self/status``), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_safetensors(tensors: Dict[str, torch.Tensor], path: PathLike,
                      metadata: Dict[str, str] | None = None) -> None:
    """Write ``{name: tensor}`` to ``path`` (CPU, contiguous, no shared storage) and fsync it.
    The file is created with the user's umask, like any ``open(path, "w")``."""
    from safetensors.torch import save_file
    out, storages = {}, set()
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"write_safetensors: {k!r} is a {type(v).__name__}, not a tensor")
        v = v.detach().to("cpu")
        ptr = v.untyped_storage().data_ptr()
        if not v.is_contiguous() or (ptr in storages and v.numel()):
            v = v.contiguous().clone()  # safetensors refuses tensors sharing memory
        storages.add(v.untyped_storage().data_ptr())
        out[k] = v
    save_file(out, os.fspath(path), metadata=metadata)
    os.chmod(path, 0o666 & ~current_umask())  # safetensors creates its files with mode 0600
    fsync_file(path)


def read_safetensors(path: PathLike, device: str | torch.device = "cpu") -> Dict[str, torch.Tensor]:
    """``{name: tensor}`` of a ``.safetensors`` file (a clear error naming it when corrupt)."""
    from safetensors.torch import load_file
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tensor file not found: {path!r}")
    try:
        return load_file(path, device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise TensorFileError(path, f"not a readable .safetensors file ({type(exc).__name__}: "
                                    f"{exc})") from None


def _numpy_array_globals():
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]


#: Pass as ``allow=`` to :func:`read_torch_weights_only` to accept plain numpy arrays (the
#: numpy RNG state of old unimmad checkpoints).  The elements of such arrays are still built
#: by the restricted unpickler, so no code can come with them.
NUMPY_ARRAY_GLOBALS = "numpy-arrays"


def _short_unpickler_error(exc: Exception) -> str:
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*(.*?\.)(?:\s|$)", text, re.S)
    if m:
        return m.group(1).strip()
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def read_torch_weights_only(path: PathLike, allow: Sequence[str] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, containers, numbers and
    strings only (``allow=[NUMPY_ARRAY_GLOBALS]`` adds numpy arrays).  Anything else in the
    pickle — classes, functions, code — raises :class:`TensorFileError` naming the file and
    the refused object; nothing of it runs."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path!r}")
    extra = _numpy_array_globals() if NUMPY_ARRAY_GLOBALS in allow else []
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TensorFileError(
            path, "refused: torch.load(weights_only=True) cannot read it — it holds more than "
                  f"tensors and plain containers, or is corrupt ({_short_unpickler_error(exc)})"
        ) from None


def read_state_dict_file(path: PathLike) -> Dict[str, torch.Tensor]:
    """A ``{name: tensor}`` mapping from a ``.safetensors`` file or a ``torch.save`` file
    (read with ``weights_only=True``).  Unwraps ``{"state_dict": ...}`` / ``{"model": ...}``."""
    path = os.fspath(path)
    sd = read_safetensors(path) if path.endswith(".safetensors") else read_torch_weights_only(path)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise TensorFileError(path, "does not hold a state dict of tensors")
    return sd
