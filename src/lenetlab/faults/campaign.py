"""Fault-injection campaigns on the integer engine: a fast engine and a naive oracle.

A fault is (stage, site index, bit) for one target:

- ``weights``: index ``r*K + k`` into the stage's (R, K) int8 weights (a permanent fault, every image);
- ``activations``: index ``u`` into the stage's int8 input vector (a transient fault, each image);
- ``accumulators``: index ``r*P + p`` into the stage's (R, P) int32 accumulators.

The outcome of a fault on an image is a silent data corruption (SDC) when the
top-1 class differs from the fault-free top-1.

:meth:`Campaign.naive` is what hook-based injectors do: one full forward per
fault. :meth:`Campaign.fast` gives identical outcomes (tested bit for bit)
while (1) caching every fault-free stage input, accumulator and output, (2)
computing a faulty accumulator as the cached one plus the fault's exact delta
(``delta_w * x`` for a weight, ``delta_x * W`` for an activation), (3)
batching many faults x images per step, and (4) stopping (fault, image) pairs
whose stage output is unchanged (a masked fault cannot change the logits) -
only the rest is propagated, from the next stage on.

Example::

    from lenetlab.faults.campaign import Campaign, sample_faults
    camp = Campaign(engine, images_u8)
    faults = sample_faults(engine, "weights", per_cell=20, rng=np.random.default_rng(0))
    sdc = camp.fast(faults)          # (F, M) bool
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from lenetlab.deploy.runtime import _im2col, _layer, requantize
from lenetlab.errors import LenetlabError
from lenetlab.faults.models import check_target, fault_model
from lenetlab.quant.engine import I32_MAX, I32_MIN, IntEngine, Stage

CHUNK = 1 << 21   # max values of a faulty-accumulator block held at once


@dataclass
class FaultList:
    target: str
    stage: np.ndarray       # (F,) stage index
    index: np.ndarray       # (F,) site index within the stage's target tensor
    bit: np.ndarray         # (F,)
    model: str = "bitflip"

    def __len__(self) -> int:
        return len(self.stage)

    def subset(self, sel: np.ndarray) -> FaultList:
        return FaultList(self.target, self.stage[sel], self.index[sel], self.bit[sel], self.model)


def width(target: str) -> int:
    return 32 if target == "accumulators" else 8


def sites(st: Stage, target: str) -> int:
    """Number of fault sites of ``target`` in stage ``st``."""
    if target == "weights":
        return st.w.size
    if target == "activations":
        return st.d_in
    return st.rows * st.positions


def _bits(bits: list[int] | None, target: str) -> list[int]:
    w = width(target)
    bits = list(range(w)) if bits is None else list(bits)
    bad = [b for b in bits if not 0 <= b < w]
    if bad:
        raise LenetlabError(f"bit positions {bad} outside 0..{w - 1} for {target}")
    return bits


def parse_bits(text: str, target: str) -> list[int]:
    """``all`` or a comma list like ``0,7`` / ranges ``24-31``."""
    if text == "all":
        return _bits(None, target)
    out = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise LenetlabError(f"--bits must be 'all' or a list like 0,3,7 or 24-31, got {text!r}") from None
    return _bits(out, target)


def sample_faults(engine: IntEngine, target: str, per_cell: int, rng: np.random.Generator,
                  bits: list[int] | None = None, stages: list[int] | None = None, model: str = "bitflip"
                  ) -> FaultList:
    """``per_cell`` uniformly drawn sites for every (stage, bit) cell (sampled mode)."""
    check_target(target)
    bits = _bits(bits, target)
    stages = list(range(len(engine.stages))) if stages is None else stages
    st_, ix, bt = [], [], []
    for j in stages:
        n = sites(engine.stages[j], target)
        for b in bits:
            idx = rng.choice(n, size=per_cell, replace=per_cell > n)
            st_.append(np.full(per_cell, j)), ix.append(idx), bt.append(np.full(per_cell, b))
    return FaultList(target, np.concatenate(st_), np.concatenate(ix), np.concatenate(bt), model)


def exhaustive_faults(engine: IntEngine, target: str, stage: int, bits: list[int] | None = None,
                      model: str = "bitflip") -> FaultList:
    """Every site of one stage at every bit (exhaustive single-bit mode)."""
    check_target(target)
    bits = _bits(bits, target)
    n = sites(engine.stages[stage], target)
    idx = np.repeat(np.arange(n), len(bits))
    return FaultList(target, np.full(len(idx), stage), idx, np.tile(np.array(bits), n), model)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


class Campaign:
    """Fault-free caches of one engine on a fixed image set, and the two injection engines."""

    def __init__(self, engine: IntEngine, images: np.ndarray):
        self.engine = engine
        self.images = images
        self.x0 = engine.input(images)
        seen = engine.forward(self.x0, collect=True)
        self.inputs: list[np.ndarray] = seen[:-1]
        self.logits = seen[-1]
        self.pred = np.argmax(self.logits, axis=1)
        self.accs = [engine.acc(st, x) for st, x in zip(engine.stages, self.inputs)]
        self.outs = [engine.finish(st, a) for st, a in zip(engine.stages, self.accs)]
        self._cols: dict[int, np.ndarray] = {}
        self._amat: dict = {}

    @property
    def m(self) -> int:
        return len(self.images)

    # ------------------------------------------------------------ oracle
    def naive(self, faults: FaultList, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """One full forward per fault, the fault injected by a hook (the oracle)."""
        eng, fm = self.engine, fault_model(faults.model)
        out = np.zeros((len(faults), self.m), bool)
        for f in range(len(faults)):
            j, i, b = int(faults.stage[f]), int(faults.index[f]), int(faults.bit[f])
            st = eng.stages[j]
            kw: dict = {}
            if faults.target == "weights":
                w = st.w.copy()
                r, k = divmod(i, st.fan_in)
                w[r, k] = fm.corrupt(w[r, k], b, 8)
                kw["weights"] = {j: w}
            elif faults.target == "activations":
                def hook(x, i=i, b=b):
                    x = x.copy()
                    x[:, i] = fm.corrupt(x[:, i], b, 8)
                    return x
                kw["in_hooks"] = {j: hook}
            else:
                r, p = divmod(i, st.positions)

                def hook(a, r=r, p=p, b=b):
                    a = a.copy()
                    a[:, r, p] = fm.corrupt(a[:, r, p], b, 32)
                    return a
                kw["acc_hooks"] = {j: hook}
            out[f] = np.argmax(eng.forward(self.x0, **kw), axis=1) != self.pred
            if progress:
                progress(1)
        return out

    # ------------------------------------------------------------ fast engine
    def fast(self, faults: FaultList, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Identical outcomes to :meth:`naive`, computed from the cached prefix with faults batched."""
        out = np.zeros((len(faults), self.m), bool)
        order = np.argsort(faults.stage, kind="stable")
        for j in np.unique(faults.stage):
            sel = order[faults.stage[order] == j]
            st = self.engine.stages[int(j)]
            per = st.rows * st.positions if faults.target == "activations" else st.positions
            step = max(1, CHUNK // max(1, per * self.m))
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
        clean = self.outs[j]                                  # (M, D_out)
        if faults.target == "activations":
            u = faults.index
            new = self._act_outputs(j, st, u, fm.corrupt(self.inputs[j][:, u].T, faults.bit[:, None], 8))
            fi, ii = np.nonzero((new != clean[None]).any(-1))
            if not len(fi):
                return res
            live, logits = self._propagate(j, new[fi, ii], ii)
        else:
            chan, new_c = self._row_outputs(j, st, faults, fm)   # (F,), (F, M, P)
            p = st.positions
            cols = chan[:, None] * p + np.arange(p)[None]         # (F, P) output columns of the channel
            old_c = clean[:, cols].transpose(1, 0, 2)             # (F, M, P)
            fi, ii = np.nonzero((new_c != old_c).any(-1))
            if not len(fi):   # every fault masked by requantisation
                return res
            if j + 1 < len(eng.stages) and self._channelwise(j):
                # the layers up to the next stage act per channel: finish only the faulty channel
                xc = self._after_channel(j, new_c[fi, ii])       # (n, per-channel part of the next input)
                per = xc.shape[1]
                idx = chan[fi][:, None] * per + np.arange(per)[None]
                moved = (xc != self.inputs[j + 1][ii[:, None], idx]).any(1)
                fi, ii, xc, idx = fi[moved], ii[moved], xc[moved], idx[moved]
                x = self.inputs[j + 1][ii].copy()
                x[np.arange(len(fi))[:, None], idx] = xc
                acc = self._acc_channel(j + 1, chan[fi], xc - self.inputs[j + 1][ii[:, None], idx], ii)
                live, logits = self._propagate(j + 1, x, ii, stage_input=True, acc=acc)
            else:
                rows = clean[ii].copy()
                rows[np.arange(len(fi))[:, None], cols[fi]] = new_c[fi, ii]
                live, logits = self._propagate(j, rows, ii)
        res[fi[live], ii[live]] = np.argmax(logits, axis=1) != self.pred[ii[live]]
        return res

    def _channelwise(self, j: int) -> bool:
        return all(self.engine.fm.layers[i].op in ("act", "maxpool", "avgpool") for i in self.engine.post[j])

    def _after_channel(self, j: int, y: np.ndarray) -> np.ndarray:
        """The ACT / pool layers after stage ``j`` applied to one channel's outputs (n, P)."""
        fm = self.engine.fm
        for i in self.engine.post[j]:
            layer = fm.layers[i]
            one = replace(layer, in_shape=(1, *layer.in_shape[1:]), out_shape=(1, *layer.out_shape[1:]))
            y = _layer(fm, one, y, False)
        return y

    def _acc_channel(self, s: int, chans: np.ndarray, dxc: np.ndarray, img: np.ndarray) -> np.ndarray | None:
        """Accumulators of stage ``s`` when only input channel ``chans[i]`` of row i changed by ``dxc[i]``:
        cached + the convolution of that one channel's change (exact, ~C times cheaper than the stage)."""
        st = self.engine.stages[s]
        if st.op not in ("conv", "dense"):
            return None
        layer = self.engine.fm.layers[st.flat_index]
        c_in = layer.in_shape[0]
        we = st.effective(st.w).reshape(st.rows, c_in, -1).astype(np.float32)   # exact: int8 x int8, small sums
        acc = self.accs[s][img].copy()
        for c in np.unique(chans):
            sel = np.flatnonzero(chans == c)
            d = dxc[sel].astype(np.float32)
            if st.op == "dense":
                delta = (d @ we[:, c].T)[:, :, None]
            else:
                g = _im2col((1, *layer.in_shape[1:]), layer.k, layer.pad)
                dz = np.concatenate([d, np.zeros((len(d), 1), np.float32)], axis=1)
                delta = (dz[:, g] @ we[:, c].T).transpose(0, 2, 1)
            acc[sel] += delta.astype(np.int64)
        return acc

    def _propagate(self, j: int, y: np.ndarray, img: np.ndarray, stage_input: bool = False,
                   acc: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run faulty stage-``j`` outputs ``y`` (of images ``img``; with ``stage_input``, the input of stage
        ``j`` instead) to the logits, dropping every row that is back to fault-free at a stage boundary
        (masked by requantisation, pooling or ReLU: it cannot be an SDC). Returns surviving rows and logits."""
        eng = self.engine
        live = np.arange(len(y))
        if stage_input:
            x, j = y, j - 1
        else:
            x = eng.after(j, y)
        for s in range(j + 1, len(eng.stages)):
            keep = (x != self.inputs[s][img[live]]).any(axis=1)
            live, x = live[keep], x[keep]
            if not len(live):
                break
            if acc is not None and s == j + 1:
                a = acc[live]
            else:
                a = self._acc_incremental(s, x, img[live])
            y = self._finish_changed(s, a, img[live])
            keep = (y != self.outs[s][img[live]]).any(axis=1)
            live, y = live[keep], y[keep]
            if not len(live):
                break
            x = eng.after(s, y)
        if not len(live):
            return live, np.zeros((0, self.logits.shape[1]), np.int64)
        return live, x

    def _finish_changed(self, s: int, acc: np.ndarray, img: np.ndarray) -> np.ndarray:
        """Stage output for accumulators ``acc``: requantise only entries that differ from the cached ones."""
        st = self.engine.stages[s]
        if st.groups or st.op == "rbf":
            return self.engine.finish(st, acc)
        n = len(acc)
        y = self.outs[s][img].copy()
        if st.out_bits == 8:   # the same function, tabulated: q = -128 + #(thresholds <= acc) per channel
            big, span = self._requant_table(s)
            lo, hi = self._requant_cells(s)
            ri, ci, pi = np.nonzero((acc < lo[img]) | (acc >= hi[img]))   # left the fault-free output's cell
            q = np.searchsorted(big, ci * span + acc[ri, ci, pi], side="right") - ci * 255 - 128
        else:
            ri, ci, pi = np.nonzero(acc != self.accs[s][img])
            q = requantize(acc[ri, ci, pi], st.m[ci], st.s[ci], st.out_bits)
        y.reshape(n, st.channels, st.positions)[ri, ci, pi] = q
        return y

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
        :func:`~lenetlab.deploy.runtime.requantize` maps to >= q (found by bisection on that very function;
        it is monotone), laid out as one sorted array with channel c offset by c * span."""
        key = ("rq", s)
        if key not in self._amat:
            st = self.engine.stages[s]
            q = np.tile(np.arange(-127, 128), st.channels)
            c = np.repeat(np.arange(st.channels), 255)
            lo = np.full(q.shape, I32_MIN - 1, np.int64)          # f(lo) < q (virtually)
            hi = np.full(q.shape, I32_MAX + 1, np.int64)          # f(hi) >= q (virtually)
            for _ in range(34):
                mid = (lo + hi) // 2
                ok = requantize(mid, st.m[c], st.s[c], 8) >= q
                hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
            span = 1 << 34
            self._amat[key] = (c * span + hi, span)
        return self._amat[key]

    def _acc_incremental(self, s: int, x: np.ndarray, img: np.ndarray) -> np.ndarray:
        """Accumulators of stage ``s`` for inputs ``x`` that differ from the cached ones of images ``img`` in
        a few input units U: cached + (delta x)[:, U] @ A[U] (A: the conv as a matrix), when |U| < fan-in.
        float32 is exact here: every sum has at most fan-in terms of |dx * w| <= 255 * 128 < 2^24 / fan-in."""
        st = self.engine.stages[s]
        if st.op != "conv" or not len(x) or st.fan_in * 255 * 128 >= 2**24:
            return self.engine.acc(st, x)
        dx = x - self.inputs[s][img]
        cols = np.flatnonzero(dx.any(axis=0))
        if len(cols) >= st.fan_in:   # a full recomputation is cheaper
            return self.engine.acc(st, x)
        amat = self._matrix_f32(s)
        delta = (dx[:, cols].astype(np.float32) @ amat[cols]).astype(np.int64)
        return self.accs[s][img] + delta.reshape(len(x), st.rows, st.positions)

    def _matrix_f32(self, s: int) -> np.ndarray:
        key = ("f32", s)
        if key not in self._amat:
            st = self.engine.stages[s]
            self._amat[key] = self._matrix(s).reshape(st.d_in + 1, st.rows * st.positions).astype(np.float32)
        return self._amat[key]

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
        out = np.zeros(v_new.shape, bool)
        step = max(1, CHUNK // max(1, st.rows * st.positions * self.m))
        for a in range(0, len(u), step):
            new = self._act_outputs(j, st, u[a:a + step], v_new[a:a + step])
            fi, ii = np.nonzero((new != self.outs[j][None]).any(-1))
            if not len(fi):
                continue
            live, logits = self._propagate(j, new[fi, ii], ii)
            out[a + fi[live], ii[live]] = np.argmax(logits, axis=1) != self.pred[ii[live]]
        return out

    def _act_outputs(self, j: int, st: Stage, u: np.ndarray, v_new: np.ndarray) -> np.ndarray:
        """Stage input u reads v_new instead: acc += delta * A[u] (A: the stage as a matrix). -> (F, M, D_out)"""
        v_old = self.inputs[j][:, u].T                         # (F, M)
        eng = self.engine
        if st.op == "rbf":
            w = st.w[:, u].T                                   # (F, R)
            d = (v_new[:, :, None] - w[:, None]) ** 2 - (v_old[:, :, None] - w[:, None]) ** 2
            raw = self._rbf_raw(j)[None] - d                  # (F, M, R)
            acc = np.clip(raw, I32_MIN, I32_MAX)[..., None]
        elif not st.groups:   # requantise only the accumulators this input feeds
            amat = self._matrix(j)
            f_n, m = v_old.shape
            fz, rz, pz = np.nonzero(amat[u])
            vals = self.accs[j][:, rz, pz].T + (v_new - v_old)[fz] * amat[u[fz], rz, pz][:, None]   # (Z, M)
            y = np.broadcast_to(self.outs[j][None], (f_n, m, self.outs[j].shape[1])).copy()
            y.reshape(f_n, m, st.rows, st.positions)[fz, :, rz, pz] = requantize(
                vals, st.m[rz][:, None], st.s[rz][:, None], st.out_bits)
            return y
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


def summarize(engine: IntEngine, faults: FaultList, sdc: np.ndarray) -> dict:
    """SDC rate per stage and per (stage, bit) with 95% Wilson intervals."""
    per_fault = sdc.sum(axis=1)
    m = sdc.shape[1]
    layers = []
    for j in np.unique(faults.stage):
        st = engine.stages[int(j)]
        sel = faults.stage == j
        k, n = int(per_fault[sel].sum()), int(sel.sum()) * m
        lo, hi = wilson(k, n)
        bits = []
        for b in np.unique(faults.bit[sel]):
            sb = sel & (faults.bit == b)
            kb, nb = int(per_fault[sb].sum()), int(sb.sum()) * m
            blo, bhi = wilson(kb, nb)
            bits.append({"bit": int(b), "faults": int(sb.sum()), "trials": nb, "sdc": kb, "rate": kb / nb,
                         "ci95": [blo, bhi]})
        layers.append({"stage": int(j), "name": engine.stage_names()[int(j)], "layer": st.flat_index, "op": st.op,
                       "faults": int(sel.sum()),
                       "trials": n, "sdc": k, "rate": k / n, "ci95": [lo, hi], "bits": bits})
    k, n = int(per_fault.sum()), sdc.size
    return {"target": faults.target, "fault_model": faults.model, "images": m, "faults": len(faults),
            "trials": n, "sdc": k, "rate": k / n if n else math.nan, "ci95": list(wilson(k, n)), "layers": layers}


def run_campaign(engine: IntEngine, images: np.ndarray, target: str, bits: list[int] | None = None,
                 samples: int = 100, stages: list[int] | None = None, exhaustive: bool = False,
                 model: str = "bitflip", seed: int = 0, engine_kind: str = "fast",
                 progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None
                 ) -> tuple[FaultList, np.ndarray, dict]:
    """Build the fault list (sampled: ``samples`` per stage and bit; exhaustive: every site of each stage),
    inject it with the fast or naive engine, and summarise. Returns (faults, sdc (F, M), summary)."""
    check_target(target)
    fault_model(model)
    if engine_kind not in ("fast", "naive"):
        raise LenetlabError(f"engine must be 'fast' or 'naive', got {engine_kind!r}")
    n_st = len(engine.stages)
    stages = list(range(n_st)) if stages is None else stages
    bad = [s for s in stages if not 0 <= s < n_st]
    if bad:
        raise LenetlabError(f"layer {bad[0]} out of range: this model has {n_st} layers with weights "
                            f"({', '.join(f'{i}={n}' for i, n in enumerate(engine.stage_names()))})")
    if exhaustive:
        parts = [exhaustive_faults(engine, target, s, bits, model) for s in stages]
        faults = FaultList(target, *(np.concatenate([getattr(p, a) for p in parts]) for a in ("stage", "index", "bit")),
                           model)
    else:
        if samples < 1:
            raise LenetlabError(f"--samples must be >= 1, got {samples}")
        faults = sample_faults(engine, target, samples, np.random.default_rng(seed), bits, stages, model)
    if on_total:
        on_total(len(faults))
    camp = Campaign(engine, images)
    sdc = camp.fast(faults, progress) if engine_kind == "fast" else camp.naive(faults, progress)
    summary = summarize(engine, faults, sdc)
    summary.update({"mode": "exhaustive" if exhaustive else f"sampled ({samples} per layer and bit)",
                    "engine": engine_kind, "seed": seed})
    return faults, sdc, summary
