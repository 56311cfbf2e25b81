"""Training loop (SPEC §1 Training, paper §3.4): Adam, cosine schedule, L_Dec + annealed
L_MoE, class-balanced sampling with per-sample loss weights, optional bf16 autocast over
the whole model and gradient clipping, atomic pickle-free checkpoints with exact
resumption, logged loss parts and expert-usage histograms, and DistributedDataParallel
under ``torchrun``."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import secrets
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from kernels import accelerate

from ..config import dataclass_from_dict
from ..data.multi import collate
from ..models.cmoe import CMoE
from ..models.model import UniMMAD
from .checkpoint import (CheckpointError, apply_model_state, clean_stale, load_checkpoint,
                         save_checkpoint, save_weights, set_rng_state)
from .continual import freeze_for_continual
from .distributed import (DistInfo, DistributedClassBalancedSampler, all_reduce_sum,
                          balance_reducer)

__all__ = ["TrainConfig", "Trainer", "LossModule", "ExpertUsage", "resolve_device",
           "check_device", "CosineSchedule", "RESUME_SCHEDULES"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training options (defaults: the paper's recipe).

    epochs: training epochs (200). batch_size: the *global* batch (10); under
    ``torchrun`` each of W ranks takes ``batch_size / W``. optimizer: ``"adam"`` (the
    paper's) or ``"sgd"`` (momentum 0.9). lr, betas, weight_decay: (1e-3, (0.9, 0.999), 0).
    Cosine decay of the learning rate to 0 over all steps.
    grad_clip: max global gradient norm (``None``: no clipping). bf16: autocast the
    whole model to bfloat16. accelerate: use the fused kernels (``unimmad.accelerate``).
    samples_per_epoch: class-balanced draws per epoch (default: the dataset size).
    freeze_batchnorm: keep every BatchNorm in eval mode (running statistics frozen).
    continual: train only the continual-learning subset (paper §4.5; < 10 % of the
    parameters). out_dir: the training state ``last/``, the weights-only checkpoint
    ``weights/`` (after the last epoch) and ``log.jsonl``.
    checkpoint_every: epochs between checkpoints. log_every: steps between log lines.
    resume_schedule: what a resume does when ``epochs`` differs from the run it continues:
    ``"keep"`` (default) keeps the schedule the run was started with (the learning rate
    still reaches 0 where it would have, the L_MoE annealing too); ``"stretch"`` decays the
    learning rate from its current value to 0 over the new remaining steps (the L_MoE
    annealing keeps its epochs).  Either way the resume says what it did.
    """

    epochs: int = 200
    batch_size: int = 10
    optimizer: str = "adam"
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None
    bf16: bool = False
    accelerate: bool = True
    num_workers: int = 0
    seed: int = 0
    samples_per_epoch: Optional[int] = None
    freeze_batchnorm: bool = False
    continual: bool = False
    out_dir: str = "runs/unimmad"
    checkpoint_every: int = 1
    log_every: int = 10
    device: str = "auto"
    progress: bool = True
    resume_schedule: str = "keep"

    def __post_init__(self):
        from ..checks import check_int, check_real, check_type
        check_type("TrainConfig.betas", self.betas, Tuple[float, float])
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("epochs", "batch_size", "checkpoint_every", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        check_int("TrainConfig.num_workers", self.num_workers, 0)
        check_int("TrainConfig.seed", self.seed)
        if self.samples_per_epoch is not None:
            check_int("TrainConfig.samples_per_epoch", self.samples_per_epoch, 1)
        if self.resume_schedule not in RESUME_SCHEDULES:
            raise ValueError(f"TrainConfig.resume_schedule must be one of {RESUME_SCHEDULES}, "
                             f"got {self.resume_schedule!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"TrainConfig.optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        check_real("TrainConfig.lr", self.lr, 0.0, low_open=True)
        check_real("TrainConfig.weight_decay", self.weight_decay, 0.0)
        for i, b in enumerate(self.betas):
            check_real(f"TrainConfig.betas[{i}]", b, 0.0, 1.0, high_open=True)
        if self.grad_clip is not None:
            check_real("TrainConfig.grad_clip", self.grad_clip, 0.0, low_open=True)
        for name in ("bf16", "accelerate", "freeze_batchnorm", "continual", "progress"):
            check_type(f"TrainConfig.{name}", getattr(self, name), bool)
        for name in ("out_dir", "device"):
            check_type(f"TrainConfig.{name}", getattr(self, name), str)
        if not self.out_dir:
            raise ValueError("TrainConfig.out_dir must name a folder")
        check_device(self.device, "TrainConfig.device")

    @classmethod
    def from_dict(cls, d: Dict, where: Optional[str] = "train") -> "TrainConfig":
        """Fields from a mapping (unknown keys and wrong types refused, named with
        ``where``)."""
        return dataclass_from_dict(cls, d, where)


def check_device(name, where: str = "device") -> None:
    """``name`` is ``auto`` or a device string torch understands (``cpu``, ``cuda``,
    ``cuda:1``, ...), else a ``ValueError`` naming ``where``."""
    if not isinstance(name, str):
        raise TypeError(f"{where} must be a string such as 'auto', 'cpu' or 'cuda:0', got "
                        f"{type(name).__name__} {name!r}")
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{where}: {name!r} is not a device (auto, cpu, cuda, cuda:N, ...)"
                         ) from None


def resolve_device(name: str, dist_info: Optional[DistInfo] = None) -> torch.device:
    """The device meant by ``name`` (``auto``: CUDA when available, else the CPU)."""
    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info.local_rank if dist_info else 0)
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return dev


