"""The custom backward passes of the local learning rules, together (STYLE principle 6).

- :class:`FALinear` / :class:`FAConv2d`: the true forward of a linear / conv
  layer; the backward sends ``B^T delta`` (a fixed random B of W's shape) to
  the layer input instead of ``W^T delta``; the weight gradient is the usual
  one (Lillicrap et al. 2016).
- :class:`CaptureError`: identity on the model output; its backward records
  the output error ``e = dL/dz`` (and the target ``t = softmax(z) - N e``
  implied by a mean-reduced cross-entropy) for the hidden layers.
- :class:`DFAInject`: identity on a hidden block's output; its backward
  *replaces* the gradient coming from above by ``B_l e`` (Noekland 2016).
- :class:`LEInject`: identity on a hidden block's output; its backward
  replaces the gradient from above by the gradient of the block's own loss
  ``CE(G_l h_l, t)`` through a fixed random classifier G_l (Mostafa et al.
  2018; Kaiser et al. 2020, DECOLLE).

DFA and LE therefore send nothing across layers: the gradient that arrives
from the layer above is dropped at the injection point.

For a spiking model the block output is time-major (T, B, ...): the DFA
signal is spread evenly over the T steps (as the mean-membrane readout
spreads the output error), and LE's local classifier reads the firing rate
(the mean over T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight


class FALinear(torch.autograd.Function):
    """y = x W^T + b; dL/dx = delta B (not delta W). x may have leading dims (..., in)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(x, weight, feedback)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, feedback = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g2 @ feedback).reshape(x.shape)
        gw = g2.t() @ x.reshape(-1, x.shape[-1])
        gb = g2.sum(0) if ctx.has_bias else None
        return gx, gw, gb, None


class FAConv2d(torch.autograd.Function):
    """conv2d forward; the input gradient is the transposed convolution with B instead of W."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight, feedback)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, weight, feedback = ctx.saved_tensors
        conf = ctx.conf
        gx = conv2d_input(x.shape, feedback, g, *conf)
        gw = conv2d_weight(x, weight.shape, g, *conf)
        gb = g.sum((0, 2, 3)) if ctx.has_bias else None
        return gx, gw, gb, None, None, None, None, None


class ErrorBox:
    """Per-rule holder of the latest output error, written by CaptureError's backward."""

    def __init__(self, rule: str):
        self.rule = rule
        self.e: torch.Tensor | None = None
        self.target: torch.Tensor | None = None

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.e is None or self.target is None:
            raise RuntimeError(f"rule {self.rule!r}: no output error; the loss must be computed from the "
                               "model's output")
        return self.e, self.target


class CaptureError(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, box: ErrorBox):
        box.e = box.target = None          # a new forward: the previous error is stale
        ctx.box = box
        ctx.save_for_backward(torch.softmax(logits.detach().float(), 1))
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        # mean-reduced CE: e = (softmax(z) - t) / N, so t = softmax(z) - N e (exact, label smoothing included)
        ctx.box.e = g.detach()
        ctx.box.target = p - g.detach() * g.shape[0]
        return g, None


def _spread(d: torch.Tensor, shape: torch.Size, time_major: bool) -> torch.Tensor:
    """(B, F) signal -> the block output's shape, spread evenly over T if time-major."""
    if time_major:
        return (d / shape[0]).reshape(shape[1:]).unsqueeze(0).expand(shape).contiguous()
    return d.reshape(shape)


class DFAInject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, feedback, box: ErrorBox, time_major: bool):
        ctx.box, ctx.time_major, ctx.shape = box, time_major, h.shape
        ctx.save_for_backward(feedback)
        return h.view_as(h)

    @staticmethod
    def backward(ctx, g):           # g (the gradient from the layer above) is dropped on purpose
        (feedback,) = ctx.saved_tensors
        e, _ = ctx.box.get()
        return _spread((e @ feedback).to(g.dtype), ctx.shape, ctx.time_major), None, None, None


class LEInject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, head, box: ErrorBox, time_major: bool):
        ctx.box, ctx.time_major = box, time_major
        ctx.save_for_backward(h, head)
        return h.view_as(h)

    @staticmethod
    def backward(ctx, g):           # g (the gradient from the layer above) is dropped on purpose
        h, head = ctx.saved_tensors
        _, target = ctx.box.get()
        r = (h.mean(0) if ctx.time_major else h).reshape(target.shape[0], -1)
        p = torch.softmax(r @ head.t(), 1)
        d = (p - target) / target.shape[0] @ head        # d CE(G r, t) / d r, mean over the batch
        return _spread(d.to(g.dtype), h.shape, ctx.time_major), None, None, None


def local_logits(h: torch.Tensor, head: torch.Tensor, time_major: bool) -> torch.Tensor:
    """The local classifier's logits for a block output (used by tests and attacks)."""
    r = h.mean(0) if time_major else h
    return r.reshape(r.shape[0], -1) @ head.t()


__all__ = ["FALinear", "FAConv2d", "ErrorBox", "CaptureError", "DFAInject", "LEInject", "local_logits"]
