"""The abs claims on synthetic cells: each claim reaches supported, not supported and inconclusive."""

from __future__ import annotations

import numpy as np
import pytest

from lenetlab.experiments.abs import ACTIVATIONS, claims

N = 2000          # synthetic test images
SEEDS = (0, 1, 2)


def wrong_on(start: int, stop: int) -> list[int]:
    """Correct on every image except [start, stop)."""
    v = np.ones(N, dtype=int)
    v[start:stop] = 0
    return v.tolist()


GOOD, BAD = wrong_on(0, 40), wrong_on(0, 400)              # 98.0% vs 80.0%: far apart
TIE_A, TIE_B = wrong_on(0, 100), wrong_on(100, 200)         # both 95.0%, wrong on different images


def cells(abs_std=TIE_A, others=TIE_B, abs_slim=TIE_A, plain=None, seeds=SEEDS) -> list[dict]:
    """LeNet-5 cells: standard width for all four activations, width 0.5 for abs (lb-restart), plain at width 1
    (``plain``: the plain schedule's vector; default: the same as lb-restart's)."""
    out = []
    for seed in seeds:
        for a in ACTIVATIONS:
            lb = abs_std if a == "abs" else others
            out.append({"width": 1.0, "activation": a, "schedule": "lb-restart", "seed": seed, "correct": lb,
                        "val_accuracy": 0.9 + 0.01 * ACTIVATIONS.index(a)})
            out.append({"width": 1.0, "activation": a, "schedule": "plain", "seed": seed,
                        "correct": lb if plain is None else plain, "val_accuracy": 0.9})
        out.append({"width": 0.5, "activation": "abs", "schedule": "lb-restart", "seed": seed, "correct": abs_slim,
                    "val_accuracy": 0.9})
    return out


def grads(worst_per_seed: list[float], depths=(4, 8)) -> dict:
    """abs (and relu) gradient norms whose largest |log10(first/last)| over depths is the given value per seed."""
    out = {}
    for seed, w in enumerate(worst_per_seed):
        for d in depths:
            lg = w if d == depths[-1] else w / 2
            out[("abs", d, seed)] = [10.0 ** lg] + [1.0] * (d - 1)
            out[("relu", d, seed)] = [1e-3] + [1.0] * (d - 1)
    return out


STABLE = grads([0.1, 0.2, 0.15])


def verdict(name: str, **kw) -> str:
    g = kw.pop("g", STABLE)
    seeds = kw.get("seeds", SEEDS)
    c = {c.name: c for c in claims(cells(**kw), g)}[name]
    assert c.seeds == len(seeds) or c.rule.startswith("not testable")
    return c.verdict


@pytest.mark.parametrize("kw, expected", [
    ({"abs_std": GOOD, "others": BAD}, "supported"),
    ({"abs_std": BAD, "others": GOOD}, "not supported"),
    ({"abs_std": TIE_A, "others": TIE_B}, "inconclusive"),
    ({"abs_std": GOOD, "others": BAD, "seeds": (0, 1)}, "inconclusive"),     # too few seeds
])
def test_abs_beats_others(kw, expected):
    assert verdict("abs_beats_others", **kw) == expected


def test_the_rival_is_chosen_on_validation_not_test():
    """selu has the best validation accuracy in ``cells``: it stays the rival when tanh does better on test."""
    cs = cells(abs_std=GOOD, others=BAD)
    for c in cs:
        if c["activation"] == "tanh":
            c["correct"] = GOOD
    c = {c.name: c for c in claims(cs, STABLE)}["abs_beats_others"]
    assert "selu" in c.rule and "tanh" not in c.rule and c.verdict == "supported"


@pytest.mark.parametrize("kw, expected", [
    ({"abs_slim": GOOD, "others": BAD}, "supported"),
    ({"abs_slim": BAD, "others": GOOD}, "not supported"),
    ({"abs_slim": TIE_A, "others": TIE_B}, "inconclusive"),
])
def test_slim_abs(kw, expected):
    assert verdict("slim_abs", **kw) == expected


@pytest.mark.parametrize("worst, expected", [
    ([0.1, 0.2, 0.15], "supported"),              # within 1.6x at every depth
    ([3.0, 2.5, 3.5], "not supported"),           # 1000x: vanishing or exploding
    ([0.5, 1.5, 1.0], "inconclusive"),            # the interval straddles 10x
])
def test_abs_gradients_stable(worst, expected):
    assert verdict("abs_gradients_stable", g=grads(worst)) == expected


def test_gradient_ratio_below_one_counts_as_unstable_too():
    assert verdict("abs_gradients_stable", g=grads([-3.0, -2.5, -3.5])) == "not supported"


@pytest.mark.parametrize("lb, plain, expected", [
    (GOOD, BAD, "supported"),
    (BAD, GOOD, "not supported"),
    (TIE_A, TIE_B, "inconclusive"),
])
def test_lb_restart_helps(lb, plain, expected):
    assert verdict("lb_restart_helps", abs_std=lb, others=lb, plain=plain) == expected


def test_identical_schedules_say_nothing_about_restarts():
    """Without a restart both schedules train identically: the claim is untestable in that run, not decided."""
    c = {c.name: c for c in claims(cells(abs_std=GOOD, others=GOOD), STABLE)}["lb_restart_helps"]
    assert c.verdict == "inconclusive" and c.rule.startswith("not testable") and "restarted" in c.measured


def test_untestable_claim_is_listed():
    c = {c.name: c for c in claims(cells(), STABLE)}["abs_other_problems"]
    assert c.verdict == "inconclusive" and c.rule.startswith("not testable")
