"""Checkpoints that hold no code: tensors in ``.safetensors`` files, everything else in JSON,
a SHA-256 of every file recorded and verified on load, folders written atomically.

Two folder formats (names are fixed; ``format_version`` 1):

* **weights** (what ``eval`` and ``predict`` need and what you share)::

      model.safetensors   the UniMMAD state dict (this package's key names)
      config.json         {"format": "unimmad-weights", "format_version": 1,
                           "model_config": UniMMADConfig.to_dict(),
                           "files": {"model.safetensors": {"sha256": hex, "bytes": N}},
                           ...extra keys (e.g. "thresholds")}

* **training state** (``runs/x/last/``, what ``train --resume`` needs): the two files above
  plus::

      training.safetensors  optimizer and scheduler tensors, the torch (and CUDA) RNG states
      training.json         {"format": "unimmad-training-state", "format_version": 1,
                             "epoch", "step", "train_config", "classes", "optimizer",
                             "scheduler", "rng", "files": {sha256 + bytes of the other
                             three files}}

  ``optimizer``, ``scheduler`` and ``rng`` are the ``state_dict()`` / RNG-state objects
  in a small JSON encoding: a tensor is ``{"__tensor__": "<key in training.safetensors>"}``,
  a tuple ``{"__tuple__": [...]}``, a dict with non-string keys ``{"__items__": [[k, v],
  ...]}``, a numeric numpy array (numpy's RNG state) ``{"__ndarray__": {"dtype", "shape",
  "data"}}``, a non-finite float ``{"__float__": "nan" | "inf" | "-inf"}``; Python's
  ``random`` state is its tuple of ints.  Decoding builds only these types.

A folder is written into ``.<name>.tmp-<8 hex digits>`` beside its destination (files
fsynced), then renamed over it (the previous folder is first renamed to
``.<name>.old-<8 hex digits>`` and removed after); :func:`clean_stale` — run by every save and at trainer start — removes what
an interrupted save left and restores a committed folder that a kill caught between the two
renames.  Files get the user's umask.

:func:`load_checkpoint` is the one reader (``eval``, ``predict``, ``train --init``, ``train
--resume``): it never unpickles.  Checkpoints of the earlier single-file format (``last.pt``,
a ``torch.save`` pickle) are read with ``torch.load(weights_only=True)`` (numpy arrays
allowed for their RNG state, nothing else): a pickle holding any other object is refused,
and since they carry no checksum a warning says that corruption cannot be detected.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import secrets
import shutil
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..config import UniMMADConfig
from ..models.model import UniMMAD
from ..release import ReleaseLoadReport, load_release_checkpoint
from ..tensorio import (NUMPY_ARRAY_GLOBALS, TensorFileError, fsync_dir, read_safetensors,
                        read_torch_weights_only, sha256_file, write_safetensors)

__all__ = ["CheckpointError", "save_weights", "load_weights", "save_checkpoint",
           "load_checkpoint", "export_weights", "convert_release", "update_config",
           "read_extras", "apply_model_state", "clean_stale",
           "rng_state", "set_rng_state", "WEIGHTS_FORMAT", "TRAINING_FORMAT",
           "FORMAT_VERSION", "MODEL_FILE", "CONFIG_FILE", "TRAINING_FILE",
           "TRAINING_TENSORS_FILE"]

WEIGHTS_FORMAT = "unimmad-weights"
TRAINING_FORMAT = "unimmad-training-state"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_FILE = "training.json"
TRAINING_TENSORS_FILE = "training.safetensors"
_RESERVED_CONFIG_KEYS = ("format", "format_version", "model_config", "files")
_LEGACY_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
#: ``.<name>.tmp-<8 hex>`` / ``.<name>.old-<8 hex>``: what an interrupted save leaves.
_STALE_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}$")
#: ``last.pt.<8 chars>.tmp``: temporary files of the earlier single-file ``atomic_save``.
_LEGACY_TMP_RE = re.compile(r"^.+\.pt\.[A-Za-z0-9_]{8}\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, of another format or model."""

    def __init__(self, path, message: str):
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {message}")


