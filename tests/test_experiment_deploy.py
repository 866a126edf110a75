"""``lenetlab reproduce deploy``: a tiny real run end to end, the claims on synthetic cells (all three
verdicts), and the helpers it adds to lenetlab.deploy (interleaved timing, the C evaluator)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CLAIM_TEST_N_BOOT
from lenetlab.deploy.latency import interleaved, paired_ratios
from lenetlab.experiments import Result, reproduce, stats
from lenetlab.experiments.deploy import LATENCY_CLAIMS, RUNTIMES, deploy_claims


def by_name(claims) -> dict:
    return {c.name: c for c in claims}


# ---------------------------------------------------------------- a tiny real run
def test_tiny_run_end_to_end(tiny):
    tmp_path, _ = tiny("deploy")          # 200 test images (the contract's override); resume: test_experiments
    r = Result.load(tmp_path)             # with its clock readings (timings.json): the latency claims
    c = by_name(r.all_claims)
    assert set(c) == {*(f"{rt}_same_top1" for rt in RUNTIMES), "int8_runtimes_bit_exact", "accuracy_about_98",
                      "same_as_pc", "int8_cost", "int8_smaller", *(f"{rt}_vs_torch_latency" for rt in RUNTIMES),
                      "real_time"}
    assert all(x.verdict in stats.VERDICTS for x in r.all_claims)
    # what comes from clock readings is kept apart from result.json and report.md (the same in every run)
    assert {x.name for x in r.timings.claims} == set(LATENCY_CLAIMS)
    assert r.timings.figures == ["latency.png"] and not r.figures and isinstance(r.wall_seconds, float)
    assert "torch_ms_per_image" in r.timings.metrics and "torch_ms_per_image" not in r.metrics
    assert "ms/image" not in (tmp_path / "report.md").read_text()
    assert "c_vs_torch_latency" in (tmp_path / "timings.md").read_text()
    cells = {}
    for line in (tmp_path / "cells.jsonl").read_text().splitlines():
        row = json.loads(line)
        cells[row["key"]] = row["value"]
    ev = cells["eval/0/200"]
    # the float32 flat runtimes reproduce PyTorch's top-1, the int8 ones each other's logits (reference oracles)
    assert ev["numpy/float32"]["differs_from_torch"] == [] and ev["c/float32"]["differs_from_torch"] == []
    assert ev["numpy/float32"]["max_rel_logit_diff"] < 1e-4 and ev["c/float32"]["max_rel_logit_diff"] < 1e-4
    assert ev["int8_c_vs_numpy_logits_differ"] == []
    assert ev["bytes"]["float32"] == (tmp_path / "runs/seed0/model.flat").stat().st_size
    assert ev["bytes"]["int8"] == (tmp_path / "runs/seed0/model_int8.flat").stat().st_size
    assert c["numpy_same_top1"].test_images == 200 and c["numpy_same_top1"].estimate == 0
    # one seed: every trained-model claim is held inconclusive by the seed guard; byte counting needs none
    assert c["int8_smaller"].verdict == stats.SUPPORTED and c["int8_smaller"].seeds == stats.EXACT
    assert c["accuracy_about_98"].verdict == stats.INCONCLUSIVE
    key = "latency/0/with-browser" if "browser/0/200" in cells else "latency/0/without-browser"
    assert cells[key] == {}               # the latencies are clock readings: timings.jsonl
    clock = {}
    for line in (tmp_path / "timings.jsonl").read_text().splitlines():
        row = json.loads(line)
        clock[row["key"]] = row["timings"]
    assert all(len(v) == 3 and min(v) > 0 for v in clock[key].values())
    assert clock["train/0"]["seconds"] > 0 and "seconds" not in cells["train/0"]
    if "browser/0/200" in cells:        # Chromium here: the page ran the model like NumPy
        b = cells["browser/0/200"]
        assert b["browser/float32"]["differs_from_torch"] == [] and b["browser/int8"]["logits_differ"] == []
    else:
        assert "not measured" in " ".join(r.notes)
        assert c["browser_same_top1"].verdict == stats.INCONCLUSIVE
    assert (tmp_path / "latency.png").stat().st_size > 0
    assert "numpy_same_top1" in (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------- claims on synthetic cells
N = 2000


@pytest.fixture
def fewer_bootstrap_replicates(monkeypatch):
    """400 bootstrap replicates instead of 2000, as for every claim-rule test (conftest.CLAIM_TEST_N_BOOT): the
    synthetic cells put each interval well clear of (or across) its line, so the verdicts do not hinge on the
    interval's Monte Carlo precision; reproductions keep 2000."""
    monkeypatch.setattr(stats, "N_BOOT", CLAIM_TEST_N_BOOT)


