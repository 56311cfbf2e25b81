"""Small in-memory datasets of unified samples for engine tests (no files)."""
import torch
from torch.utils.data import Dataset


class SyntheticSet(Dataset):
    """``n`` unified samples over ``classes`` with 1–2 modalities, deterministic per index."""

    def __init__(self, n=12, classes=("a_syn", "b_syn", "c_syn"), size=64, seed=0,
                 dtype=torch.float32):
        self.n, self.size, self.seed, self.dtype = n, size, seed, dtype
        self.names = [classes[i % len(classes)] for i in range(n)]

    @property
    def class_names(self):
        return list(self.names)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        m = 1 + i % 2
        images = torch.zeros(4, 3, self.size, self.size)
        images[:m] = torch.randn(m, 3, self.size, self.size, generator=g)
        return {"images": images.to(self.dtype), "num_modalities": m, "mask": torch.zeros(self.size, self.size),
                "label": 0, "class_name": self.names[i], "dataset": "syn",
                "loss_weight": 1.0 + (i % 3), "path": f"item{i}", "modalities": ["rgb"] * m}