# ----------------------------------------------------------------------------- JSON encoding
def _encode(obj: Any, tensors: Dict[str, torch.Tensor], key: str) -> Any:
    """``obj`` as JSON, its tensors moved to ``tensors`` under dotted keys (see the module
    docstring for the encoding)."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot store a numpy array of dtype {obj.dtype} at {key}")
        return {"__ndarray__": {"dtype": obj.dtype.str, "shape": list(obj.shape),
                                "data": obj.ravel().tolist()}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, f"{key}.k{i}"), _encode(v, tensors, f"{key}.{k}")]
                              for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} at {key} in a checkpoint "
                    "(tensors, numbers, strings, lists, tuples and dicts only)")


def _decode(obj: Any, tensors: Dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag == "__tensor__":
            if value not in tensors:
                raise ValueError(f"{where}: tensor {value!r} is not in {TRAINING_TENSORS_FILE}")
            return tensors[value]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, where) for v in value)
        if tag == "__items__":
            return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in value}
        if tag == "__float__":
            if value not in ("nan", "inf", "-inf"):
                raise ValueError(f"{where}: bad non-finite float {value!r}")
            return float(value)
        if tag == "__ndarray__":
            dtype = np.dtype(str(value["dtype"]))
            if dtype.kind not in "biuf":
                raise ValueError(f"{where}: numpy dtype {dtype} is not numeric")
            return np.asarray(value["data"], dtype=dtype).reshape(value["shape"])
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


# ----------------------------------------------------------------------------- RNG states
def rng_state() -> Dict[str, Any]:
    """Every RNG the training loop draws from (Python, numpy, torch, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (lists become the tuples ``random`` wants)."""
    def tup(x):
        return tuple(tup(v) for v in x) if isinstance(x, (list, tuple)) else x
    random.setstate(tup(state["python"]))
    np.random.set_state(tup(state["numpy"]))
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------- folders
def _write_json(path: str, obj: Any, indent: Optional[int] = 2) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _file_entry(path: str) -> Dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def _is_checkpoint_dir(path: str) -> bool:
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, CONFIG_FILE))
                                    or os.path.isfile(os.path.join(path, TRAINING_FILE)))


def _check_replaceable(directory: str) -> None:
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise CheckpointError(directory, "exists and is not a folder; refusing to replace it")
    if os.path.isdir(directory) and os.listdir(directory) and not _is_checkpoint_dir(directory):
        raise CheckpointError(directory, "is a non-empty folder that is not a unimmad checkpoint; "
                                         "refusing to replace it (choose another folder)")


def clean_stale(parent: str, name: Optional[str] = None) -> List[str]:
    """Remove what interrupted saves left in ``parent`` (only for ``name`` when given):
    ``.<name>.tmp-*`` folders and files, ``.<name>.old-*`` folders, and the ``*.pt.*.tmp``
    files of the earlier single-file format.  A ``.<name>.old-*`` folder whose ``<name>`` is
    missing (a kill between the two renames of a commit) is renamed back instead.  Returns
    the paths removed or restored."""
    done: List[str] = []
    if not os.path.isdir(parent):
        return done
    entries = sorted(os.listdir(parent))
    for entry in entries:
        m = _STALE_RE.match(entry)
        path = os.path.join(parent, entry)
        if m and (name is None or m["name"] == name):
            target = os.path.join(parent, m["name"])
            if m["kind"] == "old" and not os.path.lexists(target) and _is_checkpoint_dir(path):
                os.rename(path, target)
                fsync_dir(parent)
            elif os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
            done.append(path)
        elif name is None and _LEGACY_TMP_RE.match(entry) and os.path.isfile(path):
            os.unlink(path)
            done.append(path)
    return done


def _temp_sibling(directory: str, kind: str) -> str:
    parent, name = os.path.split(directory)
    return os.path.join(parent, f".{name}.{kind}-{secrets.token_hex(4)}")


def _write_folder(directory, write) -> str:
    """Run ``write(tmp_folder)``, then commit the folder as ``directory`` atomically."""
    directory = os.path.abspath(os.fspath(directory))
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    clean_stale(parent, name)
    _check_replaceable(directory)
    tmp, old = _temp_sibling(directory, "tmp"), None
    os.mkdir(tmp)  # mode 0o777 & ~umask, like any folder the user makes
    try:
        write(tmp)
        fsync_dir(tmp)
        if os.path.isdir(directory):
            old = _temp_sibling(directory, "old")
            os.rename(directory, old)
            fsync_dir(parent)  # from here on clean_stale can restore `old` if we are killed
        os.rename(tmp, directory)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(directory):
            os.rename(old, directory)  # interrupted between the renames: keep the previous one
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def _weights_config(model_config: Dict, model_path: str, extra: Optional[Dict]) -> Dict:
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED_CONFIG_KEYS))
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite the checkpoint's own entries")
    cfg = dict(model_config)
    cfg["backbone_weights"] = None  # the backbone's weights are in model.safetensors
    return {"format": WEIGHTS_FORMAT, "format_version": FORMAT_VERSION, "model_config": cfg,
            "files": {MODEL_FILE: _file_entry(model_path)}, **extra}


def _write_weights(folder: str, state: Dict[str, torch.Tensor], model_config: Dict,
                   extra: Optional[Dict]) -> None:
    model_path = os.path.join(folder, MODEL_FILE)
    write_safetensors(state, model_path)
    _write_json(os.path.join(folder, CONFIG_FILE), _weights_config(model_config, model_path, extra))


def _model_config_dict(model) -> Dict:
    if not isinstance(model, UniMMAD):
        raise TypeError(f"expected a unimmad.UniMMAD, got {type(model).__name__}")
    return model.config.to_dict()


def save_weights(model, directory, extra: Optional[Dict] = None) -> str:
    """Write the weights-only checkpoint of ``model`` (``model.safetensors`` +
    ``config.json``) as the folder ``directory``, atomically; ``extra`` adds JSON keys to
    ``config.json`` (e.g. ``{"thresholds": ...}``).  Returns the folder's absolute path.
    An existing folder is replaced only if it is a unimmad checkpoint (or empty)."""
    cfg = _model_config_dict(model)
    state = model.state_dict()
    return _write_folder(directory, lambda tmp: _write_weights(tmp, state, cfg, extra))


def save_checkpoint(directory, model, optimizer, scheduler, *, epoch: int, step: int,
                    train_config: Optional[Dict] = None, classes: Optional[List[str]] = None,
                    rng: Optional[Dict] = None, extra: Optional[Dict] = None) -> str:
    """Write the resumable training state as the folder ``directory`` (e.g. ``runs/x/last``),
    atomically: the weights checkpoint plus ``training.safetensors`` and ``training.json``
    (epoch, step, configs, class list, optimizer/scheduler states, every RNG state — the
    current ones unless ``rng`` is given).  Returns the folder's absolute path."""
    cfg = _model_config_dict(model)
    state = model.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    body = {
        "format": TRAINING_FORMAT, "format_version": FORMAT_VERSION,
        "epoch": int(epoch), "step": int(step),
        "train_config": _encode(train_config or {}, tensors, "train_config"),
        "classes": list(classes or []),
        "optimizer": _encode(optimizer.state_dict(), tensors, "optimizer"),
        "scheduler": _encode(scheduler.state_dict() if scheduler is not None else None,
                             tensors, "scheduler"),
        "rng": _encode(rng if rng is not None else rng_state(), tensors, "rng"),
    }

    def write(tmp):
        _write_weights(tmp, state, cfg, extra)
        tpath = os.path.join(tmp, TRAINING_TENSORS_FILE)
        write_safetensors(tensors, tpath)
        body["files"] = {n: _file_entry(os.path.join(tmp, n))
                         for n in (MODEL_FILE, CONFIG_FILE, TRAINING_TENSORS_FILE)}
        _write_json(os.path.join(tmp, TRAINING_FILE), body, indent=None)

    return _write_folder(directory, write)


# ----------------------------------------------------------------------------- reading
def _read_json(path: str) -> Dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"cannot read JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_format(path: str, obj: Dict, want: str) -> None:
    fmt, version = obj.get("format"), obj.get("format_version")
    if fmt != want:
        raise CheckpointError(path, f"format is {fmt!r}, expected {want!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(path, f"format_version must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(path, f"format_version {version} was written by a newer unimmad; "
                                    f"this one reads version {FORMAT_VERSION}")


def _verify(folder: str, name: str, files: Any, listed_in: str) -> str:
    """Check size and SHA-256 of ``folder/name`` against the ``files`` entry of
    ``listed_in``; returns the file's path."""
    path = os.path.join(folder, name)
    entry = files.get(name) if isinstance(files, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) \
            or not isinstance(entry.get("bytes"), int) or isinstance(entry.get("bytes"), bool):
        raise CheckpointError(listed_in, f"'files' must record {name!r} as "
                                         "{\"sha256\": <64 hex>, \"bytes\": <int>}")
    if not os.path.isfile(path):
        raise CheckpointError(path, f"file missing (listed in {listed_in})")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise CheckpointError(path, f"{size} bytes, but {listed_in} records {entry['bytes']}: "
                                    "the file is truncated or was modified; refusing to load it")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise CheckpointError(path, f"SHA-256 {digest[:16]}... differs from the "
                                    f"{entry['sha256'][:16]}... recorded in {listed_in}: the "
                                    "file is corrupt or was modified; refusing to load it")
    return path


def _files_of(obj: Dict) -> Dict:
    files = obj.get("files")
    return files if isinstance(files, dict) else {}


def _locate(path: str) -> str:
    """The checkpoint folder meant by ``path`` (the folder, or one of its files)."""
    if os.path.isdir(path):
        return path
    if os.path.basename(path) in (CONFIG_FILE, TRAINING_FILE, MODEL_FILE, TRAINING_TENSORS_FILE) \
            and os.path.isfile(path):
        return os.path.dirname(path) or "."
    if not os.path.lexists(path):
        parent, name = os.path.split(os.path.abspath(path))
        left = [e for e in (os.listdir(parent) if os.path.isdir(parent) else [])
                if (m := _STALE_RE.match(e)) and m["name"] == name and m["kind"] == "old"]
        hint = (f" (an interrupted save left {os.path.join(parent, left[0])}; the next "
                f"`unimmad train` with this out_dir restores it)") if left else ""
        raise FileNotFoundError(f"checkpoint not found: {path!r}{hint}")
    raise CheckpointError(path, f"not a checkpoint: expected a folder holding {CONFIG_FILE} and "
                                f"{MODEL_FILE}, one of those files, or an old {'/'.join(_LEGACY_SUFFIXES)} file")


def _safe_load_tensors(path: str) -> Dict[str, torch.Tensor]:
    try:
        return read_safetensors(path)
    except TensorFileError as exc:
        raise CheckpointError(path, str(exc).split(": ", 1)[-1]) from None


def _nonneg_int(path: str, obj: Dict, key: str) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise CheckpointError(path, f"'{key}' must be a non-negative int, got {v!r}")
    return v


def load_checkpoint(path, training: bool = False) -> Dict[str, Any]:
    """Read a checkpoint without unpickling anything; every file's size and SHA-256 are
    verified first.

    ``path``: a checkpoint folder (weights or training state), its ``config.json`` (or
    another of its files), or an old single-file ``.pt`` checkpoint (read with
    ``torch.load(weights_only=True)``, numpy arrays allowed, nothing else; no checksum to
    verify, hence a warning).  ``training=True`` also reads the optimizer, scheduler, epoch,
    step and RNG states (a weights-only checkpoint is then refused).

    Returns ``{"source", "format", "model" (state dict on the CPU), "model_config" (dict),
    "config" (the whole config.json, extra keys included)}`` plus, with ``training``,
    ``"optimizer", "scheduler", "epoch", "step", "rng", "train_config", "classes"``.
    Raises :class:`CheckpointError` (a ``ValueError``) naming the file at fault."""
    path = os.fspath(path)
    if os.path.isfile(path) and path.lower().endswith(_LEGACY_SUFFIXES):
        return _load_legacy(path, training)
    folder = _locate(path)
    cfg_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise CheckpointError(folder, f"no {CONFIG_FILE}: not a unimmad checkpoint folder")
    cfg = _read_json(cfg_path)
    _check_format(cfg_path, cfg, WEIGHTS_FORMAT)
    if not isinstance(cfg.get("model_config"), dict):
        raise CheckpointError(cfg_path, "'model_config' must be a mapping of UniMMADConfig fields")
    out: Dict[str, Any] = {"source": folder, "format": WEIGHTS_FORMAT,
                           "model_config": cfg["model_config"], "config": cfg}
    if training:
        tpath = os.path.join(folder, TRAINING_FILE)
        if not os.path.isfile(tpath):
            raise CheckpointError(folder, f"holds weights only (no {TRAINING_FILE}): it can be "
                                          "evaluated or used with --init, not resumed")
        tj = _read_json(tpath)
        _check_format(tpath, tj, TRAINING_FORMAT)
        _verify(folder, CONFIG_FILE, tj.get("files"), tpath)
        if _files_of(tj).get(MODEL_FILE) != _files_of(cfg).get(MODEL_FILE):
            raise CheckpointError(tpath, f"records another {MODEL_FILE} than {CONFIG_FILE} does "
                                         "(files of two different saves?)")
        tensors = _safe_load_tensors(_verify(folder, TRAINING_TENSORS_FILE, tj.get("files"), tpath))
        try:
            decoded = {k: _decode(tj.get(k), tensors, f"{tpath} '{k}'")
                       for k in ("optimizer", "scheduler", "rng", "train_config")}
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(tpath, f"cannot decode the training state ({exc})") from None
        if not isinstance(decoded["optimizer"], dict) or not isinstance(decoded["rng"], dict):
            raise CheckpointError(tpath, "'optimizer' and 'rng' must be mappings")
        classes = tj.get("classes", [])
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise CheckpointError(tpath, "'classes' must be a list of strings")
        out.update(decoded, epoch=_nonneg_int(tpath, tj, "epoch"),
                   step=_nonneg_int(tpath, tj, "step"), classes=classes,
                   format=TRAINING_FORMAT)
    out["model"] = _safe_load_tensors(_verify(folder, MODEL_FILE, cfg.get("files"), cfg_path))
    return out


def _load_legacy(path: str, training: bool) -> Dict[str, Any]:
    try:
        obj = read_torch_weights_only(path, allow=[NUMPY_ARRAY_GLOBALS])
    except TensorFileError as exc:
        raise CheckpointError(path, str(exc).split(": ", 1)[-1]) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict) \
            or not all(isinstance(v, torch.Tensor) for v in obj["model"].values()):
        raise CheckpointError(path, "not a UniMMAD checkpoint (no 'model' state dict of tensors)")
    if not isinstance(obj.get("model_config"), dict):
        raise CheckpointError(path, "not a UniMMAD checkpoint (no 'model_config' mapping)")
    warnings.warn(f"{path}: a checkpoint of the earlier single-file format, read with "
                  "torch.load(weights_only=True); it carries no checksum, so corruption cannot "
                  "be detected. Convert it with unimmad.engine.export_weights(path, folder) "
                  "(or resume from it: the next save writes the folder format).", UserWarning,
                  stacklevel=3)
    out = {"source": path, "format": "legacy-pt", "model": obj["model"],
           "model_config": obj["model_config"], "config": {"model_config": obj["model_config"]}}
    if training:
        missing = [k for k in ("optimizer", "scheduler", "epoch", "step", "rng") if k not in obj]
        if missing:
            raise CheckpointError(path, f"cannot resume: no {missing} entries")
        if not isinstance(obj["epoch"], int) or not isinstance(obj["step"], int):
            raise CheckpointError(path, "'epoch' and 'step' must be ints")
        out.update({k: obj[k] for k in ("optimizer", "scheduler", "epoch", "step", "rng")},
                   train_config=obj.get("train_config", {}), classes=obj.get("classes", []))
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)           # the same bytes, no copy (the old folder is removed after)
    except OSError:
        shutil.copy2(src, dst)


