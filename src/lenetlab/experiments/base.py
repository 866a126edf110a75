"""One base class for paper reproductions: ``run(ctx) -> Result`` with claims.

Each paper gets one module in ``lenetlab.experiments`` registering an
:class:`Experiment` under its short name (``lenetlab reproduce NAME``). The
experiment computes every claim from the data it just produced: a
:class:`Claim` carries the paper's statement, what we measured and whether
it is supported - ``False`` is a valid, reportable outcome.

Work is split into cells (one training run, one noise level, ...) recorded
in ``cells.jsonl`` as they finish (:class:`Cells`), so an interrupted
``reproduce`` continues where it stopped.

Example::

    from lenetlab.experiments import reproduce
    result = reproduce("abs", out="runs/abs")          # quick mode
    [c.supported for c in result.claims]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError
from lenetlab.fileio import atomic_write_json


@dataclass
class Claim:
    name: str
    statement: str            # what the paper says
    measured: str             # what this run measured, with numbers
    supported: bool | None    # None: the run cannot decide (say why in ``measured``)


@dataclass
class Result:
    experiment: str
    paper: str
    mode: str                                   # quick | full
    config: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)   # paths relative to the output dir
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Cells:
    """Append-only JSONL of finished work units, keyed by a string; survives interruption."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:   # a line cut short by a kill
                    continue
                self.rows[row["key"]] = row["value"]

    def get_or_run(self, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self.rows:
            value = fn()
            with open(self.path, "a") as f:
                f.write(json.dumps({"key": key, "value": value}) + "\n")
                f.flush()
            self.rows[key] = value
        return self.rows[key]


@dataclass
class Context:
    out: Path
    full: bool
    cells: Cells
    log: Callable[[str], None]
    tiny: bool = False        # tests only: the smallest grid that runs every code path

    @property
    def mode(self) -> str:
        return "tiny" if self.tiny else ("full" if self.full else "quick")


class Experiment:
    """Subclasses set ``name``, ``paper``, ``claims_checked`` and implement :meth:`run`."""

    name = ""
    paper = ""            # citation, as in PAPERS.md
    description = ""

    def run(self, ctx: Context) -> Result:
        raise NotImplementedError


def reproduce(name: str, out: str | Path, full: bool = False, force: bool = False,
              log: Callable[[str], None] | None = None, tiny: bool = False) -> Result:
    """Run experiment ``name`` into ``out``; writes result.json and report.md (+ figures)."""
    from lenetlab.experiments.report import write_report
    from lenetlab.registry import get

    cls = get("experiment", name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LenetlabError(f"{out} exists and is not a directory")
    cells_path = out / "cells.jsonl"
    if force and cells_path.exists():
        cells_path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, full, Cells(cells_path), log or (lambda s: None), tiny)
    t0 = time.perf_counter()
    result = cls().run(ctx)
    result.wall_seconds = time.perf_counter() - t0
    atomic_write_json(out / "result.json", result.to_dict())
    write_report(result, out)
    return result
