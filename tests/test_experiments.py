"""Contract tests over the experiment registry, plus the abs study's pieces."""

from __future__ import annotations

import json

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


# one cheap setting override per experiment (each shrinks its tiny grid) and the effect it must have on the result
OVERRIDES = {
    "abs": ({"widths": [1.0]},
            lambda r: {row["width"] for row in _table(r, "test accuracy")} == {1.0}),
    "cascade": ({"ladders": [[7, 28]]},        # lists, as a sweep file gives them (the study keys on tuples)
                lambda r: {row["ladder"] for row in _table(r, "resolution cascade sweep")} == {"7,28"}),
    "faults": ({"ks": [50]},
               lambda r: [(row["method"], row["k_%"]) for row in _table(r, "overhead vs resilience")]
               == [("none", 0), ("split", 50), ("tmr", 50)]),
    "fused": ({"images": 16},
              lambda r: " on 16 MNIST test images" in next(c.measured for c in r.claims if c.name == "exact")),
    "noise": ({"sigmas": [0.01, 1.0]},
              lambda r: all(set(row) == {"arch", "model", "0.01", "1"} for row in _table(r, "accuracy % vs sigma"))),
    "snn-attacks": ({"eps": [0.3]},
                    lambda r: all([k for k in row if k.startswith("eps ")] == ["eps 0.3"]
                                  for row in _table(r, "adversarial accuracy"))),
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_experiment_takes_setting_overrides(name, tiny_run, tmp_path):
    """``reproduce(..., options=...)`` (what ``lenetlab sweep`` kind = "experiment" calls) changes the run; on that
    same tiny output (shared with the experiment's own tests through ``tiny_run``): claims, result.json,
    report and figures are written, and a second run reuses every finished cell (resume), same tables."""
    options, took_effect = OVERRIDES[name]
    assert get("experiment", name).accepts_options
    with pytest.raises(LenetlabError, match="unknown experiment setting 'no_such_setting'"):
        reproduce(name, tmp_path / "bad", tiny=True, options={"no_such_setting": 1})
    assert not (tmp_path / "bad").exists()
    (key, value), = options.items()
    default = get("experiment", name)().settings(False, tiny=True)[key]
    assert json.loads(json.dumps(default)) != value          # the override is a change
    out, r = tiny_run(name, **options)
    assert json.loads((out / "run.json").read_text())["settings"][key] == value
    data = json.loads((out / "result.json").read_text())
    config = data["config"]
    assert config.get("settings", config)[key] == value     # cascade records its settings at the top level
    assert took_effect(r), f"{name}: {options} did not reach the run"
    # the contract every experiment keeps
    assert data["experiment"] == name and data["mode"] == "tiny"
    assert r.claims and all(c.supported in (True, False, None) and c.measured for c in r.claims)
    assert "## Claims" in (out / "report.md").read_text()
    for f in r.figures:
        assert (out / f).stat().st_size > 1000
    assert reproduce(name, out, tiny=True, options=options).tables == r.tables
