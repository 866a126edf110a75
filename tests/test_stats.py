"""Claim statistics (lenetlab.experiments.stats): interval estimators against hand-computed values, bootstrap
determinism and coverage on synthetic data, every rule reaching all three verdicts, the minimum-seeds guard,
and the Claim fields (old constructor, result.json round trip)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lenetlab.experiments import stats
from lenetlab.experiments.base import LEGACY_RULE, Claim, Result
from lenetlab.experiments.stats import (
    EXACT,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    AtLeastFactor,
    Difference,
    Estimate,
    GreaterThan,
    LessThan,
    Separated,
    WithinRange,
)


def synthetic(lo: float, hi: float) -> Estimate:
    return Estimate((lo + hi) / 2, lo, hi, "synthetic")


# ------------------------------------------------------------------ estimators
def test_wilson_matches_hand_computed_values():
    # 7 of 10, z = 1.959964: centre (0.7 + z^2/20) / (1 + z^2/10) = 0.64446, half-width 0.24775
    e = stats.wilson(7, 10)
    assert e.value == 0.7
    assert e.lo == pytest.approx(0.39678, abs=1e-5) and e.hi == pytest.approx(0.89221, abs=1e-5)
    # 0 of 10: the interval is [0, z^2 / (n + z^2)] = [0, 3.84146 / 13.84146]
    e = stats.wilson(0, 10)
    assert e.lo == 0.0 and e.hi == pytest.approx(0.27753, abs=1e-5)
    assert stats.wilson(7, 10, level=0.99).hi > 0.8922   # a higher level widens it
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.wilson(11, 10)


def test_t_quantile_against_closed_forms_and_tables():
    # df = 1 is the Cauchy distribution: quantile tan(pi (q - 1/2))
    for q in (0.6, 0.9, 0.975, 0.995):
        assert stats.t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-8)
    # df = 2 has the closed form (2q - 1) sqrt(2 / (1 - (2q - 1)^2))
    a = 2 * 0.975 - 1
    assert stats.t_quantile(0.975, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)), rel=1e-8)   # 4.3027
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)      # printed t tables
    assert stats.t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    assert stats.t_quantile(0.975, 10_000) == pytest.approx(1.96, abs=1e-3)   # -> normal


def test_mean_interval_t_and_bootstrap():
    e = stats.mean_interval([1.0, 1.1, 0.9])
    # mean 1, sd 0.1, half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.3027 * 0.057735 = 0.24841
    assert e.value == pytest.approx(1.0) and e.hi - e.value == pytest.approx(0.24841, abs=1e-5)
    assert e.seeds == 3 and e.test_images is None
    one = stats.mean_interval([2.0])
    assert one.lo == -math.inf and one.hi == math.inf      # no spread from one seed: never decides
    b = stats.mean_interval([1.0, 1.1, 0.9], method="bootstrap")
    assert 0.9 <= b.lo < 1.0 < b.hi <= 1.1                  # a percentile bootstrap stays in the seeds' range
    with pytest.raises(ValueError, match="unknown interval method"):
        stats.mean_interval([1.0, 2.0], method="jackknife")


def _correct(rng, p: float, n: int) -> np.ndarray:
    return (rng.random(n) < p).astype(np.uint8)


def test_bootstrap_is_deterministic_per_seed():
    rng = np.random.default_rng(0)
    per_seed = [_correct(rng, p, 500) for p in (0.9, 0.92, 0.88)]
    a = stats.bootstrap_accuracy(per_seed, seed=3)
    assert a == stats.bootstrap_accuracy(per_seed, seed=3)
    assert a.interval != stats.bootstrap_accuracy(per_seed, seed=4).interval
    assert a.value == pytest.approx(np.mean([v.mean() for v in per_seed]))
    assert a.seeds == 3 and a.test_images == 500 and a.lo < a.value < a.hi
    counts = [(int(v.sum()), len(v)) for v in per_seed]
    assert stats.bootstrap_accuracy(counts, seed=3) == stats.bootstrap_accuracy(counts, seed=3)


def _coverage(draw, estimator, truth: float, trials: int) -> tuple[float, float]:
    """Share of ``trials`` synthetic experiments whose interval holds ``truth``, and the mean width."""
    rng = np.random.default_rng(12345)
    hits, widths = 0, []
    for t in range(trials):
        e = estimator(draw(rng), t)
        hits += e.lo <= truth <= e.hi
        widths.append(e.hi - e.lo)
    return hits / trials, float(np.mean(widths))


def test_wilson_coverage_is_near_nominal():
    cov, _ = _coverage(lambda rng: rng.binomial(40, 0.15), lambda k, t: stats.wilson(int(k), 40), 0.15, 2000)
    assert 0.92 <= cov <= 0.98


def test_hierarchical_bootstrap_covers_a_shared_test_set():
    """5 seeds evaluated on the SAME 400 test images, drawn from a population of easy (85%) and hard images:
    the luck of the test set is common to all seeds. Resampling the shared images covers the population
    accuracy; counts (images resampled independently per seed) cannot see the shared part: too narrow."""
    n_img, seeds = 400, 5
    truth = 0.85 * 0.99 + 0.15 * 0.2          # the population accuracy of the training recipe

    def draw(rng):
        p_img = np.where(rng.random(n_img) < 0.85, 0.99, 0.2)       # this test set's images
        seed_shift = rng.normal(0, 0.005, seeds)                    # this seed's model
        return [(rng.random(n_img) < np.clip(p_img + s, 0, 1)).astype(np.uint8) for s in seed_shift]

    shared, w_shared = _coverage(draw, lambda v, t: stats.bootstrap_accuracy(v, n_boot=400, seed=t), truth, 150)
    counts, w_counts = _coverage(draw, lambda v, t: stats.bootstrap_accuracy(
        [(int(x.sum()), len(x)) for x in v], n_boot=400, seed=t), truth, 150)
    assert shared >= 0.88 and counts <= 0.85, (shared, counts)      # measured: 0.95 and 0.69
    assert w_shared > 1.5 * w_counts, (w_shared, w_counts)


def test_paired_difference_removes_the_shared_seed_effect():
    rng = np.random.default_rng(1)
    base = rng.normal(0.0, 1.0, 5)                 # large seed-to-seed spread that both methods share
    a, b = list(base + 0.3 + rng.normal(0, 0.01, 5)), list(base)
    paired = stats.bootstrap_difference(a, b, paired=True)
    unpaired = stats.bootstrap_difference(a, b)
    assert paired.lo > 0.25 and paired.hi < 0.35
    assert unpaired.lo < 0 < unpaired.hi           # unpaired, the seed spread swamps the difference
    with pytest.raises(ValueError, match="same seeds"):
        stats.bootstrap_difference(a, b[:4], paired=True)


def test_difference_on_shared_images_is_paired_image_by_image():
    rng = np.random.default_rng(2)
    b = [_correct(rng, 0.9, 2000) for _ in range(3)]
    a = []
    for v in b:                                   # a = b with 20 of each seed's wrong images fixed
        w = v.copy()
        w[np.flatnonzero(w == 0)[:20]] = 1
        a.append(w)
    d = stats.bootstrap_difference(a, b, paired=True)
    assert d.value == pytest.approx(0.01) and d.lo > 0.005 and d.hi < 0.015
    assert d.test_images == 2000 and d.seeds == 3
    loose = stats.bootstrap_difference(a, b, paired=True, same_images=False)   # as if unrelated images
    assert loose.hi - loose.lo > 2 * (d.hi - d.lo)


def test_per_image_scores_averaged_over_draws():
    """Correctness averaged over noise draws (a score in [0, 1] per image) on shared images: the estimate is
    the mean score, and the images' spread is in the interval."""
    rng = np.random.default_rng(3)
    draws = [(rng.random((8, 500)) < 0.7).mean(axis=0) for _ in range(3)]     # 8 noise draws, 3 seeds
    e = stats.bootstrap_accuracy(draws)
    assert e.value == pytest.approx(np.mean(draws)) and e.lo < e.value < e.hi and e.hi - e.lo < 0.1


