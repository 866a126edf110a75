"""The tn claims on synthetic rows: each claim reaches supported, not supported and inconclusive."""

from __future__ import annotations

import numpy as np
import pytest

from lenetlab.experiments.tt import claims

N = 2000          # synthetic test images
SEEDS = (0, 1, 2)
PARAMS = {("dense", 0): 58284, ("dense_ft", 0): 58284, ("tt", 2): 712, ("tt", 4): 1700, ("tt", 8): 5116,
          ("adtn", 1): 652, ("adtn", 3): 1548, ("adtn", 4): 1996}


def wrong_on(start: int, stop: int) -> list[int]:
    v = np.ones(N, dtype=int)
    v[start:stop] = 0
    return v.tolist()


GOOD, BAD = wrong_on(0, 40), wrong_on(0, 400)              # 98.0% vs 80.0%
TIE_A, TIE_B = wrong_on(0, 100), wrong_on(100, 200)         # both 95.0%, wrong on different images


def rows(tt=TIE_A, adtn=TIE_B, dense_ft=TIE_A, dense=BAD, val=None, seeds=SEEDS) -> list[dict]:
    """One row per (model, seed); ``val``: validation accuracy per (method, budget) (default 0.9)."""
    vec = {"dense": dense, "dense_ft": dense_ft, "tt": tt, "adtn": adtn}
    return [{"method": m, "budget": b, "seed": seed, "layer_params": p, "layer_ratio": 58284 / p,
             "params": p + 3422, "correct": vec[m], "val_accuracy": (val or {}).get((m, b), 0.9)}
            for seed in seeds for (m, b), p in PARAMS.items()]


def verdict(name: str, **kw) -> str:
    c = {c.name: c for c in claims(rows(**kw))}[name]
    return c.verdict


def test_pairs_are_chosen_by_size():
    """TT rank 2 (712) pairs with depth 1 (652); rank 4 (1,700) with depth 3 (1,548), not 4 (1,996)."""
    c = {c.name: c for c in claims(rows())}["adtn_vs_tt"]
    assert "TT rank 2 (712 params) vs ADTN depth 1 (652)" in c.measured
    assert "TT rank 4 (1,700 params) vs ADTN depth 3 (1,548)" in c.measured
    assert "TT rank 8 (5,116 params) vs ADTN depth 4 (1,996)" in c.measured
    assert c.seeds == 3 and c.test_images == N


@pytest.mark.parametrize("kw, expected", [
    ({"adtn": GOOD, "tt": BAD}, "supported"),
    ({"adtn": BAD, "tt": GOOD}, "not supported"),
    ({"adtn": TIE_A, "tt": TIE_B}, "inconclusive"),
    ({"adtn": GOOD, "tt": BAD, "seeds": (0, 1)}, "inconclusive"),      # too few seeds
])
def test_adtn_vs_tt(kw, expected):
    assert verdict("adtn_vs_tt", **kw) == expected


def test_adtn_vs_tt_untestable_without_a_small_enough_adtn():
    r = [x for x in rows() if x["method"] != "adtn" or x["budget"] == 4]     # 1,996 params: above TT ranks 2 and 4
    r = [x for x in r if not (x["method"] == "tt" and x["budget"] == 8)]
    c = {c.name: c for c in claims(r)}["adtn_vs_tt"]
    assert c.verdict == "inconclusive" and c.rule.startswith("not testable")


@pytest.mark.parametrize("kw, expected", [
    ({"tt": GOOD, "adtn": GOOD, "dense_ft": GOOD}, "supported"),              # equal: within 0.5 points
    ({"tt": BAD, "adtn": BAD, "dense_ft": GOOD}, "not supported"),            # 18 points below
    ({"tt": wrong_on(0, 60), "adtn": wrong_on(0, 60), "dense_ft": wrong_on(50, 100)}, "inconclusive"),  # -0.5
])
def test_accuracy_at_10x(kw, expected):
    assert verdict("accuracy_at_10x", **kw) == expected


def test_accuracy_at_10x_compares_with_the_fine_tuned_dense_model():
    """The dense model without the extra epochs is worse here; the claim must use the fine-tuned one."""
    assert verdict("accuracy_at_10x", tt=BAD, adtn=BAD, dense=BAD, dense_ft=GOOD) == "not supported"
    c = {c.name: c for c in claims(rows(tt=BAD, adtn=BAD, dense=BAD, dense_ft=GOOD))}["accuracy_at_10x"]
    assert "dense + same fine-tuning" in c.rule


def test_the_10x_model_is_chosen_on_validation():
    """TT rank 8 (11.4x) has the best validation accuracy: it is the model scored, though worse on test."""
    r = rows(val={("tt", 8): 0.99})
    for x in r:
        x["correct"] = BAD if (x["method"], x["budget"]) == ("tt", 8) else GOOD
    c = {c.name: c for c in claims(r)}["accuracy_at_10x"]
    assert "tt_r8" in c.rule and c.verdict == "not supported"
