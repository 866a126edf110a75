"""Integer reference engine over an int8 flat model, built for fault injection (docs/papers/faults.md).

It executes exactly the spec of ``docs/flat-format.md`` ("int8 files") with the
one int8 executor, :mod:`lenetlab.quant.int8` (the products, requantisation and
ACT / pool layers the deploy runtime runs too), so its logits are bit-identical
to :func:`lenetlab.deploy.runtime.run` (tested). What it adds is structure that
fault campaigns need:

- every layer with weights (CONV, DENSE, SUBSAMPLE, RBF) is a :class:`Stage`
  with an explicit int32 accumulator ``(N, R, P)`` (R rows = output channels,
  plus protected copies in a hardened model; P output positions), so a fault
  can hit a weight, the stage's int8 input activation, or the accumulator;
- ``forward(x, start=s)`` resumes from any stage's cached input;
- hardened models (:mod:`lenetlab.faults.harden`) add copy rows whose
  accumulators are merged (2-copy correction unit or 3-copy majority vote)
  before requantisation.

Products are exact integers (see :func:`lenetlab.quant.int8.exact_dtype`);
biases are added in 64 bits, as the spec says.

Example::

    from lenetlab.deploy import flat
    from lenetlab.quant.engine import IntEngine
    eng = IntEngine(flat.load("qrun/model_int8.flat"))
    logits = eng.run(images_u8)          # (N, 10) int64, == deploy.runtime.run
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lenetlab.deploy.flat import FlatModel
from lenetlab.deploy.runtime import prepare_input
from lenetlab.errors import LenetlabError
from lenetlab.models.macs import row_macs
from lenetlab.quant import int8
from lenetlab.quant.int8 import I32_MAX, I32_MIN, STAGE_OPS, blas_threads, requantize

__all__ = ["I32_MAX", "I32_MIN", "STAGE_OPS", "Hook", "IntEngine", "Stage", "blas_threads", "majority",
           "requantize"]

Hook = Callable[[np.ndarray], np.ndarray]


@dataclass
class Stage:
    """One layer with weights. ``w`` (R, K) holds the stored int8 weights (as int64), ``keep`` the C3 table mask."""

    flat_index: int
    op: str
    w: np.ndarray                 # (R, K) int64
    b: np.ndarray                 # (R,) int64 (zeros for RBF)
    keep: np.ndarray | None       # (R, K) 0/1 or None
    m: np.ndarray | None          # (C,) per output channel
    s: np.ndarray | None
    out_bits: int
    channels: int                 # C output channels (before copies)
    positions: int                # P
    d_in: int
    gather: np.ndarray | None = None          # conv: (P, K) im2col indices (d_in = zero cell)
    groups: list[tuple[str, int, list[int]]] = field(default_factory=list)   # (mode, channel, copy rows)

    @property
    def rows(self) -> int:
        return self.w.shape[0]

    @property
    def fan_in(self) -> int:
        return self.w.shape[1]

    def effective(self, w: np.ndarray) -> np.ndarray:
        return w if self.keep is None else w * self.keep

    def row_channel(self) -> np.ndarray:
        """Output channel each row computes (copies map to their channel)."""
        rc = np.arange(self.rows) % max(self.channels, 1)
        rc[: self.channels] = np.arange(self.channels)
        for _, c, copies in self.groups:
            rc[copies] = c
        return rc


def majority(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Bitwise 2-of-3 majority vote (a TMR voter) on integer words."""
    return (a & b) | (a & c) | (b & c)