def test_ratio_of_means():
    r = stats.bootstrap_ratio([2.0, 2.2, 1.8], [1.0, 1.1, 0.9], paired=True)
    assert r.value == pytest.approx(2.0) and r.lo == pytest.approx(2.0) and r.hi == pytest.approx(2.0)
    r = stats.bootstrap_ratio([2.0, 2.2, 1.8], [1.0, 1.1, 0.9])
    assert r.lo < 2.0 < r.hi


def test_bad_samples_are_rejected():
    with pytest.raises(ValueError, match="mixes kinds"):
        stats.bootstrap_accuracy([(9, 10), 0.9])
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        stats.bootstrap_accuracy([np.array([0, 2, 1])])
    with pytest.raises(ValueError, match="need the same images"):
        stats.bootstrap_accuracy([np.array([0, 0.5, 1]), np.array([0.5, 1])])
    with pytest.raises(ValueError, match="same_images=False needs 0/1"):
        stats.bootstrap_accuracy([np.array([0, 0.5, 1])] * 3, same_images=False)
    with pytest.raises(ValueError, match="non-empty"):
        stats.bootstrap_accuracy([])
    with pytest.raises(ValueError, match="differ in length"):
        stats.bootstrap_difference([np.ones(5)], [np.ones(6)])


# ------------------------------------------------------------------ rules
RULE_CASES = [
    # rule, an interval for each verdict: supported, not supported, inconclusive
    (GreaterThan(0.5), (0.6, 0.7), (0.3, 0.5), (0.4, 0.6)),
    (LessThan(0.1), (0.02, 0.08), (0.1, 0.2), (0.05, 0.15)),
    (Difference("QAT", "float", 0.0, metric="accuracy"), (0.001, 0.02), (-0.03, -0.01), (-0.01, 0.01)),
    (WithinRange(0.1, 0.2), (0.12, 0.18), (0.25, 0.3), (0.15, 0.25)),
    (AtLeastFactor(10.0), (10.0, 12.0), (7.0, 9.9), (9.0, 11.0)),
]