def update_config(checkpoint, extra: Dict[str, Any]) -> str:
    """Add or replace extra keys of a checkpoint folder's ``config.json`` (e.g.
    ``{"thresholds": ...}``), keeping every SHA-256 record right: a training-state folder's
    ``training.json`` records the new ``config.json``.  The folder is rewritten atomically
    like a save (its tensor files hard-linked into the new folder, copied where a link is
    impossible); the tensor files are not re-hashed (their records are kept as they are and
    are verified on every load).  Refuses an old single-file ``.pt`` checkpoint, a
    folder whose ``training.json`` does not match its ``config.json``, and the reserved
    keys.  Returns the folder's absolute path."""
    path = os.fspath(checkpoint)
    if os.path.isfile(path) and path.lower().endswith(_LEGACY_SUFFIXES):
        raise CheckpointError(path, "an old single-file checkpoint cannot hold extra entries; "
                                    "convert it with unimmad.engine.export_weights(path, folder)")
    folder = os.path.abspath(_locate(path))
    extra = dict(extra)
    clash = sorted(set(extra) & set(_RESERVED_CONFIG_KEYS))
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite the checkpoint's own entries")
    cfg_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise CheckpointError(folder, f"no {CONFIG_FILE}: not a unimmad checkpoint folder")
    cfg = _read_json(cfg_path)
    _check_format(cfg_path, cfg, WEIGHTS_FORMAT)
    tpath = os.path.join(folder, TRAINING_FILE)
    tj = None
    if os.path.isfile(tpath):
        tj = _read_json(tpath)
        _check_format(tpath, tj, TRAINING_FORMAT)
        _verify(folder, CONFIG_FILE, tj.get("files"), tpath)
    cfg.update(json.loads(json.dumps(extra, allow_nan=False)))  # JSON-ready, or an error now

    def write(tmp):
        for entry in sorted(os.listdir(folder)):
            src = os.path.join(folder, entry)
            if entry not in (CONFIG_FILE, TRAINING_FILE) and os.path.isfile(src):
                _link_or_copy(src, os.path.join(tmp, entry))
        _write_json(os.path.join(tmp, CONFIG_FILE), cfg)
        if tj is not None:
            tj["files"] = dict(_files_of(tj), **{CONFIG_FILE: _file_entry(
                os.path.join(tmp, CONFIG_FILE))})
            _write_json(os.path.join(tmp, TRAINING_FILE), tj, indent=None)

    return _write_folder(folder, write)


