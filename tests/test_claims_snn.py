"""snn-attacks claims from synthetic cells: each claim reaches all three verdicts, decided by its weakest
comparison, and too few seeds are inconclusive."""

from __future__ import annotations

import numpy as np
import pytest

from lenetlab.experiments import stats
from lenetlab.experiments.snn import DOMAINS, LOCAL, RULES, attacks_of, claims

N = 400          # shared test images
SEEDS = 3
LOW, MID, HIGH = 0.2, 0.5, 0.8


def _vectors(p: float, stream: int, seeds: int = SEEDS) -> list[np.ndarray]:
    """``seeds`` per-image 0/1 vectors with accuracy about ``p`` (deterministic per ``stream``)."""
    rng = np.random.default_rng(stream)
    return [(rng.random(N) < p).astype(float) for _ in range(seeds)]


def _scores(overrides: dict[tuple[str, str, str], float], seeds: int = SEEDS) -> dict:
    """Every (domain, rule, attack) at accuracy MID (independent draws), except ``overrides``."""
    keys = [(d, r, a) for d in DOMAINS for r in RULES for a in attacks_of(r)]
    return {k: _vectors(overrides.get(k, MID), i, seeds) for i, k in enumerate(keys)}


def _verdict(scores: dict, name: str) -> str:
    out, rows = claims(scores)
    assert rows and all(r["verdict"] in stats.VERDICTS for r in rows)
    return next(c for c in out if c.name == name).verdict


def _robust(domain: str, source: str, local: float, bp: float) -> dict:
    over = {(domain, r, a + source): local for r in LOCAL for a in ("fgsm", "pgd")}
    over.update({(domain, "bp", a): bp for a in ("fgsm", "pgd")})
    return over


@pytest.mark.parametrize("domain", list(DOMAINS))
@pytest.mark.parametrize("source, suffix", [("-rule", ""), ("", "_autograd")])
def test_local_rules_look_robust_reaches_every_verdict(domain, source, suffix):
    name = f"local_rules_look_robust_{domain}{suffix}"
    assert _verdict(_scores(_robust(domain, source, HIGH, LOW)), name) == stats.SUPPORTED
    assert _verdict(_scores(_robust(domain, source, LOW, HIGH)), name) == stats.NOT_SUPPORTED
    assert _verdict(_scores({}), name) == stats.INCONCLUSIVE       # everything alike: the intervals straddle 0
    # one local rule that does not look robust is enough to refute the claim
    mixed = _robust(domain, source, HIGH, LOW)
    mixed[(domain, "dfa", "pgd" + source)] = 0.05
    assert _verdict(_scores(mixed), name) == stats.NOT_SUPPORTED


def _hybrid(domain: str, suffix: str, hybrid: float, baseline: float) -> dict:
    (_, hy, baselines), = [r for r in (("", "hybrid-rule", ("fgsm-rule", "pgd-rule", "bb-fgsm", "bb-pgd")),
                                       ("_autograd", "hybrid", ("fgsm", "pgd", "bb-fgsm", "bb-pgd"))) if r[0] == suffix]
    over = {(domain, r, b): baseline for r in LOCAL for b in baselines}
    over.update({(domain, r, hy): hybrid for r in LOCAL})
    return over


@pytest.mark.parametrize("domain", list(DOMAINS))
@pytest.mark.parametrize("suffix", ["", "_autograd"])
def test_hybrid_beats_others_reaches_every_verdict(domain, suffix):
    name = f"hybrid_beats_others_{domain}{suffix}"
    assert _verdict(_scores(_hybrid(domain, suffix, LOW, HIGH)), name) == stats.SUPPORTED
    assert _verdict(_scores(_hybrid(domain, suffix, HIGH, LOW)), name) == stats.NOT_SUPPORTED
    assert _verdict(_scores({}), name) == stats.INCONCLUSIVE


def test_the_true_gradient_reading_counts_autograd_pgd():
    """The issue-18 case: the hybrid beats every pathway attack, but autograd PGD beats the hybrid."""
    over = _hybrid("snn", "", LOW, HIGH)
    over.update(_hybrid("snn", "_autograd", LOW, HIGH))
    over.update({("snn", r, "pgd"): 0.05 for r in LOCAL})
    assert _verdict(_scores(over), "hybrid_beats_others_snn") == stats.SUPPORTED
    assert _verdict(_scores(over), "hybrid_beats_others_snn_autograd") == stats.NOT_SUPPORTED


def test_too_few_seeds_is_inconclusive():
    out, _ = claims(_scores(_robust("snn", "-rule", HIGH, LOW), seeds=2))
    c = next(c for c in out if c.name == "local_rules_look_robust_snn")
    assert c.verdict == stats.INCONCLUSIVE and "the interval alone says supported" in c.measured
    assert c.seeds == 2 and c.test_images == N