@pytest.mark.parametrize("rule, yes, no, maybe", RULE_CASES, ids=lambda x: type(x).__name__)
def test_every_rule_reaches_all_three_verdicts(rule, yes, no, maybe):
    assert rule.decide(synthetic(*yes)) == SUPPORTED
    assert rule.decide(synthetic(*no)) == NOT_SUPPORTED
    assert rule.decide(synthetic(*maybe)) == INCONCLUSIVE
    assert rule.text.startswith("supported if the 95% CI of") and "inconclusive" in rule.text


def test_separated_reaches_all_three_verdicts():
    rule = Separated("hardened", "plain")
    assert rule.decide(rule.estimate(stats.wilson(90, 100), stats.wilson(60, 100))) == SUPPORTED
    assert rule.decide(rule.estimate(stats.wilson(60, 100), stats.wilson(90, 100))) == NOT_SUPPORTED
    assert rule.decide(rule.estimate(stats.wilson(80, 100), stats.wilson(75, 100))) == INCONCLUSIVE
    assert "overlap" in rule.text


def test_rules_decide_from_real_estimators():
    rng = np.random.default_rng(5)
    hi, lo = [_correct(rng, 0.95, 1000) for _ in range(3)], [_correct(rng, 0.85, 1000) for _ in range(3)]
    same = [_correct(rng, 0.9, 1000) for _ in range(3)]
    rule = Difference("A", "B")
    assert rule.decide(stats.bootstrap_difference(hi, lo, paired=True)) == SUPPORTED
    assert rule.decide(stats.bootstrap_difference(lo, hi, paired=True)) == NOT_SUPPORTED
    assert rule.decide(stats.bootstrap_difference(same, same, paired=True)) == NOT_SUPPORTED   # exactly 0
    near = [np.where(np.arange(1000) < 2, 1, v) for v in same]    # 2 of 1000 images better: too few to tell
    assert rule.decide(stats.bootstrap_difference(near, same, paired=True)) == INCONCLUSIVE


def test_a_negative_overhead_never_passes_within_range():
    rule = WithinRange(0.0, 0.2, quantity="memory overhead")
    assert rule.decide(synthetic(-0.10, -0.02)) == NOT_SUPPORTED
    assert rule.decide(synthetic(-0.02, 0.05)) == INCONCLUSIVE
    assert rule.decide(stats.mean_interval([-0.05, -0.04, -0.06])) == NOT_SUPPORTED
    assert rule.decide(stats.mean_interval([0.05, 0.04, 0.06])) == SUPPORTED
    with pytest.raises(ValueError, match="lo <= hi"):
        WithinRange(0.3, 0.1)


def test_rule_text_states_the_threshold_in_its_units():
    rule = Difference("QAT", "float", 0.005, metric="accuracy under noise", scale=100, unit=" points")
    assert rule.text == ("supported if the 95% CI of (QAT - float) accuracy under noise lies above 0.5 points; "
                         "not supported if it lies at or below 0.5 points; inconclusive otherwise")
    assert "[0.1, 0.2]" in WithinRange(0.1, 0.2).text and "10x" in AtLeastFactor(10).text


# ------------------------------------------------------------------ claims
def test_make_claim_fills_every_field():
    rule = GreaterThan(0.9, quantity="accuracy", scale=100, unit="%")
    c = stats.make_claim("acc", "over 90%", rule, synthetic(0.92, 0.95), seeds=[0, 1, 2], test_images=1000)
    assert c.verdict == SUPPORTED and c.supported is True
    assert c.seeds == [0, 1, 2] and c.test_images == 1000
    assert c.estimate == pytest.approx(0.935) and c.interval == [0.92, 0.95]
    assert c.rule.startswith(rule.text) and "[interval: synthetic]" in c.rule
    assert c.measured == "accuracy: 93.50% [92.00, 95.00]"
    est = stats.bootstrap_accuracy([(950, 1000), (940, 1000), (930, 1000)])
    c = stats.make_claim("acc", "over 90%", rule, est, seeds=3, measured="94.0% over 3 seeds")
    assert c.test_images == 1000 and c.seeds == 3 and c.measured == "94.0% over 3 seeds"


