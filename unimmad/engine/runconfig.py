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
YAML: numbers, booleans, lists, null).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Sequence

from ..metrics import DEFAULT_PIXEL_BINS

__all__ = ["load_run_config", "apply_overrides", "DEFAULT_EVAL", "SECTIONS"]

SECTIONS = ("preset", "model", "train", "data", "eval")
DEFAULT_EVAL = {"batch_size": 16, "aupro": "mvtec3d", "pixel_bins": DEFAULT_PIXEL_BINS, "overlays": 2,
                "out_dir": None, "accelerate": True, "num_workers": 0}


def _parse_value(text: str) -> Any:
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Dict, overrides: Sequence[str]) -> Dict:
    """Apply ``a.b.c=value`` overrides (list items by index) to a nested dict copy."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        path, value = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys or keys[0] not in SECTIONS:
            raise ValueError(f"override {item!r}: the first key must be one of {SECTIONS}")
        node = cfg
        for i, k in enumerate(keys[:-1]):
            nxt = keys[i + 1]
            if isinstance(node, list):
                node = node[int(k)]
                continue
            if k not in node or node[k] is None:
                node[k] = [] if nxt.isdigit() else {}
            node = node[k]
        last = keys[-1]
        if isinstance(node, list):
            idx = int(last)
            while len(node) <= idx:
                node.append({})
            node[idx] = _parse_value(value)
        else:
            node[last] = _parse_value(value)
    return cfg


def load_run_config(path: str | None, overrides: Sequence[str] = ()) -> Dict:
    """Read a run file (``.yaml``/``.yml``/``.json``; ``None``: empty) and apply overrides."""
    cfg: Dict = {}
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path!r}")
        with open(path) as f:
            text = f.read()
        if path.endswith(".json"):
            cfg = json.loads(text)
        else:
            import yaml
            cfg = yaml.safe_load(text) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: a run config must be a mapping of sections")
        unknown = sorted(set(cfg) - set(SECTIONS))
        if unknown:
            raise ValueError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    return apply_overrides(cfg, overrides)


def build_model_config(run: Dict):
    from ..config import UniMMADConfig
    preset = run.get("preset", "paper")
    if preset not in ("paper", "tiny"):
        raise ValueError(f"preset must be 'paper' or 'tiny', got {preset!r}")
    base = UniMMADConfig.tiny() if preset == "tiny" else UniMMADConfig()
    fields = dict(base.to_dict())
    fields.update(run.get("model") or {})
    return UniMMADConfig.from_dict(fields)


def build_datasets(specs: List[Dict], split: str, model_config, loss_weights=None,
                   progress=None, preprocess=None):
    """Readers of ``specs`` (``{name, root, classes?, split?, ...reader options}``) as one
    :class:`~unimmad.data.MultiDataset`; ``preprocess`` (the run file's ``data.preprocess``)
    overrides :class:`~unimmad.data.Preprocess` fields, e.g. the release's depth rule
    ``{depth_fill: mean, depth_norm: center}``."""
    import dataclasses
    from ..data import MultiDataset, Preprocess, build_dataset
    if not specs:
        raise ValueError(f"no {split} datasets configured (data.{split})")
    preprocess = dict(preprocess or {})
    unknown = sorted(set(preprocess) - {f.name for f in dataclasses.fields(Preprocess)})
    if unknown:
        raise ValueError(f"data.preprocess: unknown Preprocess field(s) {unknown}")
    pre = Preprocess.from_config(model_config, **preprocess)
    readers = []
    for spec in specs:
        spec = dict(spec)
        try:
            name, root = spec.pop("name"), spec.pop("root")
        except KeyError as exc:
            raise ValueError(f"dataset entry {spec} needs 'name' and 'root'") from exc
        readers.append(build_dataset(name, root, spec.pop("split", split), preprocess=pre,
                                     progress=progress, **spec))
    return MultiDataset(readers, loss_weights=loss_weights)