class IntEngine:
    """Vectorised integer inference over an int8 :class:`FlatModel` (see the module docstring)."""

    def __init__(self, fm: FlatModel):
        if fm.dtype != "int8":
            raise LenetlabError("the integer engine runs int8 flat models (lenetlab quantize RUN_DIR)")
        self.fm = fm
        self.stages: list[Stage] = []
        idx = [i for i, layer in enumerate(fm.layers) if layer.op in STAGE_OPS]
        if not idx:
            raise LenetlabError("the model has no layer with weights")
        self.pre = list(range(0, idx[0]))
        self.post: list[list[int]] = []
        for j, i in enumerate(idx):
            self.stages.append(self._stage(i))
            end = idx[j + 1] if j + 1 < len(idx) else len(fm.layers)
            self.post.append(list(range(i + 1, end)))

    def _stage(self, i: int) -> Stage:
        layer = self.fm.layers[i]
        a = layer.arrays
        oc, oh, ow = layer.out_shape
        d_in = int(np.prod(layer.in_shape))
        m = a["m"].astype(np.int64) if a.get("m") is not None and a["m"].size else None
        s = a["s"].astype(np.int64) if a.get("s") is not None and a["s"].size else None
        if layer.op == "conv":
            w = a["w"].astype(np.int64).reshape(oc, -1)
            keep = None
            if a.get("t") is not None and a["t"].size:
                keep = np.repeat(a["t"].reshape(oc, layer.in_shape[0]), layer.k * layer.k, axis=1).astype(np.int64)
            return Stage(i, "conv", w, a["b"].astype(np.int64), keep, m, s, layer.out_bits, oc, oh * ow, d_in,
                         gather=int8.im2col(layer.in_shape, layer.k, layer.pad))
        if layer.op == "dense":
            return Stage(i, "dense", a["w"].astype(np.int64).reshape(oc, -1), a["b"].astype(np.int64), None, m, s,
                         layer.out_bits, oc, 1, d_in)
        if layer.op == "subsample":
            return Stage(i, "subsample", a["w"].astype(np.int64).reshape(oc, 1), a["b"].astype(np.int64), None,
                         m, s, layer.out_bits, oc, oh * ow, d_in)
        return Stage(i, "rbf", a["w"].astype(np.int64).reshape(oc, -1), np.zeros(oc, np.int64), None, None, None,
                     32, oc, 1, d_in)

    # ------------------------------------------------------------ pieces
    def input(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> int64 input of stage 0, (N, D)."""
        x = prepare_input(self.fm, images)
        for i in self.pre:
            x = int8.run_layer(self.fm.layers[i], x)
        return x

    def columns(self, st: Stage, x: np.ndarray) -> np.ndarray:
        """What each weight multiplies: conv (N, P, K) im2col; dense (N, 1, K); subsample block sums (N, C, P)."""
        if st.op == "conv":
            return int8.with_zero_cell(x)[:, st.gather]
        if st.op == "subsample":
            return int8.block_sums(x, self.fm.layers[st.flat_index].in_shape)
        return x[:, None, :]

    def acc(self, st: Stage, x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        """Accumulators (N, R, P) of stage ``st`` on its input ``x`` (weights ``w`` default to the stored ones)."""
        w = st.w if w is None else w
        layer = self.fm.layers[st.flat_index]
        if st.op == "rbf":
            return int8.rbf(x, w)[:, :, None]
        if st.op == "subsample":
            return int8.subsample(x, w[:, 0], st.b, layer.in_shape)
        if st.op == "dense":
            return int8.linear(x, st.effective(w), st.b)[:, :, None]
        return int8.conv2d(x, st.effective(w), st.b, layer.in_shape, layer.k, layer.pad)

    def merge(self, st: Stage, acc: np.ndarray) -> np.ndarray:
        """(N, R, P) -> (N, C, P): copies of protected channels are merged (correction unit / voter)."""
        if not st.groups:
            return acc
        out = acc[:, : st.channels].copy()
        for mode, c, copies in st.groups:
            rows = [acc[:, c]] + [acc[:, r] for r in copies]
            if mode == "split":
                # both halves compute y/2 exactly (same int8 codes at half the scale): LCU keeps 2*min
                out[:, c] = np.minimum(rows[0], rows[1])
            else:
                out[:, c] = majority(*rows)
        return out

    def finish(self, st: Stage, acc: np.ndarray) -> np.ndarray:
        """Merged accumulators -> the stage layer's flat output (requantised, or i32 RBF logits)."""
        acc = self.merge(st, acc)
        n = len(acc)
        if st.op == "rbf":
            return acc.reshape(n, -1)
        return requantize(acc, st.m[None, :, None], st.s[None, :, None], st.out_bits).reshape(n, -1)

    def after(self, j: int, y: np.ndarray) -> np.ndarray:
        """Run the ACT / pool layers that follow stage ``j``."""
        for i in self.post[j]:
            y = int8.run_layer(self.fm.layers[i], y)
        return y

    # ------------------------------------------------------------ forward
    def forward(self, x: np.ndarray, start: int = 0, weights: dict[int, np.ndarray] | None = None,
                in_hooks: dict[int, Hook] | None = None, acc_hooks: dict[int, Hook] | None = None,
                collect: bool = False) -> np.ndarray | list[np.ndarray]:
        """Logits from the input of stage ``start``. Hooks corrupt a stage's input / accumulators (naive
        injection); ``weights`` replaces a stage's (R, K) weights. ``collect`` returns every stage's input
        followed by the logits."""
        weights, in_hooks, acc_hooks = weights or {}, in_hooks or {}, acc_hooks or {}
        seen = []
        for j in range(start, len(self.stages)):
            st = self.stages[j]
            if j in in_hooks:
                x = in_hooks[j](x)
            seen.append(x)
            a = self.acc(st, x, weights.get(j))
            if j in acc_hooks:
                a = acc_hooks[j](a)
            x = self.after(j, self.finish(st, a))
        return seen + [x] if collect else x

    def run(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Integer logits (N, num_classes) of uint8 images."""
        outs = [self.forward(self.input(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.fm.num_classes), np.int64)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.argmax(self.run(images), axis=1)

    # ------------------------------------------------------------ bookkeeping
    def stage_names(self) -> list[str]:
        """conv1, conv2, dense1, ... (1-based per op, in order)."""
        seen: dict[str, int] = {}
        out = []
        for st in self.stages:
            seen[st.op] = seen.get(st.op, 0) + 1
            out.append(f"{st.op}{seen[st.op]}")
        return out

    def macs(self) -> int:
        """Multiply-accumulates of one inference, copies included (:func:`lenetlab.models.macs.row_macs`'s
        convention: without copies, :func:`lenetlab.models.macs.flat_macs` of the model, tested)."""
        return sum(st.positions * int(row_macs(st.op, st.rows, st.fan_in, st.keep).sum()) for st in self.stages)

    def param_bytes(self) -> int:
        """Bytes of weights (int8) and biases (int32) over all stages, copies included."""
        return sum(st.w.size + (4 * st.rows if st.op != "rbf" else 0) for st in self.stages)
