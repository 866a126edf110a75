"""Model cascades: run the cheapest model first, a costlier one only when it is unsure.

Rohlfs (2022/23, docs/papers/cascade.md): e.g. PCA-100 + logistic regression
first, LeNet-5 only when the cheap model's max softmax probability is below the
threshold. Cost = cumulative MACs per image of the models run, counted by
:func:`lenetlab.models.macs.count_macs` (so PCA-LR costs 79,400, not the
paper's ~0; :func:`model_cascade` takes explicit ``costs`` to use another
accounting). Rules (coarse-to-fine vs the paper's most-confident-so-far) are in
:mod:`lenetlab.cascade.core`; :func:`most_confident_ensemble` runs every model
and keeps the most confident prediction.

Any registered classifier can be a member; each keeps its own input transform
(the 1998 ``lenet5_classic`` reads 32x32 LeCun-normalised images).

Example::

    members = [member_from_run("runs/pca"), member_from_run("runs/lenet5")]
    out = model_cascade(members, test_images_u8, threshold=0.95)
    out.accuracy(labels), out.mean_cost()          # accuracy, mean MACs per image
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lenetlab.cascade.core import CascadeOutcome, most_confident, run_cascade, run_cascade_lazy
from lenetlab.config import DataConfig
from lenetlab.data.transforms import to_model_input
from lenetlab.errors import LenetlabError


@dataclass
class Member:
    """One classifier of a cascade: the model, the input transform of its run, its cost."""

    name: str
    model: nn.Module
    data: DataConfig
    macs: int

    @torch.no_grad()
    def probs(self, images: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
        """Softmax probabilities (N, classes) for uint8 images (N, 28, 28)."""
        self.model.eval()
        out = []
        for i in range(0, len(images), batch_size):
            xb = images[i:i + batch_size]
            # to_model_input scales in place after its float conversion: never touch the caller's floats
            xb = xb.clone() if xb.is_floating_point() else xb
            out.append(torch.softmax(self.model(to_model_input(xb, self.data)).float(), 1))
        return torch.cat(out)


def make_member(model: nn.Module, data: DataConfig, name: str | None = None) -> Member:
    from lenetlab.models.macs import count_macs

    return Member(name or getattr(model, "model_name", type(model).__name__), model, data,
                  count_macs(model).total)


def member_from_run(run_dir: str | Path, name: str | None = None) -> Member:
    from lenetlab.rundir import load_model

    model, cfg = load_model(run_dir)
    folder = Path(run_dir).resolve().name
    label = folder if folder == cfg.model.name else f"{folder} [{cfg.model.name}]"
    return make_member(model, cfg.data, name or label)


def order_by_cost(members: Sequence[Member]) -> list[Member]:
    """Cheapest first (stable for equal costs)."""
    return sorted(members, key=lambda m: m.macs)


def _images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dim() != 3:
        raise LenetlabError(f"images must be (N, H, W) grey images, got shape {tuple(x.shape)}")
    return x


def member_probs(members: Sequence[Member], images: np.ndarray | torch.Tensor, batch_size: int = 2000
                 ) -> torch.Tensor:
    """Probabilities of every member on every image: (len(members), N, classes)."""
    x = _images(images)
    probs = [m.probs(x, batch_size) for m in members]
    if len({p.shape[1] for p in probs}) > 1:
        raise LenetlabError("cascade members disagree on the number of classes")
    return torch.stack(probs)


def model_cascade(members: Sequence[Member], images: np.ndarray | torch.Tensor, threshold: float = 0.9,
                  rule: str = "coarse_to_fine", costs: Sequence[float] | None = None, batch_size: int = 2000,
                  probs: torch.Tensor | None = None) -> CascadeOutcome:
    """Run ``members`` in the order given (see :func:`order_by_cost`); ``cost`` = cumulative MACs per image.

    ``costs`` overrides the members' MAC counts (e.g. the paper's accounting
    with the cheap model at 0). Only the images still unsure reach the next
    member; pass ``probs`` (:func:`member_probs`) to sweep thresholds cheaply.
    """
    if not members:
        raise LenetlabError("a model cascade needs at least one model")
    costs = [m.macs for m in members] if costs is None else list(costs)
    x = _images(images)
    if probs is not None:
        return run_cascade(probs, costs, threshold, rule)
    levels = [lambda idx, m=m: m.probs(x[idx], batch_size) for m in members]
    return run_cascade_lazy(levels, costs, len(x), threshold, rule)


def most_confident_ensemble(members: Sequence[Member], images: np.ndarray | torch.Tensor,
                            batch_size: int = 2000, probs: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member runs; each image takes the prediction of the most confident one.

    Returns (prediction, index of the member used); costs the sum of all members' MACs.
    """
    probs = member_probs(members, images, batch_size) if probs is None else probs
    return most_confident(probs)