def _wrong(rng, k: int) -> list[int]:
    return sorted(rng.choice(N, k, replace=False).tolist())


def synthetic(seeds=(0, 1, 2), *, differ: int = 0, acc: float = 0.99, int8_extra: int = 2, browser: bool = True,
              int8_differ: int = 0, n: int = N) -> dict[int, dict]:
    """Evaluation cells as the experiment records them: misclassified / disagreeing image indices per runtime."""
    rng = np.random.default_rng(1)
    out = {}
    for sd in seeds:
        wrong = _wrong(rng, round((1 - acc) * n))
        extra = sorted(set(wrong) | set(rng.choice(n, int8_extra, replace=False).tolist()))
        dis = _wrong(rng, differ)
        ev = {"images": n, "torch_wrong": wrong, "bytes": {"float32": 247592, "int8": 66352},
              "int8_c_vs_numpy_logits_differ": list(range(int8_differ)), "int8_numpy_logits_sample": [[0] * 10] * 50}
        for rt in ("numpy", "c") + (("browser",) if browser else ()):
            ev[f"{rt}/float32"] = {"wrong": wrong, "differs_from_torch": dis, "max_rel_logit_diff": 1e-7}
            ev[f"{rt}/int8"] = {"wrong": extra, "differs_from_torch": [], "logits_differ": []}
        out[sd] = ev
    return out


def timings(seeds=(0, 1, 2), ratio: float = 0.5, spread: float = 0.05, reps: int = 12, browser: bool = True):
    rng = np.random.default_rng(2)
    out = {}
    for sd in seeds:
        torch_s = 1e-3 * (1 + 0.1 * rng.random(reps))
        t = {"torch": torch_s.tolist()}
        for rt in ("numpy", "c") + (("browser",) if browser else ()):
            t[rt] = (torch_s * (ratio + spread * rng.standard_normal(reps))).tolist()
        out[sd] = t
    return out


def test_claims_supported_when_everything_holds(fewer_bootstrap_replicates):
    c = by_name(deploy_claims(synthetic(), timings(), [0, 1, 2]))
    for name in ("numpy_same_top1", "c_same_top1", "browser_same_top1", "int8_runtimes_bit_exact",
                 "accuracy_about_98", "same_as_pc", "int8_cost", "int8_smaller", "numpy_vs_torch_latency",
                 "c_vs_torch_latency", "browser_vs_torch_latency", "real_time"):
        assert c[name].verdict == stats.SUPPORTED, (name, c[name].measured, c[name].interval)
    assert c["same_as_pc"].interval == [0.0, 0.0]
    assert "0 of 6000" in c["c_same_top1"].measured


def test_claims_not_supported_when_they_fail(fewer_bootstrap_replicates):
    c = by_name(deploy_claims(synthetic(differ=4, acc=0.95, int8_extra=60, int8_differ=1),
                              timings(ratio=40.0, spread=1.0), [0, 1, 2]))
    for name in ("numpy_same_top1", "c_same_top1", "browser_same_top1", "int8_runtimes_bit_exact",
                 "accuracy_about_98", "int8_cost", "numpy_vs_torch_latency", "c_vs_torch_latency",
                 "browser_vs_torch_latency", "real_time"):
        assert c[name].verdict == stats.NOT_SUPPORTED, (name, c[name].measured, c[name].interval)
    assert "12 of 6000" in c["numpy_same_top1"].measured


