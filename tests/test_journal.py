"""The one append-only JSONL journal (lenetlab.fileio.JsonlJournal) and its three users: experiment cells,
sweep trials, run metrics. A kill mid-append leaves a cut last line; the next record must never be glued
onto it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lenetlab.experiments.base import Cells
from lenetlab.fileio import JsonlJournal
from lenetlab.rundir import METRICS, append_metrics, truncate_metrics


def test_append_after_a_cut_line_starts_a_fresh_line(tmp_path):
    j = JsonlJournal(tmp_path / "j.jsonl")
    j.append({"k": 1})
    with open(j.path, "ab") as f:
        f.write(b'{"k": 2, "val')                        # a kill landed mid-line
    assert j.read() == [{"k": 1}]
    j.append({"k": 3})
    assert j.read() == [{"k": 1}, {"k": 3}]
    assert j.path.read_bytes() == b'{"k": 1}\n{"k": 3}\n'


def test_a_whole_record_missing_its_newline_is_kept(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"k": 1}\n{"k": 2}')                # e.g. written by an editor without a final newline
    j = JsonlJournal(path)
    assert j.read() == [{"k": 1}, {"k": 2}]
    j.append({"k": 3})
    assert j.read() == [{"k": 1}, {"k": 2}, {"k": 3}]


def test_a_fragment_longer_than_the_read_block_is_cut(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"k": 1}\n' + b'{"k": "' + b"x" * 200_000)
    j = JsonlJournal(path)
    j.append({"k": 2})
    assert path.read_bytes() == b'{"k": 1}\n{"k": 2}\n'
    path.write_bytes(b'{"k": "' + b"x" * 200_000)         # no newline anywhere: the whole file is a fragment
    j.append({"k": 3})
    assert path.read_bytes() == b'{"k": 3}\n'


def test_rewrite_is_whole(tmp_path):
    j = JsonlJournal(tmp_path / "sub" / "j.jsonl")
    assert j.read() == []
    for i in range(5):
        j.append({"i": i})
    j.rewrite([r for r in j.read() if r["i"] % 2 == 0])
    assert j.read() == [{"i": 0}, {"i": 2}, {"i": 4}]
    assert not [p for p in j.path.parent.iterdir() if p.name != "j.jsonl"]   # no temporary file left


def test_cells_keep_a_cell_finished_after_a_cut_line(tmp_path):
    """Regression: Cells used to append the next finished cell onto the cut fragment, so the following
    resume could parse neither line and lost the finished cell."""
    path = tmp_path / "cells.jsonl"
    c = Cells(path)
    c.get_or_run("a", lambda: {"acc": 0.5})
    with open(path, "a") as f:
        f.write('{"key": "b", "value": {"ac')               # killed while writing cell b
    c = Cells(path)                                      # resume: b is not done
    assert set(c.rows) == {"a"}
    c.get_or_run("b", lambda: {"acc": 0.75})
    c.get_or_run("c", lambda: {"acc": 0.25})
    again = Cells(path)                                  # the next resume sees every finished cell
    assert again.rows == {"a": {"acc": 0.5}, "b": {"acc": 0.75}, "c": {"acc": 0.25}}
    ran = []
    assert again.get_or_run("b", lambda: ran.append(1) or {}) == {"acc": 0.75} and not ran


def test_cells_keep_clock_readings_in_their_own_journal(tmp_path):
    """A cell's "timings" go to timings.jsonl, so cells.jsonl is the same in every run; a resume gets them back.
    They are appended first: a kill between the two appends leaves readings of a cell that is run again, whose
    new readings then count."""
    path = tmp_path / "cells.jsonl"
    c = Cells(path)
    assert c.get_or_run("a", lambda: {"acc": 0.5, "timings": {"seconds": 1.25}}) == {"acc": 0.5,
                                                                                       "timings": {"seconds": 1.25}}
    assert c.get_or_run("n", lambda: {"acc": 0.1}) == {"acc": 0.1}          # a cell without clock readings
    assert path.read_text() == '{"key": "a", "value": {"acc": 0.5}}\n{"key": "n", "value": {"acc": 0.1}}\n'
    assert (tmp_path / "timings.jsonl").read_text() == '{"key": "a", "timings": {"seconds": 1.25}}\n'
    with open(tmp_path / "timings.jsonl", "a") as f:                        # killed between the two appends of b
        f.write('{"key": "b", "timings": {"seconds": 9.0}}\n')
    again = Cells(path)
    ran = []
    assert again.get_or_run("a", lambda: ran.append(1) or {}) == {"acc": 0.5, "timings": {"seconds": 1.25}}
    assert again.get_or_run("b", lambda: {"acc": 0.75, "timings": {"seconds": 2.0}})["timings"] == {"seconds": 2.0}
    assert not ran and Cells(path).timings == {"a": {"seconds": 1.25}, "b": {"seconds": 2.0}}
    assert Cells(path).rows == {"a": {"acc": 0.5}, "n": {"acc": 0.1}, "b": {"acc": 0.75}}


@pytest.mark.slow   # a real SIGKILL of a child process; the cut-line cases above run in-process
def test_cells_survive_a_real_kill(tmp_path):
    """SIGKILL a process appending cells with big values, then resume: every recorded cell is intact and
    the next one lands on its own line."""
    path = tmp_path / "cells.jsonl"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from lenetlab.experiments.base import Cells
        c = Cells(Path({str(path)!r}))
        i = 0
        while True:
            c.get_or_run(str(i), lambda: {{"pad": "x" * 300_000, "i": i}})
            i += 1
    """)
    p = subprocess.Popen([sys.executable, "-c", script])
    try:
        while not path.exists() or path.stat().st_size < 1_500_000:
            assert p.poll() is None, "the writer exited"
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    before = Cells(path).rows
    assert len(before) >= 4
    c = Cells(path)
    c.get_or_run("after", lambda: {"i": -1})
    rows = Cells(path).rows
    assert rows["after"] == {"i": -1} and {k: rows[k] for k in before} == before
    assert all(json.loads(ln) for ln in path.read_text().splitlines())   # every line is a whole record


def test_metrics_truncate_and_append_after_a_cut_line(tmp_path):
    for e in (1, 2, 3):
        append_metrics(tmp_path, {"epoch": e, "loss": 1.0 / e})
    with open(tmp_path / METRICS, "a") as f:
        f.write('{"epoch": 4, "lo')
    truncate_metrics(tmp_path, 2)
    append_metrics(tmp_path, {"epoch": 3, "loss": 0.3})
    rows = [json.loads(ln) for ln in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == 0.3


@pytest.mark.parametrize("user", ["sweep", "metrics"])
def test_every_user_appends_cleanly_after_a_cut_line(tmp_path, user):
    from lenetlab.sweep.journal import Journal

    path = tmp_path / ("trials.jsonl" if user == "sweep" else METRICS)
    path.write_text('{"trial": "a", "epoch": 1}\n{"trial": "b", "ep')
    if user == "sweep":
        j = Journal(path)
        j.append({"trial": "c", "epoch": 2})
        j.close()
    else:
        append_metrics(tmp_path, {"trial": "c", "epoch": 2})
    assert [r["trial"] for r in JsonlJournal(path).read()] == ["a", "c"]