def read_extras(checkpoint) -> Dict[str, Any]:
    """The extra keys of a checkpoint's ``config.json`` (e.g. ``"thresholds"``, stored by
    ``unimmad eval``) without reading its tensors; ``{}`` for an old ``.pt`` file."""
    path = os.fspath(checkpoint)
    if os.path.isfile(path) and path.lower().endswith(_LEGACY_SUFFIXES):
        return {}
    cfg_path = os.path.join(_locate(path), CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise CheckpointError(path, f"no {CONFIG_FILE}: not a unimmad checkpoint folder")
    cfg = _read_json(cfg_path)
    return {k: v for k, v in cfg.items() if k not in _RESERVED_CONFIG_KEYS}


# ----------------------------------------------------------------------------- models
#: Modules whose structure changed when the model took the release's FCM and stem.
_PRE_RELEASE_PREFIXES = ("embedding.stem.", "embedding.shortcut.", "fcm.align.")


def apply_model_state(model: torch.nn.Module, state: Dict[str, torch.Tensor], source) -> None:
    """``model.load_state_dict(state)`` after checking that every key is there with the
    model's shape; otherwise one :class:`CheckpointError` naming ``source`` and listing the
    missing, unexpected and mis-shaped keys.  (Missing ``num_batches_tracked`` BatchNorm
    counters are tolerated: they never change a forward pass.)"""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = [(n, v) for n, v in (("missing", missing), ("unexpected", unexpected),
                                    ("mis-shaped", mismatched)) if v]
    if problems:
        listed = "; ".join(f"{n} ({len(v)}): {', '.join(v[:5])}{', ...' if len(v) > 5 else ''}"
                           for n, v in problems)
        keys = missing + unexpected + [m.split(":")[0] for m in mismatched]
        if all(k.startswith(_PRE_RELEASE_PREFIXES) for k in keys):
            why = ("only the input stem / FCM alignment blocks differ: it was written before "
                   "the model took the authors' release structure (SPEC §1) and cannot load; "
                   "retrain, or convert the authors' weights with `unimmad convert-release`")
        else:
            why = "was it written for another model configuration?"
        raise CheckpointError(source, f"does not fit the model ({listed}); {why}")
    model.load_state_dict(state, strict=False)


def _model_from(ck: Dict[str, Any]) -> UniMMAD:
    try:
        cfg = UniMMADConfig.from_dict(dict(ck["model_config"]))
        cfg = cfg.replace(backbone_weights=None, encoder_from_pretrained=False)
        cfg.validate()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(ck["source"], f"bad model_config ({exc})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no backbone weights": they come from the checkpoint
        model = UniMMAD(cfg)
    apply_model_state(model, ck["model"], ck["source"])
    return model


def load_weights(directory_or_config_json, device="cpu") -> UniMMAD:
    """The :class:`~unimmad.UniMMAD` of a checkpoint (weights-only or training-state folder,
    its ``config.json``, or an old ``.pt``), built from its ``model_config``, sizes and
    SHA-256 verified, every tensor shape checked; on ``device``, in eval mode."""
    model = _model_from(load_checkpoint(directory_or_config_json))
    return model.to(device).eval()


def export_weights(checkpoint, directory, extra: Optional[Dict] = None) -> str:
    """The weights-only checkpoint (what you share) of any checkpoint ``load_checkpoint``
    reads — a training-state folder such as ``runs/x/last`` or an old ``.pt`` — written as
    ``directory``.  ``extra`` keys are added to (and override the extra keys of) the source's
    ``config.json``.  Returns the folder's absolute path."""
    ck = load_checkpoint(checkpoint)
    model = _model_from(ck)  # shape-checked against its own config
    kept = {k: v for k, v in ck["config"].items() if k not in _RESERVED_CONFIG_KEYS}
    kept.update(extra or {})
    return save_weights(model, directory, kept)


def convert_release(checkpoint_dir, backbone_weights, out_dir) -> ReleaseLoadReport:
    """The authors' release checkpoint (:func:`unimmad.load_release_checkpoint`) written as our
    weights-only checkpoint ``out_dir`` (``model.safetensors`` + ``config.json``, see
    :func:`save_weights`), ready for ``unimmad eval`` / ``predict``.  ``config.json`` records
    where it came from under ``"source"``.  Refuses to write into the release folder or over a
    folder that is not a unimmad checkpoint.  Returns the load report (what was skipped)."""
    out = os.path.abspath(os.fspath(out_dir))
    if out == os.path.abspath(os.fspath(checkpoint_dir)):
        raise CheckpointError(out, "is the release folder itself: choose another --out folder")
    _check_replaceable(out)  # before the (slow) load
    model, report = load_release_checkpoint(checkpoint_dir, backbone_weights, return_report=True)
    source = {"kind": "authors-release", "checkpoint_dir": os.path.abspath(report.checkpoint_dir),
              "files": {p: os.path.basename(f) for p, f in report.files.items()},
              "backbone_weights": os.path.abspath(report.backbone_weights),
              "skipped_unused": len(report.skipped)}
    save_weights(model, out, {"source": source})
    return report
