"""Data parallelism: ``torchrun`` environment, a distributed class-balanced sampler, and the
cross-rank reductions that make N processes train exactly like one process with the same
global batch.

* The sampler draws the same global index sequence as :class:`~unimmad.data.ClassBalancedSampler`
  on every rank and gives rank ``r`` the indices ``r, r + W, r + 2W, ...``; with a per-rank
  batch of ``global_batch / W``, step ``t`` of the W ranks together covers exactly the
  single-process global batch ``t``.
* L_Dec is a mean over *units*; ranks may hold different unit counts (modalities vary), so
  each rank scales its local mean by ``W · U_local / U_global`` before DDP averages the
  gradients.
* The load-balance loss's statistics (mean routing probabilities, z-loss) are summed over
  ranks with a differentiable all-reduce (:func:`balance_reducer`), so every rank sees the
  global CV² and the gradients add up to the single-process gradient.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..data.multi import class_balanced_weights

__all__ = ["DistInfo", "init_distributed", "DistributedClassBalancedSampler",
           "balance_reducer", "all_reduce_sum"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: Optional[str] = None) -> DistInfo:
    """Join the process group described by ``torchrun``'s environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``); a single process otherwise.
    Backend: ``nccl`` on CUDA, ``gloo`` on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local)


class DistributedClassBalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement (``P(i) ∝ 1/|class(i)|``) split over ranks.

    Every rank draws the same ``num_samples`` global indices (seeded by ``seed`` and the
    epoch) and keeps every ``world_size``-th one starting at ``rank``.  With
    ``world_size = 1`` it yields exactly what :class:`~unimmad.data.ClassBalancedSampler`
    yields for the same seed and epoch.
    """

    def __init__(self, class_names, num_samples: Optional[int] = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        names = class_names.class_names if hasattr(class_names, "class_names") else class_names
        self.weights = class_balanced_weights(list(names))
        n = len(self.weights) if num_samples is None else int(num_samples)
        if n < world_size:
            raise ValueError(f"num_samples ({n}) must be >= world_size ({world_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.num_samples = n - n % world_size  # every rank gets the same count
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_indices(self) -> torch.Tensor:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_indices()[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples // self.world_size


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_reduce
    return all_reduce(t, op=dist.ReduceOp.SUM)


def balance_reducer(prob_sum: torch.Tensor, z_sum: torch.Tensor, count: torch.Tensor):
    """``CMoE.balance_reduce`` for data parallelism: the router statistics summed over
    ranks in one differentiable all-reduce."""
    packed = torch.cat([prob_sum, z_sum.reshape(1), count.reshape(1)])
    packed = all_reduce_sum(packed)
    return packed[:-2], packed[-2], packed[-1]
