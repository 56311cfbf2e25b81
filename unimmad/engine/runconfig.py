"""Run configuration files (YAML or JSON) with dotted command-line overrides.

A run file has these sections (all optional)::

    preset: paper            # or tiny: the base UniMMADConfig
    model: {top_k: 2, ...}   # UniMMADConfig fields
    train: {epochs: 200, batch_size: 10, out_dir: runs/x, ...}   # TrainConfig fields
    data:
      train: [{name: mvtec3d, root: /data/mvtec_3d_anomaly_detection, classes: [bagel]}]
      test:  [{name: mvtec3d, root: /data/mvtec_3d_anomaly_detection}]
      loss_weights: {eyecandies: 0.5, brats: 10}
      replay: {earlier: [{name: mvtec, root: /data/mvtec}], fraction: 0.01}
      preprocess: {depth_fill: mean, depth_norm: center}   # Preprocess fields (optional)
    eval: {batch_size: 16, aupro: mvtec3d, pixel_bins: 16384, overlays: 2, out_dir: runs/x/eval}

Overrides: ``--set train.epochs=5 model.top_k=1 data.train.0.root=/x`` (values parsed as
YAML: numbers, booleans, lists, null).  A list index one past the end appends an entry, so
``--set data.train.0.name=mvtec data.train.0.root=/data/mvtec`` works on an empty list.

Every section is checked when the file is read (:func:`check_run_config`), before anything
runs: unknown sections and keys are refused, every value is checked against its field's
type (booleans are not numbers, NaN/infinities are not numbers, strings are not lists), a
dataset entry's options against its reader's arguments.  Numbers are read as YAML 1.2
reads them (``1e-3`` is a number, not the string PyYAML's YAML 1.1 rules make of it); a
key given twice in a mapping is refused.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import re
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..metrics import DEFAULT_PIXEL_BINS

__all__ = ["load_run_config", "apply_overrides", "check_run_config", "EvalConfig",
           "DEFAULT_EVAL", "SECTIONS", "DATA_KEYS", "RUN_CONFIG_FILE", "run_file_beside",
           "build_model_config", "build_datasets", "parse_yaml"]

SECTIONS = ("preset", "model", "train", "data", "eval")
DATA_KEYS = ("train", "test", "loss_weights", "replay", "preprocess")
PRESETS = ("paper", "tiny")
#: The run file ``unimmad train`` saves in its ``out_dir`` (beside ``last/`` and ``weights/``).
RUN_CONFIG_FILE = "run_config.json"
AUPRO_CHOICES = ("exact", "mvtec3d", "cfm")
#: Reader arguments a run file does not set (the engine passes them).
_ENGINE_READER_ARGS = ("self", "root", "preprocess", "progress")


@dataclass
class EvalConfig:
    """The ``eval`` section of a run file.

    batch_size: items per forward pass (16). aupro: AUPRO estimator, ``exact`` |
    ``mvtec3d`` | ``cfm``. pixel_bins: bins of the bounded-memory pixel metrics (``null``:
    exact; 2^14 bins: binned AUPRO within 1e-3 of the exact curve). overlays: PNG overlays of each class's highest- and lowest-scored items (2 each;
    0: none). out_dir: results folder (default: ``eval/`` beside the checkpoint's run
    folder). accelerate: the fused kernels. num_workers: DataLoader workers.
    store_thresholds: write the thresholds and normalisation computed by the evaluation
    into the checkpoint's ``config.json`` (they are always written to
    ``<out_dir>/thresholds.json``).
    """

    batch_size: int = 16
    aupro: str = "mvtec3d"
    pixel_bins: Optional[int] = DEFAULT_PIXEL_BINS
    overlays: int = 2
    out_dir: Optional[str] = None
    accelerate: bool = True
    num_workers: int = 0
    store_thresholds: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.aupro not in AUPRO_CHOICES:
            raise ValueError(f"eval.aupro must be one of {AUPRO_CHOICES}, got {self.aupro!r}")
        if self.pixel_bins is not None and self.pixel_bins < 2:
            raise ValueError(f"eval.pixel_bins must be >= 2 or null, got {self.pixel_bins}")
        for name in ("overlays", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"eval.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: Dict, where: str = "eval") -> "EvalConfig":
        from ..config import dataclass_from_dict
        return dataclass_from_dict(cls, d, where)


DEFAULT_EVAL = dataclasses.asdict(EvalConfig())


# ----------------------------------------------------------------------------- parsing
def _yaml_loader():
    """PyYAML's safe loader with YAML 1.2 numbers (``1e-3``) and duplicate keys refused."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."))

    def mapping(loader, node):
        loader.flatten_mapping(node)
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice", key_node.start_mark)
            seen[key] = True
        return yaml.SafeLoader.construct_mapping(loader, node, deep=True)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def parse_yaml(text: str, source: str) -> Any:
    """``text`` as YAML (see :func:`_yaml_loader`); a syntax error names ``source`` and
    the line and column, on one line."""
    import yaml
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        raise ValueError(f"{source}: invalid YAML{where}: {problem}"
                         + (f" ({context})" if context else "")) from None


