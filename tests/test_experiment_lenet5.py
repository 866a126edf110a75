"""``lenetlab reproduce lenet5``: a tiny real run end to end, and the claims on synthetic cells (all three verdicts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lenetlab.experiments import reproduce, stats
from lenetlab.experiments.lenet5 import PAPER_LAYERS, layer_counts, lenet5_claims


@pytest.fixture(autouse=True)
def _claims_on_synthetic_cells_use_fewer_bootstrap_replicates(request, monkeypatch):
    """As for tests/test_claims_*.py (conftest.CLAIM_TEST_N_BOOT): the verdicts below have wide margins; never for
    a test that builds (or reads) the shared tiny run, which keeps the library's replicates."""
    from conftest import CLAIM_TEST_N_BOOT

    if "tiny" not in request.fixturenames:
        monkeypatch.setattr(stats, "N_BOOT", CLAIM_TEST_N_BOOT)


def cells(errors: list[int], n: int = 10000, seed: int = 0) -> dict[int, dict]:
    """One cell per seed with ``errors[i]`` misclassified images out of ``n``."""
    rng = np.random.default_rng(seed)
    return {sd: {"test_images": n, "wrong": sorted(rng.choice(n, e, replace=False).tolist())}
            for sd, e in enumerate(errors)}


def by_name(claims) -> dict:
    return {c.name: c for c in claims}


def test_tiny_run_end_to_end(tiny):
    tmp_path, r = tiny("lenet5")          # 300 test images (the contract's override); resume: test_experiments
    c = by_name(r.claims)
    assert set(c) == {"parameter_count", "test_error_095", "distortions_08"}
    assert c["parameter_count"].verdict == stats.SUPPORTED     # the model has the paper's 60,000 parameters
    # one seed: the guard keeps the error claim inconclusive whatever the interval says
    assert c["test_error_095"].verdict == stats.INCONCLUSIVE and "a verdict needs >= 3" in c["test_error_095"].measured
    assert c["test_error_095"].test_images == 300 and c["test_error_095"].seeds == [0]
    lo, hi = c["test_error_095"].interval
    assert 0 <= lo <= c["test_error_095"].estimate <= hi <= 1
    row = r.tables["test error per seed"][0]
    assert row["test images"] == 300 and row["train images"] == 600 and row["epochs"] == 1
    saved = json.loads((tmp_path / "result.json").read_text())
    assert [x["verdict"] for x in saved["claims"]] == [x.verdict for x in r.claims]
    assert "test_error_095" in (tmp_path / "report.md").read_text()


def test_error_claim_reaches_all_three_verdicts():
    # 0.6% errors on 10k images, 3 seeds: the whole interval is below 0.95% + 0.2
    assert by_name(lenet5_claims(cells([60, 58, 62]), layer_counts(), 20))["test_error_095"].verdict \
        == stats.SUPPORTED
    # 2% errors: entirely above
    assert by_name(lenet5_claims(cells([200, 190, 210]), layer_counts(), 20))["test_error_095"].verdict \
        == stats.NOT_SUPPORTED
    # 1.15% on average: the interval straddles the threshold
    mid = by_name(lenet5_claims(cells([110, 115, 120]), layer_counts(), 20))["test_error_095"]
    assert mid.verdict == stats.INCONCLUSIVE
    assert mid.interval[0] < 0.0115 < mid.interval[1]
    # 0.6% but only two seeds: too few to decide
    few = by_name(lenet5_claims(cells([60, 58]), layer_counts(), 20))["test_error_095"]
    assert few.verdict == stats.INCONCLUSIVE and "2 seeds" in few.measured
    # --full asks for five
    assert by_name(lenet5_claims(cells([60, 58, 62]), layer_counts(), 20, full=True))["test_error_095"].verdict \
        == stats.INCONCLUSIVE


def test_shortened_run_is_labelled():
    c = by_name(lenet5_claims(cells([60, 58, 62]), layer_counts(), 3))["test_error_095"]
    assert "3 of the paper's 20 epochs" in c.measured


def test_parameter_count_claim():
    good = layer_counts()
    assert good == PAPER_LAYERS
    assert by_name(lenet5_claims(cells([60] * 3), good, 20))["parameter_count"].verdict == stats.SUPPORTED
    bad = by_name(lenet5_claims(cells([60] * 3), {**good, "C3": 2416}, 20))["parameter_count"]
    assert bad.verdict == stats.NOT_SUPPORTED and "C3 2416 vs 1516" in bad.measured


def test_distortion_claim_is_listed_as_untestable():
    c = by_name(lenet5_claims(cells([60] * 3), layer_counts(), 20))["distortions_08"]
    assert c.verdict == stats.INCONCLUSIVE and "distortion" in c.measured


@pytest.mark.parametrize("bad", [{"seeds": []}])
def test_empty_seed_list_is_an_error(tmp_path, bad):
    from lenetlab.errors import LenetlabError

    with pytest.raises(LenetlabError, match="seeds is empty"):
        reproduce("lenet5", tmp_path, tiny=True, options=bad)
