"""2x2 max-pooling without the argmax bookkeeping where no gradient is asked for.

``F.max_pool2d`` on CPU always runs the kernel that also records each window's
argmax for the backward pass. When nothing needs a gradient (evaluation,
zeroth-order forwards, the layers an ElasticZO step freezes, noise sweeps),
two strided maxima give the same values several times faster
(:func:`max_pool2x2`). :class:`MaxPool2x2` is ``nn.MaxPool2d(2)`` that does
so: with a gradient, or while a graph is being traced or exported, it is the
plain torch layer, so training, attacks and ONNX files are unchanged.

Example::

    from lenetlab.models.pooling import MaxPool2x2
    pool = MaxPool2x2()
    with torch.no_grad():
        y = pool(x)            # == F.max_pool2d(x, 2), bit for bit
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` (floor mode) as two strided maxima: the same values, NaN propagated alike
    (tests/test_noise_fast.py), several times faster on CPU than the kernel that also tracks argmax indices.
    Works for floating and integer tensors."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    # pairs of rows first (each operand a run of whole contiguous rows), then pairs of columns of a map half
    # the size: about 1.8x faster on LeNet-5's 6x28x28 maps than columns first
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _tracing() -> bool:
    """Whether a graph is being captured (TorchScript tracing, torch.compile / torch.export, ONNX export):
    then the layer stays torch's own op, so exported files keep a MaxPool node."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    onnx = sys.modules.get("torch.onnx")        # not imported: nothing is being exported
    return bool(onnx is not None and onnx.is_in_onnx_export())


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` whose forward uses :func:`max_pool2x2` when its input needs no gradient (and no
    graph is being traced): the same outputs; with a gradient it is torch's layer, so backward is torch's."""

    row_wise = True    # each sample pooled on its own (lenetlab.noise.inject.row_wise)

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.requires_grad and torch.is_grad_enabled()) or _tracing():
            return super().forward(x)
        return max_pool2x2(x)


__all__ = ["MaxPool2x2", "max_pool2x2"]