def test_too_few_seeds_give_inconclusive_with_the_reason():
    rule = GreaterThan(0.5)
    c = stats.make_claim("c", "s", rule, synthetic(0.6, 0.7), seeds=2)
    assert c.verdict == INCONCLUSIVE and c.supported is None
    assert "2 seeds, a verdict needs >= 3; the interval alone says supported" in c.measured
    assert stats.make_claim("c", "s", rule, synthetic(0.6, 0.7), seeds=3).verdict == SUPPORTED
    full = stats.make_claim("c", "s", rule, synthetic(0.6, 0.7), seeds=3, min_seeds=stats.min_seeds(full=True))
    assert full.verdict == INCONCLUSIVE
    # pure counting, no training: exact, no seed guard
    c = stats.make_claim("macs", "4x fewer MACs", AtLeastFactor(4), stats.exact(4.32), seeds=EXACT)
    assert c.verdict == SUPPORTED and c.seeds == "n/a" and c.interval == [4.32, 4.32]
    with pytest.raises(ValueError, match="stats.EXACT"):
        stats.make_claim("c", "s", rule, synthetic(0.6, 0.7), seeds=0)
    # the seeds default to the estimate's own, and a claim cannot say it rests on more
    two = stats.mean_interval([0.7, 0.8])
    assert stats.make_claim("c", "s", rule, two).seeds == 2
    with pytest.raises(ValueError, match="rests on 2 seeds, the claim says 3"):
        stats.make_claim("c", "s", rule, two, seeds=[0, 1, 2])
    with pytest.raises(ValueError, match="does not know its seeds"):
        stats.make_claim("c", "s", rule, stats.wilson(7, 10))
    with pytest.raises(ValueError, match="stated at"):
        stats.make_claim("c", "s", rule, stats.wilson(7, 10, level=0.9), seeds=EXACT)


def test_separated_claim_records_the_difference_both_intervals_allow():
    a, b = stats.wilson(90, 100), stats.wilson(60, 100)
    c = stats.make_claim("sdc", "lower", Separated("hardened", "plain"), (a, b), seeds=EXACT)
    assert c.verdict == SUPPORTED and c.interval == pytest.approx([a.lo - b.hi, a.hi - b.lo])
    assert c.measured.startswith("(hardened - plain): 0.30 [")


def test_untestable_claims_are_listed_as_inconclusive():
    c = stats.untestable("energy", "47% energy saved", "no energy model in this simulator")
    assert c.verdict == INCONCLUSIVE and c.rule == stats.NOT_TESTABLE and c.measured.startswith("no energy")
    assert c.seeds is None and c.interval is None


def test_legacy_claims_still_construct_and_show_it():
    c = Claim("old", "paper", "measured", np.bool_(True))
    assert c.verdict == SUPPORTED and c.supported is True and c.rule == LEGACY_RULE
    assert Claim("old", "p", "m", False).verdict == NOT_SUPPORTED
    assert Claim("old", "p", "m", None).verdict == INCONCLUSIVE
    assert Claim("new", "p", "m", verdict=NOT_SUPPORTED).supported is False
    with pytest.raises(ValueError, match="contradicts"):
        Claim("bad", "p", "m", True, verdict=NOT_SUPPORTED)
    with pytest.raises(ValueError, match="unknown verdict"):
        Claim("bad", "p", "m", verdict="NOT supported")


def test_claims_round_trip_through_result_json_and_old_files_load():
    new = stats.make_claim("c", "s", GreaterThan(0.5), stats.mean_interval([0.7, 0.8, 0.75]), seeds=[1, 2, 3])
    unbounded = stats.make_claim("u", "s", GreaterThan(0.5), stats.mean_interval([0.7]), seeds=1)
    assert unbounded.interval == [None, None] and unbounded.verdict == INCONCLUSIVE
    r = Result("x", "p", "quick", {}, claims=[new, unbounded, Claim("old", "s", "m", False)])
    text = json.dumps(r.to_dict(), allow_nan=False)            # valid JSON: no NaN / Infinity
    assert Result.from_dict(json.loads(text)) == r
    old = {"experiment": "x", "paper": "p", "mode": "quick", "config": {},
           "claims": [{"name": "c", "statement": "s", "measured": "m", "supported": None, "future": 1}]}
    (c,) = Result.from_dict(old).claims
    assert c.verdict == INCONCLUSIVE and c.rule == LEGACY_RULE and c.seeds is None and c.interval is None