class LossModule(nn.Module):
    """The training objective as a module, so DistributedDataParallel sees the forward
    (calling ``model.loss`` directly would bypass DDP's gradient synchronisation)."""

    def __init__(self, model: UniMMAD, dist_info: DistInfo):
        super().__init__()
        self.model = model
        self.dist_info = dist_info

    def forward(self, images, num_modalities, sample_weight, epoch: float, total_epochs: float):
        total, parts = self.model.loss(images, num_modalities, sample_weight, epoch, total_epochs)
        units = parts["output"].unit_to_sample.numel()
        if self.dist_info.enabled:
            # L_Dec is a mean over units: weight this rank by its share of the global units.
            count = torch.tensor([float(units)], device=images.device)
            global_units = float(all_reduce_sum(count.clone()).item())
            scale = units * self.dist_info.world_size / global_units
            total = parts["dec"] * scale + parts["moe"]
            parts["dec_global"] = all_reduce_sum(parts["dec"].detach() * units) / global_units
        else:
            parts["dec_global"] = parts["dec"].detach()
        parts["dec_global"] = parts["dec_global"].detach()
        parts["units"] = units
        return total, parts


class CosineSchedule:
    """The learning-rate factor of step ``step``: 1 → 0 along a half cosine over
    ``total_steps`` — or, after a resume that stretched the schedule, from
    ``start_factor`` at ``start_step`` to 0 at ``total_steps``.  ``anneal_epochs`` is the
    ``total_epochs`` of the L_MoE annealing.  A callable object (not a lambda) so that
    ``LambdaLR.state_dict()`` saves these numbers and a resume restores them: the schedule
    a run was started with survives a change of ``train.epochs``."""

    def __init__(self, total_steps: int, anneal_epochs: int, start_step: int = 0,
                 start_factor: float = 1.0):
        self.total_steps = int(total_steps)
        self.anneal_epochs = int(anneal_epochs)
        self.start_step = int(start_step)
        self.start_factor = float(start_factor)

    def __call__(self, step: int) -> float:
        span = max(self.total_steps - self.start_step, 1)
        done = min(max(step - self.start_step, 0), span)
        return self.start_factor * 0.5 * (1.0 + math.cos(math.pi * done / span))

    def describe(self, steps_per_epoch: int) -> str:
        epochs = self.total_steps / max(steps_per_epoch, 1)
        text = f"cosine to 0 at step {self.total_steps} (epoch {epochs:g})"
        if self.start_step:
            text += f", stretched at step {self.start_step} from factor {self.start_factor:.3g}"
        return text + f"; L_MoE annealed over {self.anneal_epochs} epochs"


