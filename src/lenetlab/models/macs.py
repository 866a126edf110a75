"""Multiply-accumulate (MAC) counter for every registered model.

Rohlfs (2022/23, docs/papers/cascade.md) measures the compute of a model cascade
as cumulative MACs ("LeNet-5 ~0.43 M MACs"); ``lenetlab info`` prints the same
count. One forward pass of a single image (batch 1, the model's
``input_shape``) is traced with forward hooks on every leaf layer, so layers
used twice (LeNet-5's shared pooling module) are counted at every call.

The convention, per image:

- **MACs** (the ``total``) are the multiply-accumulates of the weight layers:
  ``Conv2d``: output elements x in_channels/groups x kh x kw;
  ``Linear``: output elements x in_features;
  ``SparseConv`` (1998 C3): output pixels x kh x kw x the *connected* input
  maps only (60 of the 96 pairs: 150,000 MACs, not the dense 240,000);
  ``RBFOutput``: one squared-difference accumulate per centre coordinate
  (84 x 10); ``Subsampling`` (1998 S2/S4): one coefficient multiply per output
  unit. Any other leaf layer is counted from PyTorch's own FLOP counter
  (aten convolution/matmul FLOPs / 2) - e.g. the fixed PCA projection of
  ``pca_logreg`` - and so is arithmetic a model does outside its layers.
- **Not in the MACs**, reported separately in ``other_ops``: bias additions
  (one per output element of a layer with a bias), pooling (one add or
  compare per input element read: 4 per 2x2 output) including the 2x2 sums
  of ``Subsampling``, and activations (one per element).

The same convention counts a deployed *flat* model (``docs/flat-format.md``)
layer by layer: :func:`flat_layer_macs` / :func:`flat_macs`, built on
:func:`row_macs` (MACs per output position of each output row, which the
integer engine, the NVF protection costs and the fused-layer counts use too).
The tests check these against :func:`count_macs` on every registered model
that exports to the flat format, layer by layer.

For the modern LeNet-5 at 28x28 with the padded C1 this gives 416,520 MACs
(C1 117,600 + C3 240,000 + F5 48,000 + F6 10,080 + out 840); with bias
additions (6,518) and tanh/avg-pool pooling reads (6,304) it is 429,342 - the
paper's "~0.43 M" matches the latter, or the MACs rounded up.

Example::

    from lenetlab.models import create_model
    from lenetlab.models.macs import count_macs
    r = count_macs(create_model("lenet5"))
    r.total            # 416520
    r.table()          # per-layer rows
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lenetlab.errors import LenetlabError
from lenetlab.models.classic import RBFOutput, SparseConv, Subsampling

if TYPE_CHECKING:
    from lenetlab.deploy.flat import FlatModel, Layer

CONVENTION = ("MACs = multiply-accumulates of conv/linear/RBF/subsampling-coefficient layers, per image; "
              "sparse C3 counts connected map pairs only; bias adds, pooling reads and activations are "
              "counted separately (other_ops), not in MACs")

_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
         nn.LPPool2d)
_FREE = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)   # reshapes and eval-mode no-ops: 0 ops


@dataclass
class LayerMacs:
    name: str            # module path ("conv1"), "#2" appended for a second call of the same module
    kind: str            # the layer's class name
    macs: int
    other_ops: int
    output_shape: tuple[int, ...]
    rule: str            # how it was counted ("conv", "sparse conv (connected pairs)", "flop counter", ...)


@dataclass
class MacReport:
    total: int                                   # MACs per image (the convention above)
    other_ops: dict[str, int]                    # bias / pooling / activation ops per image, not in ``total``
    layers: list[LayerMacs] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    dense_equivalent: int = 0                    # PyTorch's FLOP counter / 2 (dense C3, no sparsity)
    convention: str = CONVENTION

    def table(self) -> list[dict[str, Any]]:
        return [{"layer": r.name, "kind": r.kind, "macs": r.macs, "other_ops": r.other_ops,
                 "output": "x".join(map(str, r.output_shape)), "rule": r.rule} for r in self.layers]


def _numel(shape: torch.Size | tuple[int, ...]) -> int:
    # The trace runs ONE image, so every element of a layer's output belongs to it - including the T time
    # steps a spiking model folds into the batch dimension or stacks in front of it (lenet5_snn).
    return int(math.prod(shape))


def _layer_count(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, dict[str, int], str] | None:
    """(macs, other ops by kind, rule) for the layer types counted by hand; None: not one of them."""
    out = _numel(y.shape)
    bias = {"bias": out if getattr(m, "bias", None) is not None else 0}
    if isinstance(m, SparseConv):
        pairs = int(m.index.numel())                     # connected (out map, in map) pairs
        per_pair = out // m.out_ch * m.k * m.k
        return pairs * per_pair, bias, "sparse conv: connected map pairs x out pixels x kh x kw"
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return out * (m.in_channels // m.groups) * kh * kw, bias, "conv: out elements x in/groups x kh x kw"
    if isinstance(m, nn.Linear):
        return out * m.in_features, bias, "linear: out elements x in features"
    if isinstance(m, RBFOutput):
        n_centres, dim = m.centres.shape
        return n_centres * dim, {}, "rbf: one squared difference per centre coordinate"
    if isinstance(m, Subsampling):
        # 2x2 sum (4 reads, other ops) -> times the coefficient (1 MAC) -> plus the bias (1 add)
        return out, {"pooling": _numel(x.shape), **bias}, "subsampling: 1 coefficient MAC per output"
    if isinstance(m, _POOL):
        return 0, {"pooling": _numel(x.shape)}, "pooling: 1 add/compare per input element"
    if isinstance(m, _FREE):
        return 0, {}, "reshape / no-op"
    return None


def _has_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> MacReport:
    """Count MACs per image of ``model`` (see the module docstring for the convention).

    ``input_shape`` (C, H, W) defaults to ``model.input_shape``. The model is
    run once in eval mode on zeros and left in the mode it was in.
    """
    shape = tuple(input_shape or getattr(model, "input_shape", ()) or ())
    if not shape:
        raise LenetlabError(f"{type(model).__name__} has no input_shape; pass input_shape=(C, H, W)")
    leaves = {mod: name for name, mod in model.named_modules() if not any(True for _ in mod.children())}
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    seen: dict[str, int] = {}

    def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
        name = leaves[mod] or type(mod).__name__
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        if isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
            calls.append((label, mod, inputs[0], output))

    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        param = next(iter(model.parameters()), None)
        x = torch.zeros(1, *shape, device=param.device if param is not None else "cpu")
        with FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    flops = fc.get_flop_counts()
    root = type(model).__name__

    def flop_macs(name: str) -> int:
        return int(sum(flops.get(f"{root}.{name}" if name else root, {}).values())) // 2

    report = MacReport(total=0, other_ops={"bias": 0, "pooling": 0, "activation": 0}, input_shape=shape,
                       dense_equivalent=int(fc.get_total_flops()) // 2)
    counted_by_flops: set[str] = set()
    for label, mod, inp, out in calls:
        name = leaves[mod]
        hand = _layer_count(mod, inp, out)
        if hand is not None:
            macs, other, rule = hand
        elif _has_state(mod) or flop_macs(name):
            # a layer we do not know: PyTorch's FLOP counter (its count covers every call of the module)
            macs = 0 if name in counted_by_flops else flop_macs(name)
            counted_by_flops.add(name)
            other, rule = {}, "flop counter: aten FLOPs / 2"
        else:
            # a parameter-free elementwise layer (an activation): one op per output element
            macs, other, rule = 0, {"activation": _numel(out.shape)}, "activation: 1 op per element"
        for k, v in other.items():
            report.other_ops[k] += v
        report.layers.append(LayerMacs(label, type(mod).__name__, macs, sum(other.values()),
                                       tuple(out.shape[1:]), rule))
        report.total += macs
    outside = report.dense_equivalent - sum(flop_macs(name) for name in set(leaves.values()))
    if outside > 0:
        # matmuls/convolutions a model's forward does itself, outside any leaf layer
        report.layers.append(LayerMacs("(outside layers)", root, outside, 0, (), "flop counter: aten FLOPs / 2"))
        report.total += outside
    return report


def macs_of(model: nn.Module) -> int:
    """MACs per image, the number ``lenetlab info`` prints (see :func:`count_macs`)."""
    return count_macs(model).total


# ---------------------------------------------------------------- flat models (the same convention)
def row_macs(op: str, rows: int, fan_in: int, keep: np.ndarray | None = None) -> np.ndarray:
    """MACs per output position of each of ``rows`` output rows (channels) of a layer with weights.

    ``conv`` / ``dense``: the row's connected fan-in (``keep`` (rows, fan_in) 0/1 marks connected taps, as a
    connection table does; None: all ``fan_in``); ``subsample``: 1 (the coefficient multiply); ``rbf``: one
    squared-difference accumulate per centre coordinate (``fan_in``); any other op: 0.
    """
    if op in ("conv", "dense"):
        if keep is not None:
            return np.asarray(keep).reshape(rows, -1).sum(axis=1).astype(np.int64)
        return np.full(rows, fan_in, np.int64)
    if op == "rbf":
        return np.full(rows, fan_in, np.int64)
    if op == "subsample":
        return np.ones(rows, np.int64)
    return np.zeros(rows, np.int64)


def flat_position_macs(layer: Layer) -> int:
    """MACs per output pixel position (all channels) of one flat-format layer (0 for pools / activations)."""
    rows = layer.out_shape[0]
    if layer.op == "conv":
        ic, kk = layer.in_shape[0], layer.k * layer.k
        t = layer.arrays.get("t")
        keep = np.repeat(np.asarray(t).reshape(rows, ic), kk, axis=1) if t is not None and t.size else None
        return int(row_macs("conv", rows, ic * kk, keep).sum())
    return int(row_macs(layer.op, rows, math.prod(layer.in_shape)).sum())


def flat_layer_macs(layer: Layer) -> int:
    """MACs per image of one flat-format layer, by :func:`count_macs`'s convention."""
    return flat_position_macs(layer) * layer.out_shape[1] * layer.out_shape[2]


def flat_macs(fm: FlatModel) -> int:
    """MACs per image of a flat model (float32 or int8: the same layers, the same count)."""
    return sum(flat_layer_macs(layer) for layer in fm.layers)
