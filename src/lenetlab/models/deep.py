"""A deep LeNet-like family for gradient studies (Berngardt 2023, docs/papers/abs.md).

``lenet_deep`` has ``depth`` weight layers (4 to 20): depth-2 convolutions of
5x5 (padding 2) in two stages - ceil((depth-2)/2) with 6 maps at 28x28, a
2x2 pool, floor((depth-2)/2) with 16 maps at 14x14, a pool - then FC 84 and
FC 10. No normalisation layers, so whether gradients vanish or explode with
depth is up to the activation and the initialisation.

The default initialisation is Glorot/Xavier uniform with zero biases (Keras'
default, which Berngardt used); ``init="torch"`` keeps PyTorch's default.

Example::

    import lenetlab
    m = lenetlab.create_model("lenet_deep", depth=12, activation="abs")
    m.weight_layers()     # ['convs.0', ..., 'fc1', 'fc2'], input to output
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models.activations import make_activation
from lenetlab.models.base import register_model


@dataclass
class DeepConfig:
    depth: int = 8              # conv + fc layers, 4..20
    activation: str = "relu"
    width: float = 1.0          # multiplies 6, 16 and 84
    pool: str = "max"           # max | avg
    init: str = "xavier"        # xavier (Keras default) | torch (PyTorch default)


class LeNetDeep(nn.Module):
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise
    default_loss = "ce"

    def __init__(self, cfg: DeepConfig):
        super().__init__()
        if not 4 <= cfg.depth <= 20:
            raise LenetlabError(f"model.depth must be in 4..20, got {cfg.depth}")
        if cfg.pool not in ("max", "avg") or cfg.init not in ("xavier", "torch") or cfg.width <= 0:
            raise LenetlabError("model.pool must be max|avg, model.init xavier|torch, model.width > 0")
        c_a, c_b, hidden = (max(1, round(n * cfg.width)) for n in (6, 16, 84))
        n_conv = cfg.depth - 2
        n_a = (n_conv + 1) // 2
        chans = [1] + [c_a] * n_a + [c_b] * (n_conv - n_a)
        self.n_a = n_a
        self.input_shape = (1, 28, 28)
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 5, padding=2) for i in range(n_conv))
        self.acts = nn.ModuleList(make_activation(cfg.activation) for _ in range(n_conv + 1))
        self.pool = nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2)
        self.fc1 = nn.Linear(chans[-1] * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, 10)
        if cfg.init == "xavier":
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def weight_layers(self) -> list[str]:
        return [f"convs.{i}" for i in range(len(self.convs))] + ["fc1", "fc2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, act) in enumerate(zip(self.convs, self.acts)):
            x = act(conv(x))
            if i == self.n_a - 1 or i == len(self.convs) - 1:
                x = self.pool(x)
        x = self.acts[-1](self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


@register_model("lenet_deep", DeepConfig)
def lenet_deep(cfg: DeepConfig) -> LeNetDeep:
    """Deep LeNet-like family: `depth` (4-20) conv/FC layers, no normalisation (gradient studies)."""
    return LeNetDeep(cfg)
