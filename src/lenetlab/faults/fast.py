"""The fast fault-injection engine behind :meth:`Campaign.fast <lenetlab.faults.campaign.Campaign.fast>`.

:class:`FastEngine` is a mixin of :class:`~lenetlab.faults.campaign.Campaign`
(which builds the fault-free caches it reads: ``engine``, ``images``,
``inputs``, ``accs``, ``outs``, ``logits``, ``pred``, ``m`` and the derived-array
caches ``_cols`` / ``_amat``). It gives outcomes identical to the naive oracle
(:meth:`Campaign.naive <lenetlab.faults.campaign.Campaign.naive>`, tested bit
for bit) while (1) caching every fault-free stage input, accumulator and output,
(2) computing a faulty accumulator as the cached one plus the fault's exact
delta (``delta_w * x`` for a weight, ``delta_x * W`` for an activation, the
one-channel convolution of a changed channel in the next stage), (3)
requantising only accumulators that left their fault-free output's
requantisation cell, (4) recomputing, between two stages, only the 2x2 pool
windows that hold a changed value and handing the next stage the sparse change
of its input, (5) batching many faults x images per step in cache-sized chunks,
and (6) stopping (fault, image) pairs whose stage output is unchanged (a masked
fault cannot change the logits) - only the rest is propagated. Every value is
still computed by the one int8 executor (:mod:`lenetlab.quant.int8`: its
``requantize``, ACT tables and pooling, on 2x2 windows) in integers, or in
float32 where the sums are provably exact.

It also holds :meth:`FastEngine.replace_input`, the "what if stage input u read
v" primitive the NVF analysis (:mod:`lenetlab.faults.nvf`) is built on.

Where the model allows it (conv / dense stages with ACT tables and at most one
2x2 pool between them), steps (2)-(6) after the faulty stage run in C
(:mod:`lenetlab.faults.native`, the same integers; weight and activation faults
of a conv / dense stage wholly in C); the NumPy code here is the fallback and
is tested against the oracle on its own (``Campaign(..., native=False)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from lenetlab.faults.models import fault_model
from lenetlab.quant import int8
from lenetlab.quant.engine import IntEngine, Stage
from lenetlab.quant.int8 import I32_MAX, I32_MIN, requantize

if TYPE_CHECKING:
    from lenetlab.faults.campaign import FaultList

CHUNK = 1 << 16   # values of a faulty block per step: small, so the working arrays stay in cache
DENSE = 8         # a change to more than 1/DENSE of a block's values is handled as whole rows


def _pairs(key: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``key`` (all in [0, n)), sorted, and each key's position among them."""
    pairs, rank = _rows(key, n)
    return pairs, rank[key]


