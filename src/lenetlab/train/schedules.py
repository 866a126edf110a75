"""Learning-rate schedules as pure functions lr(step) - trivially resumable.

A schedule is registered as ``f(cfg: TrainConfig, total_steps, steps_per_epoch)
-> Callable[[int], float]``. ``onecycle`` follows Smith & Topin's shape as in
PyTorch's OneCycleLR (cosine warm-up from lr/div to lr, cosine anneal to
lr/(div*final_div)); the learning rate only, no momentum cycling.
"""

from __future__ import annotations

import math
from typing import Callable

from lenetlab.config import TrainConfig
from lenetlab.registry import register

Schedule = Callable[[int], float]


def _cos(start: float, end: float, frac: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(max(frac, 0.0), 1.0))) / 2


@register("schedule", "onecycle")
def onecycle(cfg: TrainConfig, total: int, per_epoch: int) -> Schedule:
    """Cosine warm-up to lr over warmup_frac of the steps, then cosine decay (Smith 2018)."""
    lo = cfg.lr / cfg.div_factor
    end = lo / cfg.final_div_factor
    up = max(1.0, cfg.warmup_frac * total - 1)

    def f(step: int) -> float:
        if step <= up:
            return _cos(lo, cfg.lr, step / up)
        return _cos(cfg.lr, end, (step - up) / max(1.0, total - 1 - up))

    return f


@register("schedule", "cosine")
def cosine(cfg: TrainConfig, total: int, per_epoch: int) -> Schedule:
    """Cosine decay from lr to 0 over the run."""
    return lambda step: _cos(cfg.lr, 0.0, step / max(1, total))


@register("schedule", "step")
def step_decay(cfg: TrainConfig, total: int, per_epoch: int) -> Schedule:
    """lr times gamma every step_epochs epochs."""
    every = max(1, cfg.step_epochs) * per_epoch
    return lambda step: cfg.lr * cfg.gamma ** (step // every)


@register("schedule", "constant")
def constant(cfg: TrainConfig, total: int, per_epoch: int) -> Schedule:
    """lr throughout."""
    return lambda step: cfg.lr
