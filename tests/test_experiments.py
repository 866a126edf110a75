"""Contract tests over the experiment registry, plus the abs study's pieces."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lenetlab.errors import LenetlabError
from lenetlab.experiments import Cells, reproduce
from lenetlab.registry import get


def test_cells_survive_a_cut_line(tmp_path):
    path = tmp_path / "cells.jsonl"
    c = Cells(path)
    calls = []
    assert c.get_or_run("a", lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    with open(path, "a") as f:
        f.write('{"key": "b", "val')            # killed mid-write
    c2 = Cells(path)
    assert c2.get_or_run("a", lambda: calls.append(2) or {"x": 9}) == {"x": 1}
    assert c2.get_or_run("b", lambda: {"y": 2}) == {"y": 2}
    assert calls == [1]


def test_unknown_experiment_is_a_clean_error(tmp_path):
    from conftest import run_cli

    r = run_cli("reproduce", "nope", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown experiment 'nope'" in r.stderr and "abs" in r.stderr


def test_gradient_norms_vanish_for_relu_but_not_abs():
    """The deep family shows the effect the abs claim is about, on real MNIST digits."""
    from lenetlab.config import DataConfig
    from lenetlab.data.datasets import load_raw
    from lenetlab.data.transforms import to_model_input
    from lenetlab.experiments.abs import gradient_norms

    x, y, _, _ = load_raw("mnist")
    images = to_model_input(torch.from_numpy(x[:32]), DataConfig())
    labels = torch.from_numpy(y[:32].astype("int64"))
    relu = gradient_norms("relu", 16, 0, images, labels)
    ab = gradient_norms("abs", 16, 0, images, labels)
    assert len(relu) == len(ab) == 16
    # relu halves the signal's second moment per layer under Glorot init; |x| preserves it
    assert relu[0] / relu[-1] < ab[0] / ab[-1]
    assert 0.1 <= ab[0] / ab[-1] <= 10


def _table(r, prefix: str) -> list[dict]:
    return next(rows for title, rows in r.tables.items() if title.startswith(prefix))


# what each shared tiny run's override (conftest.TINY_OPTIONS) must visibly change in its result
TOOK_EFFECT = {
    "abs": lambda r: {row["width"] for row in _table(r, "test accuracy")} == {1.0},
    "cascade": lambda r: {row["ladder"] for row in _table(r, "resolution cascade sweep")} == {"7,28"},
    "deploy": lambda r: [row["test images"] for row in _table(r, "accuracy per runtime")] == [200],
    "faults": lambda r: [(row["method"], row["k_%"]) for row in _table(r, "overhead vs resilience")]
    == [("none", 0), ("split", 50), ("tmr", 50)],
    "fused": lambda r: " on 16 MNIST test images" in next(c.measured for c in r.claims if c.name == "exact"),
    "lenet5": lambda r: [row["test images"] for row in _table(r, "test error per seed")] == [300],
    "matrix": lambda r: "PGD acc % (eps 0.05)" in _table(r, "robustness matrix")[0],
    "noise": lambda r: all(set(row) == {"arch", "model", "0.01", "1"} for row in _table(r, "accuracy % vs sigma")),
    "snn-attacks": lambda r: all([k for k in row if k.startswith("eps ")] == ["eps 0.3"]
                                 for row in _table(r, "adversarial accuracy")),
    "tn": lambda r: {row["ADTN depth"] for row in _table(r, "ADTN vs TT")} == {1},
    "zo": lambda r: {row["seed"] for row in _table(r, "accuracy, peak memory")} == {1},
}


def _builtin_experiments() -> list[str]:
    """Every experiment the built-in catalogue registers (test modules may register toy ones of their own)."""
    from lenetlab.registry import names

    return [n for n in names("experiment") if get("experiment", n).__module__.startswith("lenetlab.")]


# Resuming re-runs an experiment's run(): every cell comes from cells.jsonl, but what is not a cell is done again -
# the figures are drawn again (~1-2 s of CPU each of these), and deploy starts Chromium and the C compiler again
# before it looks at its cells (~6 s). Their resumes are checked in the slow tier; the fast tier resumes the
# experiments whose second run costs well under a second (lenet5, matrix - every kind of cell: trained, compressed,
# evaluated -, noise, zo) and checks the machinery they share (base.reproduce's cells and run.json) in
# test_cells_survive_a_cut_line and test_report.py::test_cells_recorded_under_other_settings_are_not_reused.
RESUME_IS_SLOW = {"abs", "cascade", "deploy", "faults", "fused", "snn-attacks", "tn"}


@pytest.mark.parametrize("name", _builtin_experiments())
def test_experiment_contract(name, tiny, tmp_path):
    """Every registered experiment, on its one shared tiny run: ``reproduce(..., options=...)`` (what
    ``lenetlab sweep`` kind = "experiment" calls) changes the run, an unknown setting is refused before anything
    is written; claims, result.json, report and figures are written (the resume: the test below)."""
    from conftest import TINY_OPTIONS

    assert name in TINY_OPTIONS and name in TOOK_EFFECT, f"{name}: give it a tiny override in conftest.py"
    options = TINY_OPTIONS[name]
    assert get("experiment", name).accepts_options
    with pytest.raises(LenetlabError, match="unknown experiment setting 'no_such_setting'"):
        reproduce(name, tmp_path / "bad", tiny=True, options={"no_such_setting": 1})
    assert not (tmp_path / "bad").exists()
    default = get("experiment", name)().settings(False, tiny=True)
    out, r = tiny(name)
    recorded = json.loads((out / "run.json").read_text())["settings"]
    data = json.loads((out / "result.json").read_text())
    config = data["config"]
    config = config.get("settings", config)                 # cascade records its settings at the top level
    for key, value in options.items():
        assert json.loads(json.dumps(default[key])) != value, f"{name}: {key} = {value!r} is no change"
        assert recorded[key] == value and config[key] == value, f"{name}: {key} not recorded"
    assert TOOK_EFFECT[name](r), f"{name}: {options} did not reach the run"
    # the contract every experiment keeps
    assert data["experiment"] == name and data["mode"] == "tiny"
    assert r.claims and all(c.supported in (True, False, None) and c.measured for c in r.claims)
    assert all(c.verdict in ("supported", "not supported", "inconclusive") for c in r.claims)
    assert "## Claims" in (out / "report.md").read_text()
    for f in r.figures:
        assert (out / f).stat().st_size > 1000


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in RESUME_IS_SLOW else n
                                  for n in _builtin_experiments()])
def test_experiment_resumes(name, tiny, tmp_path):
    """A second run of the shared tiny run (same options) reuses every finished cell: the same tables, no cell
    computed again."""
    from conftest import TINY_OPTIONS

    out, r = tiny(name)
    # on a copy: the shared run is read by other tests, maybe at this moment on another worker
    again = tmp_path / "again" / name
    shutil.copytree(out, again)
    cells = again / "cells.jsonl"
    before = cells.read_bytes() if cells.exists() else None
    resumed = reproduce(name, again, tiny=True, options=TINY_OPTIONS[name])
    assert json.loads(json.dumps(resumed.tables)) == r.tables
    if before is not None:
        assert cells.read_bytes() == before, f"{name}: the second run computed cells again"
