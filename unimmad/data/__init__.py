"""Dataset readers for the nine UniMMAD benchmarks, preprocessing, sampling and collate.

Public API::

    from unimmad.data import (MVTecAD, VisA, MVTec3DAD, Eyecandies, MulSenAD, BraTS2020,
                              HyperKvasir, RetinalOCT, LiverCT, BMADStyle, MetaJsonDataset,
                              Preprocess, MultiDataset, ClassBalancedSampler, collate,
                              DEFAULT_LOSS_WEIGHTS, build_dataset)

Each reader takes the dataset folder as downloaded (layouts in the class docstrings) and
yields the unified sample of :mod:`unimmad.data.base`; :func:`collate` makes the batch of
:meth:`unimmad.UniMMAD.forward`.  Training over several datasets::

    pre = Preprocess.from_config(model.config)
    train = MultiDataset([MVTec3DAD(r1, "train", preprocess=pre),
                          Eyecandies(r2, "train", preprocess=pre), ...])
    loader = DataLoader(train, batch_size=10, sampler=ClassBalancedSampler(train),
                        collate_fn=collate, num_workers=4)
"""
from .base import DEFAULT_LOSS_WEIGHTS, AnomalyDataset, Record, loss_weight_for
from .industrial import MVTec3DAD, Eyecandies, MulSenAD, MVTecAD, VisA, render_depth
from .io import DataError, DataLayoutError, DataReadError, MissingPathError
from .medical import BMADStyle, BraTS2020, HyperKvasir, LiverCT, RetinalOCT
from .meta import MetaJsonDataset
from .multi import ClassBalancedSampler, MultiDataset, class_balanced_weights, collate
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, MODALITY_KINDS, ModalityImage, Preprocess

#: Reader of each dataset name (the ``dataset`` field of its samples).
READERS = {
    "mvtec": MVTecAD,
    "visa": VisA,
    "mvtec3d": MVTec3DAD,
    "eyecandies": Eyecandies,
    "mulsen": MulSenAD,
    "brats": BraTS2020,
    "hyperkvasir": HyperKvasir,
    "retinaloct": RetinalOCT,
    "liverct": LiverCT,
    "meta": MetaJsonDataset,
}


def build_dataset(name: str, root, split: str = "train", **kwargs) -> AnomalyDataset:
    """The reader registered under ``name`` (see :data:`READERS`) for ``root``/``split``."""
    try:
        cls = READERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(READERS)}") from None
    return cls(root, split, **kwargs)


__all__ = [
    "AnomalyDataset", "Record", "DEFAULT_LOSS_WEIGHTS", "loss_weight_for",
    "MVTecAD", "VisA", "MVTec3DAD", "Eyecandies", "MulSenAD", "BraTS2020", "BMADStyle",
    "HyperKvasir", "RetinalOCT", "LiverCT", "MetaJsonDataset", "render_depth",
    "Preprocess", "ModalityImage", "MODALITY_KINDS", "IMAGENET_MEAN", "IMAGENET_STD",
    "MultiDataset", "ClassBalancedSampler", "class_balanced_weights", "collate",
    "DataError", "DataReadError", "DataLayoutError", "MissingPathError",
    "READERS", "build_dataset",
]
