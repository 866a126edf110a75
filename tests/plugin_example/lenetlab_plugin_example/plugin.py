"""Registers the ``tiny_mlp`` model and the ``noise`` attack when lenetlab loads its plugins.

lenetlab imports this module through the entry point declared in this
package's pyproject.toml (group ``lenetlab.plugins``); the decorators below
do the rest. After ``pip install`` of this package::

    lenetlab list models                     # ... tiny_mlp
    lenetlab train --model tiny_mlp --epochs 1 --out runs/mlp
    lenetlab attack runs/mlp --attack noise --density 0.5 --eps 0.1
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lenetlab.attacks.base import Attack
from lenetlab.errors import LenetlabError
from lenetlab.models.base import register_model
from lenetlab.registry import register


@dataclass
class TinyMLPConfig:
    hidden: int = 32


class TinyMLP(nn.Module):
    default_loss = "ce"

    def __init__(self, cfg: TinyMLPConfig):
        super().__init__()
        if cfg.hidden < 1:
            raise LenetlabError(f"model.hidden must be >= 1, got {cfg.hidden}")
        self.input_shape = (1, 28, 28)
        self.fc1, self.act, self.fc2 = nn.Linear(28 * 28, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(torch.flatten(x, 1))))


@register_model("tiny_mlp", TinyMLPConfig)
def tiny_mlp(cfg: TinyMLPConfig) -> TinyMLP:
    """A one-hidden-layer perceptron (example plugin model)."""
    return TinyMLP(cfg)


@dataclass(frozen=True)
class NoiseOptions:
    density: float = field(default=1.0, metadata={"help": "noise: fraction of pixels perturbed"})


@register("attack", "noise")
class Noise(Attack):
    """Random pixels pushed eps towards the far end of [0, 1] (a baseline needing no gradient)."""

    name = "noise"
    description = "random pixels pushed eps towards the far end of [0, 1]"
    white_box = False
    Options = NoiseOptions

    def validate(self, options):
        if not 0.0 < options["density"] <= 1.0:
            raise LenetlabError(f"noise density must be in (0, 1], got {options['density']}")
        return options

    def forward(self, x01, y, gen):
        hit = torch.rand(x01.shape, generator=gen) < self.options["density"]
        away = torch.where(x01 < 0.5, 1.0, -1.0)      # never clipped for eps <= 0.5: every hit pixel changes
        return x01 + self.eps * away * hit
