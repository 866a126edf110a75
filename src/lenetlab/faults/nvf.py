"""Neuron vulnerability factors, computed analytically DeepVigor-style (docs/papers/faults.md).

A *neuron* is an output channel of a CONV layer (its filter, shared by every
position) or an output unit of a DENSE layer. Its NVF is the probability that
a single bit flip in its int32 accumulator - uniform over its output
positions, the 32 bit positions and the images - changes the top-1 class.

The analysis never injects a fault:

1. **Deviation distribution.** For every output element and bit b, the fault's
   effect is known exactly: the accumulator a becomes ``a XOR 2^b``, so the
   element's requantised output and - through ACT and a 2x2 pool window, using
   the three fault-free neighbours - the one *unit* of the next layer's input
   it can change, and that unit's new value v', follow in closed form.
2. **Critical ranges.** For every unit of every layer input and every image, the
   network below it is evaluated once per value of a small grid (at most 16
   values of the unit's range) to find the nearest critical values above and
   below the fault-free one (``hi``, ``lo``; assuming, as DeepVigor does, that
   larger deviations in the same direction stay critical). For the logits the
   range is exact: the top-1 margin.
3. NVF = mean over (position, bit, image) of ``v' >= hi or v' <= lo``.

The ranges are shared by every fault site feeding a unit, which is what makes
this cheaper than a campaign. :func:`nvf_report` validates it against a
sampled accumulator campaign per neuron (Spearman rank correlation).

Example::

    from lenetlab.faults.nvf import neuron_nvf
    nvf = neuron_nvf(engine, images_u8)      # list of {"stage", "channel", "nvf", "macs", "param_bytes"}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lenetlab.faults.campaign import Campaign, FaultList
from lenetlab.faults.models import BitFlip
from lenetlab.models.macs import row_macs
from lenetlab.quant.engine import IntEngine
from lenetlab.quant.int8 import requantize

GRID = 16
BITS = 32


def _post_ops(engine: IntEngine, j: int) -> tuple[list[np.ndarray], str | None, list[np.ndarray]]:
    """(LUTs before the pool, pool op or None, LUTs after) of the layers between stage j and j+1."""
    before, pool, after = [], None, []
    for i in engine.post[j]:
        layer = engine.fm.layers[i]
        if layer.op == "act":
            (after if pool else before).append(layer.arrays["t"].astype(np.int64))
        elif layer.op in ("maxpool", "avgpool"):
            if pool is not None:
                raise NotImplementedError("two pools between layers with weights")
            pool = layer.op
        else:
            raise NotImplementedError(f"op {layer.op} between layers with weights")
    return before, pool, after


def _lut(luts: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    for t in luts:
        x = t[x + 128]
    return x


RANGE_PARTS = 32   # with a progress callback, each stage's critical ranges are found in this many parts


def critical_ranges(camp: Campaign, s: int, grid: int = GRID, progress: Callable[[int], None] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of shape (D_in, M): nearest critical values of every input unit of stage ``s`` below / above
    its fault-free value (-1000 / 1000 when none on the grid). ``progress(n)`` as the ranges of n more input
    units are found (the calls add up to D_in; each unit's outcome depends on that unit alone, so the parts
    give the same ranges as one pass)."""
    x = camp.inputs[s]
    d_in = x.shape[1]
    prev = [i for i in camp.engine.post[s - 1] if camp.engine.fm.layers[i].op == "act"] if s > 0 else []
    if prev:
        values = np.unique(camp.engine.fm.layers[prev[-1]].arrays["t"].astype(np.int64))
    else:
        values = np.arange(-128, 128)
    g = values[np.unique(np.linspace(0, len(values) - 1, min(grid, len(values))).round().astype(int))]
    step = max(1, d_in if progress is None else -(-d_in // RANGE_PARTS))
    crit = np.zeros((d_in, len(g), camp.m), bool)
    for a in range(0, d_in, step):
        b = min(d_in, a + step)
        u = np.repeat(np.arange(a, b), len(g))
        v = np.broadcast_to(np.tile(g, b - a)[:, None], (len(u), camp.m))
        crit[a:b] = camp.replace_input(s, u, v).reshape(b - a, len(g), camp.m)
        if progress:
            progress(b - a)
    v0 = x.T[:, None, :]                                          # (D_in, 1, M)
    gg = g[None, :, None]
    hi = np.where(crit & (gg > v0), gg, 1000).min(axis=1)
    lo = np.where(crit & (gg < v0), gg, -1000).max(axis=1)
    return lo, hi


def _flips(acc: np.ndarray) -> np.ndarray:
    """acc (..., ) -> (..., 32) with bit b flipped (int32 words)."""
    return BitFlip().corrupt(acc[..., None], np.arange(BITS), 32)


def stage_nvf(camp: Campaign, j: int, ranges: tuple[np.ndarray, np.ndarray] | None,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
    """NVF of every channel of stage ``j`` (accumulator bit flips); ``progress(1)`` after each channel."""
    eng = camp.engine
    st = eng.stages[j]
    acc = eng.merge(st, camp.accs[j])                              # (M, C, P)
    m_img = camp.m
    out = np.zeros(st.channels)
    last = j == len(eng.stages) - 1
    for c in range(st.channels):
        a = _flips(acc[:, c, :])                                   # (M, P, B)
        if st.op == "rbf":
            q = a
        else:
            q = requantize(a, st.m[c], st.s[c], st.out_bits)
        if last:   # logits: replace logit c and compare the top-1 (exact)
            lg = np.broadcast_to(camp.logits[:, None, None, :], q.shape + (camp.logits.shape[1],)).copy()
            lg[..., c] = q
            out[c] = (np.argmax(lg, -1) != camp.pred[:, None, None]).mean()
            if progress:
                progress(1)
            continue
        before, pool, after = _post_ops(eng, j)
        lo, hi = ranges
        clean_q = camp.outs[j].reshape(m_img, st.channels, st.positions)[:, c, :]   # (M, P)
        layer = eng.fm.layers[st.flat_index]
        if pool is None:
            v = _lut(before + after, q)
            units = c * st.positions + np.arange(st.positions)
            valid = np.ones(st.positions, bool)
        else:
            _, h, w = layer.out_shape
            oh, ow = h // 2, w // 2
            y, x = np.divmod(np.arange(st.positions), w)
            valid = (y < 2 * oh) & (x < 2 * ow)
            y0, x0 = (y // 2) * 2, (x // 2) * 2
            win = np.stack([(y0 + dy) * w + x0 + dx for dy in (0, 1) for dx in (0, 1)], axis=1)   # (P, 4)
            win = np.where(valid[:, None], win, 0)
            vals = np.broadcast_to(clean_q[:, win][:, :, None, :], (m_img, st.positions, BITS, 4)).copy()
            self_slot = (win == np.arange(st.positions)[:, None]).argmax(1)          # (P,)
            vals[:, np.arange(st.positions), :, self_slot] = q.transpose(1, 0, 2)   # (P, M, B)
            vals = _lut(before, vals)
            if pool == "maxpool":
                pooled = vals.max(-1)
            else:
                ssum = vals.sum(-1)
                pooled = np.sign(ssum) * ((np.abs(ssum) + 2) >> 2)
            v = _lut(after, pooled)
            units = c * oh * ow + (y // 2) * ow + x // 2
            units = np.where(valid, units, 0)
        lo_u, hi_u = lo[units].T[:, :, None], hi[units].T[:, :, None]    # (M, P, 1)
        crit = ((v >= hi_u) | (v <= lo_u)) & valid[None, :, None]
        out[c] = crit.mean()
        if progress:
            progress(1)
    return out


def neuron_count(engine: IntEngine) -> int:
    """Neurons (conv channels and dense units) of every layer with weights: the rows of :func:`neuron_nvf`."""
    return sum(st.channels for st in engine.stages)


def analysis_steps(engine: IntEngine) -> int:
    """The steps :func:`neuron_nvf` reports: one per input unit of a layer after the first (its critical range,
    most of the time) and one per neuron."""
    return sum(st.d_in for st in engine.stages[1:]) + neuron_count(engine)


def neuron_nvf(engine: IntEngine, images: np.ndarray, grid: int = GRID, camp: Campaign | None = None,
               progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Analytic NVF of every neuron (conv channel / dense unit) of every layer with weights; ``progress(n)`` as
    n more steps are done (the calls add up to :func:`analysis_steps`)."""
    camp = camp or Campaign(engine, images)
    names = engine.stage_names()
    rows = []
    for j in range(len(engine.stages)):
        ranges = critical_ranges(camp, j + 1, grid, progress) if j + 1 < len(engine.stages) else None
        cost = protection_cost(engine, j)
        for c, v in enumerate(stage_nvf(camp, j, ranges, progress)):
            rows.append({"stage": j, "layer": names[j], "channel": c, "nvf": float(v),
                         "macs": int(cost[c, 0]), "param_bytes": int(cost[c, 1])})
    return rows


def protection_cost(engine: IntEngine, j: int) -> np.ndarray:
    """(C, 2): MACs per inference and parameter bytes (int8 weights + int32 bias) of one copy of each neuron
    of stage ``j`` - what protecting it costs per extra copy (used to break NVF ties in
    :func:`lenetlab.faults.harden.top_neurons`)."""
    st = engine.stages[j]
    c = st.channels
    macs = st.positions * row_macs(st.op, st.rows, st.fan_in, st.keep)[:c]
    return np.stack([macs, st.fan_in + 4 * (st.op != "rbf") + np.zeros(c, np.int64)], axis=1)


def measured_criticality(camp: Campaign, per_bit: int, rng: np.random.Generator,
                         progress: Callable[[int], None] | None = None) -> np.ndarray:
    """SDC rate per neuron (in :func:`neuron_nvf` order) from an accumulator campaign: ``per_bit`` random
    positions of the neuron at each of the 32 bits, every image. ``progress(n)`` as the faults of n more neurons
    are injected (the calls add up to the number of neurons)."""
    eng = camp.engine
    st_, ix, bt = [], [], []
    for j, st in enumerate(eng.stages):
        for c in range(st.channels):
            pos = rng.integers(0, st.positions, size=(per_bit, BITS))
            st_.append(np.full(pos.size, j))
            ix.append((c * st.positions + pos).reshape(-1))
            bt.append(np.tile(np.arange(BITS), per_bit))
    faults = FaultList("accumulators", np.concatenate(st_), np.concatenate(ix), np.concatenate(bt))
    sdc = camp.fast(faults, _per_neuron(progress, per_bit * BITS) if progress else None)
    return sdc.mean(axis=1).reshape(-1, per_bit * BITS).mean(axis=1)


def _per_neuron(progress: Callable[[int], None], faults_per_neuron: int) -> Callable[[int], None]:
    """A fault-count callback that reports whole neurons (the fault list runs neuron by neuron)."""
    done = 0

    def step(k: int) -> None:
        nonlocal done
        n = (done + k) // faults_per_neuron - done // faults_per_neuron
        done += k
        if n:
            progress(n)

    return step


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def rank(x):
        x = np.asarray(x, float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):
            sel = x == v
            r[sel] = r[sel].mean()
        return r
    ra, rb = rank(a), rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def nvf_report(engine: IntEngine, images: np.ndarray, validate: int = 0, seed: int = 0, grid: int = GRID,
               progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None
               ) -> dict[str, Any]:
    """NVF of every neuron, per-layer summaries, and (``validate`` > 0) the campaign check.

    Progress is counted in steps: ``on_total(n)`` first, then ``progress(k)`` as k more are done; the calls add
    up to n = :func:`analysis_steps` (+ :func:`neuron_count` with ``validate``: one step per neuron measured)."""
    if on_total:
        on_total(analysis_steps(engine) + (neuron_count(engine) if validate else 0))
    camp = Campaign(engine, images)
    rows = neuron_nvf(engine, images, grid, camp, progress)
    rep: dict[str, Any] = {"target": "accumulators", "bits": BITS, "images": len(images), "grid": grid,
                           "neurons": rows}
    if validate:
        meas = measured_criticality(camp, validate, np.random.default_rng(seed), progress)
        for r, v in zip(rows, meas):
            r["measured_sdc"] = float(v)
        rep["spearman"] = spearman([r["nvf"] for r in rows], meas)
        rep["validation"] = f"accumulator campaign, {validate} random positions per neuron and bit, same images"
    rep["layers"] = []
    for name in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == name]
        v = [r["nvf"] for r in mine]
        la = {"name": name, "neurons": len(v), "mean_nvf": float(np.mean(v)), "max_nvf": float(np.max(v))}
        if validate:   # within one layer: the harder test (across layers the scale differences dominate)
            la["mean_measured"] = float(np.mean([r["measured_sdc"] for r in mine]))
            la["spearman"] = spearman(v, [r["measured_sdc"] for r in mine])
        rep["layers"].append(la)
    return rep
