"""Spike functions with surrogate gradients (Lin & Sengupta 2025, docs/papers/snn-attacks.md).

The forward pass of a spiking neuron is the Heaviside step ``s = H(v)`` of
its shifted membrane ``v = u - theta``; its true derivative is zero almost
everywhere, so training (and white-box attacks) use a smooth stand-in in the
backward pass only - the snnTorch convention:

- ``fast_sigmoid``: ds/dv = 1 / (k |v| + 1)^2  (Zenke & Ganguli's SuperSpike);
- ``arctan``:       ds/dv = (a / 2) / (1 + (pi a v / 2)^2).

One ``torch.autograd.Function`` (:class:`Spike`) takes the derivative from a
table, behind a small factory, as every custom gradient in lenetlab is (STYLE
principle 6).

Example::

    from lenetlab.models.surrogate import make_spike
    spike = make_spike("arctan", 2.0)
    s = spike(torch.randn(5, requires_grad=True))
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from lenetlab.errors import LenetlabError


def _fast_sigmoid(v: torch.Tensor, k: float) -> torch.Tensor:
    return 1.0 / (k * v.abs() + 1.0) ** 2


def _arctan(v: torch.Tensor, a: float) -> torch.Tensor:
    # the derivative of arctan(pi a v / 2) / pi
    return (a / 2.0) / (1.0 + (math.pi * a * v / 2.0) ** 2)


SURROGATES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {"fast_sigmoid": _fast_sigmoid,
                                                                        "arctan": _arctan}


class Spike(torch.autograd.Function):
    """H(v) forward; ``derivative(v, slope)`` (one of :data:`SURROGATES`) backward."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, derivative: Callable, slope: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.derivative, ctx.slope = derivative, slope
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (v,) = ctx.saved_tensors
        return g * ctx.derivative(v, ctx.slope), None, None


def make_spike(name: str, slope: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> H(v)`` with the named surrogate gradient; ``slope`` is k (fast sigmoid) or a (arctan)."""
    if name not in SURROGATES:
        raise LenetlabError(f"unknown surrogate {name!r}; choose from: {', '.join(SURROGATES)}")
    if not slope > 0:
        raise LenetlabError(f"surrogate slope must be positive, got {slope}")
    derivative = SURROGATES[name]
    return lambda v: Spike.apply(v, derivative, slope)
