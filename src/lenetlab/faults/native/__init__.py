"""The native (C) back end of the fast fault engine: propagation of a fault's changed outputs to the logits.

:class:`~lenetlab.faults.fast.FastEngine` finds, in NumPy, which outputs of the faulty stage a fault changes
for each image (the fault's own stage is cheap: one weight, one input or one accumulator). From there on,
``propagate.c`` (beside this file) carries each (fault, image) pair's changes through the remaining stages
as exact integer deltas against the fault-free caches - the same integers :mod:`lenetlab.quant.int8`
computes, so the outcomes are identical to the naive oracle's (tested bit for bit, with and without this
back end). The NumPy propagation stays as the fallback: for models it does not cover (hardened stages after
the faulty one, subsample or RBF stages, post layers other than ACT tables and one 2x2 pool), where no C
compiler is found, or with ``LENETLAB_NATIVE=0``.

The library is compiled on first use with the system C compiler (``$CC``, else ``cc`` / ``gcc`` / ``clang``;
``-O3 -march=native`` where the CPU's flags are known) into ``~/.cache/lenetlab/native/`` (or
``$XDG_CACHE_HOME``; a temporary directory if that is not writable), keyed by the source, the compiler and the
CPU, and loaded with ctypes; a damaged cached file is rebuilt (the builder: :mod:`lenetlab.native`). It runs
on one thread.

Example::

    from lenetlab.faults.native import available
    available()          # True once the library is built and loaded (False: the NumPy path is used)
"""

from __future__ import annotations

import ctypes
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lenetlab.native import Library, cache_key, compiler, load, places
from lenetlab.quant import int8

if TYPE_CHECKING:
    from lenetlab.faults.campaign import Campaign

SOURCE = Path(__file__).with_name("propagate.c")
FLAGS = ("-std=c99", "-O3", "-shared", "-fPIC")


class _Stage(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("op", "rows", "positions", "d_in", "out_bits", "has_pool", "pool_avg",
                                             "pool_c", "pool_h", "pool_w", "d_next", "rows_pad")] + \
               [(n, ctypes.c_void_p) for n in ("wt", "feed_off", "feed_p", "feed_k", "mult", "shift", "acc", "out",
                                             "in_", "acc_t", "out_t", "gather")] + \
               [("fan_in", ctypes.c_int64), ("win_of", ctypes.c_void_p), ("win_base", ctypes.c_void_p),
                ("out8", ctypes.c_void_p), ("in_z", ctypes.c_void_p),
                ("lut_pre", ctypes.c_void_p), ("lut_post", ctypes.c_void_p)]


def _compiler() -> list[str] | None:
    return compiler()


def _key(cc: list[str]) -> tuple[str, bool]:
    """The cache key of a build of propagate.c (source, compiler, CPU) and whether it may use ``-march=native``."""
    return cache_key(cc, SOURCE, FLAGS)


def _places() -> list[Path]:
    return places()


def _load(cc: list[str]) -> ctypes.CDLL:
    return load(cc, SOURCE, FLAGS)


