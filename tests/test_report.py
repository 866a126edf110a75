"""``lenetlab reproduce all``: the self-contained HTML report in a real headless Chromium, the claims
table, content-hash skipping, --force, and failure isolation."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from lenetlab.errors import LenetlabError
from lenetlab.experiments import suite
from lenetlab.experiments.base import Claim, Result, config_hash
from lenetlab.experiments.report import Section, write_suite_report
from lenetlab.fileio import atomic_write_json

TINY_EXPERIMENT = "cascade"    # the cheapest tiny experiment with figures (~3 s of CPU; noise: ~9 s)


@pytest.fixture(scope="module")
def tiny_all(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("all") / "out"
    r = run_cli("reproduce", "all", "--only", TINY_EXPERIMENT, "--tiny", "--out", str(out), check=True)
    return out, r.stdout


def test_reproduce_all_writes_a_self_contained_report(tiny_all, browser):
    out, stdout = tiny_all
    assert f"[1/1] {TINY_EXPERIMENT}: running (tiny mode" in stdout and "report.html" in stdout
    result = json.loads((out / TINY_EXPERIMENT / "result.json").read_text())
    page = (out / "report.html").read_text()
    # self-contained: every image is a data URI, nothing is fetched from anywhere
    srcs = re.findall(r'<img[^>]* src="([^"]*)"', page)
    assert len(srcs) == len(result["figures"]) >= 1 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)=["\'](?!data:|#)', page)
    # one claims table with a row per claim and the verdict column
    assert page.count("<h2 id=claims>") == 1
    for c in result["claims"]:
        assert c["name"] in page
    md = (out / "report.md").read_text()
    assert "## Claims" in md and f"({TINY_EXPERIMENT}/{result['figures'][0]})" in md

    # moved elsewhere, the page still shows every plot: open it in headless Chromium
    moved = out.parent / "elsewhere" / "report.html"
    moved.parent.mkdir()
    shutil.copy(out / "report.html", moved)
    browser.get(moved.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
    assert len(images) == len(result["figures"])
    assert all(done and width > 0 for done, width, _ in images), images
    rows = browser.execute_script("return document.querySelectorAll('#claims + table tbody tr').length;")
    assert rows == len(result["claims"])
    browser.save_screenshot(str(out.parent / "report.png"))
    browser.execute_script("document.images[0].scrollIntoView();")
    browser.save_screenshot(str(out.parent / "report_figure.png"))
    assert (out.parent / "report.png").stat().st_size > 10_000


def test_second_run_skips_by_content_hash(tiny_all):
    out, _ = tiny_all
    before = (out / TINY_EXPERIMENT / "result.json").stat().st_mtime_ns
    r = run_cli("reproduce", "all", "--only", TINY_EXPERIMENT, "--tiny", "--out", str(out), check=True)
    assert f"{TINY_EXPERIMENT}: skipped, result for config" in r.stdout
    assert (out / TINY_EXPERIMENT / "result.json").stat().st_mtime_ns == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["experiments"][0]["status"] == "skipped"
    assert manifest["experiments"][0]["config_hash"] == config_hash(TINY_EXPERIMENT, tiny=True)


def test_clock_readings_are_kept_apart_from_the_results_and_reports(tiny_all):
    """Wall times and per-cell times go to timings.json / timings.jsonl / timings.md (and the suite's timings.*),
    never to result.json, cells.jsonl, report.md, report.html or manifest.json; a skipped experiment keeps the
    wall time of the run that produced it."""
    out, _ = tiny_all
    exp = out / TINY_EXPERIMENT
    result = json.loads((exp / "result.json").read_text())
    assert "wall_seconds" not in result and "timings" not in result
    clock = json.loads((exp / "timings.json").read_text())
    table = next(iter(clock["tables"]))                 # cascade: "training time per model"
    assert clock["wall_seconds"] > 0 and clock["tables"][table]
    cells = [json.loads(x) for x in (exp / "cells.jsonl").read_text().splitlines()]
    readings = {r["key"]: r["timings"] for r in map(json.loads, (exp / "timings.jsonl").read_text().splitlines())}
    assert cells and {c["key"] for c in cells} == set(readings)
    for c in cells:                                     # every cell's clock readings, none of them in the cell
        assert readings[c["key"]] and all(v > 0 and k not in c["value"] for k, v in readings[c["key"]].items())
    for report in (exp / "report.md", out / "report.md", out / "report.html"):
        text = report.read_text()
        assert "Wall time" not in text and "wall time (s)" not in text and "timings" in text, report
    assert "Wall time:" in (exp / "timings.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "wall_seconds" not in manifest["experiments"][0]
    suite_clock = json.loads((out / "timings.json").read_text())["experiments"][0]
    assert suite_clock["name"] == TINY_EXPERIMENT and suite_clock["wall_seconds"] == round(clock["wall_seconds"], 3)
    page = (out / "timings.html").read_text()       # self-contained like report.html
    assert table in page and not re.search(r'(href|src)=["\'](?!data:|#)', page)
    assert table in (out / "timings.md").read_text()


def test_result_splits_into_result_json_and_timings_json(tmp_path):
    from lenetlab.experiments.base import Timings

    r = Result("x", "p", "quick", {}, claims=[Claim("c", "s", "m", True)], wall_seconds=3.5, config_hash="h",
               timings=Timings(tables={"t": [{"s": 1.0}]}, claims=[Claim("fast", "s", "1 ms", None)],
                               figures=["lat.png"], metrics={"ms": 1.0}))
    assert "wall_seconds" not in r.record() and "timings" not in r.record()
    assert r.timings_record()["wall_seconds"] == 3.5 and r.timings_record()["claims"][0]["name"] == "fast"
    assert [c.name for c in r.all_claims] == ["c", "fast"]
    atomic_write_json(tmp_path / "result.json", r.record())
    assert Result.load(tmp_path) == Result("x", "p", "quick", {}, claims=r.claims, config_hash="h")  # no timings
    atomic_write_json(tmp_path / "timings.json", r.timings_record())
    assert Result.load(tmp_path) == r


def _fake_reproduce(calls: list, fail: set[str] = frozenset()):
    """Stands in for base.reproduce: records the call, writes a result.json with the right hash."""

    def fake(name, out, full=False, force=False, tiny=False, log=None, **_):   # **_: progress=..., if given
        calls.append((name, full, force))
        if name in fail:
            raise RuntimeError(f"{name} broke")
        r = Result(name, f"paper of {name}", "full" if full else "quick", {"x": 1},
                   tables={"t": [{"a": 1, "b": 0.5}]}, claims=[Claim("c1", "paper says 8.2x", "we got 7.9x", True)],
                   config_hash=config_hash(name, full, tiny))
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "result.json", r.to_dict())
        return r

    return fake


def test_force_and_a_changed_config_rerun(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(suite, "reproduce", _fake_reproduce(calls))
    statuses = lambda outcomes: [o.status for o in outcomes]
    assert statuses(suite.reproduce_all(tmp_path, only=["abs", "noise"])) == ["ran", "ran"]
    assert statuses(suite.reproduce_all(tmp_path, only=["abs", "noise"])) == ["skipped", "skipped"]
    assert statuses(suite.reproduce_all(tmp_path, only=["abs"], force=True)) == ["ran"]
    assert statuses(suite.reproduce_all(tmp_path, only=["abs"], full=True)) == ["ran"]   # other mode: other hash
    assert calls == [("abs", False, False), ("noise", False, False), ("abs", False, True), ("abs", True, False)]


def test_a_failing_experiment_is_reported_and_the_rest_still_run(tmp_path, monkeypatch, capsys):
    from lenetlab.cli import main

    calls: list = []
    monkeypatch.setattr(suite, "reproduce", _fake_reproduce(calls, fail={"abs"}))
    rc = main(["reproduce", "all", "--only", "abs,noise", "--jobs", "1", "--out", str(tmp_path)])   # in-process fakes
    out = capsys.readouterr().out
    assert rc == 1 and [c[0] for c in calls] == ["abs", "noise"]
    assert "abs: FAILED" in out and "1 of 2 experiments failed: abs" in out
    assert "RuntimeError: abs broke" in (tmp_path / "abs" / "error.txt").read_text()
    page = (tmp_path / "report.html").read_text()
    assert "RuntimeError: abs broke" in page and "paper says 8.2x" in page and "we got 7.9x" in page
    assert json.loads((tmp_path / "manifest.json").read_text())["experiments"][0]["status"] == "failed"


def test_unknown_only_name_is_a_clean_error(tmp_path, capsys):
    from lenetlab.cli import main

    with pytest.raises(LenetlabError, match="unknown experiment 'nope'.*abs"):
        suite.reproduce_all(tmp_path, only=["abs", "nope"])
    assert main(["reproduce", "abs", "--only", "abs", "--out", str(tmp_path / "x")]) == 2
    assert "--only goes with" in capsys.readouterr().err


def test_extra_sections_are_rendered_with_embedded_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow([[0, 1], [1, 0]])
    fig.savefig(tmp_path / "heat.png")
    plt.close(fig)
    section = Section("robustness matrix", "one row per model", {"matrix": [{"model": "float", "clean": 0.99}]},
                      ["heat.png"])
    page, md = write_suite_report([], tmp_path, [section])
    html = page.read_text()
    assert "<h2>robustness matrix</h2>" in html and "data:image/png;base64," in html and "0.99" in html
    assert "![heat](heat.png)" in md.read_text()


def test_claim_rows_show_rule_seeds_images_estimate_interval_and_verdict(tmp_path):
    from lenetlab.experiments import stats
    from lenetlab.experiments.report import render

    rule = stats.Difference("QAT", "float", 0.0, metric="accuracy under noise", scale=100, unit=" points")
    est = stats.bootstrap_difference([(930, 1000), (925, 1000), (940, 1000)], [(900, 1000), (905, 1000), (890, 1000)],
                                     paired=True)
    new = stats.make_claim("qat_beats_float", "QAT is more robust", rule, est, seeds=[0, 1, 2])
    exact = stats.make_claim("macs", "4x fewer MACs", stats.AtLeastFactor(4), stats.exact(4.32), seeds=stats.EXACT)
    r = Result("noise", "p", "quick", {}, claims=[new, exact, Claim("old_way", "s", "m", False)])
    md = render(r)
    lo, hi = new.interval
    assert "| claim | paper | measured | rule | seeds | test images | estimate | 95% CI | verdict |" in md
    assert (f"| {rule.text} [interval: {est.method}] | 3 (0, 1, 2) | 1000 | {new.estimate:.4g} | "
            f"[{lo:.4g}, {hi:.4g}] | supported |") in md
    assert "| n/a (exact) | - | 4.32 | [4.32, 4.32] | supported |" in md
    assert "| (legacy: single-seed check) | - | - | - | - | not supported |" in md
    # the suite report: the same columns in markdown and HTML, and the verdict counts per experiment
    outcomes = [suite.Outcome("noise", "ran", r)]
    page, md_path = write_suite_report(outcomes, tmp_path)
    html = page.read_text()
    for text in (rule.text.split(";")[0], "3 (0, 1, 2)", f"[{lo:.4g}, {hi:.4g}]",
                 "n/a (exact)", "<td class=\"not\">not supported</td>", "<td class=\"supported\">supported</td>",
                 "<th>95% CI</th>", "<th>test images</th>", "<th>legacy rules</th>"):
        assert text in html, text
    suite_md = md_path.read_text()
    header = "| experiment | status | mode | claims | supported | not supported | inconclusive | legacy rules |"
    assert header in suite_md
    assert "| noise | ran | quick | 3 | 2 | 1 | 0 | 1 |" in suite_md
    assert suite.verdict_counts(r) == "3 claims: 2 supported, 1 not supported"


def test_result_round_trips_through_json():
    r = Result("x", "p", "quick", {"a": [1, 2]}, tables={"t": [{"k": 1.5}]}, claims=[Claim("c", "s", "m", None)],
               figures=["f.png"], notes=["n"], wall_seconds=3.0, config_hash="abc")
    assert Result.from_dict(json.loads(json.dumps({**r.to_dict(), "extra": 1}))) == r


def test_cells_recorded_under_other_settings_are_not_reused(tmp_path, monkeypatch):
    from lenetlab import registry
    from lenetlab.experiments import Experiment, reproduce

    computed = []

    class Scaled(Experiment):
        name, paper, accepts_options = "scaled", "none", True

        def settings(self, full, tiny=False):
            return {"scale": 1.0}

        def run(self, ctx):
            s = ctx.resolve_settings(self.settings(ctx.full, ctx.tiny))
            cell = ctx.cells.get_or_run("only", lambda: computed.append(s["scale"]) or {"v": s["scale"]})
            return Result(self.name, self.paper, ctx.mode, s, claims=[Claim("c", "s", str(cell["v"]), None)])

    registry.names("experiment")
    monkeypatch.setitem(registry._TABLES["experiment"], "scaled", Scaled)
    assert reproduce("scaled", tmp_path, options={"scale": 0.5}).claims[0].measured == "0.5"
    assert reproduce("scaled", tmp_path, options={"scale": 0.5}).claims[0].measured == "0.5"   # resumed
    assert reproduce("scaled", tmp_path, options={"scale": 2.0}).claims[0].measured == "2.0"   # not mixed in
    assert computed == [0.5, 2.0]
    with pytest.raises(LenetlabError, match="unknown experiment setting 'scal'"):
        reproduce("scaled", tmp_path, options={"scal": 2.0})

    class Fixed(Scaled):          # an experiment whose run() does not read overrides refuses them
        name, accepts_options = "fixed", False

    monkeypatch.setitem(registry._TABLES["experiment"], "fixed", Fixed)
    with pytest.raises(LenetlabError, match="'fixed' takes no setting overrides"):
        reproduce("fixed", tmp_path / "fixed", options={"scale": 0.5})
    assert not (tmp_path / "fixed").exists()
