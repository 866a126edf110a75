"""Lower a trained PyTorch LeNet-5 to the flat layer list (float32).

Each supported model family gets one small function that walks its forward in
order and emits :class:`~lenetlab.deploy.flat.Layer` records; the runtimes
then never see PyTorch. ``lenet5`` (any activation, max/avg pooling, any
width, padded C1) and ``lenet5_classic`` (C3 table, trainable subsampling,
RBF output) are supported; anything else is a clear error.

Example::

    from lenetlab.deploy.graph import to_flat
    fm = to_flat(model, data_cfg)          # a FlatModel with float32 arrays
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lenetlab.config import DataConfig
from lenetlab.data.transforms import scale_shift
from lenetlab.deploy.flat import ACT_CODES, FlatModel, Layer, out_shape
from lenetlab.errors import LenetlabError
from lenetlab.models import activations as A


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().reshape(-1).copy()


def act_name(module: nn.Module) -> str:
    """The flat-format activation name of an activation module."""
    table = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SELU: "selu",
             nn.Identity: "identity", A.ScaledTanh: "scaled_tanh", A.Abs: "abs"}
    for cls, name in table.items():
        if type(module) is cls:
            assert name in ACT_CODES
            return name
    raise LenetlabError(f"activation {type(module).__name__} has no flat-format code")


class _Builder:
    def __init__(self, shape: tuple[int, int, int]):
        self.shape = shape
        self.layers: list[Layer] = []

    def add(self, op: str, out_c: int = 0, k: int = 0, pad: int = 0, act: str = "identity", **arrays) -> None:
        outs = out_shape(op, self.shape, out_c, k, pad)
        self.layers.append(Layer(op, self.shape, outs, act, 32, k, pad, 1.0,
                                 {n: a for n, a in arrays.items() if a is not None}))
        self.shape = outs

    def conv(self, conv: nn.Module, weight: torch.Tensor | None = None, table: np.ndarray | None = None) -> None:
        if weight is not None:   # C3: dense kernel (zeros off the table) + the table itself
            self.add("conv", weight.shape[0], weight.shape[2], 0, w=_np(weight), b=_np(conv.bias), t=table)
            return
        square = conv.kernel_size[0] == conv.kernel_size[1]
        if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or not square:
            raise LenetlabError("only square, stride-1, ungrouped convolutions export to the flat format")
        w = conv.weight
        b = conv.bias if conv.bias is not None else torch.zeros(w.shape[0])
        self.add("conv", w.shape[0], w.shape[2], conv.padding[0], w=_np(w), b=_np(b), t=table)


def _lenet5(model: nn.Module) -> list[Layer]:
    b = _Builder(tuple(model.input_shape))
    pool = "maxpool" if isinstance(model.pool, nn.MaxPool2d) else "avgpool"
    for conv, act in ((model.conv1, model.act1), (model.conv2, model.act2)):
        b.conv(conv)
        if model.pool_first:
            b.add(pool, k=2)
            b.add("act", act=act_name(act))
        else:
            b.add("act", act=act_name(act))
            b.add(pool, k=2)
    for fc, act in ((model.fc1, model.act3), (model.fc2, model.act4), (model.fc3, None)):
        b.add("dense", fc.out_features, w=_np(fc.weight), b=_np(fc.bias))
        if act is not None:
            b.add("act", act=act_name(act))
    return b.layers


def _classic(model: nn.Module) -> list[Layer]:
    from lenetlab.models.classic import C3_TABLE

    b = _Builder(tuple(model.input_shape))
    sq = act_name(model.squash)
    b.conv(model.c1)
    b.add("act", act=sq)
    b.add("subsample", k=2, w=_np(model.s2.coef), b=_np(model.s2.bias))
    b.add("act", act=sq)
    table = np.zeros((len(C3_TABLE), 6), np.uint8)
    for o, ins in enumerate(C3_TABLE):
        table[o, list(ins)] = 1
    b.conv(model.c3, weight=model.c3.dense_weight(), table=table.reshape(-1))
    b.add("act", act=sq)
    b.add("subsample", k=2, w=_np(model.s4.coef), b=_np(model.s4.bias))
    b.add("act", act=sq)
    b.conv(model.c5)
    b.add("act", act=sq)
    b.add("dense", model.f6.out_features, w=_np(model.f6.weight), b=_np(model.f6.bias))
    b.add("act", act=sq)
    b.add("rbf", model.out.centres.shape[0], w=_np(model.out.centres))
    return b.layers


def to_flat(model: nn.Module, data: DataConfig) -> FlatModel:
    """A float32 :class:`FlatModel` computing exactly ``model``'s logits."""
    from lenetlab.models.classic import LeNet5Classic
    from lenetlab.models.lenet5 import LeNet5

    if hasattr(model, "materialize"):
        # a compressed model (lenetlab.compress: TT / ADTN layers) ships the dense weights it represents
        model = model.materialize()
    if isinstance(model, LeNet5Classic):
        layers = _classic(model)
    elif isinstance(model, LeNet5):
        if model.input_shape[0] != 1:
            raise LenetlabError("the flat format takes single-channel (grey) images")
        layers = _lenet5(model)
    else:
        raise LenetlabError(f"model {getattr(model, 'model_name', type(model).__name__)!r} "
                            "has no flat-format exporter (supported: lenet5 and its variants, lenet5_classic)")
    a, s = scale_shift(data)
    c, h, w = layers[0].in_shape
    img = (h - 2 * data.pad, w - 2 * data.pad)
    if img[0] < 1:
        raise LenetlabError("model input is smaller than the data padding")
    return FlatModel("float32", img, data.pad, layers[-1].out_shape[0], float(a), float(s), layers)
