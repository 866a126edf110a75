"""Optimiser registry: ``f(params, cfg) -> torch.optim.Optimizer``."""

from __future__ import annotations

import torch

from lenetlab.config import TrainConfig
from lenetlab.registry import register


@register("optimizer", "adam")
def adam(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


@register("optimizer", "adamw")
def adamw(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


@register("optimizer", "sgd")
def sgd(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, foreach=True)
