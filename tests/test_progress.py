"""Progress bars (lenetlab.progress) and the library callbacks that feed them. Fast: untrained models, no data
beyond the first MNIST test images, no training."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
from rich.console import Console

from lenetlab.progress import Bar, progress_bar


def _terminal(width: int = 120) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


class Recorder:
    """Stands in for a :class:`Bar`: records what it is told."""

    def __init__(self):
        self.steps: list[int] = []
        self.totals: list[int | None] = []
        self.starts: list[tuple[str, int | None, int]] = []

    def __call__(self, n: int = 1) -> None:
        self.steps.append(int(n))

    def set_total(self, total: int | None) -> None:
        self.totals.append(total)

    def start(self, description: str, total: int | None = None, done: int = 0) -> None:
        self.starts.append((description, total, done))


# ---------------------------------------------------------------- the helper
def test_no_bar_when_stderr_is_not_a_terminal_or_quiet(capsys, monkeypatch):
    with progress_bar("work", total=3) as bar:          # pytest's stderr is no terminal
        assert isinstance(bar, Bar) and not bar.enabled
        bar(), bar(2), bar.set_total(5), bar.info("x"), bar.start("more", total=2)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with progress_bar("work", total=3, quiet=True) as bar:
        assert not bar.enabled
        bar(3)
    con = _terminal()
    with progress_bar("work", total=3, quiet=True, console=con) as bar:   # quiet wins over a terminal
        assert not bar.enabled
        bar(3)
    assert con.file.getvalue() == ""
    assert capsys.readouterr() == ("", "")


def test_bar_on_a_terminal_advances_to_its_total():
    con = _terminal()
    with progress_bar("faults", total=5, console=con) as bar:
        assert bar.enabled
        for _ in range(5):
            bar()
        bar.info("last")
        task = bar._p.tasks[0]
        assert (task.completed, task.total, task.finished) == (5, 5, True)
        bar._p.refresh()
        shown = con.file.getvalue()
        assert "faults" in shown and "5/5" in shown and "last" in shown
        bar.start("epoch 2/2", total=4, done=1)   # a new stretch: its own count and total
        bar.set_total(8)
        bar(3)
        task = bar._p.tasks[0]
        assert (task.description, task.completed, task.total) == ("epoch 2/2", 4, 8)
    assert bar._p.live.is_started is False        # stopped (and, transient, erased) when the block ends


def test_bar_total_unknown_shows_count_and_elapsed():
    con = _terminal()
    with progress_bar("cells", console=con) as bar:
        bar(2)
        bar._p.refresh()
    assert "2/?" in con.file.getvalue()


def test_stdout_lines_go_above_the_bar_when_stdout_is_a_terminal(monkeypatch):
    class TtyOut(io.StringIO):
        def isatty(self):
            return True

    out = TtyOut()
    monkeypatch.setattr(sys, "stdout", out)
    con = _terminal()
    with progress_bar("work", total=1, console=con) as bar:
        print("a line")
        Console(highlight=False).print("a rich line")   # rich consoles on stdout too
        bar()
    assert sys.stdout is out and out.getvalue() == ""
    shown = con.file.getvalue()
    assert "a line" in shown and "a rich line" in shown


# ---------------------------------------------------------------- library callbacks
@pytest.fixture(scope="module")
def lenet():
    from lenetlab.config import RunConfig
    from lenetlab.models import create_model

    torch.manual_seed(0)
    cfg = RunConfig()
    return create_model(cfg.model.name, **cfg.model.options).eval(), cfg


def test_run_attack_reports_every_batch(lenet):
    from lenetlab.attacks import Target, make_attack, run_attack

    model, cfg = lenet
    atk = make_attack("fgsm", Target(model, cfg.data), 0.1)
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10)
    rec = Recorder()
    res, _ = run_attack(atk, x, y, batch_size=4, progress=rec)
    assert rec.steps == [4, 4, 2]
    assert res == run_attack(atk, x, y, batch_size=4)[0]      # the numbers do not depend on it


def test_nvf_reports_every_step(lenet):
    from lenetlab.deploy import flat
    from lenetlab.deploy.graph import to_flat
    from lenetlab.deploy.quantize import quantize
    from lenetlab.faults.nvf import analysis_steps, neuron_count, nvf_report
    from lenetlab.quant.engine import IntEngine, blas_threads

    model, cfg = lenet
    imgs = np.random.default_rng(0).integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    engine = IntEngine(flat.decode(flat.encode(quantize(to_flat(model, cfg.data), imgs))))
    rec = Recorder()
    with blas_threads(1):
        rep = nvf_report(engine, imgs[:1], validate=1, grid=2, progress=rec, on_total=rec.set_total)
        plain = nvf_report(engine, imgs[:1], validate=1, grid=2)
    n = neuron_count(engine)
    assert n == len(rep["neurons"]) == 6 + 16 + 120 + 84 + 10
    # one step per input unit of conv2/dense1/dense2/dense3 (its critical range), per neuron, per neuron measured
    assert rec.totals == [analysis_steps(engine) + n] == [6 * 14 * 14 + 16 * 5 * 5 + 120 + 84 + 2 * n]
    assert sum(rec.steps) == rec.totals[0] and all(k > 0 for k in rec.steps) and len(rec.steps) > 100
    assert json.dumps(rep, sort_keys=True) == json.dumps(plain, sort_keys=True)   # in parts: the same numbers


@pytest.fixture(scope="module")
def run_dir(lenet, tmp_path_factory):
    from lenetlab import rundir

    model, cfg = lenet
    d = tmp_path_factory.mktemp("progress") / "run"
    d.mkdir()
    rundir.save_config(d, cfg)
    rundir.save_model(d, model, cfg)
    return d


@pytest.fixture
def digits(monkeypatch):
    """40 random 28x28 "test images" in place of the dataset (its loading would cost more than the tests)."""
    from lenetlab.data import datasets

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=40).astype(np.uint8)
    monkeypatch.setattr(datasets, "load_raw", lambda name, data_dir=None: (x, y, x, y))
    return x, y


def test_parity_reports_every_runtime_batch(run_dir, digits, monkeypatch):
    from lenetlab.deploy import export
    from lenetlab.deploy.runtime import run
    from lenetlab.rundir import load_model

    rec = Recorder()
    monkeypatch.setattr(export, "PARITY_BATCH", 16)
    r = export.parity(run_dir, limit=36, progress=rec, on_total=rec.set_total)
    assert rec.totals == [36] and rec.steps == [16, 16, 4] and r["images"] == 36
    model, cfg = load_model(run_dir)       # one call over every image, as parity did before it reported progress
    got = run(export.build_flat(model, cfg, False), digits[0][:36])
    assert r["runtime_accuracy"] == float((got.argmax(1) == digits[1][:36]).mean())


def test_cascade_reports_every_pass(run_dir, digits, monkeypatch):
    import types

    from lenetlab.cascade.cli import cascade_rows, passes
    from lenetlab.models import macs

    # MAC counting traces the model through torch's dispatch machinery (seconds to import): not tested here
    monkeypatch.setattr(macs, "count_macs", lambda model: types.SimpleNamespace(total=1000))
    rec = Recorder()
    rows, _ = cascade_rows([str(run_dir)], (7, 28), 0.9, limit=20, progress=rec)
    assert sum(rec.steps) == passes(1, (7, 28)) == 3
    assert rows == cascade_rows([str(run_dir)], (7, 28), 0.9, limit=20)[0]


# ---------------------------------------------------------------- reproduce: cells
class _Demo:
    """A three-cell experiment that knows its cell count."""

    name = "progress-demo"
    paper = "none"
    accepts_options = False
    order = 0

    def settings(self, full, tiny=False):
        return {"cells": 3}

    def run(self, ctx):
        from lenetlab.experiments.base import Result

        ctx.expect_cells(3)
        values = [ctx.cells.get_or_run(k, lambda k=k: {"v": k}) for k in "abc"]
        return Result(self.name, self.paper, ctx.mode, {}, metrics={"cells": len(values)})


def test_reproduce_reports_cells_run_and_reused(tmp_path, monkeypatch):
    from lenetlab import registry
    from lenetlab.experiments.base import Cells, reproduce

    real = registry.get
    monkeypatch.setattr(registry, "get", lambda kind, name: _Demo if (kind, name) == ("experiment", _Demo.name)
                        else real(kind, name))
    rec = Recorder()
    reproduce(_Demo.name, tmp_path / "demo", progress=rec)
    assert rec.starts == [("progress-demo cells", None, 0)] and rec.totals == [3] and rec.steps == [1, 1, 1]
    again = Recorder()      # continued: the cells on record count as done, nothing is run
    reproduce(_Demo.name, tmp_path / "demo", progress=again)
    assert again.starts == [("progress-demo cells", None, 3)] and again.totals == [3] and again.steps == []
    seen = []
    cells = Cells(tmp_path / "c.jsonl", on_cell=seen.append)
    cells.get_or_run("x", lambda: {"v": 1})
    cells.get_or_run("x", lambda: {"v": 2})
    assert seen == ["x"]
