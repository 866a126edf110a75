"""Data: IDX files, the dataset registry, splits and normalisation.

:func:`load_splits` turns a :class:`~lenetlab.config.DataConfig` into
in-memory float tensors ready for the model - the whole of MNIST is 200 MB of
float32, so no DataLoader machinery is needed on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lenetlab.config import DataConfig
from lenetlab.data import datasets  # noqa: F401  (registers datasets)
from lenetlab.data.datasets import load_raw
from lenetlab.data.idx import IdxError, read_idx, write_idx
from lenetlab.data.transforms import from_unit, to_model_input
from lenetlab.errors import LenetlabError

__all__ = ["Splits", "load_splits", "split_indices", "read_idx", "write_idx", "IdxError",
           "to_model_input", "from_unit", "load_raw"]


@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train_idx, val_idx): a seeded permutation, val taken from its end."""
    if not 0 <= val_size < n:
        raise LenetlabError(f"data.val_size must be in [0, {n}), got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    train, val = perm[: n - val_size], perm[n - val_size:]
    return np.sort(train), np.sort(val)


def load_splits(cfg: DataConfig) -> Splits:
    """Load, split, subset and normalise the dataset named in ``cfg``."""
    from lenetlab.data.datasets import dataset_spec

    spec = dataset_spec(cfg.dataset)
    tr_x, tr_y, te_x, te_y = load_raw(cfg.dataset, cfg.data_dir)
    tr_idx, va_idx = split_indices(len(tr_x), cfg.val_size, cfg.split_seed)
    for name, v in (("train_subset", cfg.train_subset), ("test_subset", cfg.test_subset)):
        if v is not None and v <= 0:
            raise LenetlabError(f"data.{name} must be positive, got {v}")
    if cfg.train_subset is not None:
        tr_idx = tr_idx[: cfg.train_subset]
    if cfg.test_subset is not None:
        te_x, te_y = te_x[: cfg.test_subset], te_y[: cfg.test_subset]

    def prep(x: np.ndarray) -> torch.Tensor:
        return to_model_input(torch.from_numpy(np.ascontiguousarray(x)), cfg)

    def lab(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    # every training image in order (no validation split, no subset): the arrays as they are, no gather
    whole = len(tr_idx) == len(tr_x)
    return Splits(prep(tr_x if whole else tr_x[tr_idx]), lab(tr_y if whole else tr_y[tr_idx]),
                  prep(tr_x[va_idx]), lab(tr_y[va_idx]), prep(te_x), lab(te_y), spec.classes)
