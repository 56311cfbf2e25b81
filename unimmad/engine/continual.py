"""Continual learning (paper §4.5): new tasks update only the MoE-leaders' S, the routers
and the condition path, and the aggregation convs, replaying a small fraction of earlier
tasks' training data."""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch.utils.data import Dataset

from ..models.cmoe import CMoE

__all__ = ["continual_parameter_names", "freeze_for_continual", "ReplayDataset",
           "MAX_CONTINUAL_SHARE"]

#: The engine refuses a continual-learning setup that trains this share or more.
MAX_CONTINUAL_SHARE = 0.10


def continual_parameter_names(model: torch.nn.Module) -> List[str]:
    """Names of the parameters trained on a new task: in every C-MoE, the leaders' S, the
    routers, the condition path (key, query and cond convolutions) and the aggregation
    conv (with their norms)."""
    names = []
    for prefix, m in model.named_modules():
        if not isinstance(m, CMoE):
            continue
        for name, _ in m.named_parameters():
            head = name.split(".")[0]
            trainable = (head in ("key", "query", "cond", "aggregate")
                         or name.endswith(".leaders") or ".router." in name)
            if trainable:
                names.append(f"{prefix}.{name}" if prefix else name)
    return names


def freeze_for_continual(model: torch.nn.Module) -> float:
    """Freeze every parameter except :func:`continual_parameter_names`; returns the trainable
    share of all parameters and raises if it reaches :data:`MAX_CONTINUAL_SHARE`."""
    keep = set(continual_parameter_names(model))
    if not keep:
        raise ValueError("the model holds no C-MoE: nothing to train continually")
    total = trainable = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)
        total += p.numel()
        trainable += p.numel() if name in keep else 0
    share = trainable / total
    if share >= MAX_CONTINUAL_SHARE:
        raise AssertionError(f"continual learning would train {share:.1%} of the parameters "
                             f"(limit {MAX_CONTINUAL_SHARE:.0%})")
    return share


class ReplayDataset(Dataset):
    """The new task's samples plus ``fraction`` of each earlier task's samples (at least one
    per earlier class, evenly spaced so the choice is deterministic).

    With the class-balanced sampler every class — replayed ones included — is drawn equally
    often, which keeps the routing of earlier tasks trained (the paper's motivation).
    """

    def __init__(self, new_task: Dataset, earlier: Sequence[Dataset], fraction: float = 0.01):
        if not 0 < fraction <= 1:
            raise ValueError(f"replay fraction must be in (0, 1], got {fraction}")
        self.new_task = new_task
        self.items = [(new_task, i) for i in range(len(new_task))]
        self.replayed = 0
        for old in earlier:
            names = list(old.class_names)
            by_class = {}
            for i, c in enumerate(names):
                by_class.setdefault(c, []).append(i)
            for c, idx in sorted(by_class.items()):
                k = max(1, math.ceil(fraction * len(idx)))
                step = len(idx) / k
                chosen = [idx[int(j * step)] for j in range(k)]
                self.items += [(old, i) for i in chosen]
                self.replayed += k
        self._names = [self._name(d, i) for d, i in self.items]

    @staticmethod
    def _name(dataset, index) -> str:
        return dataset.class_names[index]

    @property
    def class_names(self) -> List[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        d, i = self.items[index]
        return d[i]
