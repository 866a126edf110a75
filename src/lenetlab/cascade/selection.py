"""Choosing a cascade's threshold: sweep on validation images, keep the cheapest setting within an accuracy budget
(Rohlfs 2022/23, docs/papers/cascade.md).

A cascade's threshold trades cost for accuracy. Picking it on the images it is
then scored on flatters the result, so the threshold is chosen on a validation
split and the chosen setting is scored once on the test set:

- :func:`sweep_thresholds`: accuracy and mean cost of a cascade at every
  threshold of a grid, from precomputed probabilities (:func:`~lenetlab.cascade.core.run_cascade`);
- :func:`cheapest_within`: the cheapest swept setting whose accuracy is above
  a floor (e.g. the best single model's validation accuracy minus 5 points);
  ties in cost go to the more accurate setting;
- :func:`select_threshold`: both in one call.

Example::

    val = member_probs(members, val_images)                  # (levels, N, classes)
    point = select_threshold(val, val_labels, [79_400, 416_520], [0.8, 0.9, 0.99], floor=0.93)
    out = run_cascade(member_probs(members, test_images), [79_400, 416_520], point.threshold, "paper")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lenetlab.cascade.core import check_rule, run_cascade
from lenetlab.errors import LenetlabError


@dataclass(frozen=True)
class SweepPoint:
    """One threshold of a sweep: the cascade's accuracy and mean cost per image on the swept images."""

    threshold: float
    accuracy: float
    cost: float


def sweep_thresholds(probs: torch.Tensor, labels: torch.Tensor, costs: Sequence[float],
                     thresholds: Sequence[float], rule: str = "paper") -> list[SweepPoint]:
    """Accuracy and mean cost of the cascade over ``probs`` (levels, N, classes) at each threshold."""
    check_rule(rule)
    if len(thresholds) == 0:
        raise LenetlabError("a threshold sweep needs at least one threshold")
    if probs.dim() != 3 or probs.shape[1] != len(labels):
        raise LenetlabError(f"probs must be (levels, {len(labels)} images, classes), got {tuple(probs.shape)}")
    out = []
    for t in thresholds:
        o = run_cascade(probs, costs, t, rule)
        out.append(SweepPoint(float(t), o.accuracy(labels), o.mean_cost()))
    return out


def cheapest_within(points: Sequence[SweepPoint], floor: float) -> SweepPoint | None:
    """The cheapest point with accuracy strictly above ``floor`` (the more accurate one on equal cost);
    None when no point reaches it."""
    ok = [p for p in points if p.accuracy > floor]
    return min(ok, key=lambda p: (p.cost, -p.accuracy)) if ok else None


def select_threshold(probs: torch.Tensor, labels: torch.Tensor, costs: Sequence[float],
                     thresholds: Sequence[float], floor: float, rule: str = "paper") -> SweepPoint | None:
    """:func:`cheapest_within` of :func:`sweep_thresholds` - give it validation images, never the test set."""
    return cheapest_within(sweep_thresholds(probs, labels, costs, thresholds, rule), floor)