def test_claims_inconclusive_on_straddling_intervals_few_seeds_or_no_browser(fewer_bootstrap_replicates):
    # accuracy at the "about 98%" line, int8 costing about the allowance, latency ratios around 1
    c = by_name(deploy_claims(synthetic(acc=0.975, int8_extra=10, n=N), timings(ratio=1.0, spread=0.3), [0, 1, 2]))
    for name in ("accuracy_about_98", "int8_cost", "numpy_vs_torch_latency", "c_vs_torch_latency"):
        assert c[name].verdict == stats.INCONCLUSIVE, (name, c[name].measured, c[name].interval)
    # two seeds: the guard
    few = by_name(deploy_claims(synthetic(seeds=(0, 1)), timings(seeds=(0, 1)), [0, 1]))
    assert few["c_same_top1"].verdict == stats.INCONCLUSIVE and "a verdict needs >= 3" in few["c_same_top1"].measured
    # no Chromium: the browser rows say why instead of failing
    nob = by_name(deploy_claims(synthetic(browser=False), timings(browser=False), [0, 1, 2],
                                "chromium is not installed"))
    for name in ("browser_same_top1", "browser_vs_torch_latency", "real_time"):
        assert nob[name].verdict == stats.INCONCLUSIVE and "chromium is not installed" in nob[name].measured
    assert nob["c_same_top1"].verdict == stats.SUPPORTED
    assert "browser not checked" in nob["int8_runtimes_bit_exact"].measured


# ---------------------------------------------------------------- helpers in lenetlab.deploy
def test_interleaved_rotates_the_order_and_pairs_repetitions():
    calls = []

    def timer(name, value):
        def t():
            calls.append(name)
            return value
        return t

    out = interleaved({"a": timer("a", 2.0), "b": timer("b", 1.0), "c": timer("c", 4.0)}, repetitions=3, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert out == {"a": [2.0] * 3, "b": [1.0] * 3, "c": [4.0] * 3}
    assert paired_ratios(out, "b") == {"a": [2.0] * 3, "c": [4.0] * 3}
    with pytest.raises(ValueError):
        interleaved({}, repetitions=1)


def test_c_evaluator_matches_numpy_runtime(deploy_flats, mnist_test, tmp_path):
    """CEvaluator (build, IDX files, logits, timing lines, errors) on a trained lenet5's flat files
    (conftest.deploy_flats). Built at -O0 (gcc ~0.6 s instead of ~5 s): the experiment's own build flags
    (MAKEFILE_FLAGS) are used by the shared tiny run (test_tiny_run_end_to_end)."""
    from lenetlab.deploy import flat, runtime
    from lenetlab.deploy.c_eval import CEvaluator
    from lenetlab.deploy.c_runtime import THREAD_FLAGS
    from lenetlab.errors import LenetlabError

    x = mnist_test[0][:200]
    c = CEvaluator(tmp_path / "c", flags=("-std=c99", "-O0", *THREAD_FLAGS))
    for int8 in (False, True):
        path = deploy_flats["lenet5"]["int8" if int8 else "float"]
        fm = flat.load(str(path))
        got, ref = c.logits(path, x), runtime.run(fm, x)
        if int8:
            assert got.dtype == np.int32 and np.array_equal(got.astype(np.int64), ref)
        else:
            assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
        assert c.seconds_per_image(path, x[:20], repeat=2) > 0
    bad = tmp_path / "bad.flat"
    bad.write_bytes(b"LENET5FL" + bytes(100))
    with pytest.raises(LenetlabError, match="invalid flat model"):      # refused before the program runs
        c.logits(bad, x)
    with pytest.raises(LenetlabError, match="lenet5_eval failed on .*bad.flat"):   # the C loader's own refusal
        c.seconds_per_image(bad, x[:5])


@pytest.mark.slow   # a browser per run
def test_a_browser_that_dies_mid_run_gives_inconclusive_rows(tmp_path, monkeypatch):
    from selenium.common.exceptions import WebDriverException

    import lenetlab.deploy.browser as browser_mod
    import lenetlab.experiments.deploy as deploy_mod

    class DeadDriver:
        quits = 0

        def quit(self):
            DeadDriver.quits += 1

    def crash(*args):
        raise WebDriverException("chrome not reachable")

    monkeypatch.setattr(browser_mod, "open_browser", lambda: DeadDriver())
    monkeypatch.setattr(deploy_mod, "_browser_eval", crash)
    r = reproduce("deploy", tmp_path, tiny=True, options={"test_images": 50})
    c = by_name(r.all_claims)
    for name in ("browser_same_top1", "browser_vs_torch_latency", "real_time"):
        assert c[name].verdict == stats.INCONCLUSIVE
        assert "the browser failed at seed 0: chrome not reachable" in c[name].measured
    assert DeadDriver.quits == 1
    keys = [json.loads(line)["key"] for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert "latency/0/without-browser" in keys and not any(k.startswith("browser/") for k in keys)
