"""LeNet-5's two convolution blocks (conv 5x5 -> ReLU -> 2x2 max-pool, twice) for training, in C.

In a LeNet-5 training step on the CPU most of the time goes to the two
convolution blocks: torch runs general convolutions (oneDNN) on maps with
few channels (6 and 16), max-pools that record every window's argmax, ReLUs,
and in the backward pass dense convolutions over gradient maps that are
three-quarters zeros (only each pooling window's winner gets a gradient).
``convblocks.c`` computes the whole feature extractor in one call each
way: the forward pass writes each pooled map and its windows' winners; the
backward pass visits the winners only and returns the four weight and bias
gradients (the image needs none). Forward and backward of the two blocks, 64
MNIST images, one thread: 2.3 ms against torch's 4.1 ms here
(benchmarks/conv_blocks.py).

The numbers are not torch's bit for bit (the sums run in another order, with
fused multiply-adds), so this is opt-in: ``train.native_convs=true`` (the ``sprint``
preset sets it); the trainer refuses it for models it does not fit
(:func:`check`). Values and gradients are checked against torch's layers in
tests/test_convblocks.py. It is used only where a gradient is wanted and the
input itself needs none (an attack's input gradient runs torch's layers).
Without a C compiler torch's layers run, with one warning; ``LENETLAB_NATIVE=0``
turns the kernels off (torch's layers, no warning).

Example::

    from lenetlab.models import convblocks, create_model
    model = create_model("lenet5")
    f = convblocks.features(x, model.conv1, model.conv2)   # == model.features(x), with gradients for the convs
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lenetlab.errors import LenetlabError
from lenetlab.native import Library

_SOURCE = Path(__file__).with_name("convblocks.c")
# -ffp-contract=fast: fused multiply-adds; -fno-trapping-math lets the pooling selects vectorise
_FLAGS = ("-std=c99", "-O3", "-shared", "-fPIC", "-fno-fast-math", "-fno-trapping-math", "-ffp-contract=fast")
_LIBRARY = Library(_SOURCE, _FLAGS, lambda lib: _bind(lib),
                   "LeNet-5's convolution blocks train on torch's layers (slower)")


def _bind(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ln_convblocks_fwd.argtypes = [p] * 9 + [i64] * 6
    lib.ln_convblocks_bwd.argtypes = [p] * 10 + [i64] * 6
    lib.ln_convblocks_fwd.restype = lib.ln_convblocks_bwd.restype = ctypes.c_int


def _geometry(h: int, w: int, pad: int) -> tuple[int, int, int, int, int]:
    """Block 1's pooled rows, columns and row stride in the kernels' layout; block 2's pooled rows, columns."""
    q1h, q1w = (h + 2 * pad - 4) // 2, (w + 2 * pad - 4) // 2
    return q1h, q1w, q1w + 8, (q1h - 4) // 2, (q1w - 4) // 2


class _Features(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                pad: int) -> torch.Tensor:
        n, _, h, w = x.shape
        c1, c2 = w1.shape[0], w2.shape[0]
        q1h, q1w, s1, q2h, q2w = _geometry(h, w, pad)
        # every tensor handed to C kept in a local: a temporary's memory could go before the call
        x = x.contiguous()
        w1c, b1c = w1.detach().contiguous(), b1.detach().contiguous()
        w2c, b2c = w2.detach().contiguous(), b2.detach().contiguous()
        m1 = torch.empty((n, c1, q1h, s1), dtype=torch.float32)
        a1 = torch.empty((n, c1, q1h, q1w), dtype=torch.uint8)
        feat = torch.empty((n, c2 * q2h * q2w), dtype=torch.float32)
        a2 = torch.empty((n, c2, q2h, q2w), dtype=torch.uint8)
        if _LIBRARY.get().ln_convblocks_fwd(x.data_ptr(), w1c.data_ptr(), b1c.data_ptr(), w2c.data_ptr(),
                                            b2c.data_ptr(), m1.data_ptr(), a1.data_ptr(), feat.data_ptr(),
                                            a2.data_ptr(), n, c1, c2, h, w, pad):
            raise MemoryError("LeNet-5 conv blocks: no memory for the kernels' scratch")
        ctx.save_for_backward(x, w2c, m1, a1, a2)
        ctx.pad, ctx.shapes = pad, (w1.shape, w2.shape)
        return feat

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, w2c, m1, a1, a2 = ctx.saved_tensors
        n, _, h, w = x.shape
        s1, s2 = ctx.shapes
        g = g.contiguous()
        dw1, dw2 = torch.empty(s1, dtype=torch.float32), torch.empty(s2, dtype=torch.float32)
        db1, db2 = torch.empty(s1[0], dtype=torch.float32), torch.empty(s2[0], dtype=torch.float32)
        if _LIBRARY.get().ln_convblocks_bwd(x.data_ptr(), w2c.data_ptr(), m1.data_ptr(), a1.data_ptr(), a2.data_ptr(),
                                       g.data_ptr(), dw1.data_ptr(), db1.data_ptr(), dw2.data_ptr(), db2.data_ptr(),
                                       n, s1[0], s2[0], h, w, ctx.pad):
            raise MemoryError("LeNet-5 conv blocks: no memory for the kernels' scratch")
        return None, dw1, db1, dw2, db2, None