def _parse_json(text: str, source: str) -> Any:
    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise ValueError(f"{source}: invalid JSON: the key {k!r} appears twice in "
                                 "one object")
            out[k] = v
        return out
    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}") from None


def _parse_value(text: str) -> Any:
    """An override's value: YAML (numbers, booleans, lists, null); text that is not valid
    YAML stays a string."""
    try:
        return parse_yaml(text, "--set")
    except ValueError:
        return text


# ----------------------------------------------------------------------------- overrides
def apply_overrides(cfg: Dict, overrides: Sequence[str]) -> Dict:
    """Apply ``a.b.c=value`` overrides to a nested copy of ``cfg``.  Integer keys index
    lists; an index equal to the list's length appends an entry (so entries are created in
    order: ``data.train.0.name=...`` on an empty list); a missing section or key is
    created (a list when the next key is an index)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        path, value = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys or keys[0] not in SECTIONS:
            raise ValueError(f"override {item!r}: the first key must be one of {SECTIONS}")
        node: Any = cfg
        for i, k in enumerate(keys):
            here = ".".join(keys[:i]) or "the run config"
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not k.isdigit():
                    raise ValueError(f"override {item!r}: {here} is a list; {k!r} is not an "
                                     "index (0, 1, ...)")
                idx = int(k)
                if idx > len(node):
                    raise ValueError(f"override {item!r}: {here} has {len(node)} entries; "
                                     f"index {idx} would leave a gap (next index: {len(node)})")
                if idx == len(node):
                    node.append(None)
                slot = idx
            elif isinstance(node, dict):
                slot = k
            else:
                raise ValueError(f"override {item!r}: {here} is {type(node).__name__} "
                                 f"{node!r}, not a section or a list")
            if last:
                node[slot] = _parse_value(value)
                break
            nxt = node.get(slot) if isinstance(node, dict) else node[slot]
            if nxt is None:
                nxt = [] if keys[i + 1].isdigit() else {}
                node[slot] = nxt
            node = nxt
    return cfg


# ----------------------------------------------------------------------------- checks
def _reader_arguments(cls) -> Dict[str, Any]:
    """``{argument: type hint or Any}`` a reader class accepts (its ``__init__`` and those
    of its bases, through ``**kwargs``), without those the engine sets."""
    out: Dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # a hint that does not resolve: the reader checks the value
            hints = {}
        params = inspect.signature(init).parameters
        for name, p in params.items():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name in _ENGINE_READER_ARGS:
                continue
            out.setdefault(name, hints.get(name, Any))
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return out


def _check_dataset_entry(entry: Any, where: str) -> None:
    from ..checks import check_type
    from ..data import READERS
    if not isinstance(entry, dict):
        raise TypeError(f"{where}: a dataset entry must be a mapping {{name, root, ...}}, got "
                        f"{type(entry).__name__} {entry!r}")
    for key in ("name", "root"):
        if key not in entry:
            raise ValueError(f"{where}: a dataset entry needs 'name' and 'root' (got keys "
                             f"{sorted(entry)})")
        check_type(f"{where}.{key}", entry[key], str)
    if entry["name"] not in READERS:
        raise ValueError(f"{where}.name: unknown dataset {entry['name']!r}; known: "
                         f"{', '.join(sorted(READERS))}")
    args = _reader_arguments(READERS[entry["name"]])
    unknown = sorted(str(k) for k in entry if k not in args and k not in ("name", "root"))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown} for the {entry['name']!r} "
                         f"reader; known: {', '.join(sorted(args))}")
    for k, v in entry.items():
        if k not in ("name", "root"):
            check_type(f"{where}.{k}", v, args[k])


def _check_entries(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise TypeError(f"{where}: expected a list of dataset entries, got "
                        f"{type(value).__name__} {value!r}")
    for i, entry in enumerate(value):
        _check_dataset_entry(entry, f"{where}.{i}")


def _check_preprocess(preprocess: Any) -> Dict[str, Any]:
    """``data.preprocess``: :class:`~unimmad.data.Preprocess` fields (unknown names and
    wrong types refused)."""
    from ..checks import check_type
    from ..data import Preprocess
    if preprocess is None:
        return {}
    check_type("data.preprocess", preprocess, Dict[str, Any])
    fields = {f.name: f for f in dataclasses.fields(Preprocess)}
    unknown = sorted(str(k) for k in preprocess if k not in fields)
    if unknown:
        raise ValueError(f"data.preprocess: unknown Preprocess field(s) {unknown}; known: "
                         f"{', '.join(fields)}")
    hints = typing.get_type_hints(Preprocess)
    for k, v in preprocess.items():
        check_type(f"data.preprocess.{k}", v, hints.get(k, Any))
    return dict(preprocess)


def _check_data(data: Any) -> None:
    from ..checks import check_real, check_type
    if data is None:
        return
    check_type("data", data, Dict[str, Any])
    unknown = sorted(str(k) for k in data if k not in DATA_KEYS)
    if unknown:
        raise ValueError(f"data: unknown key(s) {unknown}; known: {', '.join(DATA_KEYS)}")
    for split in ("train", "test"):
        _check_entries(data.get(split), f"data.{split}")
    _check_preprocess(data.get("preprocess"))
    weights = data.get("loss_weights")
    if weights is not None:
        check_type("data.loss_weights", weights, Dict[str, float])
        for k, v in weights.items():
            check_real(f"data.loss_weights.{k}", v, 0.0, low_open=True)
    replay = data.get("replay")
    if replay is not None:
        check_type("data.replay", replay, Dict[str, Any])
        unknown = sorted(str(k) for k in replay if k not in ("earlier", "fraction"))
        if unknown:
            raise ValueError(f"data.replay: unknown key(s) {unknown}; known: earlier, fraction")
        _check_entries(replay.get("earlier"), "data.replay.earlier")
        if "fraction" in replay:
            check_real("data.replay.fraction", replay["fraction"], 0.0, 1.0, low_open=True)


def check_run_config(run: Any, source: Optional[str] = None) -> Dict:
    """Check every section of a run config (see the module docstring) without reading
    data; returns ``run``.  Errors are ``ValueError`` / ``TypeError`` whose message names
    the key (and ``source``, the file, when given)."""
    from ..engine.trainer import TrainConfig
    prefix = f"{source}: " if source else ""
    try:
        if not isinstance(run, dict):
            raise ValueError(f"a run config must be a mapping of sections {SECTIONS}, got "
                             f"{type(run).__name__}")
        unknown = sorted(str(k) for k in set(run) - set(SECTIONS))
        if unknown:
            raise ValueError(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
        for name in ("model", "train", "eval"):
            if run.get(name) is not None and not isinstance(run[name], dict):
                raise TypeError(f"{name}: expected a mapping of fields, got "
                                f"{type(run[name]).__name__} {run[name]!r}")
        build_model_config(run)
        TrainConfig.from_dict(run.get("train") or {}, "train")
        EvalConfig.from_dict(run.get("eval") or {}, "eval")
        _check_data(run.get("data"))
    except (ValueError, TypeError) as exc:
        raise type(exc)(prefix + str(exc)) from None
    return run


def load_run_config(path: Optional[str], overrides: Sequence[str] = ()) -> Dict:
    """Read a run file (``.json``: JSON, anything else: YAML; ``None``: empty), apply the
    overrides and check the result (:func:`check_run_config`).  Syntax errors, unreadable
    files and bad values are ``ValueError`` / ``TypeError`` naming the file."""
    cfg: Dict = {}
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path!r}")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the run file "
                             f"({type(exc).__name__}: {exc})") from None
        cfg = _parse_json(text, path) if path.lower().endswith(".json") else parse_yaml(text, path)
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: a run config must be a mapping of sections "
                             f"{list(SECTIONS)}, got {type(cfg).__name__}")
        unknown = sorted(str(k) for k in cfg if k not in SECTIONS)
        if unknown:
            raise ValueError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    run = apply_overrides(cfg, overrides)
    source = (f"{path}" + (" with --set overrides" if overrides else "")) if path else \
        ("--set" if overrides else None)
    return check_run_config(run, source)


def run_file_beside(checkpoint: str) -> Optional[str]:
    """The run file ``unimmad train`` saved for the run that wrote ``checkpoint``:
    ``<run>/run_config.json`` for ``<run>/weights`` or ``<run>/last`` (or a file inside
    them), a ``run_config.json`` inside the checkpoint folder itself, or beside an old
    ``.pt`` file; ``None`` if there is none."""
    path = os.path.abspath(os.fspath(checkpoint))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    for cand in (os.path.join(folder, RUN_CONFIG_FILE),
                 os.path.join(os.path.dirname(folder), RUN_CONFIG_FILE)):
        if os.path.isfile(cand):
            return cand
    return None


# ----------------------------------------------------------------------------- builders
def build_model_config(run: Dict):
    """The :class:`~unimmad.UniMMADConfig` of a run: the preset, then the ``model`` fields."""
    from ..checks import check_type
    from ..config import UniMMADConfig
    preset = run.get("preset", "paper")
    check_type("preset", preset, str)
    if preset not in PRESETS:
        raise ValueError(f"preset must be 'paper' or 'tiny', got {preset!r}")
    base = UniMMADConfig.tiny() if preset == "tiny" else UniMMADConfig()
    model = run.get("model") or {}
    check_type("model", model, Dict[str, Any])
    fields = dict(base.to_dict())
    fields.update(model)
    return UniMMADConfig.from_dict(fields, "model")


def build_datasets(specs: Optional[List[Dict]], split: str, model_config, loss_weights=None,
                   progress=None, preprocess=None, where: Optional[str] = None):
    """Readers of ``specs`` (``{name, root, classes?, split?, ...reader options}``) as one
    :class:`~unimmad.data.MultiDataset`; entries are checked as in a run file (``where``
    names them in messages, default ``data.<split>``).  ``preprocess`` (the run file's
    ``data.preprocess``) overrides :class:`~unimmad.data.Preprocess` fields, e.g. the
    release's depth rule ``{depth_fill: mean, depth_norm: center}``."""
    from ..data import MultiDataset, Preprocess, build_dataset
    where = where or f"data.{split}"
    if not specs:
        raise ValueError(f"no {split} datasets configured ({where}): give them in the run "
                         f"file or with --set {where}.0.name=NAME {where}.0.root=FOLDER")
    _check_entries(specs, where)
    preprocess = _check_preprocess(preprocess)
    pre = Preprocess.from_config(model_config, **preprocess)
    readers = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        name, root = spec.pop("name"), spec.pop("root")
        readers.append(build_dataset(name, root, spec.pop("split", split), preprocess=pre,
                                     progress=progress, **spec))
    return MultiDataset(readers, loss_weights=loss_weights)
