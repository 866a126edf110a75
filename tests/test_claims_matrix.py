"""The matrix's claim rules on synthetic cells: every claim reaches all three verdicts, and "QAT beats float
under noise" is decided exactly as the noise experiment decides it (one rule, lenetlab.noise.claims)."""

from __future__ import annotations

import numpy as np

from lenetlab.experiments.matrix import Settings, matrix_claims, settings
from lenetlab.experiments.noise import noise_claims
from lenetlab.experiments.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED

N = 500
S = Settings(**settings(False))


def _scores(acc: float, seed: int, n_seeds: int = 3) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [(rng.random(N) < acc).astype(float).tolist() for _ in range(n_seeds)]


def _cells(noisy: float, qat: float, flt: float, sdc_float: int, sdc_hard: int, trials: int = 4000,
           n_seeds: int = 3) -> dict:
    def seeds(acc: float, sdc: int | None, seed: int) -> list[dict]:
        out = [{"noise_per_image": v} for v in _scores(acc, seed, n_seeds)]
        for i, c in enumerate(out):
            if sdc is not None:
                c |= {"sdc_count": sdc + 5 * i, "trials": trials}
        return out

    return {"float": seeds(flt, sdc_float, 1), "noisy": seeds(noisy, None, 2), "qat_int8": seeds(qat, None, 3),
            "hardened_int8": seeds(flt, sdc_hard, 4)}


def test_every_matrix_claim_reaches_all_three_verdicts():
    yes = {c.name: c.verdict for c in matrix_claims(_cells(0.8, 0.75, 0.6, sdc_float=300, sdc_hard=150), S)}
    no = {c.name: c.verdict for c in matrix_claims(_cells(0.5, 0.45, 0.7, sdc_float=150, sdc_hard=300), S)}
    maybe = {c.name: c.verdict for c in matrix_claims(_cells(0.6, 0.6, 0.6, sdc_float=200, sdc_hard=200), S)}
    assert set(yes) == {"noisy_training_beats_float_under_noise", "qat_beats_float_under_noise",
                        "hardening_lowers_sdc"}
    for name in yes:
        assert (yes[name], no[name], maybe[name]) == (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE), name


def test_one_seed_is_inconclusive():
    claims = matrix_claims(_cells(0.9, 0.9, 0.1, sdc_float=900, sdc_hard=10, n_seeds=1), S)
    assert all(c.verdict == INCONCLUSIVE and "1 seed" in c.measured for c in claims)


def test_noise_and_matrix_decide_qat_beats_float_by_the_same_rule():
    """The same per-seed, per-image scores give the same estimate, interval and verdict in both experiments."""
    for qat_acc in (0.65, 0.6, 0.55):
        qat, flt = _scores(qat_acc, 7), _scores(0.6, 8)
        cells = _cells(0.6, 0.6, 0.6, 100, 100)
        cells["qat_int8"] = [{"noise_per_image": v} for v in qat]
        cells["float"] = [{**c, "noise_per_image": v} for c, v in zip(cells["float"], flt)]
        m = next(c for c in matrix_claims(cells, S) if c.name == "qat_beats_float_under_noise")
        arch = {"qat": qat, "float": flt, "noisy": flt}
        n = next(c for c in noise_claims({"lenet5": arch, "lenet5_w4": arch}, [0.3], 3)
                 if c.name == "qat_beats_float_lenet5")
        assert (m.estimate, m.interval, m.verdict) == (n.estimate, n.interval, n.verdict)
        assert m.rule.split(" accuracy under ")[0] == n.rule.split(" accuracy under ")[0]