def _rows(r: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows (of n) that occur in ``r``, and every row's rank among them."""
    mark = np.zeros(n, bool)
    mark[r] = True
    return np.flatnonzero(mark), np.cumsum(mark) - 1


class FastEngine:
    """The fast engine: :meth:`fast`, :meth:`replace_input` and their private machinery (a mixin of
    :class:`~lenetlab.faults.campaign.Campaign`, whose ``__init__`` builds the fault-free caches read here)."""

    engine: IntEngine
    images: np.ndarray
    inputs: list[np.ndarray]
    accs: list[np.ndarray]
    outs: list[np.ndarray]
    logits: np.ndarray
    pred: np.ndarray
    m: int
    _cols: dict[int, np.ndarray]
    _amat: dict
    native: bool
    _propagator: object

    def fast(self, faults: FaultList, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Identical outcomes to :meth:`naive`, computed from the cached prefix with faults batched."""
        out = np.zeros((len(faults), self.m), bool)
        order = np.argsort(faults.stage, kind="stable")
        for j in np.unique(faults.stage):
            sel = order[faults.stage[order] == j]
            st = self.engine.stages[int(j)]
            # memory per fault: the faulty channel (weights / accumulators) or the faulty outputs of one input
            per = st.positions if faults.target != "activations" else max(st.positions, st.d_in // 4)
            step = max(1, CHUNK // max(1, per * self.m))
            native = self._native(int(j))
            if native is not None and native.plain[int(j)] and faults.target != "accumulators":
                step = 256          # C takes whole faults, one image at a time: no working set to bound
            for a in range(0, len(sel), step):
                part = sel[a:a + step]
                out[part] = self._fast_stage(int(j), faults.subset(part))
                if progress:
                    progress(len(part))
        return out

    def _fast_stage(self, j: int, faults: FaultList) -> np.ndarray:
        eng, st = self.engine, self.engine.stages[j]
        fm = fault_model(faults.model)
        res = np.zeros((len(faults), self.m), bool)
        native = self._native(j)
        if faults.target == "activations" and native is not None and native.plain[j]:   # the whole fault in C
            return native.input_faults(j, faults.index, fm.corrupt(self.inputs[j][:, faults.index].T,
                                                                   faults.bit[:, None], 8))
        if faults.target == "activations":
            u = faults.index
            fi, ii, y, ents = self._input_changes(j, u, fm.corrupt(self.inputs[j][:, u].T, faults.bit[:, None], 8))
            if not len(fi):
                return res
            if native is not None:
                res[fi, ii] = self._native_run(native, j, ii, y, ents)
                return res
            live, logits = self._propagate(j, ii, y=y, ents=ents)
        elif native is not None and faults.target == "weights" and native.plain[j]:
            r, k = np.divmod(faults.index, st.fan_in)                      # the whole fault in C
            dw = fm.corrupt(st.w[r, k], faults.bit, 8) - st.w[r, k]
            return native.weight_faults(j, r, k, dw if st.keep is None else dw * st.keep[r, k])
        else:
            fi, ii, chan, new_c = self._row_changes(j, st, faults, fm)   # changed (fault, image) pairs only
            if not len(fi):   # every fault masked by requantisation
                return res
            if native is not None:   # the changed entries of the faulty channel, carried on in C
                p = st.positions
                rr, pp = np.nonzero(new_c != self.outs[j].reshape(self.m, st.channels, p)[ii, chan])
                res[fi, ii] = native.run(j, ii, rr, chan[rr] * p + pp, new_c[rr, pp])
                return res
            nxt = eng.stages[j + 1] if j + 1 < len(eng.stages) else None
            if nxt is not None and nxt.op in ("conv", "dense") and self._channelwise(j):
                # the layers up to the next stage act per channel: finish only the faulty channel, and the next
                # stage's accumulators change by the convolution of that one channel's change
                xc = self._after_channel(j, new_c)               # (n, per-channel part of the next input)
                per = xc.shape[1]
                dxc = xc - self.inputs[j + 1].reshape(self.m, -1, per)[ii, chan]
                moved = dxc.any(1)
                fi, ii, chan, dxc = fi[moved], ii[moved], chan[moved], dxc[moved]
                live, logits = self._propagate(j + 1, ii, delta=self._acc_channel(j + 1, chan, dxc))
            else:
                p = st.positions
                rows = self.outs[j][ii].copy()
                rows[np.arange(len(fi))[:, None], chan[:, None] * p + np.arange(p)[None]] = new_c
                live, logits = self._propagate(j, ii, y=rows)
        res[fi[live], ii[live]] = np.argmax(logits, axis=1) != self.pred[ii[live]]
        return res

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_propagator"] = None      # ctypes pointers into this process: rebuilt on first use after unpickling
        return state

    def _native(self, j: int):
        """The C propagator (:mod:`lenetlab.faults.native`) when this campaign uses it and it covers the stages
        after ``j``, else None (the NumPy propagation)."""
        if not self.native:
            return None
        if self._propagator is None:
            from lenetlab.faults import native

            if not native.available():
                self.native = False
                return None
            self._propagator = native.Propagator(self)
        return self._propagator if self._propagator.supported_from(j) else None

    def _native_run(self, native, j: int, ii: np.ndarray, y: np.ndarray | None,
                    ents: tuple[np.ndarray, ...] | None) -> np.ndarray:
        """SDC of pairs (images ``ii``) whose stage-``j`` outputs are ``y`` (full rows) or changed at ``ents``
        (row, channel, position, value), through the C propagator."""
        p = self.engine.stages[j].positions
        if ents is not None:
            row, ch, pos, q = ents
            return native.run(j, ii, row, ch * p + pos, q)
        rr, uu = np.nonzero(y != self.outs[j][ii])
        return native.run(j, ii, rr, uu, y[rr, uu])

    def _channelwise(self, j: int) -> bool:
        return all(self.engine.fm.layers[i].op in ("act", "maxpool", "avgpool") for i in self.engine.post[j])

    def _after_channel(self, j: int, y: np.ndarray) -> np.ndarray:
        """The ACT / pool layers after stage ``j`` applied to one channel's outputs (n, P)."""
        fm = self.engine.fm
        for i in self.engine.post[j]:
            layer = fm.layers[i]
            one = replace(layer, in_shape=(1, *layer.in_shape[1:]), out_shape=(1, *layer.out_shape[1:]))
            y = int8.run_layer(one, y)
        return y

    def _acc_channel(self, s: int, chans: np.ndarray, dxc: np.ndarray) -> np.ndarray:
        """Accumulator change (n, R, P) of stage ``s`` (conv or dense) when only input channel ``chans[i]`` of
        row i changed by ``dxc[i]``: the convolution of that one channel's change (~C times cheaper than the
        stage), in float32 when exact (at most fan-in terms of |dx * w| <= 255 * 128, summing below 2^24),
        else float64."""
        st = self.engine.stages[s]
        layer = self.engine.fm.layers[st.flat_index]
        c_in = layer.in_shape[0]
        dt = np.float32 if st.fan_in * 255 * 128 < 2**24 else np.float64
        we = st.effective(st.w).reshape(st.rows, c_in, -1).astype(dt)
        delta = np.empty((len(dxc), st.rows, st.positions), dt)
        g = int8.im2col((1, *layer.in_shape[1:]), layer.k, layer.pad) if st.op == "conv" else None
        for c in np.unique(chans):
            sel = np.flatnonzero(chans == c)
            d = dxc[sel].astype(dt)
            if st.op == "dense":
                delta[sel] = (d @ we[:, c].T)[:, :, None]
            else:
                dz = np.concatenate([d, np.zeros((len(d), 1), dt)], axis=1)
                delta[sel] = (dz[:, g] @ we[:, c].T).transpose(0, 2, 1)
        return delta

    def _propagate(self, j: int, img: np.ndarray, y: np.ndarray | None = None, delta: np.ndarray | None = None,
                   ents: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run faulty (fault, image) rows of images ``img`` to the logits, starting from stage ``j``'s faulty
        outputs ``y``, or the entries ``ents`` = (row, channel, position, new value) where they differ from
        the fault-free outputs, or the change ``delta`` of its accumulators. Every row that is back to
        fault-free at a stage boundary is dropped (masked by requantisation, pooling or ReLU: it cannot be an
        SDC); only accumulators that left their requantisation cell are requantised; between two stages only
        the pool windows holding a changed value are recomputed, and the next stage gets the sparse change of
        its input. Returns the surviving rows and their logits."""
        eng = self.engine
        n_st = len(eng.stages)
        live = np.arange(len(img))
        if not len(live):
            return live, np.zeros((0, self.logits.shape[1]), np.int64)
        x = dx = None                       # the next stage's full input rows, or its change (row, unit, dv)
        if y is not None:
            x = eng.after(j, y)
        elif ents is not None:
            x, dx = self._next_input(j, img, *ents)
        s = j if delta is not None else j + 1
        while s < n_st:
            if delta is None:
                if dx is not None:
                    r, u, dv = dx
                    keep, rank = _rows(r, len(live))
                    live = live[keep]
                    if not len(live):
                        break
                    delta = self._acc_delta_sparse(s, rank[r], u, dv, img[live])
                else:
                    keep = (x != self.inputs[s][img[live]]).any(axis=1)
                    live, x = live[keep], x[keep]
                    if not len(live):
                        break
                    delta = self._acc_delta(s, x, img[live])
            st = eng.stages[s]
            if st.groups or st.op == "rbf" or s + 1 == n_st:
                y = self.engine.finish(st, self._int(delta) + self.accs[s][img[live]])
                keep = (y != self.outs[s][img[live]]).any(axis=1)
                live, y = live[keep], y[keep]
                if not len(live):
                    break
                x, dx = eng.after(s, y), None
            else:
                ri, ci, pi, q = self._moved(s, delta, img[live])
                keep, rank = _rows(ri, len(live))
                live = live[keep]
                if not len(live):
                    break
                x, dx = self._next_input(s, img[live], rank[ri], ci, pi, q)
            delta, s = None, s + 1
        if not len(live):
            return live, np.zeros((0, self.logits.shape[1]), np.int64)
        return live, x

    @staticmethod
    def _int(delta: np.ndarray) -> np.ndarray:
        return delta if delta.dtype == np.int64 else delta.astype(np.int64)

    def _moved(self, s: int, delta: np.ndarray, img: np.ndarray) -> tuple[np.ndarray, ...]:
        """The outputs of stage ``s`` (no copies, not RBF) that change when its accumulators change by
        ``delta`` (n, R, P): (row, channel, position, new value). An accumulator whose change stays inside
        its fault-free requantisation cell is not requantised."""
        st = self.engine.stages[s]
        if st.out_bits == 8 and np.count_nonzero(delta) > delta.size // 8:
            # a dense change: test whole rows against the cells, relative to the fault-free accumulator
            lo, hi = self._rel_cells(s, delta.dtype)
            flat = np.flatnonzero((delta < lo[img]) | (delta >= hi[img]))     # flat indices: cheap gathers
            size = st.rows * st.positions
            ri, cp = np.divmod(flat, size)
            ci, pi = np.divmod(cp, st.positions)
            acc = self.accs[s].reshape(-1)[img[ri] * size + cp] + self._int(delta.reshape(-1)[flat])
            return ri, ci, pi, self._requant(s, ci, acc)
        ri, ci, pi = np.nonzero(delta)
        moved, q = self._requant_moved(s, img[ri], ci, pi, self.accs[s][img[ri], ci, pi] +
                                       self._int(delta[ri, ci, pi]))
        return ri[moved], ci[moved], pi[moved], q

    def _rel_cells(self, s: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """The requantisation cells minus the fault-free accumulators, (M, C, P) each; float32 copies are
        clipped to +-2^24, which keeps every comparison with an exact float32 change (|change| < 2^24)."""
        key = ("rel", s, np.dtype(dtype).str)
        if key not in self._amat:
            lo, hi = self._requant_cells(s)
            acc = self.accs[s].reshape(lo.shape)
            lo, hi = lo - acc, hi - acc
            if dtype == np.float32:
                lo, hi = (np.clip(a, -(2**24), 2**24).astype(np.float32) for a in (lo, hi))
            self._amat[key] = (lo, hi)
        return self._amat[key]

    def _requant_moved(self, s: int, i: np.ndarray, c: np.ndarray, p: np.ndarray, acc: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Which faulty accumulators ``acc`` of (image i, channel c, position p) of stage ``s`` requantise to
        another value than the fault-free output, and those values. int8 outputs test the fault-free cell
        [lo, hi) first and requantise only the accumulators that left it."""
        st = self.engine.stages[s]
        if st.out_bits != 8:
            q = requantize(acc, st.m[c], st.s[c], st.out_bits)
            moved = q != self.outs[s].reshape(self.m, st.channels, st.positions)[i, c, p]
            return moved, q[moved]
        lo, hi = self._requant_cells(s)
        at = (i * st.channels + c) * st.positions + p            # flat indices: cheaper gathers
        moved = np.flatnonzero((acc < lo.reshape(-1)[at]) | (acc >= hi.reshape(-1)[at]))
        return moved, self._requant(s, c[moved], acc[moved])

    def _next_input(self, s: int, img: np.ndarray, ri: np.ndarray, ci: np.ndarray, pi: np.ndarray,
                    q: np.ndarray) -> tuple[np.ndarray | None, tuple[np.ndarray, ...] | None]:
        """Stage ``s`` outputs of images ``img`` differ from the fault-free ones at (row ri, channel ci,
        position pi) where they read q. Returns the next stage's input as its change (row, unit, dv) when
        the layers in between act per channel (ACT, at most one 2x2 pool: only the pool windows holding a
        changed value are recomputed, by the runtime's own layer code on 2x2 windows), else as full rows
        (the layers run on whole rows; the logits after the last stage)."""
        eng, fm = self.engine, self.engine.fm
        st = eng.stages[s]
        layers = [fm.layers[i] for i in eng.post[s]]
        pools = [la for la in layers if la.op != "act"]
        windowed = (s + 1 < len(eng.stages) and len(pools) <= 1
                    and all(la.op in ("act", "maxpool", "avgpool") for la in layers)
                    and (not pools or pools[0].in_shape == (st.channels, *self._out_hw(s))))
        if not windowed or len(q) > len(img) * st.channels * st.positions // DENSE:   # dense: whole rows
            y = self.outs[s][img]
            y.reshape(len(img), st.channels, st.positions)[ri, ci, pi] = q
            return eng.after(s, y), None
        if not pools:   # element-wise activations only
            v, unit = q[:, None], ci * st.positions + pi
            for la in layers:
                v = int8.run_layer(la, v)
            rr = ri
        else:
            c, h, w = pools[0].in_shape
            _, oh, ow = pools[0].out_shape
            py, px = np.divmod(pi, w)
            ok = (py < 2 * oh) & (px < 2 * ow)                  # a cropped row / column feeds nothing
            ri, ci, py, px, q = ri[ok], ci[ok], py[ok], px[ok], q[ok]
            if not len(q):                                        # every change was cropped away
                empty = np.zeros(0, np.int64)
                return None, (empty, empty, empty)
            win = (ri * c + ci) * (oh * ow) + (py // 2) * ow + px // 2
            if len(win) * 8 < len(img) * c * oh * ow:         # the pool windows holding a changed value
                uk, slot = np.unique(win, return_inverse=True)
            else:
                uk, rank = _rows(win, len(img) * c * oh * ow)
                slot = rank[win]
            rr, unit = np.divmod(uk, c * oh * ow)
            cc, b = np.divmod(unit, oh * ow)
            base = cc * h * w + 2 * (b // ow) * w + 2 * (b % ow)
            d_out = self.outs[s].shape[1]
            v = self.outs[s].reshape(-1)[(img[rr] * d_out + base)[:, None] + np.array([0, 1, w, w + 1])[None]]
            v[slot, (py % 2) * 2 + px % 2] = q
            for la in layers:
                one = la if la.op == "act" else replace(la, in_shape=(1, 2, 2), out_shape=(1, 1, 1))
                v = int8.run_layer(one, v)
        d_in = self.inputs[s + 1].shape[1]
        dv = v.reshape(len(rr), -1)[:, 0] - self.inputs[s + 1].reshape(-1)[img[rr] * d_in + unit]
        nz = np.flatnonzero(dv)
        return None, (rr[nz], unit[nz], dv[nz])

    def _out_hw(self, s: int) -> tuple[int, int]:
        return tuple(self.engine.fm.layers[self.engine.stages[s].flat_index].out_shape[1:])

    def _acc_delta_sparse(self, s: int, r: np.ndarray, u: np.ndarray, dv: np.ndarray, img: np.ndarray
                          ) -> np.ndarray:
        """Accumulator change of stage ``s`` when input unit u[e] of row r[e] changes by dv[e] (n = len(img))."""
        st = self.engine.stages[s]
        n = len(img)
        if st.op in ("dense", "conv") and st.fan_in * 255 * 128 < 2**24:
            cols, inv = np.unique(u, return_inverse=True)
            if st.op == "dense" or len(cols) < st.fan_in:
                d = np.zeros((n, len(cols)), np.float32)
                d[r, inv] = dv
                if st.op == "dense":
                    return (d @ st.effective(st.w)[:, cols].T.astype(np.float32))[:, :, None]
                return (d @ self._matrix_f32(s)[cols]).reshape(n, st.rows, st.positions)
        x = self.inputs[s][img]
        x[r, u] += dv
        return self._acc_delta(s, x, img)

    def _requant(self, s: int, c: np.ndarray, acc: np.ndarray) -> np.ndarray:
        """:func:`~lenetlab.quant.int8.requantize` of accumulators ``acc`` of channels ``c`` of stage ``s``
        (int8 outputs: the same function, tabulated - q = -128 + #(thresholds <= acc) in channel c)."""
        st = self.engine.stages[s]
        return requantize(acc, st.m[c], st.s[c], st.out_bits)

    def _requant_cells(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi): the accumulator interval that requantises to each fault-free output, (M, C, P) each."""
        key = ("cells", s)
        if key not in self._amat:
            st = self.engine.stages[s]
            big, span = self._requant_table(s)
            t = (big.reshape(st.channels, 255) - np.arange(st.channels)[:, None] * span)
            t = np.concatenate([np.full((st.channels, 1), -(2**40)), t, np.full((st.channels, 1), 2**40)], axis=1)
            q0 = self.outs[s].reshape(self.m, st.channels, st.positions) + 128          # 0..255
            c = np.arange(st.channels)[None, :, None]
            self._amat[key] = (t[c, q0], t[c, q0 + 1])
        return self._amat[key]

    def _requant_table(self, s: int) -> tuple[np.ndarray, int]:
        """For every channel c and q in -127..127 the smallest int32 accumulator that
        :func:`~lenetlab.quant.int8.requantize` maps to >= q, laid out as one sorted array with channel c
        offset by c * span. Solved in closed form from the rounding rule, then checked on that very function
        (f(t) >= q > f(t - 1)); if any check fails, found by bisection on it instead (it is monotone)."""
        key = ("rq", s)
        if key not in self._amat:
            st = self.engine.stages[s]
            q = np.tile(np.arange(-127, 128), st.channels)
            c = np.repeat(np.arange(st.channels), 255)
            mult, shift = st.m[c], st.s[c]
            f = lambda a: requantize(a, mult, shift, 8)            # noqa: E731
            half = np.int64(1) << np.maximum(shift - 1, 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                m_safe = np.maximum(mult, 1)
                pos = -((half - (q << shift)) // m_safe)            # ceil((q * 2^n - h) / M), q >= 1
                neg = 1 - -((half - ((1 - q) << shift)) // m_safe)  # -(ceil(((1 - q) * 2^n - h) / M) - 1)
            t = np.clip(np.where(q >= 1, np.maximum(pos, 0), neg), I32_MIN, I32_MAX + 1)
            ok = (mult > 0) & (shift > 0) & ((t > I32_MAX) | (f(np.minimum(t, I32_MAX)) >= q)) & (
                (t == I32_MIN) | (f(t - 1) < q))
            if not ok.all():
                lo = np.full(q.shape, I32_MIN - 1, np.int64)      # f(lo) < q (virtually)
                t = np.full(q.shape, I32_MAX + 1, np.int64)       # f(t) >= q (virtually)
                for _ in range(34):
                    mid = (lo + t) // 2
                    up = f(mid) >= q
                    t, lo = np.where(up, mid, t), np.where(up, lo, mid)
            span = 1 << 34
            self._amat[key] = (c * span + t, span)
        return self._amat[key]

    def _acc_delta(self, s: int, x: np.ndarray, img: np.ndarray) -> np.ndarray:
        """Accumulator change (n, R, P) of stage ``s`` when its inputs of images ``img`` become ``x``.
        Conv: (delta x)[:, U] @ A[U] over the input units U that changed in the batch (A: the conv as a
        matrix), or the full stage when U is most of the input; dense: (delta x) @ W. float32 is exact when
        every sum has at most fan-in terms of |dx * w| <= 255 * 128 below 2^24."""
        st = self.engine.stages[s]
        exact32 = st.fan_in * 255 * 128 < 2**24
        if st.op == "dense" and st.keep is None:
            dt = np.float32 if exact32 else np.float64
            dx = (x - self.inputs[s][img]).astype(dt)
            return (dx @ st.w.T.astype(dt))[:, :, None]
        if st.op == "conv" and exact32:
            dx = x - self.inputs[s][img]
            cols = np.flatnonzero(dx.any(axis=0))
            if len(cols) < st.fan_in:   # else a full recomputation is cheaper
                delta = dx[:, cols].astype(np.float32) @ self._matrix_f32(s)[cols]
                return delta.reshape(len(x), st.rows, st.positions)
        return self.engine.acc(st, x) - self.accs[s][img]

    def _matrix_f32(self, s: int) -> np.ndarray:
        key = ("f32", s)
        if key not in self._amat:
            st = self.engine.stages[s]
            self._amat[key] = self._matrix(s).reshape(st.d_in + 1, st.rows * st.positions).astype(np.float32)
        return self._amat[key]

    def _row_changes(self, j: int, st: Stage, faults: FaultList, fm
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Weight / accumulator faults change one accumulator row. Returns the (fault, image) pairs whose
        stage output changed - fault fi, image ii, output channel chan - and that channel's new outputs (n, P)."""
        if st.groups or st.op == "rbf":
            return self._row_changes_merged(j, st, faults, fm)
        m, p = self.m, st.positions
        out3 = self.outs[j].reshape(m, st.channels, p)
        if faults.target == "weights":
            r, k = np.divmod(faults.index, st.fan_in)
            delta = fm.corrupt(st.w[r, k], faults.bit, 8) - st.w[r, k]
            if st.keep is not None:
                delta = delta * st.keep[r, k]
            # the faulty row, dense (F, M, P): a weight multiplies most of its inputs, so whole-row gathers
            # from channel-major caches beat per-entry ones; then the fault-free cell test
            x = self._by_weight(j)[r if st.op == "subsample" else k]
            if st.out_bits == 8:   # int32 changes (|dw * x| < 2^16) against the cells relative to the accumulator
                d = delta.astype(np.int32)[:, None, None] * x
                flat = np.flatnonzero((d < self._by_row("rlo", j)[r]) | (d >= self._by_row("rhi", j)[r]))
                fz, ip = np.divmod(flat, m * p)
                iz, pz = np.divmod(ip, p)
                acc = self.accs[j][iz, r[fz], pz] + d.reshape(-1)[flat]
                q = self._requant(j, r[fz], acc)
            else:
                acc = self._by_row("acc", j)[r] + delta[:, None, None] * x
                q = requantize(acc, st.m[r][:, None, None], st.s[r][:, None, None], st.out_bits)
                fz, iz, pz = np.nonzero(q != self._by_row("out", j)[r])
                q = q[fz, iz, pz]
        else:
            r, pf = np.divmod(faults.index, st.positions)
            fz = np.repeat(np.arange(len(r)), m)
            iz = np.tile(np.arange(m), len(r))
            pz = pf[fz]
            moved, q = self._requant_moved(j, iz, r[fz], pz, fm.corrupt(self.accs[j][iz, r[fz], pz],
                                                                          faults.bit[fz], 32))
            fz, iz, pz = fz[moved], iz[moved], pz[moved]
        chan = r                                                 # no copies: row r is channel r
        key = fz * m + iz
        pairs, row = _pairs(key, len(faults) * m)
        fi, ii = np.divmod(pairs, m)
        new_c = out3[ii, chan[fi], :]                             # (n, P) copy
        new_c[row, pz] = q
        return fi, ii, chan[fi], new_c

    def _row_changes_merged(self, j: int, st: Stage, faults: FaultList, fm
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_row_changes` for hardened stages (copies merged before requantisation) and RBF logits."""
        chan, new = self._row_outputs(j, st, faults, fm)       # (F,), (F, M, P)
        p = st.positions
        cols = chan[:, None] * p + np.arange(p)[None]
        old = self.outs[j][:, cols].transpose(1, 0, 2)            # (F, M, P)
        fi, ii = np.nonzero((new != old).any(-1))
        return fi, ii, chan[fi], new[fi, ii]

    def _row_outputs(self, j: int, st: Stage, faults: FaultList, fm) -> tuple[np.ndarray, np.ndarray]:
        """Weight / accumulator faults change one accumulator row: its channel and new outputs (F, M, P)."""
        acc = self.accs[j]                                     # (M, R, P)
        if faults.target == "weights":
            r, k = np.divmod(faults.index, st.fan_in)
            w_old = st.w[r, k]
            w_new = fm.corrupt(w_old, faults.bit, 8)
            if st.op == "rbf":   # -sum (x - w)^2: only the k-th term changes, clamp after
                x = self.inputs[j][:, k].T                      # (F, M)
                raw = self._rbf_raw(j)[:, r].T                  # (F, M)
                d = (x - w_new[:, None]) ** 2 - (x - w_old[:, None]) ** 2
                row = np.clip(raw - d, I32_MIN, I32_MAX)[:, :, None]
            else:
                delta = w_new - w_old
                if st.keep is not None:
                    delta = delta * st.keep[r, k]
                cols = self._columns(j)
                if st.op == "subsample":
                    x = cols[:, r, :].transpose(1, 0, 2)        # (F, M, P) block sums of channel r
                else:
                    x = cols[:, :, k].transpose(2, 0, 1)        # (F, M, P)
                row = acc[:, r, :].transpose(1, 0, 2) + delta[:, None, None] * x
        else:
            r, p = np.divmod(faults.index, st.positions)
            row = acc[:, r, :].transpose(1, 0, 2).copy()        # (F, M, P)
            f = np.arange(len(r))
            row[f, :, p] = fm.corrupt(row[f, :, p], faults.bit[:, None], 32)
        rc = st.row_channel()
        chan = rc[r]
        merged = row
        if st.groups:
            merged = row.copy()
            for g_mode, c, copies in st.groups:
                hit = np.flatnonzero(chan == c)
                if not len(hit):
                    continue
                members = [c] + list(copies)
                stack = np.stack([np.broadcast_to(acc[:, q, :], (len(hit),) + acc[:, q, :].shape).copy()
                                  for q in members], axis=0)           # (G, H, M, P)
                for h_i, f in enumerate(hit):
                    stack[members.index(int(r[f])), h_i] = row[f]
                merged[hit] = np.minimum(stack[0], stack[1]) if g_mode == "split" else \
                    (stack[0] & stack[1]) | (stack[0] & stack[2]) | (stack[1] & stack[2])
        if st.op == "rbf":
            return chan, merged
        new = requantize(merged, st.m[chan][:, None, None], st.s[chan][:, None, None], st.out_bits)
        return chan, new

    def replace_input(self, j: int, u: np.ndarray, v_new: np.ndarray) -> np.ndarray:
        """SDC outcomes (F, M) when input unit ``u[f]`` of stage ``j`` reads ``v_new[f, i]`` on image i
        (used by the NVF analysis to find each unit's critical values)."""
        st = self.engine.stages[j]
        native = self._native(j)
        if native is not None and native.plain[j] and -128 <= v_new.min(initial=0) and v_new.max(initial=0) <= 127:
            return native.input_faults(j, u, v_new)
        out = np.zeros(v_new.shape, bool)
        step = max(1, CHUNK // max(1, max(st.positions, st.d_in // 4) * self.m))
        for a in range(0, len(u), step):
            fi, ii, y, ents = self._input_changes(j, u[a:a + step], v_new[a:a + step])
            if not len(fi):
                continue
            if native is not None:
                out[a + fi, ii] = self._native_run(native, j, ii, y, ents)
                continue
            live, logits = self._propagate(j, ii, y=y, ents=ents)
            out[a + fi[live], ii[live]] = np.argmax(logits, axis=1) != self.pred[ii[live]]
        return out

    def _input_changes(self, j: int, u: np.ndarray, v_new: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[np.ndarray, ...] | None]:
        """Stage input ``u[f]`` reads ``v_new[f, i]`` on image i: the (fault, image) pairs whose stage output
        changed, and either their outputs (n, D_out) or the changed entries (row, channel, position, value).
        Only the accumulators that input feeds are recomputed (acc += delta * A[u], A: the stage as a
        matrix), and only those that left their requantisation cell are requantised."""
        st = self.engine.stages[j]
        if st.groups or st.op == "rbf":
            new = self._act_outputs(j, st, u, v_new)
            fi, ii = np.nonzero((new != self.outs[j][None]).any(-1))
            return fi, ii, new[fi, ii], None
        m = self.m
        dv = v_new - self.inputs[j][:, u].T                       # (F, M)
        fz, rz, pz, a = self._feeds(j, u)                          # the accumulators each faulty input feeds
        fz, iz = np.repeat(fz, m), np.tile(np.arange(m), len(fz))
        rz, pz = np.repeat(rz, m), np.repeat(pz, m)
        d = dv[fz, iz] * np.repeat(a, m)
        acc = self.accs[j].reshape(-1)[(iz * st.rows + rz) * st.positions + pz] + d
        moved, q = self._requant_moved(j, iz, rz, pz, acc)
        fz, iz, rz, pz = fz[moved], iz[moved], rz[moved], pz[moved]
        pairs, row = _pairs(fz * m + iz, len(u) * m)
        fi, ii = np.divmod(pairs, m)
        return fi, ii, None, (row, rz, pz, q)

    def _feeds(self, j: int, u: np.ndarray) -> tuple[np.ndarray, ...]:
        """The nonzero entries of A[u[f]] (A: stage ``j`` as a (D_in, R, P) matrix): fault f, row r, position
        p, weight. Conv: from a unit -> (position, tap) table, so A is never built; others: from A itself."""
        st = self.engine.stages[j]
        if st.op == "dense":
            we = st.effective(st.w)[:, u].T                        # (F, R)
            fz, rz = np.nonzero(we)
            return fz, rz, np.zeros(len(fz), np.int64), we[fz, rz]
        if st.op != "conv":
            amat = self._matrix(j)
            fz, rz, pz = np.nonzero(amat[u])
            return fz, rz, pz, amat[u[fz], rz, pz]
        key = ("feeds", j)
        if key not in self._amat:   # per unit: the (position, tap) pairs that read it, padded with tap -1
            g = st.gather.ravel()
            order = np.argsort(g, kind="stable")
            count = np.bincount(g, minlength=st.d_in + 1)[: st.d_in]
            start = np.concatenate([[0], np.cumsum(count)[:-1]])
            width = int(count.max())
            slot = np.arange(width)[None]
            valid = slot < count[:, None]
            at = order[np.where(valid, start[:, None] + slot, 0)]
            pos, tap = np.divmod(at, st.fan_in)
            self._amat[key] = (np.where(valid, pos, 0), np.where(valid, tap, -1))
        pos, tap = self._amat[key]
        pu, ku = pos[u], tap[u]                                        # (F, W)
        we = np.concatenate([st.effective(st.w), np.zeros((st.rows, 1), np.int64)], axis=1)   # tap -1 -> 0
        vals = we[:, ku]                                               # (R, F, W)
        rz, fz, wz = np.nonzero(vals)
        return fz, rz, pu[fz, wz], vals[rz, fz, wz]

    def _act_outputs(self, j: int, st: Stage, u: np.ndarray, v_new: np.ndarray) -> np.ndarray:
        """Hardened / RBF stages: stage input u reads v_new instead, acc += delta * A[u]. -> (F, M, D_out)"""
        v_old = self.inputs[j][:, u].T                         # (F, M)
        eng = self.engine
        if st.op == "rbf":
            w = st.w[:, u].T                                   # (F, R)
            d = (v_new[:, :, None] - w[:, None]) ** 2 - (v_old[:, :, None] - w[:, None]) ** 2
            raw = self._rbf_raw(j)[None] - d                  # (F, M, R)
            acc = np.clip(raw, I32_MIN, I32_MAX)[..., None]
        else:
            amat = self._matrix(j)                             # (D_in + 1, R, P)
            acc = self.accs[j][None] + (v_new - v_old)[:, :, None, None] * amat[u][:, None]
        f_n, m = v_old.shape
        return eng.finish(st, acc.reshape(f_n * m, st.rows, -1)).reshape(f_n, m, -1)

    # ------------------------------------------------------------ caches
    def _columns(self, j: int) -> np.ndarray:
        if j not in self._cols:
            self._cols[j] = self.engine.columns(self.engine.stages[j], self.inputs[j])
        return self._cols[j]

    def _by_weight(self, j: int) -> np.ndarray:
        """What each weight multiplies, weight-major: conv / dense (K, M, P); subsample (C, M, P)."""
        key = ("byw", j)
        if key not in self._amat:
            st = self.engine.stages[j]
            if st.op == "conv":   # im2col, gathered weight-major in int32
                x = self.inputs[j].astype(np.int32)
                xz = np.concatenate([x, np.zeros((len(x), 1), np.int32)], axis=1)
                self._amat[key] = np.ascontiguousarray(xz[:, st.gather.T].transpose(1, 0, 2))
            else:
                perm = (1, 0, 2) if st.op == "subsample" else (2, 0, 1)
                self._amat[key] = np.ascontiguousarray(self._columns(j).transpose(perm)).astype(np.int32)
        return self._amat[key]

    def _by_row(self, what: str, j: int) -> np.ndarray:
        """Fault-free accumulators ("acc"), outputs ("out") or requantisation cells ("lo", "hi"; relative to
        the accumulators, int32: "rlo", "rhi") of stage ``j``, row-major (R, M, P)."""
        key = (what, j)
        if key not in self._amat:
            st = self.engine.stages[j]
            if what in ("acc", "out"):
                a = self.accs[j] if what == "acc" else self.outs[j]
            elif what in ("rlo", "rhi"):
                a = self._rel_cells(j, np.int64)[0 if what == "rlo" else 1]
                a = np.clip(a, -(2**30), 2**30).astype(np.int32)
            else:
                a = self._requant_cells(j)[0 if what == "lo" else 1]
            self._amat[key] = np.ascontiguousarray(a.reshape(self.m, -1, st.positions).transpose(1, 0, 2))
        return self._amat[key]

    def _rbf_raw(self, j: int) -> np.ndarray:
        key = -1 - j
        if key not in self._cols:
            d = self.inputs[j][:, None, :] - self.engine.stages[j].w[None]
            self._cols[key] = -(d * d).sum(-1)                 # (M, R) unclamped
        return self._cols[key]

    def _matrix(self, j: int) -> np.ndarray:
        """(D_in + 1, R, P): how much one unit of input u adds to every accumulator (last row: the zero cell)."""
        if j in self._amat:
            return self._amat[j]
        st = self.engine.stages[j]
        a = np.zeros((st.d_in + 1, st.rows, st.positions), np.int64)
        if st.op == "conv":
            we = st.effective(st.w)
            pos = np.arange(st.positions)
            for k in range(st.fan_in):
                a[st.gather[:, k], :, pos] += we[:, k][None, :]
            a[st.d_in] = 0
        elif st.op == "dense":
            a[: st.d_in, :, 0] = st.effective(st.w).T
        else:   # subsample: input (c, y, x) feeds block (c, y//2, x//2) with weight w[c]
            layer = self.engine.fm.layers[st.flat_index]
            c, h, w = layer.in_shape
            _, oh, ow = layer.out_shape
            for cc in range(c):
                for y in range(2 * oh):
                    for xx in range(2 * ow):
                        a[cc * h * w + y * w + xx, cc, (y // 2) * ow + xx // 2] = st.w[cc, 0]
        self._amat[j] = a
        return a