def features(x: torch.Tensor, conv1: nn.Conv2d, conv2: nn.Conv2d) -> torch.Tensor:
    """``flatten(relu(pool(conv2(relu(pool(conv1(x)))))), 1)`` (2x2 max-pools) with gradients for the two
    convolutions' weights and biases: in C where built and :func:`fits`, by torch's ops otherwise."""
    if _LIBRARY.get() is None or not fits(x, conv1, conv2):
        for conv in (conv1, conv2):
            x = F.relu(F.max_pool2d(conv(x), 2))
        return torch.flatten(x, 1)
    return _Features.apply(x, conv1.weight, conv1.bias, conv2.weight, conv2.bias, conv1.padding[0])


def fits(x: torch.Tensor, conv1: nn.Conv2d, conv2: nn.Conv2d) -> bool:
    """Whether the kernels take this batch and these layers (anything else runs torch's ops, so a direct call
    never hands the C code a size it does not expect): x B x 1 x H x W float32 on the CPU with no gradient
    wanted for it (attacks want one: torch's layers), two plain 5x5 convolutions (:func:`_convs_fit`) with
    float32 CPU weights, maps large enough for both blocks."""
    if not (x.dim() == 4 and x.shape[1] == 1 and x.dtype == torch.float32 and x.device.type == "cpu"
            and not x.requires_grad and len(x)) or _convs_fit(conv1, conv2) is not None:
        return False
    if not all(t.dtype == torch.float32 and t.device.type == "cpu"
               for conv in (conv1, conv2) for t in (conv.weight, conv.bias)):
        return False
    _, _, _, q2h, q2w = _geometry(x.shape[2], x.shape[3], conv1.padding[0])
    return q2h >= 1 and q2w >= 1


def _convs_fit(conv1: nn.Module, conv2: nn.Module) -> str | None:
    """None where the kernels compute these two layers (torch's Conv2d, 5x5, stride 1, biases, the first on
    one input channel with equal padding on both sides, the second unpadded on the first's channels, weights
    of those shapes); else why not."""
    if not all(type(c) is nn.Conv2d and c.kernel_size == (5, 5) and c.stride == (1, 1) and c.dilation == (1, 1)
               and c.groups == 1 and c.bias is not None and c.padding_mode == "zeros"
               and isinstance(c.padding, tuple) and c.padding[0] == c.padding[1] for c in (conv1, conv2)):
        return "its convolutions are not plain 5x5 ones with biases"
    c1, c2 = conv1.out_channels, conv2.out_channels
    if conv1.in_channels != 1 or conv2.in_channels != c1 or conv2.padding != (0, 0) \
            or conv1.weight.shape != (c1, 1, 5, 5) or conv2.weight.shape != (c2, c1, 5, 5) \
            or conv1.bias.shape != (c1,) or conv2.bias.shape != (c2,):
        return "its convolutions are not one input channel first, then an unpadded one on its channels"
    return None


def check(model: nn.Module, plugin_names: Sequence[str] = (), device: torch.device | None = None) -> None:
    """Raise LenetlabError unless ``model`` is a LeNet-5 whose feature extractor the kernels compute as its
    layers do: torch's Conv2d (5x5, stride 1, one input channel first) -> ReLU -> 2x2 max-pool, twice, no
    hooks; no training plugins (they hook or change layers); on the CPU."""
    from lenetlab.models.lenet5 import LeNet5
    from lenetlab.models.pooling import MaxPool2x2

    why = None
    if device is not None and device.type != "cpu":
        why = f"the kernels run on the CPU, not {device.type}"
    elif plugin_names:
        why = f"the training plugins {', '.join(plugin_names)} hook or change layers the kernels would bypass"
    elif not isinstance(model, LeNet5):
        why = f"{type(model).__name__} is not a LeNet-5"
    else:
        layers = (model.conv1, model.act1, model.conv2, model.act2, model.pool)
        if type(model.act1) is not nn.ReLU or type(model.act2) is not nn.ReLU or type(model.pool) is not MaxPool2x2:
            why = "its blocks are not ReLU with max-pooling"
        elif any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in layers):
            why = "its layers have hooks, which the kernels would bypass"
        else:
            why = _convs_fit(model.conv1, model.conv2)
    if why:
        raise LenetlabError(f"train.native_convs=true runs LeNet-5's convolution blocks in C; {why}: use "
                            "train.native_convs=false")


__all__ = ["check", "features", "fits"]
