"""Fault-injection campaigns on the integer engine: fault lists, the naive oracle, summaries.

A fault is (stage, site index, bit) for one target:

- ``weights``: index ``r*K + k`` into the stage's (R, K) int8 weights (a permanent fault, every image);
- ``activations``: index ``u`` into the stage's int8 input vector (a transient fault, each image);
- ``accumulators``: index ``r*P + p`` into the stage's (R, P) int32 accumulators.

The outcome of a fault on an image is a silent data corruption (SDC) when the
top-1 class differs from the fault-free top-1.

This module holds the fault lists (:class:`FaultList`, :func:`sample_faults`,
:func:`exhaustive_faults`, :func:`parse_bits`), :func:`wilson` intervals,
:class:`Campaign` (the fault-free caches of one engine on an image set, and
:meth:`Campaign.naive`), :func:`summarize` and :func:`run_campaign`.

:meth:`Campaign.naive` is what hook-based injectors do: one full forward per
fault. :meth:`Campaign.fast` gives identical outcomes (tested bit for bit) from
the cached fault-free prefix, with faults batched and masked faults stopped
early; it and its machinery live in :mod:`lenetlab.faults.fast`
(:class:`~lenetlab.faults.fast.FastEngine`, a mixin of :class:`Campaign`).

Example::

    from lenetlab.faults.campaign import Campaign, sample_faults
    camp = Campaign(engine, images_u8)
    faults = sample_faults(engine, "weights", per_cell=20, rng=np.random.default_rng(0))
    sdc = camp.fast(faults)          # (F, M) bool
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lenetlab.errors import LenetlabError
from lenetlab.faults.fast import FastEngine
from lenetlab.faults.models import check_target, fault_model
from lenetlab.quant.engine import IntEngine, Stage


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
                lo, hi = int(a), int(b)
                if hi - lo > 64:    # refused before it is expanded (no register is wider)
                    raise LenetlabError(f"--bits range {part.strip()!r} spans more than 64 bit positions")
                out.extend(range(lo, hi + 1))
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


class Campaign(FastEngine):
    """Fault-free caches of one engine on a fixed image set, and the two injection engines: :meth:`naive`
    here, :meth:`fast` (and :meth:`replace_input`) from :class:`~lenetlab.faults.fast.FastEngine`."""

    def __init__(self, engine: IntEngine, images: np.ndarray, native: bool = True):
        """``native``: let :meth:`fast` carry fault effects on in C (:mod:`lenetlab.faults.native`) where it
        can (the same outcomes; False: NumPy only)."""
        if len(images) == 0:
            raise LenetlabError("a fault campaign needs at least one image")
        self.engine = engine
        self.images = images
        self.x0 = engine.input(images)
        self.inputs: list[np.ndarray] = []
        self.accs: list[np.ndarray] = []
        self.outs: list[np.ndarray] = []
        x = self.x0
        for j, st in enumerate(engine.stages):   # engine.forward, keeping every stage's input, acc and output
            self.inputs.append(x)
            self.accs.append(engine.acc(st, x))
            self.outs.append(engine.finish(st, self.accs[-1]))
            x = engine.after(j, self.outs[-1])
        self.logits = x
        self.pred = np.argmax(self.logits, axis=1)
        self._cols: dict[int, np.ndarray] = {}
        self._amat: dict = {}
        self.native = native
        self._propagator = None

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
                    "engine": engine_kind, "seed": seed,
                    "native": engine_kind == "fast" and camp._propagator is not None})
    return faults, sdc, summary
