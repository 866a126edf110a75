"""Modern LeNet-5 (docs/papers/lenet5.md, "modern").

conv 6@5x5 (pad 2) -> pool -> conv 16@5x5 -> pool -> FC 120 -> FC 84 -> FC 10,
full C3 connectivity, 61,706 parameters at defaults. Activation (any entry of
the activation registry), pooling (max / avg) and a width multiplier are
options, so ``lenet5_abs`` and slimmer variants are configs, not copies.

Speed note: with max-pooling and a non-decreasing activation we pool first
and activate after. max(f(x)) == f(max(x)), so outputs and gradients are
identical, but the activation (and its backward) touches 4x fewer values.
Where no gradient is needed (evaluation, zeroth-order forwards) the max-pool
skips torch's argmax bookkeeping (:class:`lenetlab.models.pooling.MaxPool2x2`,
the same values).

Example::

    import lenetlab
    m = lenetlab.create_model("lenet5", activation="tanh", pool="avg")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models import convblocks
from lenetlab.models.activations import MONOTONE, make_activation
from lenetlab.models.base import register_model
from lenetlab.models.pooling import MaxPool2x2, _tracing


@dataclass
class LeNet5Config:
    activation: str = "relu"
    pool: str = "max"             # max | avg
    width: float = 1.0            # multiplies every hidden width (6, 16, 120, 84)
    num_classes: int = 10
    in_channels: int = 1
    input_size: int = 28          # 28 with the padded C1 (modern) or 32 unpadded
    c1_padding: int = 2


def _w(n: int, mult: float) -> int:
    return max(1, int(round(n * mult)))


def add_lenet5_layers(module: nn.Module, cfg) -> None:
    """Check ``cfg`` (pool, width, input size) and give ``module`` LeNet-5's weight layers and pooling:
    ``input_shape``, ``conv1``, ``conv2``, ``fc1``-``fc3``, ``pool``. Shared by every LeNet-5 variant
    (:class:`LeNet5`, the spiking one) so the geometry is written once."""
    if cfg.pool not in ("max", "avg"):
        raise LenetlabError(f"model.pool must be 'max' or 'avg', got {cfg.pool!r}")
    if cfg.width <= 0:
        raise LenetlabError(f"model.width must be positive, got {cfg.width}")
    c1, c3, f5, f6 = (_w(n, cfg.width) for n in (6, 16, 120, 84))
    s1 = cfg.input_size + 2 * cfg.c1_padding - 4      # after C1
    s2 = s1 // 2 - 4                                   # after C3
    side = s2 // 2
    if side < 1:
        raise LenetlabError(f"model.input_size {cfg.input_size} is too small for LeNet-5")
    module.input_shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    module.conv1 = nn.Conv2d(cfg.in_channels, c1, 5, padding=cfg.c1_padding)
    module.conv2 = nn.Conv2d(c1, c3, 5)
    module.fc1 = nn.Linear(c3 * side * side, f5)
    module.fc2 = nn.Linear(f5, f6)
    module.fc3 = nn.Linear(f6, cfg.num_classes)
    module.pool = MaxPool2x2() if cfg.pool == "max" else nn.AvgPool2d(2)


class LeNet5(nn.Module):
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise
    default_loss = "ce"
    native_convs = False   # train.native_convs: lenetlab.models.convblocks where a gradient is wanted

    def __init__(self, cfg: LeNet5Config):
        super().__init__()
        add_lenet5_layers(self, cfg)
        self.act1, self.act2, self.act3, self.act4 = (make_activation(cfg.activation) for _ in range(4))
        self.pool_first = cfg.pool == "max" and cfg.activation in MONOTONE

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.native_convs and torch.is_grad_enabled() and not _tracing():
            return convblocks.features(x, self.conv1, self.conv2)
        for conv, act in ((self.conv1, self.act1), (self.conv2, self.act2)):
            x = conv(x)
            x = act(self.pool(x)) if self.pool_first else self.pool(act(x))
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.act3(self.fc1(x))
        x = self.act4(self.fc2(x))
        return self.fc3(x)


@register_model("lenet5", LeNet5Config)
def lenet5(cfg: LeNet5Config) -> LeNet5:
    """Modern LeNet-5: configurable activation/pooling/width, 61,706 params at defaults."""
    return LeNet5(cfg)


@register_model("lenet5_abs", LeNet5Config, activation="abs")
def lenet5_abs(cfg: LeNet5Config) -> LeNet5:
    """LeNet-5 with the absolute-value activation (Berngardt 2023)."""
    return LeNet5(cfg)
