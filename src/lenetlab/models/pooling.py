"""2x2 max-pooling: faster kernels with torch's exact values and gradients.

``F.max_pool2d`` on CPU always runs the kernel that also records each window's
argmax for the backward pass. When nothing needs a gradient (evaluation,
zeroth-order forwards, the layers an ElasticZO step freezes, noise sweeps),
two strided maxima give the same values several times faster
(:func:`max_pool2x2`). When a gradient is needed (training, attacks) on a
channels-last map whose channels do not fill torch's vectors (LeNet-5's
first layer: 6), a small C forward pass (``pool_kernels.c``, built on first
use by :mod:`lenetlab.native`) finds the same maxima and the same argmax
indices, and torch's own backward kernel takes them
(:func:`max_pool2x2_train`; forward and backward of that pool, 64 images,
one thread: 0.42 ms against torch's 1.05 ms). :class:`MaxPool2x2` is
``nn.MaxPool2d(2)`` that picks the right one; while a graph is being traced
or exported it is the plain torch layer, so ONNX files are unchanged. Without
a C compiler (or with ``LENETLAB_NATIVE=0``) training uses torch's kernel,
with the same results.

Example::

    from lenetlab.models.pooling import MaxPool2x2
    pool = MaxPool2x2()
    with torch.no_grad():
        y = pool(x)            # == F.max_pool2d(x, 2), bit for bit
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lenetlab.native import Library


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


_SOURCE = Path(__file__).with_name("pool_kernels.c")
# -fno-fast-math: the NaN tests as written, also where a compiler defaults to fast math; -fno-trapping-math
# lets the compare-and-select loops vectorise (no result changes)
_LIBRARY = Library(_SOURCE, ("-std=c99", "-O3", "-shared", "-fPIC", "-fno-fast-math", "-fno-trapping-math"),
                   lambda lib: _bind(lib), "max-pooling trains on torch's kernel (slower, same results)")


def _bind(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ln_maxpool2x2_fwd.argtypes = [p, p, p, i64, i64, i64, i64]
    lib.ln_maxpool2x2_fwd.restype = ctypes.c_int


def _ours(x: torch.Tensor) -> bool:
    """Whether the C forward pass takes ``x``: a 4-D float32 CPU map densely channels-last (and not also
    contiguous, as with one channel) whose channel count is not a multiple of 8. Torch's channels-last
    kernel works on vectors of 8 or 16 channels and is faster where they fill (measured: 16 channels, 1 or 2
    threads); with LeNet-5's 6 it runs about 3x slower than these kernels (1 thread, batch 64; 1.8x with 2
    threads at batch 128). Contiguous maps stay with torch, which is faster on them too."""
    return (x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu" and x.shape[1] % 8 != 0
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


class _TrainPool(torch.autograd.Function):
    """F.max_pool2d(x, 2) with its forward pass in C (pool_kernels.c): torch's values and argmax indices bit
    for bit (tests/test_pooling.py), so the backward is torch's own kernel with those indices."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        out = torch.empty((n, c, hh // 2, ww // 2), dtype=x.dtype, memory_format=torch.channels_last)
        idx = torch.empty(out.shape, dtype=torch.int64, memory_format=torch.channels_last)
        if _LIBRARY.get().ln_maxpool2x2_fwd(x.data_ptr(), out.data_ptr(), idx.data_ptr(), n, c, hh, ww):
            raise MemoryError("max-pooling: no memory for the kernel's scratch rows")
        ctx.save_for_backward(x, idx)
        ctx.mark_non_differentiable(idx)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        x, idx = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(g, x, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                               idx)


def max_pool2x2_train(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` where a gradient is wanted: the C forward pass where it is faster (:func:`_ours`)
    and built, torch's op otherwise; the same values and gradients either way."""
    if _ours(x) and _LIBRARY.get() is not None:
        return _TrainPool.apply(x)
    return F.max_pool2d(x, 2)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` whose forward uses :func:`max_pool2x2` when its input needs no gradient and
    :func:`max_pool2x2_train` when it does: torch's outputs and gradients; while a graph is traced or
    exported it is torch's layer."""

    row_wise = True    # each sample pooled on its own (lenetlab.noise.inject.row_wise)

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _tracing():
            return super().forward(x)
        if x.requires_grad and torch.is_grad_enabled():
            return max_pool2x2_train(x)
        return max_pool2x2(x)


__all__ = ["MaxPool2x2", "max_pool2x2", "max_pool2x2_train"]
