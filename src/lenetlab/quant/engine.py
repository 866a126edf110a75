"""Integer reference engine over an int8 flat model, built for fault injection (PAPERS.md section 6).

It executes exactly the spec of ``docs/flat-format.md`` ("int8 files"), reusing
the deploy runtime's requantisation (:func:`lenetlab.deploy.runtime.requantize`)
and its ACT / pool layers, so its logits are bit-identical to
:func:`lenetlab.deploy.runtime.run` (tested). What it adds is structure that
fault campaigns need:

- every layer with weights (CONV, DENSE, SUBSAMPLE, RBF) is a :class:`Stage`
  with an explicit int32 accumulator ``(N, R, P)`` (R rows = output channels,
  plus protected copies in a hardened model; P output positions), so a fault
  can hit a weight, the stage's int8 input activation, or the accumulator;
- ``forward(x, start=s)`` resumes from any stage's cached input;
- hardened models (:mod:`lenetlab.faults.harden`) add copy rows whose
  accumulators are merged (2-copy correction unit or 3-copy majority vote)
  before requantisation.

Products are int8 x int8, summed in float32 when every partial sum is below
2^24 (fan-in <= 1024, exact) and in float64 otherwise; biases are added in 64
bits, as the spec says.

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
from lenetlab.deploy.runtime import I32_MAX, I32_MIN, _im2col, _layer, prepare_input, requantize
from lenetlab.errors import LenetlabError

STAGE_OPS = ("conv", "dense", "subsample", "rbf")
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


def blas_threads(n: int = 1):
    """Context limiting BLAS threads: the engine's many small matmuls are slower with a thread pool (and on a
    busy machine, far slower). Uses threadpoolctl when installed, else does nothing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:   # optional
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


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
                         gather=_im2col(layer.in_shape, layer.k, layer.pad))
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
            x = _layer(self.fm, self.fm.layers[i], x, False)
        return x

    def columns(self, st: Stage, x: np.ndarray) -> np.ndarray:
        """What each weight multiplies: conv (N, P, K) im2col; dense (N, 1, K); subsample block sums (N, C, P)."""
        if st.op == "conv":
            xz = np.concatenate([x, np.zeros((len(x), 1), x.dtype)], axis=1)
            return xz[:, st.gather]
        if st.op == "subsample":
            layer = self.fm.layers[st.flat_index]
            c, h, w = layer.in_shape
            _, oh, ow = layer.out_shape
            mm = x.reshape(len(x), c, h, w)[:, :, : 2 * oh, : 2 * ow]
            return (mm[:, :, 0::2, 0::2] + mm[:, :, 0::2, 1::2] + mm[:, :, 1::2, 0::2] + mm[:, :, 1::2, 1::2]
                    ).reshape(len(x), c, -1)
        return x[:, None, :]

    def acc(self, st: Stage, x: np.ndarray, w: np.ndarray | None = None, cols: np.ndarray | None = None
            ) -> np.ndarray:
        """Accumulators (N, R, P) of stage ``st`` on its input ``x`` (weights ``w`` default to the stored ones)."""
        w = st.w if w is None else w
        n = len(x)
        if st.op == "rbf":   # -sum (x - w)^2 in 64 bits, clamped to i32
            d = x[:, None, :] - w[None]
            return np.clip(-(d * d).sum(-1), I32_MIN, I32_MAX)[:, :, None]
        if st.op == "subsample":
            cols = self.columns(st, x) if cols is None else cols
            return cols * w[None, :, :1] + st.b[None, :, None]
        dt = np.float32 if 128 * 128 * st.fan_in < 2**24 else np.float64   # exact: partial sums < 2^24
        we = st.effective(w).T.astype(dt)
        if st.op == "dense":
            y = (x.astype(dt) @ we).astype(np.int64)[:, :, None]
            return y + st.b[None, :, None]
        xz = np.concatenate([x.astype(dt), np.zeros((n, 1), dt)], axis=1)
        step = max(1, (1 << 22) // st.gather.size)     # bound the (images, P, K) gather
        out = np.empty((n, st.rows, st.positions), np.int64)
        for i in range(0, n, step):
            out[i:i + step] = (xz[i:i + step][:, st.gather] @ we).transpose(0, 2, 1)
        return out + st.b[None, :, None]

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
            y = _layer(self.fm, self.fm.layers[i], y, False)
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
        """Multiply-accumulates of one inference (copies included)."""
        total = 0
        for st in self.stages:
            k = st.fan_in if st.keep is None else None
            if st.op == "subsample":
                total += st.rows * st.positions
            elif k is not None:
                total += st.rows * st.positions * k
            else:
                total += int(st.keep.sum()) * st.positions
        return total

    def param_bytes(self) -> int:
        """Bytes of weights (int8) and biases (int32) over all stages, copies included."""
        return sum(st.w.size + (4 * st.rows if st.op != "rbf" else 0) for st in self.stages)
