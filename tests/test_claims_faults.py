"""faults claims from synthetic cells: each testable claim reaches all three verdicts; the overhead counts
the correction unit / voter and the bytes; a single leg can refute the combined claim."""

from __future__ import annotations

import numpy as np
import pytest

from lenetlab.experiments import stats
from lenetlab.experiments.faults import claims

KS = [5, 50]
N, DRAWS = 300, 8


def _counts(rate: float, stream: int) -> list[int]:
    return np.random.default_rng(stream).binomial(DRAWS, rate, size=N).tolist()


def _runs(sdc: dict[str, float], ops: list[float], nbytes: list[float] | None = None,
          rhos: tuple[float, ...] = (0.9, 0.92, 0.94)) -> list[dict]:
    """One run per entry of ``ops`` (split / TMR operation ratio); SDC rates per method (same for every k)."""
    nbytes = nbytes or [0.5] * len(ops)
    runs = []
    for m, (o, b, rho) in enumerate(zip(ops, nbytes, rhos)):
        configs = {"none/0": {"sdc_counts": _counts(sdc["none"], 100 * m), "draws": DRAWS, "extra_ops": 0,
                              "extra_param_bytes": 0}}
        for i, k in enumerate(KS):
            tmr_ops, tmr_bytes = 1000 * k, 400 * k
            configs[f"tmr/{k}"] = {"sdc_counts": _counts(sdc["tmr"], 100 * m + 2 * i + 1), "draws": DRAWS,
                                   "extra_ops": tmr_ops, "extra_param_bytes": tmr_bytes}
            configs[f"split/{k}"] = {"sdc_counts": _counts(sdc["split"], 100 * m + 2 * i + 2), "draws": DRAWS,
                                     "extra_ops": o * tmr_ops, "extra_param_bytes": b * tmr_bytes}
        runs.append({"configs": configs, "spearman": rho})
    return runs


def _verdicts(runs: list[dict]) -> dict[str, str]:
    out, legs = claims(runs, KS)
    assert [leg["k_%"] for leg in legs] == [5, 50, "5,50"]
    return {c.name: c.verdict for c in out}


GOOD = {"none": 0.30, "tmr": 0.08, "split": 0.08}       # split keeps all of TMR's reduction
HALF = [0.49, 0.50, 0.48]


def test_split_matches_tmr_at_half_cost_reaches_every_verdict():
    name = "split_matches_tmr_at_half_cost"
    assert _verdicts(_runs(GOOD, HALF))[name] == stats.SUPPORTED
    # resilience leg refutes it: split no better than the unhardened model
    assert _verdicts(_runs({**GOOD, "split": 0.30}, HALF))[name] == stats.NOT_SUPPORTED
    # operations leg refutes it: split costs nearly what TMR costs
    assert _verdicts(_runs(GOOD, [0.9, 0.92, 0.95]))[name] == stats.NOT_SUPPORTED
    # bytes leg refutes it on its own
    assert _verdicts(_runs(GOOD, HALF, [0.8, 0.8, 0.8]))[name] == stats.NOT_SUPPORTED
    # split right at 80% of TMR's reduction (0.2 x 30 + 0.8 x 8 = 12.4%): the interval straddles the bound
    assert _verdicts(_runs({**GOOD, "split": 0.124}, HALF))[name] == stats.INCONCLUSIVE
    # ratios spread across the range over models: the t interval leaves [0.4, 0.6]
    assert _verdicts(_runs(GOOD, [0.35, 0.5, 0.65]))[name] == stats.INCONCLUSIVE


def test_one_k_value():
    """A sweep over one k (``--set ks=[50]``) judges that k; its legs table has the k and the 'all k' row."""
    out, legs = claims(_runs(GOOD, HALF), [50])
    assert [leg["k_%"] for leg in legs] == [50, "50"]
    assert out[0].verdict == stats.SUPPORTED


def test_one_model_is_inconclusive():
    c = claims(_runs(GOOD, [0.5], rhos=(0.95,)), KS)[0]
    assert [x.verdict for x in c] == [stats.INCONCLUSIVE] * 3
    assert "a verdict needs >= 3" in c[0].measured


@pytest.mark.parametrize("rhos, verdict", [((0.95, 0.96, 0.97), stats.SUPPORTED),
                                           ((0.2, 0.3, 0.25), stats.NOT_SUPPORTED),
                                           ((0.5, 0.9, 0.99), stats.INCONCLUSIVE)])
def test_nvf_ranks_neurons_reaches_every_verdict(rhos, verdict):
    assert _verdicts(_runs(GOOD, HALF, rhos=rhos))["nvf_ranks_neurons"] == verdict


def test_the_untestable_claim_is_listed():
    out, _ = claims(_runs(GOOD, HALF), KS)
    c = next(c for c in out if c.name == "split_needs_no_redesign")
    assert c.verdict == stats.INCONCLUSIVE and c.rule == stats.NOT_TESTABLE


def test_harden_overhead_counts_checker_and_bytes(small_run, tmp_path):
    """On a real int8 engine: the LCU costs 1 operation and the voter 5 per protected output value; extra
    operations = extra MACs + those; split's extra MACs and bytes are exactly half of TMR's (one copy vs two),
    its extra operations less than half."""
    from lenetlab.faults.harden import CHECKER_OPS, harden, overhead
    from lenetlab.quant.engine import IntEngine
    from lenetlab.quant.run import load_qrun, quantize_run

    quantize_run(small_run, tmp_path / "q", calibration=500, limit=100)
    engine = IntEngine(load_qrun(tmp_path / "q")[0])
    dense = next(j for j, st in enumerate(engine.stages) if st.op == "dense")
    conv = next(j for j, st in enumerate(engine.stages) if st.op == "conv")
    protect = [(conv, 0), (conv, 1), (dense, 3)]
    outputs = 2 * engine.stages[conv].positions + engine.stages[dense].positions
    o = {m: overhead(engine, harden(engine, protect, m)) for m in ("split", "tmr")}
    for m in o:
        assert o[m]["checker_ops"] == CHECKER_OPS[m] * outputs
        assert o[m]["extra_ops"] == o[m]["extra_macs"] + o[m]["checker_ops"]
    assert 2 * o["split"]["extra_macs"] == o["tmr"]["extra_macs"]
    assert 2 * o["split"]["extra_param_bytes"] == o["tmr"]["extra_param_bytes"]
    assert 2 * o["split"]["extra_ops"] < o["tmr"]["extra_ops"]
