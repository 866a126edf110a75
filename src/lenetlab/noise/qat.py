"""Quantisation-aware training with *constant* activation scaling (Wang et al. 2025, docs/papers/noise.md).

- weights: b-bit signed, ``scale = max|w| / (2^(b-1) - 1)``, per output channel
  for convolutions and per tensor for linear layers;
- activations (the output of every activation module):
  ``y = s * clamp(round(relu(x) / s), 0, 2^b - 1)`` with a fixed ``s`` - the
  constant scale the paper sweeps (0.25 ... 512) instead of a learned one;
- straight-through estimator: rounding passes gradients unchanged; the
  activation clamp passes them only inside [0, (2^b - 1) s] (clipped STE).

Weight fake-quant uses ``torch.nn.utils.parametrize``; :meth:`QATWrapper.remove`
restores plain float ("shadow") weights, so a saved QAT run loads into the
plain model and is evaluated with QAT re-applied from its config.

Example::

    from lenetlab.noise import apply_qat
    q = apply_qat(model, bits=8, act_scale=2.0)
    logits = model(x)           # fake-quantised forward, STE backward
    q.remove()                  # back to the float model
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from lenetlab.errors import LenetlabError
from lenetlab.noise.inject import leaf_sites


class _RoundSTE(torch.autograd.Function):
    """round() forward, identity backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g


class _ActQuantSTE(torch.autograd.Function):
    """s * clamp(round(relu(x) / s), 0, qmax) forward; gradient passed where 0 < x < qmax * s."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: float, qmax: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.hi = qmax * s
        return s * torch.clamp(torch.round(torch.relu(x) / s), 0, qmax)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return g * ((x > 0) & (x < ctx.hi)).to(g.dtype), None, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """Symmetric max-scaled fake-quant of ``w`` (per output channel if ``per_channel``), STE gradient."""
    qmax = 2 ** (bits - 1) - 1
    if per_channel:
        m = w.detach().abs().flatten(1).amax(1).view(-1, *([1] * (w.dim() - 1)))
    else:
        m = w.detach().abs().amax()
    scale = torch.where(m > 0, m / qmax, torch.ones_like(m))
    return torch.clamp(round_ste(w / scale), -qmax, qmax) * scale


def quantize_act(x: torch.Tensor, bits: int, scale: float) -> torch.Tensor:
    return _ActQuantSTE.apply(x, scale, 2 ** bits - 1)


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise LenetlabError(f"QAT bit width must be an integer in 2..16, got {bits!r}")
    return bits


def check_scale(scale: float) -> float:
    scale = float(scale)
    if not (scale > 0 and scale != float("inf")):
        raise LenetlabError(f"activation scale must be a finite number > 0, got {scale}")
    return scale


class _WeightQuant(nn.Module):
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise
    def __init__(self, bits: int, per_channel: bool):
        super().__init__()
        self.bits, self.per_channel = bits, per_channel

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return quantize_weight(w, self.bits, self.per_channel)


class QATWrapper:
    """Fake-quant on ``model``'s conv/linear weights and activation outputs; :meth:`remove` undoes it."""

    def __init__(self, model: nn.Module, bits: int, act_scale: float = 1.0):
        self.model = model
        self.bits = check_bits(bits)
        self.act_scale = check_scale(act_scale)
        self._handles: list[Any] = []
        self._param_modules: list[nn.Module] = []
        self._orders: dict[nn.Module, list[str]] = {}
        for _, m, kind in leaf_sites(model):
            if kind in ("conv", "linear") and "weight" in m._parameters:
                # (a composite layer whose weight is generated, e.g. a TT layer, has no weight to fake-quantise)
                self._orders[m] = list(m._parameters)
                parametrize.register_parametrization(m, "weight", _WeightQuant(self.bits, kind == "conv"))
                self._param_modules.append(m)
            elif kind == "act":
                self._handles.append(m.register_forward_hook(self._act_hook))

    def _act_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return quantize_act(out, self.bits, self.act_scale)

    def remove(self) -> None:
        """Drop the fake-quant; the model keeps its float (shadow) weights under the plain names."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self._param_modules:
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            # re-insert in the original order, so state_dict() and parameters() look exactly as before
            for k in self._orders.get(m, []):
                if k in m._parameters:
                    m._parameters[k] = m._parameters.pop(k)
        self._param_modules.clear()

    def __enter__(self) -> QATWrapper:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def apply_qat(model: nn.Module, bits: int, act_scale: float = 1.0) -> QATWrapper:
    """Put constant-scale fake-quant on ``model`` (see module docstring)."""
    return QATWrapper(model, bits, act_scale)
