"""Selective hardening of the most vulnerable neurons: neuron splitting vs TMR (docs/papers/faults.md).

Both give a hardened :class:`~lenetlab.quant.engine.IntEngine` whose protected
neurons own extra accumulator rows (copies of their int8 weights and int32
bias) that faults can hit like any other row, merged before requantisation:

- ``split`` (Ahmadilivani et al. 2023, *reconstructed*): the neuron becomes two
  halves computing y/2 each (ReLU(y/2) + ReLU(y/2) = ReLU(y)). In the integer
  engine a half keeps the same int8 codes at half the real scale, so both
  half-accumulators equal the original one bit for bit and the pair costs one
  extra copy. The Lightweight Correction Unit compares the halves and keeps
  2 x min: a fault that raises one half (the dangerous direction in a ReLU
  network: a falsely large activation) is removed exactly; one that lowers a
  half is not.
- ``tmr``: three copies and a bitwise 2-of-3 majority voter: any single faulty
  copy is outvoted.

Which neurons: :func:`top_neurons` takes the top k% by NVF, but never a neuron
with NVF 0 (k% is capped at the neurons with a positive NVF: protecting a
neuron no fault was seen to matter in only adds overhead), and breaks NVF ties
by protection cost, cheaper first (MACs, then parameter bytes of one copy).

Fault-free outputs are identical to the unhardened model (min(a, a) = a,
maj(a, a, a) = a), tested. Overhead counts extra MACs and extra parameter
bytes (int8 weights + int32 bias per copy; the requantisation constants are
shared), plus the checker/voter operations per protected output value (:data:`CHECKER_OPS`: 1 for the
LCU's min, 5 for the bitwise voter); ``extra_ops`` = extra MACs + checker operations, each counted as one
operation. (Extra MACs and bytes alone are in a ratio of exactly 1 : 2 between split and TMR: one copy
against two.)

Example::

    from lenetlab.faults.harden import harden, top_neurons
    protect = top_neurons(nvf_rows, 10)                 # top 10% by NVF (NVF > 0 only; ties: cheaper first)
    hard = harden(engine, protect, "split")
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np

from lenetlab.errors import LenetlabError
from lenetlab.quant.engine import IntEngine

MODES = {"split": 1, "tmr": 2}   # extra copies per protected neuron
# integer operations the merge costs per protected output value: the LCU's min of the two halves (its x2 is
# the halves' scale, free); the voter's (a & b) | (a & c) | (b & c) - three ANDs and two ORs
CHECKER_OPS = {"split": 1, "tmr": 5}
KS = (5, 10, 20, 50)


def harden(engine: IntEngine, neurons: list[tuple[int, int]], mode: str) -> IntEngine:
    """A copy of ``engine`` with each (stage, channel) in ``neurons`` protected by ``mode``."""
    if mode not in MODES:
        raise LenetlabError(f"unknown hardening {mode!r}; choose from: {', '.join(MODES)}")
    out = copy.copy(engine)
    out.stages = list(engine.stages)
    by_stage: dict[int, list[int]] = {}
    for j, c in neurons:
        by_stage.setdefault(int(j), []).append(int(c))
    for j, chans in by_stage.items():
        st = engine.stages[j]
        if st.op not in ("conv", "dense"):
            raise LenetlabError(f"only conv and dense neurons can be hardened (stage {j} is {st.op})")
        if st.groups:
            raise LenetlabError("the model is already hardened")
        chans = sorted(set(chans))
        bad = [c for c in chans if not 0 <= c < st.channels]
        if bad:
            raise LenetlabError(f"stage {j} has no channel {bad[0]}")
        n_extra = MODES[mode]
        src = np.repeat(np.array(chans), n_extra)
        rows = st.rows + np.arange(len(src))
        groups = [(mode, c, list(rows[i * n_extra:(i + 1) * n_extra])) for i, c in enumerate(chans)]
        out.stages[j] = replace(st, w=np.vstack([st.w, st.w[src]]), b=np.concatenate([st.b, st.b[src]]),
                                keep=None if st.keep is None else np.vstack([st.keep, st.keep[src]]),
                                groups=groups)
    return out


def top_neurons(nvf_rows: list[dict[str, Any]], k_percent: float, ops: dict[int, str] | None = None
                ) -> list[tuple[int, int]]:
    """The top ``k_percent`` % of neurons by NVF, as (stage, channel).

    k % counts the eligible neurons (conv / dense when ``ops`` is given), capped at those with a positive
    NVF: a neuron with NVF 0 is never protected (no fault in it was ever seen to matter, so protecting it
    only adds overhead). Ties in NVF go to the cheaper neuron first (its ``macs``, then ``param_bytes``, as
    :func:`lenetlab.faults.nvf.neuron_nvf` records them; 0 when absent), then by position."""
    if not 0 < k_percent <= 100:
        raise LenetlabError(f"k must be in (0, 100], got {k_percent}")
    rows = [r for r in nvf_rows if ops is None or ops.get(r["stage"]) in ("conv", "dense")]
    n = max(1, int(round(len(rows) * k_percent / 100)))
    positive = [r for r in rows if r["nvf"] > 0]
    order = sorted(positive, key=lambda r: (-r["nvf"], r.get("macs", 0), r.get("param_bytes", 0),
                                            r["stage"], r["channel"]))
    return [(r["stage"], r["channel"]) for r in order[:n]]


def overhead(base: IntEngine, hard: IntEngine) -> dict[str, Any]:
    """Extra MACs, parameter bytes and checker/voter operations of ``hard`` over ``base`` (per inference)."""
    checks = sum(st.positions * CHECKER_OPS[mode] for st in hard.stages for mode, _, _ in st.groups)
    extra_macs = hard.macs() - base.macs()
    return {"macs": hard.macs(), "extra_macs": hard.macs() - base.macs(),
            "extra_macs_%": 100 * (hard.macs() - base.macs()) / base.macs(),
            "param_bytes": hard.param_bytes(), "extra_param_bytes": hard.param_bytes() - base.param_bytes(),
            "extra_param_bytes_%": 100 * (hard.param_bytes() - base.param_bytes()) / base.param_bytes(),
            "checker_ops": checks, "extra_ops": extra_macs + checks,
            "extra_ops_%": 100 * (extra_macs + checks) / base.macs(),
            "protected": sum(len(st.groups) for st in hard.stages)}
