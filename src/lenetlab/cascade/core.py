"""The cascade rule shared by resolution and model cascades (Rohlfs 2022/23, docs/papers/cascade.md).

A cascade has L levels, cheapest first (a coarser resolution, or a cheaper
model), each with a cost (pixels read, or MACs). Level l is read only when
every earlier level was unsure: its max softmax probability (the
*confidence*) was below the threshold. An image's cost is the cumulative cost
of the levels it read.

Two rules decide the prediction; they read the same levels, so they cost the same:

- ``coarse_to_fine`` (the true coarse-to-fine rule): stop at the first level
  whose confidence >= threshold and predict with it; an image that reaches the
  last level takes the last level's prediction.
- ``paper`` (Rohlfs' rule): the same stopping, but the prediction comes from
  the *most confident level read so far*. The abstract calls both methods
  "ensemble-based", which we read as predicting with the most confident model
  seen so far (docs/papers/cascade.md). The two rules differ only on images that exhaust the ladder
  unsure (a stopping level is always the most confident one read, because
  every earlier level was below the threshold). With a threshold above 1
  every level is read and the paper's rule becomes the "most confident model"
  ensemble (:func:`most_confident`).

:func:`run_cascade` evaluates a cascade from precomputed probabilities of
every level (cheap to sweep over thresholds); :func:`run_cascade_lazy` runs a
level only on the images still unsure - what a deployment would do - and gives
the same answer.

Example::

    probs = torch.tensor([[[0.6, 0.4]], [[0.1, 0.9]]])      # 2 levels, 1 image, 2 classes
    run_cascade(probs, [49, 784], threshold=0.5).cost       # tensor([49.])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lenetlab.errors import LenetlabError

RULES = ("coarse_to_fine", "paper")


@dataclass
class CascadeOutcome:
    prediction: torch.Tensor   # (N,) class index
    stop_level: torch.Tensor   # (N,) index of the last level read
    choice: torch.Tensor       # (N,) index of the level whose prediction is used
    confidence: torch.Tensor   # (N,) max softmax probability of the level used
    cost: torch.Tensor         # (N,) cumulative cost of the levels read (float64)

    def accuracy(self, labels: torch.Tensor) -> float:
        return float((self.prediction == labels).double().mean())

    def mean_cost(self) -> float:
        return float(self.cost.mean())

    def level_fractions(self, levels: int) -> list[float]:
        """Fraction of images whose last level read is l, for each level."""
        counts = torch.bincount(self.stop_level, minlength=levels).double()
        return (counts / max(1, len(self.stop_level))).tolist()


def check_threshold(threshold: float) -> float:
    """A threshold is a number in [0, inf): 0 reads only the first level, > 1 reads every level."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise LenetlabError(f"threshold must be a number in [0, inf), got {threshold!r}") from None
    if math.isnan(t) or math.isinf(t) or t < 0:
        raise LenetlabError(f"threshold must be in [0, inf), got {threshold!r}")
    return t


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise LenetlabError(f"unknown cascade rule {rule!r}; choose from: {', '.join(RULES)}")
    return rule


def _costs(costs: Sequence[float], levels: int) -> torch.Tensor:
    c = torch.as_tensor([float(v) for v in costs], dtype=torch.float64)
    if len(c) != levels:
        raise LenetlabError(f"{levels} cascade levels but {len(c)} costs")
    if levels == 0:
        raise LenetlabError("a cascade needs at least one level")
    if (c < 0).any() or not torch.isfinite(c).all():
        raise LenetlabError(f"cascade costs must be finite and >= 0, got {c.tolist()}")
    return c


def run_cascade(probs: torch.Tensor, costs: Sequence[float], threshold: float,
                rule: str = "coarse_to_fine") -> CascadeOutcome:
    """Apply the cascade to ``probs`` (L levels, N images, C classes) of every level, vectorised."""
    threshold, rule = check_threshold(threshold), check_rule(rule)
    if probs.dim() != 3:
        raise LenetlabError(f"probs must be (levels, images, classes), got shape {tuple(probs.shape)}")
    levels, n = probs.shape[:2]
    cum = torch.cumsum(_costs(costs, levels), 0)
    conf, pred = probs.max(-1)                                     # (L, N)
    sure = conf >= threshold
    sure[-1] = True                                                # the last level always ends it
    stop = sure.to(torch.uint8).argmax(0)                          # the first sure level
    if rule == "coarse_to_fine":
        choice = stop
    else:
        unread = torch.arange(levels).unsqueeze(1) > stop.unsqueeze(0)
        # argmax returns the first maximum: ties go to the coarser (cheaper) level, as in the lazy version
        choice = conf.masked_fill(unread, -math.inf).argmax(0)
    idx = torch.arange(n)
    return CascadeOutcome(pred[choice, idx], stop, choice, conf[choice, idx], cum[stop])


def run_cascade_lazy(levels: Sequence[Callable[[torch.Tensor], torch.Tensor]], costs: Sequence[float], n: int,
                     threshold: float, rule: str = "coarse_to_fine") -> CascadeOutcome:
    """The cascade as deployed: ``levels[l](indices) -> probs (len(indices), C)`` is called only on
    the images that are still unsure after level l-1. Same result as :func:`run_cascade`."""
    threshold, rule = check_threshold(threshold), check_rule(rule)
    cum = torch.cumsum(_costs(costs, len(levels)), 0)
    pred = torch.zeros(n, dtype=torch.long)
    conf = torch.full((n,), -math.inf)
    choice = torch.zeros(n, dtype=torch.long)
    stop = torch.zeros(n, dtype=torch.long)
    active = torch.arange(n)
    for lvl, fn in enumerate(levels):
        if active.numel() == 0:
            break
        c, p = fn(active).max(1)
        c = c.to(conf.dtype)
        take = torch.ones_like(c, dtype=torch.bool) if rule == "coarse_to_fine" else c > conf[active]
        pred[active[take]], conf[active[take]], choice[active[take]] = p[take], c[take], lvl
        stop[active] = lvl
        active = active[c < threshold]
    return CascadeOutcome(pred, stop, choice, conf, cum[stop])


def most_confident(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The "most confident model" ensemble: per image, the prediction of the level (model or
    resolution) with the highest max softmax probability. Returns (prediction, level used)."""
    conf, pred = probs.max(-1)
    choice = conf.argmax(0)
    return pred[choice, torch.arange(probs.shape[1])], choice