def _bind(lib: ctypes.CDLL) -> None:
    head = [ctypes.POINTER(_Stage), ctypes.c_int32, ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
    lib.lf_propagate.argtypes = head + [ctypes.c_void_p] * 5
    lib.lf_weight_faults.argtypes = head + [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_void_p]
    lib.lf_input_faults.argtypes = head + [ctypes.c_void_p] * 2 + [ctypes.c_int64, ctypes.c_void_p]
    lib.lf_propagate.restype = lib.lf_weight_faults.restype = lib.lf_input_faults.restype = ctypes.c_int


LIBRARY = Library(SOURCE, FLAGS, _bind, "fault campaigns run without their C back end (slower, same results)")


def library() -> ctypes.CDLL | None:
    """The compiled propagation library, built on first use; None when disabled or unavailable (see
    :func:`why_not`; a warning says so once per process unless ``LENETLAB_NATIVE=0``)."""
    return LIBRARY.get()


def available() -> bool:
    return library() is not None


def why_not() -> str:
    """Why :func:`library` returned None ('' when it did not)."""
    return LIBRARY.why_not()


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


class Propagator:
    """The C propagation over one campaign's fault-free caches (arrays kept alive here)."""

    def __init__(self, camp: Campaign):
        self.lib = library()
        self.camp = camp
        eng = camp.engine
        self.n = len(eng.stages)
        self._keep: list[np.ndarray] = []
        self.plain = [self._plain(t) for t in range(self.n)]        # stage t can be propagated through
        self.post_ok = [self._post_ok(t) for t in range(self.n)]     # its post layers are covered
        self.structs = (_Stage * self.n)()
        self.maxbuf = 1
        self._win_of: list[np.ndarray] = []
        for t in range(self.n):
            self._fill(t)
        for t in range(self.n):        # window tables, now that maxbuf (the cropped units' slot) is known
            s = self.structs[t]
            if s.has_pool:
                win = self._win_of.pop(0)
                s.win_of = _ptr(self._arr(np.where(win < 0, self.maxbuf, win), np.int32))
        self.pred = np.ascontiguousarray(camp.pred, np.int64)

    def _arr(self, a: np.ndarray, dtype) -> np.ndarray:
        a = np.ascontiguousarray(a, dtype)
        self._keep.append(a)
        return a

    def _plain(self, t: int) -> bool:
        st = self.camp.engine.stages[t]
        last = t == self.n - 1
        return (st.op in ("conv", "dense") and not st.groups and st.rows == st.channels and st.m is not None
                and st.out_bits == (32 if last else 8) and st.fan_in * 255 * 128 < 2**31
                and bool((st.s >= 1).all()) and bool((st.s <= 62).all()))

    def _post_ok(self, t: int) -> bool:
        eng = self.camp.engine
        st = eng.stages[t]
        layers = [eng.fm.layers[i] for i in eng.post[t]]
        if t == self.n - 1:
            return not layers
        pools = [la for la in layers if la.op != "act"]
        if st.out_bits != 8 or len(pools) > 1 or any(la.op not in ("act", "maxpool", "avgpool") for la in layers):
            return False
        out_hw = tuple(eng.fm.layers[st.flat_index].out_shape[1:])
        return not pools or tuple(pools[0].in_shape) == (st.channels, *out_hw)

    def supported_from(self, j: int) -> bool:
        """Whether changes to stage ``j``'s outputs can be propagated natively."""
        return self.post_ok[j] and all(self.plain[t] and self.post_ok[t] for t in range(j + 1, self.n))

    def _fill(self, t: int) -> None:
        camp, eng = self.camp, self.camp.engine
        st = eng.stages[t]
        s = self.structs[t]
        s.rows, s.positions, s.d_in, s.out_bits = st.channels, st.positions, st.d_in, st.out_bits
        s.out = _ptr(self._arr(camp.outs[t], np.int64))
        self.maxbuf = max(self.maxbuf, (st.channels + 16) * st.positions, st.d_in)
        if t + 1 < self.n:
            s.d_next = camp.inputs[t + 1].shape[1]
            self.maxbuf = max(self.maxbuf, s.d_next)
        if self.post_ok[t] and t < self.n - 1:
            layers = [eng.fm.layers[i] for i in eng.post[t]]
            k = next((i for i, la in enumerate(layers) if la.op != "act"), len(layers))
            for name, part in (("lut_pre", layers[:k]), ("lut_post", layers[k + 1:])):
                if part:
                    v = np.arange(-128, 128, dtype=np.int64)[None]
                    for la in part:
                        v = int8.run_layer(replace(la, in_shape=(1, 1, 256), out_shape=(1, 1, 256)), v)
                    setattr(s, name, _ptr(self._arr(v[0], np.int32)))
            if k < len(layers):
                s.has_pool, s.pool_avg = 1, int(layers[k].op == "avgpool")
                c, h, w = layers[k].in_shape
                s.pool_c, s.pool_h, s.pool_w = c, h, w
                oh, ow = h // 2, w // 2
                cc, yy, xx = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
                # a cropped unit feeds no window: it maps to the slot the C side keeps marked (maxbuf)
                win = np.where((yy < 2 * oh) & (xx < 2 * ow), (cc * oh + yy // 2) * ow + xx // 2, -1)
                self._win_of.append(win.ravel())
                cw, by, bx = np.meshgrid(np.arange(c), np.arange(oh), np.arange(ow), indexing="ij")
                s.win_base = _ptr(self._arr((cw * h * w + 2 * by * w + 2 * bx).ravel(), np.int32))
                s.out8 = _ptr(self._arr(camp.outs[t], np.int8))          # int8 outputs (out_bits 8, checked)
        if not self.plain[t]:
            return
        s.op = 0 if st.op == "conv" else 1
        s.rows_pad = -(-st.rows // 16) * 16
        we = np.zeros((s.rows_pad, st.fan_in), np.int64)
        we[: st.rows] = st.effective(st.w)
        if st.op == "conv":
            s.wt = _ptr(self._arr(we.T, np.int32))                                 # (K, rows_pad)
            g = st.gather.ravel()
            order = np.argsort(g, kind="stable")
            count = np.bincount(g, minlength=st.d_in + 1)[: st.d_in]
            off = np.concatenate([[0], np.cumsum(count)])
            order = order[: off[-1]]                    # entries reading the zero cell (padding) sort last
            pos, tap = np.divmod(order, st.fan_in)
            s.feed_off, s.feed_p, s.feed_k = (_ptr(self._arr(a, np.int32)) for a in (off, pos, tap))
            s.gather, s.fan_in = _ptr(self._arr(st.gather.T, np.int32)), st.fan_in          # (K, P)
        else:
            s.wt = _ptr(self._arr(we.T, np.int32))                                 # (d_in, rows_pad)
        s.mult, s.shift = _ptr(self._arr(st.m, np.int64)), _ptr(self._arr(st.s, np.int64))
        s.acc = _ptr(self._arr(camp.accs[t], np.int64))
        s.in_ = _ptr(self._arr(camp.inputs[t], np.int64))
        if st.positions == 1:            # dense: position-major is the same layout, no copy
            s.acc_t, s.out_t = s.acc, _ptr(self._arr(camp.outs[t], np.int64))

    def _need(self, stages: range, zero_cell: int | None = None) -> None:
        """Build, on first use, the position-major caches of ``stages`` (conv stages copy theirs) and the
        zero-celled input of stage ``zero_cell`` (weight faults): a campaign pays memory only for what it runs."""
        camp = self.camp
        for t in stages:
            s, st = self.structs[t], camp.engine.stages[t]
            if self.plain[t] and not s.acc_t:
                m, r, p = camp.m, st.rows, st.positions
                s.acc_t = _ptr(self._arr(camp.accs[t].transpose(0, 2, 1), np.int64))
                s.out_t = _ptr(self._arr(camp.outs[t].reshape(m, r, p).transpose(0, 2, 1), np.int64))
        if zero_cell is not None and not self.structs[zero_cell].in_z:
            x = camp.inputs[zero_cell]
            self.structs[zero_cell].in_z = _ptr(self._arr(np.concatenate([x, np.zeros((len(x), 1), x.dtype)], axis=1),
                                                          np.int64))

    def run(self, j: int, img: np.ndarray, row: np.ndarray, unit: np.ndarray, value: np.ndarray) -> np.ndarray:
        """SDC (bool, one per pair) of pairs with images ``img`` whose stage-``j`` outputs changed at entries
        (pair ``row``, flat output ``unit``, new ``value``); every pair has at least one entry."""
        n = len(img)
        self._need(range(j + 1, self.n))
        order = np.argsort(row, kind="stable")
        count = np.bincount(row, minlength=n)
        st = self.camp.engine.stages[j]
        if n and count.max() > st.channels * st.positions:     # the C side relies on distinct units per pair
            raise ValueError("more changed outputs in one pair than the stage has")
        off = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
        units = np.ascontiguousarray(unit[order], np.int32)
        vals = np.ascontiguousarray(value[order], np.int64)
        img = np.ascontiguousarray(img, np.int64)
        sdc = np.zeros(n, np.uint8)
        rc = self.lib.lf_propagate(self.structs, self.n, j, self.maxbuf, _ptr(self.pred), n, _ptr(img), _ptr(off),
                                   _ptr(units), _ptr(vals), _ptr(sdc))
        if rc != 0:
            raise MemoryError("lenetlab native fault propagation: out of memory")
        return sdc.astype(bool)

    def weight_faults(self, j: int, row: np.ndarray, tap: np.ndarray, dw: np.ndarray) -> np.ndarray:
        """SDC (F, M) of weight faults of stage ``j`` (``plain[j]``): fault f adds ``dw[f]`` (corrupted minus
        stored, connection-table mask applied) to weight (``row[f]``, ``tap[f]``)."""
        row, tap, dw = (np.ascontiguousarray(a, np.int64) for a in (row, tap, dw))
        self._need(range(j + 1, self.n), zero_cell=j)
        sdc = np.zeros((len(row), self.camp.m), np.uint8)
        rc = self.lib.lf_weight_faults(self.structs, self.n, j, self.maxbuf, _ptr(self.pred), len(row), _ptr(row),
                                       _ptr(tap), _ptr(dw), self.camp.m, _ptr(sdc))
        if rc != 0:
            raise MemoryError("lenetlab native fault propagation: out of memory")
        return sdc.astype(bool)

    def input_faults(self, j: int, unit: np.ndarray, v_new: np.ndarray) -> np.ndarray:
        """SDC (F, M) when input ``unit[f]`` of stage ``j`` (``plain[j]``) reads ``v_new[f, m]`` on image m."""
        unit = np.ascontiguousarray(unit, np.int64)
        v_new = np.ascontiguousarray(v_new, np.int64)
        if v_new.size and (v_new.min() < -128 or v_new.max() > 127):
            raise ValueError("native input faults take int8 values (-128..127)")
        self._need(range(j, self.n))
        sdc = np.zeros((len(unit), self.camp.m), np.uint8)
        rc = self.lib.lf_input_faults(self.structs, self.n, j, self.maxbuf, _ptr(self.pred), len(unit), _ptr(unit),
                                      _ptr(v_new), self.camp.m, _ptr(sdc))
        if rc != 0:
            raise MemoryError("lenetlab native fault propagation: out of memory")
        return sdc.astype(bool)
