"""Multi-dataset training: concatenation, class-balanced sampling and the batch collate."""
from __future__ import annotations

import bisect
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..checks import check_int
from .base import AnomalyDataset, loss_weight_for

__all__ = ["MultiDataset", "ClassBalancedSampler", "collate", "class_balanced_weights"]


class MultiDataset(Dataset):
    """Concatenation of readers with per-dataset loss weights.

    Args:
        datasets: readers (any :class:`~unimmad.data.AnomalyDataset`; each keeps its own
            preprocessing — give them the same image size and modality slots).
        loss_weights: ``{dataset name: weight}`` replacing every reader's own weight
            (datasets not listed: 1.0).  ``None`` keeps each reader's weight (by default
            :data:`~unimmad.data.DEFAULT_LOSS_WEIGHTS`: Eyecandies 0.5, BraTS 10, Liver CT 10,
            others 1).
    """

    def __init__(self, datasets: Sequence[AnomalyDataset],
                 loss_weights: Optional[Mapping[str, float]] = None):
        super().__init__()
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("MultiDataset needs at least one dataset")
        sizes = set()
        for i, d in enumerate(self.datasets):
            if not isinstance(d, Dataset) or not hasattr(d, "__len__"):
                raise TypeError(f"MultiDataset: datasets[{i}] must be a dataset (an "
                                f"AnomalyDataset), got {type(d).__name__}")
            if len(d) == 0:
                raise ValueError(f"{d!r} is empty")
            pre = getattr(d, "preprocess", None)
            if pre is not None:
                sizes.add((pre.image_size, pre.max_modalities))
        if len(sizes) > 1:
            raise ValueError(f"datasets disagree on (image_size, max_modalities): {sorted(sizes)}")
        self.loss_weights = None if loss_weights is None else dict(loss_weights)
        if self.loss_weights is not None:
            for k in self.loss_weights:
                loss_weight_for(k, self.loss_weights)          # validates the values
        self.cumulative = np.cumsum([len(d) for d in self.datasets]).tolist()

    def __len__(self) -> int:
        return self.cumulative[-1]

    def locate(self, index: int):
        """``(dataset, local index)`` of a global index."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        k = bisect.bisect_right(self.cumulative, index)
        start = self.cumulative[k - 1] if k else 0
        return self.datasets[k], index - start

    def __getitem__(self, index: int) -> Dict[str, object]:
        d, i = self.locate(index)
        sample = d[i]
        if self.loss_weights is not None:
            sample["loss_weight"] = loss_weight_for(sample["dataset"], self.loss_weights)
        return sample

    @property
    def class_names(self) -> List[str]:
        """``<class>_<dataset>`` of every sample (no file is read)."""
        out: List[str] = []
        for d in self.datasets:
            out.extend(d.class_names)
        return out

    @property
    def classes(self) -> List[str]:
        return sorted(set(self.class_names))


def class_balanced_weights(class_names: Sequence[str]) -> torch.Tensor:
    """Sampling weight ``1 / |class(i)|`` of every sample (float64 ``[N]``)."""
    names = list(class_names)
    if not names:
        raise ValueError("no samples to weight")
    _, inverse, counts = np.unique(np.asarray(names, dtype=object).astype(str),
                                   return_inverse=True, return_counts=True)
    return torch.from_numpy(1.0 / counts[inverse].astype(np.float64))


class ClassBalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement: ``P(i) ∝ 1 / |class(i)|``.

    Every class is drawn with the same probability ``1/K`` (K classes), and within a class
    every sample with the same probability; a class of 5 images and one of 5,000 are seen
    equally often.  Each epoch draws ``num_samples`` indices (default: the dataset size, so
    an "epoch" keeps its usual length) independently with replacement.

    Deterministic: the draw of epoch ``e`` depends only on ``seed`` and ``e`` (call
    :meth:`set_epoch` each epoch, as with ``DistributedSampler``; without it every
    iteration advances the epoch by one).

    Args:
        class_names: the class of every sample (``dataset.class_names``), or a dataset
            exposing ``class_names``.
        num_samples: indices per epoch.
        seed: base seed (default 0).
    """

    def __init__(self, class_names, num_samples: Optional[int] = None, seed: int = 0):
        names = class_names.class_names if hasattr(class_names, "class_names") else class_names
        self.weights = class_balanced_weights(list(names))
        self.num_samples = (len(self.weights) if num_samples is None
                            else check_int("num_samples", num_samples, low=1))
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.seed = check_int("seed", seed)
        self.epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_set = True

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        return iter(idx.tolist())

    def __len__(self) -> int:
        return self.num_samples


def collate(samples: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """Unified samples → the batch of :meth:`unimmad.UniMMAD.forward` / ``loss``::

        images          float32 [B, M, 3, S, S]
        num_modalities  long    [B]
        masks           float32 [B, S, S]
        labels          long    [B]
        sample_weight   float32 [B]      (per-dataset loss weights, for ``model.loss``)
        class_names, datasets, paths, modalities: lists of str

    ``model.loss(batch["images"], batch["num_modalities"], sample_weight=batch["sample_weight"])``.
    A top-level function, so it pickles for DataLoader workers.
    """
    if isinstance(samples, Mapping) or not isinstance(samples, Sequence) or not samples:
        raise ValueError("collate: samples must be a non-empty list of sample dicts")
    for i, s in enumerate(samples):
        if not isinstance(s, Mapping) or not isinstance(s.get("images"), torch.Tensor):
            raise TypeError(f"collate: samples[{i}] must be a sample dict with an 'images' "
                            f"tensor (a dataset item), got {type(s).__name__}")
    shapes = {tuple(s["images"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate: samples of different image shapes {sorted(shapes)} "
                         "(use one image_size / max_modalities for every dataset)")
    return {
        "images": torch.stack([s["images"] for s in samples]),
        "num_modalities": torch.tensor([int(s["num_modalities"]) for s in samples], dtype=torch.long),
        "masks": torch.stack([s["mask"] for s in samples]),
        "labels": torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),
        "sample_weight": torch.tensor([float(s["loss_weight"]) for s in samples], dtype=torch.float32),
        "class_names": [s["class_name"] for s in samples],
        "datasets": [s["dataset"] for s in samples],
        "paths": [s["path"] for s in samples],
        "modalities": [s["modalities"] for s in samples],
    }