#: ``TrainConfig.resume_schedule`` values.
RESUME_SCHEDULES = ("keep", "stretch")


class ExpertUsage:
    """How often each expert of each C-MoE branch was chosen: counts per ``(level,
    branch)``, summed over the steps of an epoch (and over ranks by :meth:`histogram`)."""

    def __init__(self):
        self.counts: Dict[Tuple[int, int], torch.Tensor] = {}

    def add(self, aux_per_level) -> None:
        """Count the experts chosen in one forward pass (``UniMMADOutput.aux``)."""
        for lvl, aux in enumerate(aux_per_level):
            for br, idx in enumerate(aux.indices):
                counts = torch.bincount(idx.flatten(), minlength=aux.probs[br].shape[1]).cpu()
                key = (lvl, br)
                self.counts[key] = self.counts[key] + counts if key in self.counts else counts

    def histogram(self, model: UniMMAD, dist_info: DistInfo, device) -> Dict[str, Dict[str, list]]:
        """``{"level1": {"k1": [counts...], "k3": ..., ...}, ...}`` (summed over ranks)."""
        hist: Dict[str, Dict[str, list]] = {}
        for (lvl, br), counts in sorted(self.counts.items()):
            if dist_info.enabled:
                counts = all_reduce_sum(counts.to(device))
            hist.setdefault(f"level{lvl + 1}", {})[f"k{model.cmoe[lvl].kernel_sizes[br]}"] = \
                counts.cpu().tolist()
        return hist


