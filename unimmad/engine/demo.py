"""``unimmad demo``: a small multi-class, multi-modal dataset generated in real folder
layouts, then train → evaluate → tables and overlays, on a CPU with no downloads.

The generated data (deterministic for a seed):

* ``mvtec3d/<class>/...`` in the MVTec 3D-AD layout, two RGB + depth object classes
  (``plate``: a striped disc on a dome; ``tile``: a checkered slab), each image with an
  organised point cloud ``xyz.tiff`` (background points (0, 0, 0));
* ``scan/...`` in the BMAD layout, a single-channel "scan" class (concentric rings);
* defects with masks: colour blobs (RGB), dents (depth only) and bright lesions (scan).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

__all__ = ["make_demo_data", "demo_datasets", "run_demo"]

CLASSES_3D = ("plate", "tile")


def _save_png(path: str, arr: np.ndarray) -> None:
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.clip(arr, 0, 1)
    Image.fromarray((a * 255).round().astype(np.uint8)).save(path)


def _save_xyz(path: str, depth: np.ndarray, valid: np.ndarray) -> None:
    import tifffile
    os.makedirs(os.path.dirname(path), exist_ok=True)
    H, W = depth.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) / max(H, W)
    xyz = np.stack([xx, yy, depth.astype(np.float32)], -1)
    xyz[~valid] = 0.0
    tifffile.imwrite(path, xyz, photometric="rgb")


def _ellipse(rng, size, lo=0.12, hi=0.22):
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    ry, rx = rng.uniform(lo, hi, 2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _object(cls: str, rng, size: int):
    """A normal RGB image [S, S, 3], depth [S, S] and valid mask."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    r = np.sqrt((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
    base = np.array([0.55, 0.5, 0.45]) + rng.normal(0, 0.02, 3)
    if cls == "plate":
        valid = r < 0.42
        phase = rng.uniform(0, 2 * np.pi)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 6 * xx + phase)
        rgb = base * (0.75 + 0.25 * stripes[..., None])
        depth = 1.0 + 0.15 * np.sqrt(np.clip(0.42 ** 2 - r ** 2, 0, None)) / 0.42
    else:
        valid = (np.abs(yy - 0.5) < 0.4) & (np.abs(xx - 0.5) < 0.4)
        off = rng.integers(0, 2)
        checks = ((np.floor(yy * 8) + np.floor(xx * 8) + off) % 2)
        rgb = base[::-1] * (0.7 + 0.3 * checks[..., None])
        depth = 1.0 + 0.05 * xx + 0.03 * yy
    rgb = rgb + rng.normal(0, 0.01, rgb.shape)
    rgb = np.where(valid[..., None], rgb, 0.1)
    depth = depth + rng.normal(0, 0.001, depth.shape)
    return rgb, depth, valid


def _scan(rng, size: int):
    yy, xx = np.mgrid[0:size, 0:size] / size
    r = np.sqrt((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
    img = 0.4 + 0.25 * np.cos(2 * np.pi * 5 * r + rng.uniform(0, 0.5)) * (r < 0.45)
    return np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)


def make_demo_data(root: str, size: int = 64, train_per_class: int = 16,
                   test_good: int = 6, test_bad: int = 6, seed: int = 0) -> Dict[str, str]:
    """Write the demo datasets under ``root``; returns ``{"mvtec3d": path, "scan": path}``.

    By default 64 × 64 pictures and, per class, 16 training items and 6 good plus 6
    defective test items; ``seed`` 0."""
    rng = np.random.default_rng(seed)
    r3d = os.path.join(root, "mvtec3d")
    for cls in CLASSES_3D:
        for split, kinds in (("train", ["good"] * train_per_class),
                             ("test", ["good"] * test_good + ["color"] * (test_bad - test_bad // 2)
                              + ["dent"] * (test_bad // 2))):
            counters: Dict[str, int] = {}
            for kind in kinds:
                i = counters[kind] = counters.get(kind, -1) + 1
                rgb, depth, valid = _object(cls, rng, size)
                mask = np.zeros((size, size), bool)
                if kind != "good":
                    mask = _ellipse(rng, size) & valid
                    if kind == "color":
                        rgb = np.where(mask[..., None], rng.uniform(0, 1, 3) * np.array([1.0, 0.2, 0.2])
                                       + np.array([0.0, 0.6, 0.0]), rgb)
                    else:
                        depth = np.where(mask, depth - 0.2, depth)
                        rgb = np.where(mask[..., None], rgb * 0.7, rgb)
                d = os.path.join(r3d, cls, split, kind)
                _save_png(os.path.join(d, "rgb", f"{i:03d}.png"), rgb)
                _save_xyz(os.path.join(d, "xyz", f"{i:03d}.tiff"), depth, valid)
                if split == "test":
                    _save_png(os.path.join(d, "gt", f"{i:03d}.png"), mask.astype(float))
    rscan = os.path.join(root, "scan")
    for i in range(train_per_class):
        _save_png(os.path.join(rscan, "train", "good", "img", f"{i:03d}.png"), _scan(rng, size))
    for i in range(test_good):
        _save_png(os.path.join(rscan, "test", "good", "img", f"{i:03d}.png"), _scan(rng, size))
    for i in range(test_bad):
        img = _scan(rng, size)
        mask = _ellipse(rng, size, 0.08, 0.15)
        img = np.where(mask, 0.95, img)
        _save_png(os.path.join(rscan, "test", "Ungood", "img", f"{i:03d}.png"), img)
        _save_png(os.path.join(rscan, "test", "Ungood", "label", f"{i:03d}.png"), mask.astype(float))
    return {"mvtec3d": r3d, "scan": rscan}


def demo_datasets(paths: Dict[str, str], split: str, config, progress: bool = False):
    """The readers of the generated data, as one :class:`~unimmad.data.MultiDataset`."""
    from ..data import BMADStyle, MultiDataset, MVTec3DAD, Preprocess
    pre = Preprocess.from_config(config)
    return MultiDataset([
        MVTec3DAD(paths["mvtec3d"], split, preprocess=pre, dataset_name="demo3d",
                  progress=progress),
        BMADStyle(paths["scan"], split, preprocess=pre, class_name="scan", modality="ct",
                  dataset_name="demoscan", progress=progress),
    ])


def run_demo(out_dir: str = "unimmad_demo", epochs: int = 24, seed: int = 0,
             batch_size: int = 8, progress: bool = True, data_dir: Optional[str] = None):
    """Generate the data (:func:`make_demo_data`'s defaults), train the tiny preset
    (``epochs`` 24 at batch 8 by default, as ``unimmad demo``), evaluate; writes
    ``data/``, ``train/`` (checkpoint, log) and ``eval/`` (results.csv/json/md, overlays)
    under ``out_dir``.  Returns the :class:`~unimmad.metrics.MetricsReport`."""
    import torch

    from ..config import UniMMADConfig
    from ..models.model import UniMMAD
    from .evaluate import evaluate
    from .trainer import TrainConfig, Trainer

    paths = make_demo_data(data_dir or os.path.join(out_dir, "data"), seed=seed)
    cfg = UniMMADConfig.tiny()
    torch.manual_seed(seed)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo runs without ImageNet weights by design
        model = UniMMAD(cfg)
    train = demo_datasets(paths, "train", cfg)
    trainer = Trainer(model, train, TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed,
                                                out_dir=os.path.join(out_dir, "train"),
                                                progress=progress, device="cpu"))
    trainer.fit()
    test = demo_datasets(paths, "test", cfg)
    return evaluate(trainer.model, test, os.path.join(out_dir, "eval"), batch_size=16,
                    progress=progress)
