"""One base class for paper reproductions: ``run(ctx) -> Result`` with claims.

Each paper gets one module in ``lenetlab.experiments`` registering an
:class:`Experiment` under its short name (``lenetlab reproduce NAME``). The
experiment computes every claim from the data it just produced: a
:class:`Claim` carries the paper's statement, what we measured and whether
it is supported - ``False`` is a valid, reportable outcome.

Work is split into cells (one training run, one noise level, ...) recorded
in ``cells.jsonl`` as they finish (:class:`Cells`), so an interrupted
``reproduce`` continues where it stopped. An experiment may hand its
independent cells to :meth:`Cells.prefetch`: with a runner (:class:`RayCells`,
``reproduce --backend ray``) they run side by side as Ray tasks, finished ones
are journalled at once in ``cells.ready.jsonl`` and move to ``cells.jsonl`` in
the order the experiment asks for them, so the files are those of a serial
run; without one each cell runs when asked for. ``run.json`` records the mode and
settings the cells belong to; cells recorded under other settings are
discarded rather than mixed in. ``result.json`` carries a ``config_hash``
(:func:`config_hash`) that ``lenetlab reproduce all`` uses to skip finished
experiments.

Clock readings live apart, so that two runs give the same ``result.json``,
``cells.jsonl`` and ``report.md`` byte for byte: a cell returns what it read
off the clock under the key ``"timings"`` (:data:`TIMINGS`), which
:class:`Cells` journals in ``timings.jsonl`` beside ``cells.jsonl``; an
experiment puts tables, claims, figures, notes and metrics computed from clock
readings into ``Result.timings`` (:class:`Timings`). ``reproduce`` writes those
and the wall time to ``timings.json`` and ``timings.md`` - measured on this
machine, they vary run to run.

Example::

    from lenetlab.experiments import reproduce
    result = reproduce("abs", out="runs/abs")          # quick mode
    [c.supported for c in result.claims]
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lenetlab.determinism import BLAS_THREADS, REPRODUCE_THREADS, machine_info, pinned_threads
from lenetlab.errors import LenetlabError
from lenetlab.experiments.stats import supported_of, verdict_of
from lenetlab.fileio import JsonlJournal, atomic_write_json

READY = "cells.ready.jsonl"    # cells a runner finished that the experiment has not asked for yet (see Cells)
LEGACY_RULE = "(legacy: single-seed check)"   # the rule of a claim built the old way, not yet on stats


@dataclass
class Claim:
    """One claim of a paper and its verdict: ``"supported"``, ``"not supported"`` or ``"inconclusive"``.

    Build claims with :func:`lenetlab.experiments.stats.make_claim`, which fills every field from a rule
    and an interval (docs/claims.md). The old form ``Claim(name, statement, measured, supported)`` still
    works: its verdict is derived from ``supported`` and its rule reads :data:`LEGACY_RULE`. ``supported``
    is always the verdict as a flag (True / False / None for inconclusive), for older readers."""

    name: str
    statement: str            # what the paper says
    measured: str             # what this run measured, with numbers
    supported: bool | None = None   # derived from ``verdict`` when that is given
    rule: str = LEGACY_RULE   # how the verdict is decided, in words (with how the interval was computed)
    seeds: int | list[int] | str | None = None   # training seeds (count or list); "n/a": pure counting
    test_images: int | None = None                # test images behind the estimate, where it has any
    estimate: float | None = None
    interval: list[float | None] | None = None    # [lo, hi] at 95%; None inside: unbounded
    verdict: str = ""         # "" -> derived from ``supported``

    def __post_init__(self) -> None:
        flag = None if self.supported is None else bool(self.supported)
        if not self.verdict:
            self.verdict = verdict_of(flag)
        elif self.supported is not None and supported_of(self.verdict) != flag:
            raise ValueError(f"claim {self.name!r}: supported={flag} contradicts verdict {self.verdict!r}")
        self.supported = supported_of(self.verdict)
        if self.interval is not None:
            if len(self.interval) != 2:
                raise ValueError(f"claim {self.name!r}: interval must be [lo, hi], got {self.interval!r}")
            self.interval = [None if x is None else float(x) for x in self.interval]


def _claims_of(items: list[dict[str, Any]]) -> list[Claim]:
    claim_keys = set(Claim.__dataclass_fields__)   # files older than a field still load
    return [Claim(**{k: v for k, v in c.items() if k in claim_keys}) for c in items]


TIMINGS = "timings"   # the key of a cell's clock readings (see Cells), and the stem of the files that hold them
TIMINGS_NOTE = "measured on this machine, they vary run to run"


@dataclass
class Timings:
    """What a run computed from clock readings (wall times, latencies, time per step) and the claims decided by
    them: written to ``timings.json`` / ``timings.md``, never to ``result.json`` or ``report.md``, so those are
    the same in every run. Figures are paths relative to the output dir, like :attr:`Result.figures`."""

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Timings:
        d = {k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__}
        d["claims"] = _claims_of(d.get("claims", []))
        return cls(**d)

    def __bool__(self) -> bool:
        return bool(self.tables or self.claims or self.figures or self.notes or self.metrics)


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
    # headline numbers, flat: what ``lenetlab sweep`` can report and optimise (metric = "metrics.NAME")
    metrics: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0                   # in timings.json, not result.json
    config_hash: str = ""                       # set by :func:`reproduce`
    timings: Timings = field(default_factory=Timings)   # in timings.json, not result.json

    def to_dict(self) -> dict[str, Any]:
        """Everything, clock readings included (:meth:`record` and :meth:`timings_record` split it in two)."""
        return asdict(self)

    def record(self) -> dict[str, Any]:
        """What ``result.json`` holds: no clock reading, so it is the same in every run."""
        d = self.to_dict()
        del d["wall_seconds"], d[TIMINGS]
        return d

    def timings_record(self) -> dict[str, Any]:
        """What ``timings.json`` holds: the wall time and :attr:`timings` (measured on this machine)."""
        return {"experiment": self.experiment, "mode": self.mode, "note": f"clock readings: {TIMINGS_NOTE}",
                "wall_seconds": round(self.wall_seconds, 3), **asdict(self.timings)}

    @property
    def all_claims(self) -> list[Claim]:
        """The claims and those decided from clock readings (:attr:`Timings.claims`)."""
        return [*self.claims, *self.timings.claims]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """Inverse of :meth:`to_dict` (also reads a ``result.json``: no clock readings); unknown keys are
        ignored."""
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in known}
        d["claims"] = _claims_of(d.get("claims", []))
        d[TIMINGS] = Timings.from_dict(d.get(TIMINGS) or {})
        return cls(**d)

    @classmethod
    def load(cls, out: str | Path) -> Result:
        """The result in directory ``out``: its ``result.json`` with the clock readings of its ``timings.json``
        (where that is missing or unreadable: none, wall time 0)."""
        out = Path(out)
        r = cls.from_dict(json.loads((out / "result.json").read_text()))
        try:
            t = json.loads((out / f"{TIMINGS}.json").read_text())
            r.wall_seconds = float(t.get("wall_seconds", 0.0))
            r.timings = Timings.from_dict(t)
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        return r


def timing(row: dict[str, Any], name: str, default: Any = None) -> Any:
    """Clock reading ``name`` of a cell: ``row["timings"][name]`` (cells recorded before the clock readings moved
    to timings.jsonl still hold it in the value itself)."""
    return (row.get(TIMINGS) or {}).get(name, row.get(name, default))


class CellRunner:
    """Where :meth:`Cells.prefetch` runs cells: ``submit(fn) -> handle``, ``wait(handles) -> finished ones``
    (at least one), ``result(handle) -> value`` (raising the cell's error). :class:`RayCells` is the one
    there is: cells as Ray tasks."""

    def submit(self, fn: Callable[[], dict[str, Any]]) -> Any:
        raise NotImplementedError

    def wait(self, handles: list[Any]) -> list[Any]:
        raise NotImplementedError

    def result(self, handle: Any) -> dict[str, Any]:
        raise NotImplementedError

    def cancel(self, handles: list[Any]) -> None:
        """Stop these cells (the experiment ended without asking for them, e.g. it failed)."""

    def close(self) -> None:
        pass


def _cell_task(fn: Callable[[], dict[str, Any]], threads: int, deterministic: bool) -> dict[str, Any]:
    """One cell in a Ray worker, under the thread count and determinism setting the experiment had where it
    asked for the cell, and with clock readings kept apart, as in the experiment's own process."""
    from lenetlab.rundir import clock_apart

    with pinned_threads(threads, deterministic=deterministic), clock_apart():
        return dict(fn())


class RayCells(CellRunner):
    """Cells as Ray tasks of one CPU each: on the Ray instance this process belongs to (an experiment that is
    itself a Ray task), on the cluster at ``address``, or on a fresh local instance with every CPU. A task
    that waits on its cells gives its CPU back to them meanwhile (Ray's rule for a blocked task)."""

    def __init__(self, address: str | None = None) -> None:
        from lenetlab.sweep.backends import ray_init

        self.ray, self.started = ray_init(None, address)
        self.task = self.ray.remote(num_cpus=1, max_retries=0)(_cell_task)

    def submit(self, fn: Callable[[], dict[str, Any]]) -> Any:
        import torch

        return self.task.remote(fn, torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())

    def wait(self, handles: list[Any]) -> list[Any]:
        return self.ray.wait(handles, num_returns=1)[0]

    def result(self, handle: Any) -> dict[str, Any]:
        from lenetlab.sweep.backends import RayLost, ray_result

        try:   # the cell's own error is raised as if it had run here
            return ray_result(self.ray, handle)
        except RayLost as e:                               # a worker or node died
            raise LenetlabError(f"a cell's Ray task was lost: {e}") from None

    def cancel(self, handles: list[Any]) -> None:
        for ref in handles:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


class Cells:
    """Append-only JSONL of finished work units, keyed by a string; survives interruption.

    A cell's clock readings (what ``fn`` returns under the key ``"timings"``: seconds, latencies, ...) are
    journalled apart, in ``timings.jsonl`` beside ``cells.jsonl`` (``timings_path``), so ``cells.jsonl`` is the
    same in every run. They are appended first: a cell on record has its readings on record too (a kill between
    the two appends only leaves readings of a cell that is computed again, whose new readings then count).
    :meth:`get_or_run` returns the value with its readings put back under ``"timings"``; :attr:`rows` holds the
    values as ``cells.jsonl`` has them, :attr:`timings` the readings by key."""

    def __init__(self, path: Path, timings_path: Path | None = None,
                 on_cell: Callable[[str], None] | None = None, runner: CellRunner | None = None):
        self.path = Path(path)
        self.runner = runner        # None: every cell runs here, when asked for; else prefetched cells run on it
        self.on_cell = on_cell      # called with the key of each cell run and recorded (not those read back)
        self.timings_path = Path(timings_path) if timings_path else self.path.with_name(f"{TIMINGS}.jsonl")
        # the journal drops a line cut short by a kill, and never glues the next cell onto it
        self._journal = JsonlJournal(self.path)
        self._clock = JsonlJournal(self.timings_path)
        self.rows: dict[str, dict[str, Any]] = {}
        for row in self._journal.read():
            if "key" in row and "value" in row:
                self.rows[row["key"]] = row["value"]
        self.timings: dict[str, dict[str, Any]] = {}
        for row in self._clock.read():
            if "key" in row and isinstance(row.get(TIMINGS), dict):
                self.timings[row["key"]] = row[TIMINGS]      # the last readings of a key count
        # cells a runner finished before the experiment asked for them: journalled at once (a kill loses none),
        # moved to cells.jsonl in the order the experiment asks, so cells.jsonl is the same on every runner
        self._ready_journal = JsonlJournal(self.path.with_name(READY))
        self.ready: dict[str, dict[str, Any]] = {}
        for row in self._ready_journal.read():
            if "key" in row and isinstance(row.get("value"), dict) and row["key"] not in self.rows:
                self.ready[row["key"]] = row["value"]
        self._flight: dict[Any, str] = {}       # runner handle -> key
        self._failed: dict[str, BaseException] = {}   # cells that failed on the runner, raised when asked for
        self.remote = 0                          # cells this object had run on the runner

    def prefetch(self, items: Iterable[tuple[str, Callable[[], dict[str, Any]]]]) -> None:
        """Start the cells ``items`` ((key, fn) pairs, independent of each other) on the runner, if there is
        one, so that they run side by side; :meth:`get_or_run` then waits for each. Cells on record, finished
        or already started are skipped. Without a runner this does nothing (each cell runs when asked for).
        ``fn`` travels to another process: it must not hold the context, only what the cell needs."""
        if self.runner is None:
            return
        started = set(self._flight.values())
        for key, fn in items:
            if key in self.rows or key in self.ready or key in started or key in self._failed:
                continue
            self._flight[self.runner.submit(fn)] = key
            started.add(key)
            self.remote += 1

    def _collect(self, key: str) -> None:
        """Wait until the runner has finished cell ``key``, journalling every cell it finishes meanwhile (a
        cell that failed keeps its error until the experiment asks for it)."""
        while key in self._flight.values():
            for handle in self.runner.wait(list(self._flight)):
                k = self._flight.pop(handle)
                try:
                    value = dict(self.runner.result(handle))
                except Exception as e:
                    self._failed[k] = e
                    continue
                self._ready_journal.append({"key": k, "value": value})
                self.ready[k] = value

    def cancel(self) -> None:
        """Stop the cells still running on the runner (the experiment is over; they were not asked for)."""
        if self._flight:
            self.runner.cancel(list(self._flight))
            self._flight.clear()

    def discard_ready(self) -> None:
        """Forget the finished-but-unasked cells (the experiment is over: they were not part of it)."""
        self.ready.clear()
        self._ready_journal.path.unlink(missing_ok=True)

    def get_or_run(self, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self.rows:
            if key in self._flight.values():
                self._collect(key)
            if key in self._failed:
                raise self._failed.pop(key)
            value = dict(self.ready.pop(key)) if key in self.ready else dict(fn())
            clock = value.pop(TIMINGS, None)
            if clock is not None:
                self._clock.append({"key": key, TIMINGS: clock})
                self.timings[key] = clock
            self._journal.append({"key": key, "value": value})
            self.rows[key] = value
            if self.on_cell:
                self.on_cell(key)
        value = self.rows[key]
        return {**value, TIMINGS: self.timings[key]} if key in self.timings else value


@dataclass
class Context:
    out: Path
    full: bool
    cells: Cells
    log: Callable[[str], None]
    tiny: bool = False        # tests only: the smallest grid that runs every code path
    options: dict[str, Any] = field(default_factory=dict)   # setting overrides (sweeps); see resolve_settings
    progress: Any = None      # the cells' progress bar (a lenetlab.progress.Bar), where reproduce was given one

    def expect_cells(self, n: int) -> None:
        """The number of cells this run records in all (those already on record included), for an experiment
        that knows it: the progress bar then shows done/total and an ETA instead of cells done and the time."""
        if self.progress is not None:
            self.progress.set_total(n)

    @property
    def mode(self) -> str:
        return "tiny" if self.tiny else ("full" if self.full else "quick")

    def resolve_settings(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """``defaults`` (the mode's settings) with this run's overrides applied. An experiment that reads
        its settings through this (``s = ctx.resolve_settings(settings(ctx.full, ctx.tiny))``) and sets
        ``accepts_options = True`` can be swept over them (``lenetlab sweep``, kind = "experiment")."""
        return _apply_options(defaults, self.options)


def _apply_options(defaults: dict[str, Any], options: dict[str, Any] | None) -> dict[str, Any]:
    unknown = sorted(set(options or {}) - set(defaults))
    if unknown:
        raise LenetlabError(f"unknown experiment setting {unknown[0]!r}; valid: {', '.join(defaults)}")
    return {**defaults, **(options or {})}


class Experiment:
    """Subclasses set ``name``, ``paper``, ``claims_checked`` and implement :meth:`run`."""

    name = ""
    paper = ""            # citation, as in the method note docs/papers/<name>.md
    description = ""
    accepts_options = False   # True once run() reads its settings through ctx.resolve_settings
    order = 0                 # ``reproduce all`` runs (and reports) experiments by (order, name)
    cost = 1.0                # quick mode's rough share of CPU time: ``reproduce all --jobs`` starts the costliest
                              # first where no earlier run's wall time is on record (scheduling only)

    def run(self, ctx: Context) -> Result:
        raise NotImplementedError

    def settings(self, full: bool, tiny: bool = False) -> dict[str, Any]:
        """The grid this mode runs. Default: the ``settings(full, tiny)`` function beside the class
        (every experiment module defines one); used for the config hash and ``run.json``."""
        fn = getattr(sys.modules[type(self).__module__], "settings", None)
        return fn(full, tiny) if callable(fn) else {}


def _mode(full: bool, tiny: bool) -> str:
    return "tiny" if tiny else ("full" if full else "quick")


def config_hash(name: str, full: bool = False, tiny: bool = False, options: dict[str, Any] | None = None) -> str:
    """Content hash of what an experiment's result depends on: name, mode, settings (with ``options``
    applied), lenetlab version and the source of the experiment's module (a code change re-runs it;
    finished cells are reused)."""
    from lenetlab import __version__
    from lenetlab.registry import get

    cls = get("experiment", name)
    try:
        source = inspect.getsource(sys.modules[cls.__module__])
    except (OSError, TypeError):   # no source (frozen build): the version stands in for it
        source = ""
    key = {"experiment": name, "mode": _mode(full, tiny), "torch_threads": REPRODUCE_THREADS,
           "blas_threads": BLAS_THREADS,
           "settings": _apply_options(cls().settings(full, tiny), options),
           "lenetlab": __version__, "source": hashlib.sha256(source.encode()).hexdigest()}
    blob = json.dumps(key, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def reproduce(name: str, out: str | Path, full: bool = False, force: bool = False,
              log: Callable[[str], None] | None = None, tiny: bool = False,
              options: dict[str, Any] | None = None, progress: Any = None, runner: CellRunner | None = None
              ) -> Result:
    """Run experiment ``name`` into ``out``; writes result.json and report.md (+ figures), and the clock readings
    apart: timings.json and timings.md (with the cells' timings.jsonl).

    ``runner``: where the cells an experiment prefetches run side by side (:class:`RayCells`: Ray tasks); the
    files written are the same as without one.

    ``options`` override settings of the mode's grid (only for experiments with ``accepts_options``).
    ``progress``: a :class:`lenetlab.progress.Bar` (or an object with its ``start``, ``set_total`` and call)
    told about the cells: ``start`` with the cells already on record, a call per cell run and recorded, and
    the total where the experiment knows it (:meth:`Context.expect_cells`)."""
    from lenetlab.experiments.report import write_report
    from lenetlab.registry import get

    cls = get("experiment", name)
    # absolute for a runner: its workers (other processes, other machines) do not share this one's cwd
    out = Path(out).resolve() if runner is not None else Path(out)
    if out.exists() and not out.is_dir():
        raise LenetlabError(f"{out} exists and is not a directory")
    log = log or (lambda s: None)
    if options and not cls.accepts_options:
        raise LenetlabError(f"experiment {name!r} takes no setting overrides yet (its run() must read them "
                            "through ctx.resolve_settings and set accepts_options = True)")
    settings = _apply_options(cls().settings(full, tiny), options)
    cells_path = out / "cells.jsonl"
    run = {"experiment": name, "mode": _mode(full, tiny), "settings": json.loads(json.dumps(settings, default=repr)),
           # the numbers must not depend on the machine's core count (lenetlab.determinism)
           "determinism": {"torch_threads": REPRODUCE_THREADS, "blas_threads": BLAS_THREADS,
                           "deterministic_algorithms": True}}
    # finished cells on record, or finished by a runner but not yet asked for (a kill in between): either kind
    # belongs to the settings in run.json
    if (cells_path.exists() or (out / READY).exists()) and (out / "run.json").exists() and not force:
        before = json.loads((out / "run.json").read_text())
        if before != run:   # e.g. quick cells must not be reused by --full
            log(f"{out}: the finished cells were recorded in {before.get('mode')} mode with other settings; "
                "starting over")
            force = True
    timings_path = out / f"{TIMINGS}.jsonl"
    if force:
        for p in (cells_path, timings_path, out / READY):
            if p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run.json", run)
    cells = Cells(cells_path, timings_path, runner=runner)
    if progress is not None:
        progress.start(f"{name} cells", total=None, done=len(cells.rows))
        cells.on_cell = lambda key: progress(1)
    ctx = Context(out, full, cells, log, tiny, dict(options or {}), progress)
    t0 = time.perf_counter()
    # the training runs inside keep their clock readings in timings.jsonl files of their own
    from lenetlab.train.trainer import clock_apart
    try:
        with pinned_threads(REPRODUCE_THREADS) as pinned, clock_apart():
            result = cls().run(ctx)
    finally:
        cells.cancel()
    cells.discard_ready()
    result.wall_seconds = time.perf_counter() - t0
    if runner is not None:
        result.timings.metrics = {**result.timings.metrics, "cells_on_runner": cells.remote}
        result.timings.notes = [*result.timings.notes, f"{cells.remote} cell(s) ran as {type(runner).__name__} "
                                "tasks side by side; the rest (on record, or not prefetched) here, in turn."]
    result.config = {**result.config, "determinism": pinned}
    machine = machine_info()
    result.timings.metrics = {**result.timings.metrics, "machine": machine}
    result.timings.notes = [*result.timings.notes, f"Machine: {machine['cpu']} ({machine['cpus']} CPUs; instruction "
                            f"sets {', '.join(machine['cpu_flags']) or 'unknown'}; ATen CPU capability "
                            f"{machine['aten_cpu_capability']}), Python {machine['python']}, torch {machine['torch']}"
                            + (" - this process's machine; the cells ran on the runner's workers" if runner is not None
                               else "") + "."]
    result.notes = [*result.notes, f"Ran with {pinned['torch_threads']} torch threads, {pinned['blas_threads']} NumPy "
                    "BLAS thread and deterministic algorithms, whatever the machine's core count, so the numbers do "
                    "not depend on it."]
    result.config_hash = config_hash(name, full, tiny, options)
    # result.json last: ``reproduce all`` skips an experiment whose result.json is there, so everything else
    # must already be
    atomic_write_json(out / f"{TIMINGS}.json", result.timings_record())
    write_report(result, out)
    atomic_write_json(out / "result.json", result.record())
    return result
