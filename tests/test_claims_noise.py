"""The noise experiment's claims and the shared "beats under noise" rule (lenetlab.noise.claims) on synthetic
per-image scores: every claim reaches all three verdicts; the rule matches stats' paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from lenetlab.experiments import stats
from lenetlab.experiments.noise import choose_config, method_scores, noise_claims
from lenetlab.experiments.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from lenetlab.noise.claims import contrast, qat_beats_float

N = 600


def _seeds(acc: float, n_seeds: int = 3, spread: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    """Per-image 0/1 scores of ``n_seeds`` models with accuracies around ``acc`` (seed i shifted by spread*i)."""
    rng = np.random.default_rng(seed)
    return [(rng.random(N) < acc + spread * (i - 1)).astype(float) for i in range(n_seeds)]


def _scores(qat: float, flt: float, noisy_small: float, noisy_large: float, seeds: int = 3, spread: float = 0.0):
    return {"lenet5": {"float": _seeds(flt, seeds, spread, 1), "qat": _seeds(qat, seeds, spread, 2),
                       "noisy": _seeds(noisy_small, seeds, spread, 3)},
            "lenet5_w4": {"float": _seeds(flt, seeds, spread, 4), "qat": _seeds(qat, seeds, spread, 5),
                          "noisy": _seeds(noisy_large, seeds, spread, 6)}}


def _verdicts(scores, min_seeds: int = 3) -> dict[str, str]:
    return {c.name: c.verdict for c in noise_claims(scores, [0.3, 1.0], min_seeds)}


def test_every_noise_claim_reaches_all_three_verdicts():
    yes = _verdicts(_scores(qat=0.70, flt=0.50, noisy_small=0.80, noisy_large=0.95))
    no = _verdicts(_scores(qat=0.50, flt=0.70, noisy_small=0.35, noisy_large=0.20))
    # equal populations: intervals straddle 0 (a different seed per group, so not identical vectors)
    maybe = _verdicts(_scores(qat=0.60, flt=0.60, noisy_small=0.60, noisy_large=0.60))
    assert set(yes) == {"qat_beats_float_lenet5", "qat_beats_float_lenet5_w4", "noisy_beats_qat_lenet5",
                        "noisy_beats_qat_lenet5_w4", "noisy_gain_larger_net"}
    for name in yes:
        assert (yes[name], no[name], maybe[name]) == (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE), name


def test_too_few_seeds_is_inconclusive_whatever_the_interval():
    one = _verdicts(_scores(qat=0.9, flt=0.1, noisy_small=0.95, noisy_large=0.99, seeds=1))
    assert set(one.values()) == {INCONCLUSIVE}
    five = _verdicts(_scores(qat=0.9, flt=0.1, noisy_small=0.95, noisy_large=0.99, seeds=3), min_seeds=5)
    assert set(five.values()) == {INCONCLUSIVE}


def test_seed_spread_widens_the_interval():
    """The same mean gain, once with models that agree and once with models 15 points apart: the paired
    bootstrap over seeds counts the spread, so only the first is decided."""
    tight = qat_beats_float(_seeds(0.62, 3, 0.0, 2), _seeds(0.60, 3, 0.0, 1), noise="x")
    loose = qat_beats_float(_seeds(0.62, 3, 0.15, 2), _seeds(0.60, 3, -0.15, 1), noise="x")
    assert tight.interval[1] - tight.interval[0] < loose.interval[1] - loose.interval[0]
    assert loose.verdict == INCONCLUSIVE


def test_shared_rule_is_stats_paired_difference():
    a, b = _seeds(0.7, 3, 0.0, 7), _seeds(0.6, 3, 0.0, 8)
    claim = qat_beats_float(a, b, noise="relative sigma 0.1")
    est = stats.bootstrap_difference(a, b, paired=True)
    assert claim.estimate == pytest.approx(est.value) and claim.interval == [est.lo, est.hi]
    assert "(QAT - float) accuracy under relative sigma 0.1" in claim.rule and claim.seeds == 3


def test_contrast_of_two_groups_matches_the_paired_difference():
    a, b = _seeds(0.7, 3, 0.05, 9), _seeds(0.6, 3, 0.05, 10)
    est = contrast({"a": a, "b": b}, {"a": 1.0, "b": -1.0})
    ref = stats.bootstrap_difference(a, b, paired=True)
    assert est.value == pytest.approx(ref.value)
    assert est.lo == pytest.approx(ref.lo, abs=0.01) and est.hi == pytest.approx(ref.hi, abs=0.01)
    with pytest.raises(ValueError, match="same seeds x images"):
        contrast({"a": a, "b": b[:2]}, {"a": 1.0, "b": -1.0})


def test_choice_uses_validation_only_and_scores_average_over_sigmas():
    assert choose_config({"qat4_s0.5": {"0.3": 0.9, "1": 0.2}, "qat4_s2": {"0.3": 0.6, "1": 0.6}}) == "qat4_s2"
    rec = {"test": {"0.3": [1.0, 0.0], "1": [0.5, 0.5]}}
    cells = {"float": [rec], "qat": [rec], "noisy": {"0.3": [{"test": {"0.3": [1.0, 1.0]}}],
                                                   "1": [{"test": {"1": [0.0, 0.5]}}]}}
    sc = method_scores(cells, [0.3, 1.0])
    assert sc["float"] == [[0.75, 0.25]] and sc["noisy"] == [[0.5, 0.75]]


def test_models_that_did_not_learn_are_named_in_the_notes():
    from lenetlab.experiments.noise import Settings, _notes, failed_models, settings

    def rec(clean: float) -> dict:
        return {"clean": clean, "params": 1}

    cells = {"lenet5": {"chosen": "qat8_s64", "float": [rec(0.99), rec(0.99)], "qat": [rec(0.97), rec(0.1135)],
                        "noisy": {"0.3": [rec(0.49), rec(0.5)]}}}
    assert failed_models(cells, [3, 7]) == ["lenet5 qat8_s64 seed 7 (11.35%)", "lenet5 noisy0.3 seed 3 (49.00%)"]
    s = Settings(**{**settings(False), "seeds": [3, 7]})
    assert "qat8_s64 seed 7 (11.35%)" in _notes(s, cells)[-1]
    cells["lenet5"]["qat"][1] = rec(0.9)
    cells["lenet5"]["noisy"]["0.3"][0] = rec(0.9)
    assert failed_models(cells, [3, 7]) == []
    assert not any("did not learn" in n for n in _notes(s, cells))
