"""Spike functions with surrogate gradients (Lin & Sengupta 2025, PAPERS.md section 1).

The forward pass of a spiking neuron is the Heaviside step ``s = H(v)`` of
its shifted membrane ``v = u - theta``; its true derivative is zero almost
everywhere, so training (and white-box attacks) use a smooth stand-in in the
backward pass only - the snnTorch convention:

- ``fast_sigmoid``: ds/dv = 1 / (k |v| + 1)^2  (Zenke & Ganguli's SuperSpike);
- ``arctan``:       ds/dv = (a / 2) / (1 + (pi a v / 2)^2).

They are ``torch.autograd.Function``s with a small factory, as every custom
gradient in lenetlab is (STYLE principle 6).

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


class FastSigmoidSpike(torch.autograd.Function):
    """H(v) forward; 1/(k|v|+1)^2 backward."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.slope = slope
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (v,) = ctx.saved_tensors
        return g / (ctx.slope * v.abs() + 1.0) ** 2, None


class ArctanSpike(torch.autograd.Function):
    """H(v) forward; (a/2)/(1+(pi a v/2)^2) backward (the derivative of arctan(pi a v/2)/pi)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.alpha = alpha
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (v,) = ctx.saved_tensors
        a = ctx.alpha
        return g * (a / 2.0) / (1.0 + (math.pi * a * v / 2.0) ** 2), None


SURROGATES = {"fast_sigmoid": FastSigmoidSpike, "arctan": ArctanSpike}


def make_spike(name: str, slope: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> H(v)`` with the named surrogate gradient; ``slope`` is k (fast sigmoid) or a (arctan)."""
    if name not in SURROGATES:
        raise LenetlabError(f"unknown surrogate {name!r}; choose from: {', '.join(SURROGATES)}")
    if not slope > 0:
        raise LenetlabError(f"surrogate slope must be positive, got {slope}")
    fn = SURROGATES[name]
    return lambda v: fn.apply(v, slope)
