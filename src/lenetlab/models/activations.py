"""Activation registry.

Each entry is a factory returning an ``nn.Module``. ``MONOTONE`` lists the
non-decreasing ones: for those, max-pooling commutes with the activation
(max f(x) = f(max x)), which :class:`~lenetlab.models.lenet5.LeNet5` uses to
apply the activation after pooling - the same function and gradient on 4x
fewer elements.

``abs`` is f(x) = |x| (Berngardt 2023, docs/papers/abs.md);
``scaled_tanh`` is LeCun's 1.7159 tanh(2x/3) (LeCun et al. 1998).
"""

from __future__ import annotations

import torch
from torch import nn

from lenetlab.registry import register

MONOTONE = {"relu", "tanh", "scaled_tanh", "sigmoid", "selu", "identity"}


class ScaledTanh(nn.Module):
    """1.7159 * tanh(2x/3): f(1) ~ 1, f(-1) ~ -1, maximal second derivative at +-1."""
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    A, S = 1.7159, 2.0 / 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A * torch.tanh(self.S * x)


class Abs(nn.Module):
    """|x|: gradient magnitude 1 everywhere, so it neither vanishes nor explodes."""
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


register("activation", "relu")(nn.ReLU)
register("activation", "tanh")(nn.Tanh)
register("activation", "sigmoid")(nn.Sigmoid)
register("activation", "selu")(nn.SELU)
register("activation", "identity")(nn.Identity)
register("activation", "scaled_tanh")(ScaledTanh)
register("activation", "abs")(Abs)


def make_activation(name: str) -> nn.Module:
    from lenetlab.registry import get

    return get("activation", name)()
