"""Contract tests over the experiment registry, plus the abs study's pieces."""

from __future__ import annotations

import json

import pytest
import torch

from lenetlab.experiments import Cells, reproduce
from lenetlab.registry import names

TINY_OK = {"abs"}   # fused and cascade run their tiny mode in their own test files


@pytest.mark.parametrize("name", sorted(TINY_OK & set(names("experiment"))))
def test_experiment_runs_tiny_and_reports(name, tmp_path):
    r = reproduce(name, tmp_path, tiny=True)
    assert r.claims and all(c.supported in (True, False, None) for c in r.claims)
    assert all(c.measured for c in r.claims)
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["experiment"] == name and data["mode"] == "tiny"
    report = (tmp_path / "report.md").read_text()
    assert "## Claims" in report
    for f in r.figures:
        assert (tmp_path / f).stat().st_size > 1000
    # a second run reuses every finished cell (resume) and gives the same tables
    r2 = reproduce(name, tmp_path, tiny=True)
    assert r2.tables == r.tables


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
