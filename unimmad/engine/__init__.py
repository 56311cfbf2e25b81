"""Training and evaluation engine: :class:`Trainer` (single process or ``torchrun`` data
parallel), :func:`evaluate`, continual learning, prediction on files and the demo."""
from .checkpoint import atomic_save, load_checkpoint
from .continual import ReplayDataset, continual_parameter_names, freeze_for_continual
from .demo import make_demo_data, run_demo
from .distributed import DistInfo, DistributedClassBalancedSampler, init_distributed
from .evaluate import evaluate, save_overlay
from .predict import load_item, predict_files
from .trainer import TrainConfig, Trainer

__all__ = ["Trainer", "TrainConfig", "evaluate", "save_overlay", "atomic_save",
           "load_checkpoint", "ReplayDataset", "continual_parameter_names",
           "freeze_for_continual", "make_demo_data", "run_demo", "DistInfo",
           "DistributedClassBalancedSampler", "init_distributed", "load_item", "predict_files"]
