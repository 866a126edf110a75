"""Cells on a runner (``reproduce --backend ray``): prefetched cells run elsewhere, and the files stay those of a
serial run. The journal logic is tested here with in-process runners; the Ray runner itself in
tests/test_reproduce_jobs.py (slow tier: a local Ray instance)."""

from __future__ import annotations

import json
import pickle

import pytest

from lenetlab.experiments import reproduce
from lenetlab.experiments.base import READY, CellRunner, Cells
from test_reproduce_twice import excluded


class PickleRunner(CellRunner):
    """Runs each cell at submit time, in this process, on an unpickled copy of it: what a runner in another
    process would get (plain pickle is stricter than the cloudpickle Ray uses). Finishes every cell at once."""

    copies = True

    def __init__(self) -> None:
        self.done: dict[int, dict] = {}

    def submit(self, fn):
        copy = pickle.loads(pickle.dumps(fn)) if self.copies else fn
        h = len(self.done)
        try:
            self.done[h] = dict(copy())
        except Exception as e:     # raised when the result is asked for, as Ray does
            self.done[h] = e
        return h

    def wait(self, handles):
        return list(handles)

    def result(self, h):
        v = self.done[h]
        if isinstance(v, Exception):
            raise v
        return v


def _cell(key, log):
    def fn():
        log.append(key)
        return {"v": key, "timings": {"s": 1.0}}
    return fn


def test_without_a_runner_prefetch_does_nothing_and_cells_run_when_asked(tmp_path):
    log: list[str] = []
    c = Cells(tmp_path / "cells.jsonl")
    c.prefetch([("a", _cell("a", log)), ("b", _cell("b", log))])
    assert log == [] and c.remote == 0
    assert c.get_or_run("b", _cell("b", log))["v"] == "b" and log == ["b"]


class ThreadlessRunner(PickleRunner):
    copies = False      # closures are fine here: only the journal logic is under test


def test_prefetched_cells_are_journalled_at_once_and_recorded_in_the_order_asked(tmp_path):
    log: list[str] = []
    c = Cells(tmp_path / "cells.jsonl", runner=ThreadlessRunner())
    c.prefetch([(k, _cell(k, log)) for k in ("a", "b", "c")])
    assert log == ["a", "b", "c"] and c.remote == 3
    # ask for c first: a and b finished meanwhile and sit in the ready journal, not in cells.jsonl
    assert c.get_or_run("c", _cell("c", log)) == {"v": "c", "timings": {"s": 1.0}}
    assert [json.loads(x)["key"] for x in (tmp_path / "cells.jsonl").read_text().splitlines()] == ["c"]
    assert sorted(json.loads(x)["key"] for x in (tmp_path / READY).read_text().splitlines()) == ["a", "b", "c"]
    # a kill now, and a new run: a and b are not computed again; cells.jsonl gets them in the order asked
    log.clear()
    boom = lambda: (_ for _ in ()).throw(AssertionError("computed twice"))   # noqa: E731
    c2 = Cells(tmp_path / "cells.jsonl", runner=ThreadlessRunner())
    c2.prefetch([("a", boom), ("b", boom), ("c", boom)])      # all on record or ready: nothing starts
    assert c2.remote == 0
    assert c2.get_or_run("b", boom)["v"] == "b" and c2.get_or_run("a", boom)["v"] == "a"
    assert [json.loads(x)["key"] for x in (tmp_path / "cells.jsonl").read_text().splitlines()] == ["c", "b", "a"]
    assert c2.timings["a"] == {"s": 1.0}                  # clock readings still go to timings.jsonl
    c2.discard_ready()
    assert not (tmp_path / READY).exists()


def test_a_cell_that_fails_on_the_runner_fails_where_it_is_asked_for(tmp_path):
    log: list[str] = []

    def bad():
        raise ValueError("cell broke")

    c = Cells(tmp_path / "cells.jsonl", runner=ThreadlessRunner())
    c.prefetch([("bad", bad), ("good", _cell("good", log))])
    assert c.get_or_run("good", _cell("good", log))["v"] == "good"    # finished beside the failed one: no error
    with pytest.raises(ValueError, match="cell broke"):
        c.get_or_run("bad", bad)
    assert "bad" not in c.rows and list(c.rows) == ["good"]


class CancelRecorder(ThreadlessRunner):
    def __init__(self) -> None:
        super().__init__()
        self.cancelled: list = []

    def wait(self, handles):                 # nothing ever finishes by itself
        raise AssertionError("not waited for")

    def cancel(self, handles):
        self.cancelled += handles


def test_cells_not_asked_for_are_cancelled_when_the_experiment_ends(tmp_path):
    runner = CancelRecorder()
    c = Cells(tmp_path / "cells.jsonl", runner=runner)
    c.prefetch([("a", _cell("a", [])), ("b", _cell("b", []))])
    c.cancel()
    assert sorted(runner.cancelled) == [0, 1] and not c._flight
    c.cancel()                                # nothing left: the runner is not called again
    assert len(runner.cancelled) == 2


def test_finished_but_unasked_cells_of_other_settings_are_not_reused(tmp_path):
    """A kill after a runner finished cells the experiment had not asked for yet leaves them only in
    cells.ready.jsonl; a rerun with other settings (here: tiny after a quick run.json) must start over."""
    fresh = reproduce("lenet5", tmp_path / "fresh", tiny=True)
    out = tmp_path / "stale"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"experiment": "lenet5", "mode": "quick", "settings": {}}))
    bogus = {"test_images": 10, "wrong": [], "test_accuracy": 1.0, "epochs": 1, "train_images": 1}
    (out / READY).write_text(json.dumps({"key": "train/0/1", "value": bogus}) + "\n")
    again = reproduce("lenet5", out, tiny=True)
    assert not (out / READY).exists()
    assert (out / "cells.jsonl").read_bytes() == (tmp_path / "fresh" / "cells.jsonl").read_bytes()
    assert [c.estimate for c in again.claims] == [c.estimate for c in fresh.claims]


def _files(root):
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["lenet5", pytest.param("zo", marks=pytest.mark.slow),
                                  pytest.param("noise", marks=pytest.mark.slow)])
def test_an_experiment_on_a_runner_writes_the_files_of_a_serial_run(tmp_path, name):
    """The cells travel pickled (module-level functions, no context inside) and the files come out the same."""
    runner = PickleRunner()
    reproduce(name, tmp_path / "serial", tiny=True)
    r = reproduce(name, tmp_path / "runner", tiny=True, runner=runner)
    assert r.timings.metrics["cells_on_runner"] >= 1
    a, b = _files(tmp_path / "serial"), _files(tmp_path / "runner")
    assert sorted(a) == sorted(b) and READY not in b
    differ = [rel for rel in a if a[rel].read_bytes() != b[rel].read_bytes()
              and not excluded(rel, tmp_path / "serial")]
    assert not differ, differ
