"""The cascade claims on synthetic per-seed outcomes: each claim reaches supported, not supported and inconclusive."""

from __future__ import annotations

import numpy as np
import pytest

from lenetlab.experiments.cascade import REDUCTIONS, claims

N = 2000          # synthetic test images
SEEDS = (0, 1, 2)


def wrong_on(start: int, stop: int) -> list[int]:
    v = np.ones(N, dtype=int)
    v[start:stop] = 0
    return v.tolist()


GOOD, BAD = wrong_on(0, 40), wrong_on(0, 400)              # 98.0% vs 80.0%
TIE_A, TIE_B = wrong_on(0, 100), wrong_on(100, 200)         # both 95.0%, wrong on different images


def cost(share_cheap: float, cheap: float = 0.0625, full: float = 1.0625) -> list[float]:
    """Per-image cost of a two-level cascade where the first ``share_cheap`` of the images stop at level 0."""
    k = int(round(share_cheap * N))
    return [cheap] * k + [full] * (N - k)


def outcomes(saving_share=0.9, cascade=GOOD, reference=GOOD, ensemble=TIE_A, best=TIE_B, seeds=SEEDS) -> list[dict]:
    """``saving_share``: images that stop at the cheap level (a float, or one per seed)."""
    shares = saving_share if isinstance(saving_share, (list, tuple)) else [saving_share] * len(seeds)
    out = []
    for seed, share in zip(seeds, shares):
        o = {"seed": seed, "reference": reference, "ensemble": ensemble, "best_single": best}
        for name, *_ in REDUCTIONS:
            o[name] = {"correct": cascade, "cost": cost(share), "setting": "threshold 0.9"}
        out.append(o)
    return out


def verdicts(**kw) -> dict[str, str]:
    return {c.name: c.verdict for c in claims(outcomes(**kw))}


# saving = share - 0.0625 with the costs above; the lines: data 59.2%, compute 80.1% (the paper's less 2 points)
STRADDLE = {"data_reduction": [0.45, 0.65, 0.85], "compute_reduction_paper_accounting": [0.75, 0.86, 0.97],
            "compute_reduction_mac_count": [0.75, 0.86, 0.97]}


@pytest.mark.parametrize("name", [r[0] for r in REDUCTIONS])
@pytest.mark.parametrize("share, expected", [
    (0.95, "supported"),                     # saving 88.75%
    (0.3, "not supported"),                  # 23.75%
    (None, "inconclusive"),                  # seeds spread around the line
])
def test_reductions(name, share, expected):
    assert verdicts(saving_share=STRADDLE[name] if share is None else share)[name] == expected


def test_saving_interval_is_over_seeds_and_images():
    c = next(c for c in claims(outcomes(saving_share=STRADDLE["data_reduction"])) if c.name == "data_reduction")
    assert c.seeds == 3 and c.test_images == N
    assert c.interval[0] < 0.592 < c.interval[1]
    assert c.estimate == pytest.approx(0.65 - 0.0625)


@pytest.mark.parametrize("cascade, reference, expected", [
    (GOOD, GOOD, "supported"),                               # no loss
    (BAD, GOOD, "not supported"),                            # 18 points lost
    (wrong_on(0, 150), wrong_on(100, 150), "inconclusive"),  # 150 vs 50 wrong: 5.0 points, right on the budget
])
def test_loss_rows(cascade, reference, expected):
    got = verdicts(cascade=cascade, reference=reference)
    assert {got[f"{r[0]}_loss"] for r in REDUCTIONS} == {expected}


@pytest.mark.parametrize("ensemble, best, expected", [
    (GOOD, BAD, "supported"),
    (BAD, GOOD, "not supported"),
    (TIE_A, TIE_B, "inconclusive"),
])
def test_most_confident_beats_best(ensemble, best, expected):
    assert verdicts(ensemble=ensemble, best=best)["most_confident_beats_best"] == expected


def test_too_few_seeds_is_inconclusive():
    got = verdicts(saving_share=0.9, seeds=(0, 1), ensemble=GOOD, best=BAD)
    assert set(got.values()) == {"inconclusive"}


def test_other_datasets_are_listed_as_untestable():
    c = next(c for c in claims(outcomes()) if c.name == "other_datasets")
    assert c.verdict == "inconclusive" and "Fashion-MNIST" in c.measured
