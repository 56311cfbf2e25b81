"""Training and evaluation engine: :class:`Trainer` (single process or ``torchrun`` data
parallel), :func:`evaluate` (metrics, thresholds, pictures), continual learning,
prediction on files and the demo."""
from .checkpoint import (CheckpointError, convert_release, export_weights, load_checkpoint,
                         load_weights, save_checkpoint, save_weights, update_config)
from .continual import ReplayDataset, continual_parameter_names, freeze_for_continual
from .demo import make_demo_data, run_demo
from .distributed import DistInfo, DistributedClassBalancedSampler, init_distributed
from .evaluate import evaluate
from .predict import expand_items, load_item, predict_files
from .visualize import save_overlay
from .trainer import TrainConfig, Trainer

__all__ = ["Trainer", "TrainConfig", "evaluate", "save_overlay", "save_weights",
           "load_weights", "save_checkpoint", "convert_release", "load_checkpoint", "export_weights",
           "CheckpointError", "ReplayDataset", "continual_parameter_names",
           "freeze_for_continual", "make_demo_data", "run_demo", "DistInfo",
           "DistributedClassBalancedSampler", "init_distributed", "load_item", "predict_files",
           "expand_items", "update_config"]