class Trainer:
    """Trains a :class:`~unimmad.UniMMAD` on a dataset of unified samples.

    Args:
        model: the model (moved to the device; accelerated in place when
            ``config.accelerate``).
        train_set: a dataset of unified samples exposing ``class_names`` (e.g.
            :class:`~unimmad.data.MultiDataset`).
        config: :class:`TrainConfig`.
        dist_info: from :func:`~unimmad.engine.distributed.init_distributed` (default: one
            process).

    ``fit()`` trains to ``config.epochs`` (resuming from ``resume(path)`` if called).  Only
    rank 0 writes: the training state ``<out_dir>/last/`` every ``checkpoint_every`` epochs,
    ``log.jsonl``, and the weights-only checkpoint ``<out_dir>/weights/`` once the last epoch
    is done (formats: :mod:`unimmad.engine.checkpoint`).
    """

    def __init__(self, model: UniMMAD, train_set, config: TrainConfig,
                 dist_info: Optional[DistInfo] = None):
        self.config = config
        self.dist = dist_info or DistInfo()
        self._check_inputs(model, train_set)
        self.train_set = train_set
        self.device = resolve_device(config.device, self.dist)
        self.model = model.to(self.device)
        self._accelerate()
        params = self._freeze()
        self._setup_distributed()
        self._setup_loader()
        self._setup_optimizer(params)
        self._setup_schedule()
        self.epoch = 0
        self.step = 0
        self.keep_grads = None  # a list to record each step's gradients (tests, debugging)
        self.log_path = os.path.join(config.out_dir, "log.jsonl")
        self.checkpoint_path = os.path.join(config.out_dir, "last")
        self.weights_path = os.path.join(config.out_dir, "weights")
        if self.dist.is_main:
            clean_stale(config.out_dir)

    # ------------------------------------------------------------------ set-up steps
    def _check_inputs(self, model, train_set) -> None:
        if not isinstance(model, UniMMAD):
            raise TypeError(f"Trainer needs a unimmad.UniMMAD, got {type(model).__name__}")
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        if self.config.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {self.config.batch_size} must divide by the number of "
                             f"processes {self.dist.world_size}")

    def _accelerate(self) -> None:
        """The fused kernels in place of the reference C-MoE and map (``accelerate``)."""
        if self.config.accelerate:
            accelerate(self.model)

    def _freeze(self) -> List[nn.Parameter]:
        """The continual-learning subset when ``continual``; returns the trainable
        parameters and sets ``trainable_share``."""
        if self.config.continual:
            freeze_for_continual(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable_share = sum(p.numel() for p in params) / sum(
            p.numel() for p in self.model.parameters())
        return params

    def _setup_distributed(self) -> None:
        """Cross-rank load-balance statistics, SyncBatchNorm on CUDA, and the DDP wrapper
        (``self.wrapped`` is what a step calls)."""
        if self.dist.enabled:
            for m in self.model.modules():
                if isinstance(m, CMoE):
                    m.balance_reduce = balance_reducer
            if self.device.type == "cuda":
                for name in ("embedding", "encoder", "fcm", "cmoe"):
                    setattr(self.model, name,
                            nn.SyncBatchNorm.convert_sync_batchnorm(getattr(self.model, name)))
        self.loss_module = LossModule(self.model, self.dist)
        self.wrapped = self.loss_module
        if self.dist.enabled:
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _setup_loader(self) -> None:
        """Class-balanced sampling (split over the ranks) and the per-rank loader."""
        cfg = self.config
        self.sampler = DistributedClassBalancedSampler(
            self.train_set, cfg.samples_per_epoch, cfg.seed, self.dist.rank, self.dist.world_size)
        self.loader = DataLoader(self.train_set, batch_size=cfg.batch_size // self.dist.world_size,
                                 sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.num_workers, drop_last=True,
                                 persistent_workers=cfg.num_workers > 0)
        if len(self.loader) == 0:
            raise ValueError(f"samples_per_epoch ({len(self.sampler) * self.dist.world_size}) is "
                             f"smaller than one batch ({cfg.batch_size})")

    def _setup_optimizer(self, params: List[nn.Parameter]) -> None:
        cfg = self.config
        if cfg.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas,
                                              weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9,
                                             weight_decay=cfg.weight_decay)

    def _setup_schedule(self) -> None:
        """Cosine decay of the learning rate to 0 over every step of the run."""
        self.total_steps = self.config.epochs * len(self.loader)
        self.schedule = CosineSchedule(self.total_steps, self.config.epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)

    # ------------------------------------------------------------------ state
    @property
    def classes(self) -> List[str]:
        return sorted(set(self.train_set.class_names))

    def save(self, path: Optional[str] = None) -> str:
        """Write the resumable training state atomically as the folder ``path`` (default
        ``<out_dir>/last``; rank 0 only); returns its path."""
        path = path or self.checkpoint_path
        if self.dist.is_main:
            save_checkpoint(path, self.model, self.optimizer, self.scheduler, epoch=self.epoch,
                            step=self.step, train_config=dataclasses.asdict(self.config),
                            classes=self.classes)
        return path

    def save_weights(self, path: Optional[str] = None, extra: Optional[Dict] = None) -> str:
        """Write the weights-only checkpoint (default ``<out_dir>/weights``; rank 0 only)."""
        path = path or self.weights_path
        if self.dist.is_main:
            save_weights(self.model, path, extra)
        return path

    def resume(self, path: str) -> None:
        """Continue exactly where the checkpoint at ``path`` stopped (model, optimizer,
        schedule, epoch, step, every RNG).  A checkpoint of another model configuration or
        another trainable set is refused with a :class:`CheckpointError` saying why."""
        ckpt = load_checkpoint(path, training=True)
        source = ckpt["source"]
        saved = ckpt.get("train_config") or {}
        for key in ("optimizer", "continual"):
            if key in saved and saved[key] != getattr(self.config, key):
                raise CheckpointError(source, f"was trained with train.{key}={saved[key]!r}, this "
                                              f"run has {getattr(self.config, key)!r}; resume with "
                                              "the run's own train settings")
        apply_model_state(self.model, ckpt["model"], source)
        for name, obj in (("optimizer", self.optimizer), ("scheduler", self.scheduler)):
            try:
                obj.load_state_dict(ckpt[name])
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise CheckpointError(source, f"the {name} state does not fit this run ({exc}); "
                                              "resume with the run's own train settings "
                                              "(optimizer, continual)") from None
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self._resume_schedule(ckpt, saved, source)
        try:
            set_rng_state(ckpt["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(source, f"bad RNG state ({type(exc).__name__}: {exc})") from None
        if ckpt.get("classes") and list(ckpt["classes"]) != self.classes:
            warnings.warn(f"{source}: trained on classes {ckpt['classes']}, resumed on "
                          f"{self.classes}", UserWarning, stacklevel=2)

    def _resume_schedule(self, ckpt: Dict, saved: Dict, source) -> None:
        """After the scheduler state is loaded: the schedule the run was started with
        (restored with it; derived from the saved ``train.epochs`` for checkpoints that
        predate :class:`CosineSchedule`), kept or stretched to this run's ``epochs`` as
        ``config.resume_schedule`` says, and a line saying so when they differ."""
        lambdas = (ckpt.get("scheduler") or {}).get("lr_lambdas") or [None]
        if lambdas[0] is None:  # a lambda schedule: its total was the saved epochs' steps
            old_epochs = int(saved.get("epochs", self.config.epochs))
            self.schedule.total_steps = old_epochs * len(self.loader)
            self.schedule.anneal_epochs = old_epochs
        if self.schedule.total_steps == self.total_steps:
            return
        steps = len(self.loader)
        before = self.schedule.describe(steps)
        if self.config.resume_schedule == "stretch":
            factor = self.schedule(self.step)
            self.schedule.start_step, self.schedule.start_factor = self.step, factor
            self.schedule.total_steps = self.total_steps
            self._set_lr()
            log.info("%s: resumed at step %d with train.epochs=%d; the learning-rate schedule "
                     "(%s) is stretched (train.resume_schedule=stretch): now %s",
                     source, self.step, self.config.epochs, before,
                     self.schedule.describe(steps))
            return
        ends = ("; the epochs after it train with learning rate 0"
                if self.total_steps > self.schedule.total_steps else "")
        log.warning("%s: resumed with train.epochs=%d, but the run was started with another "
                    "length: keeping its learning-rate schedule (%s)%s. To decay the learning "
                    "rate over the new length instead, resume with --set "
                    "train.resume_schedule=stretch", source, self.config.epochs, before, ends)

    def _set_lr(self) -> None:
        """Put the scheduler's current factor into the optimizer (after changing it)."""
        factor = self.schedule(self.scheduler.last_epoch)
        lrs = [base * factor for base in self.scheduler.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = lrs

    # ------------------------------------------------------------------ training
    def _set_train_mode(self) -> None:
        self.model.train()
        if self.config.freeze_batchnorm:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _log(self, record: Dict) -> None:
        if not self.dist.is_main:
            return
        os.makedirs(self.config.out_dir, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _trim_log(self) -> None:
        """Make ``log.jsonl`` end where the trainer stands: drop epoch records past
        ``self.epoch`` and step records past ``self.step`` (left by a run killed after
        logging an epoch and before the checkpoint holding it was written, or by an earlier
        run in the same folder) and a torn last line; rewritten atomically."""
        if not self.dist.is_main or not os.path.isfile(self.log_path):
            return
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not line.endswith("\n") or not isinstance(rec, dict):
                continue
            if rec.get("type") == "epoch" and rec.get("epoch", 0) > self.epoch:
                continue
            if rec.get("type") == "step" and rec.get("step", 0) > self.step:
                continue
            keep.append(line)
        if len(keep) == len(lines):
            return
        tmp = os.path.join(self.config.out_dir, f".log.jsonl.tmp-{secrets.token_hex(4)}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.log_path)

    def train_step(self, batch: Dict, usage: Optional[ExpertUsage] = None) -> Dict[str, float]:
        """One optimisation step on a collated batch; returns the logged loss parts
        (and counts the chosen experts into ``usage``)."""
        cfg = self.config
        images = batch["images"].to(self.device, non_blocking=True)
        nm = batch["num_modalities"].to(self.device)
        weight = batch["sample_weight"].to(self.device)
        epoch_pos = self.epoch + (self.step % len(self.loader)) / len(self.loader)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            total, parts = self.wrapped(images, nm, weight, epoch_pos,
                                        self.schedule.anneal_epochs)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.keep_grads is not None:
            self.keep_grads.append({n: p.grad.detach().clone() for n, p in
                                    self.model.named_parameters() if p.grad is not None})
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if usage is not None:
            usage.add(parts["output"].aux)
        out = {"loss": float(parts["dec_global"] + parts["moe"].detach()),
               "dec": float(parts["dec_global"]), "moe": float(parts["moe"].detach()),
               "balance": float(parts["balance"].detach()), "anneal": float(parts["anneal"]),
               "lr": self.scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite training loss at step {self.step}: {out}")
        return out

    def epoch_line(self, summary: Dict) -> str:
        """One line for an epoch's summary: loss and its parts, learning rate, time."""
        parts = " ".join(f"{k} {summary[k]:.4g}" for k in ("dec", "moe", "balance")
                         if k in summary)
        return (f"epoch {summary['epoch']}/{self.config.epochs}  loss {summary.get('loss', 0):.4f}"
                f" ({parts})  lr {self.scheduler.get_last_lr()[0]:.3g}  {summary['steps']} steps "
                f"{summary['seconds']:.1f} s")

    def fit(self, stop_after_epochs: Optional[int] = None) -> List[Dict]:
        """Train from the current epoch to ``config.epochs`` (or stop after
        ``stop_after_epochs`` more); returns the per-epoch summaries.

        Each epoch's record is appended to ``log.jsonl`` before its checkpoint is saved;
        ``log.jsonl`` is first trimmed to the trainer's epoch and step, so after a kill and
        a resume every epoch has exactly one record."""
        cfg = self.config
        summaries = []
        last = cfg.epochs if stop_after_epochs is None else min(cfg.epochs,
                                                                 self.epoch + stop_after_epochs)
        show = cfg.progress and self.dist.is_main
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            tqdm = None
        self._trim_log()
        while self.epoch < last:
            self._set_train_mode()
            self.sampler.set_epoch(self.epoch)
            usage = ExpertUsage()
            sums: Dict[str, float] = {}
            start = time.time()
            batches = self.loader
            if tqdm is not None:
                batches = tqdm(self.loader, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                               disable=not show, leave=False, file=sys.stderr)
            n = 0
            for batch in batches:
                parts = self.train_step(batch, usage)
                n += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                if self.step % cfg.log_every == 0:
                    self._log({"type": "step", "epoch": self.epoch, "step": self.step, **parts})
                if tqdm is not None and show:
                    batches.set_postfix(loss=f"{parts['loss']:.4f}")
            self.epoch += 1
            summary = {"type": "epoch", "epoch": self.epoch, "steps": n,
                       "seconds": time.time() - start,
                       **{k: v / max(n, 1) for k, v in sums.items()},
                       "expert_usage": usage.histogram(self.model, self.dist, self.device)}
            summaries.append(summary)
            self._log(summary)
            if self.dist.is_main:
                log.info(self.epoch_line(summary))
            if self.epoch % cfg.checkpoint_every == 0 or self.epoch == cfg.epochs:
                self.save()
            if self.epoch == cfg.epochs:
                self.save_weights()
            if self.dist.enabled:
                dist.barrier()
        return summaries
