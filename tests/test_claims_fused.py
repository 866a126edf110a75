"""The fused experiment's claim rules on synthetic cells: every claim reaches all three verdicts; and the
shape-only AlexNet / VGG-16 counts against hand-computed MACs."""

from __future__ import annotations

import pytest

from lenetlab.experiments.fused import MODELS, fused_claims
from lenetlab.experiments.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from lenetlab.fused.networks import stack, stack_rows


def _row(schedule: str, oi: float, oi_useful: float, macs: int = 100, offchip: int = 10, exact: bool = True):
    return {"schedule": schedule, "OI": oi, "OI_useful": oi_useful, "MACs": macs, "offchip_B": offchip,
            "recompute": round(oi / oi_useful, 4), "exact": exact, "max_abs_diff": 0.0 if exact else 3.0}


def _rows(useful_gain: float, executed_gain: float, uniform_ratio: float | None = 1.0, exact: bool = True):
    """Layer-by-layer at OI 1, then a T=2 uniform / ragged pair (differing when ``uniform_ratio`` is given) and
    a T=5 schedule carrying the gains."""
    rows = [_row("layer-by-layer", 1.0, 1.0)]
    if uniform_ratio is not None:
        rows += [_row("T=2 uniform", uniform_ratio, uniform_ratio, macs=120, offchip=9),
                 _row("T=2 ragged", 1.0, 1.0, macs=100, offchip=10)]
    else:
        rows += [_row("T=2 uniform", 1.0, 1.0), _row("T=2 ragged", 1.0, 1.0)]
    rows.append(_row("T=5 uniform", executed_gain, useful_gain, exact=exact))
    return rows


def _end(changed: int | None):
    if changed is None:
        return [{"layer": "conv1", "applies": False, "reason": "tanh"}]
    return [{"layer": "conv1", "applies": True, "changed": changed, "outputs": 1000, "skipped": 0.1,
             "terminated": 0.3}]


def _cells(rows8, end8=0, stacks_gain=None):
    data = {}
    for m in MODELS:
        for dt in ("int8", "float32"):
            end = _end(end8) if (m, dt) == ("lenet5", "int8") else (_end(None) if dt == "int8" else [])
            data[(m, dt)] = {"rows": rows8 if (m, dt) == ("lenet5", "int8") else rows8[:1], "end": end,
                             "images": 64}
    gains = stacks_gain or {"alexnet": (17.8, 17.8), "vgg16": (279.4, 279.4)}
    stacks = {n: ([_row("layer-by-layer", 1.0, 1.0), _row("T=1 uniform", e, u)] if (u, e) != (None, None)
                  else [_row("layer-by-layer", 1.0, 1.0)]) for n, (u, e) in gains.items()}
    return data, stacks


def _verdicts(data, stacks):
    return {c.name: c.verdict for c in fused_claims(data, stacks)}


def test_every_fused_claim_reaches_all_three_verdicts():
    good = _verdicts(*_cells(_rows(8.2, 8.0, uniform_ratio=1.1)))
    bad = _verdicts(*_cells(_rows(4.3, 4.0, uniform_ratio=0.9, exact=False), end8=3,
                            stacks_gain={"alexnet": (1.4, 7.9), "vgg16": (3.0, 44.0)}))
    none = _verdicts(*_cells([], end8=None, stacks_gain={"alexnet": (None, None),
                                                                     "vgg16": (None, None)}))
    for name in good:
        if name == "energy":            # not modelled: always inconclusive, by design (stats.untestable)
            assert good[name] == bad[name] == none[name] == INCONCLUSIVE
            continue
        assert (good[name], bad[name], none[name]) == (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE), name


def test_headline_counts_useful_macs_and_executed_is_the_second_row():
    data, stacks = _cells(_rows(4.32, 7.41))             # the first quick run's two readings
    claims = {c.name: c for c in fused_claims(data, stacks)}
    assert claims["oi_gain"].verdict == NOT_SUPPORTED and claims["oi_gain"].estimate == pytest.approx(4.32)
    executed = claims["oi_gain_executed"]
    assert executed.verdict == SUPPORTED and executed.estimate == pytest.approx(7.41)
    assert claims["oi_gain"].interval == [claims["oi_gain"].estimate] * 2 and claims["oi_gain"].seeds == "n/a"
    # uniform vs ragged: the executed reading rewards the uniform stride's recomputation, the useful one does not
    data, stacks = _cells(_rows(8.2, 8.2, uniform_ratio=1.0))
    data[("lenet5", "int8")]["rows"][1].update(OI=1.2, OI_useful=0.95)
    claims = {c.name: c.verdict for c in fused_claims(data, stacks)}
    assert claims["uniform_oi"] == NOT_SUPPORTED and claims["uniform_oi_executed"] == SUPPORTED


def test_end_counts_changed_outputs_exactly():
    data, stacks = _cells(_rows(8.2, 8.2), end8=1)
    c = next(c for c in fused_claims(data, stacks) if c.name == "end_no_loss")
    assert c.verdict == NOT_SUPPORTED and c.estimate == 1 and "1 of 1,000" in c.measured


def test_alexnet_and_vgg16_macs_by_hand():
    for name, macs, out in (("alexnet", 105_415_200 + 447_897_600 + 149_520_384 + 224_280_576 + 149_520_384,
                             (256, 6, 6)),
                            ("vgg16", 15_346_630_656, (512, 7, 7))):
        stages, _, per_pos = stack(name)
        assert stages[-1].out_shape == out
        assert sum(per_pos[s.name] * s.out_shape[1] * s.out_shape[2] for s in stages) == macs
        rows = stack_rows(name)
        assert rows[0]["MACs"] == macs and all(r["useful_MACs"] == macs for r in rows)
        assert all(r["MACs"] >= macs for r in rows[1:])          # fused pyramids only ever recompute
        whole = next(r for r in rows if r["schedule"] == f"T={out[1]} ragged")
        assert whole["MACs"] == macs and whole["mid_B"] == 0      # one whole-map tile: no recomputation


def test_alexnet_layer_by_layer_traffic_by_hand():
    stages, params, _ = stack("alexnet")
    maps = [3 * 227 * 227] + [s.out_shape[0] * s.out_shape[1] * s.out_shape[2] for s in stages]
    base = stack_rows("alexnet")[0]
    assert base["weights_B"] == sum(params.values())
    assert base["offchip_B"] == maps[0] + 2 * sum(maps[1:-1]) + maps[-1] + sum(params.values())
