"""``lenetlab reproduce all``: every registered experiment into one directory, one report.

Each experiment runs in ``DIR/<name>/`` exactly as ``lenetlab reproduce NAME``
would (its own result.json, report.md, figures and resumable cells). An
experiment whose ``result.json`` carries the same config hash
(:func:`lenetlab.experiments.base.config_hash`: name, mode, settings,
lenetlab version, the experiment module's source) is skipped and its stored
result reused, unless ``force``. A failing experiment does not stop the
others: its error goes into the report (and the traceback into
``DIR/<name>/error.txt``) and :func:`reproduce_all` reports it in its outcomes
so the CLI exits non-zero.

At the end ``DIR/report.html`` (self-contained), ``DIR/report.md`` and
``DIR/manifest.json`` (status, hash and claim verdicts per experiment) are written, the same in
every run, and the clock readings apart: ``DIR/timings.json`` (wall time per experiment, the
verdicts of the claims decided from clock readings), ``DIR/timings.md`` and ``DIR/timings.html``
(measured on this machine, they vary run to run). More report content (a robustness matrix, ...)
plugs in through ``sections``.

``jobs`` > 1 runs that many experiments at once, each in a fresh process (``spawn``), longest first
(:func:`_longest_first`). Every experiment still pins its own thread counts
(:mod:`lenetlab.determinism`), so the result files are the same as a serial run's, byte for byte (tested);
only the clock readings differ. On a 2-core machine two at a time wins where an experiment leaves a core
idle (ZO's single-threaded races, compilers, the browser, Python-bound evaluation). ``backend="ray"`` runs
the same experiments as Ray tasks, on a local Ray instance or a cluster (``address``), with the same files
(tested); inside each task the experiment's prefetched cells (seeds x settings) are Ray tasks of their own
(:class:`~lenetlab.experiments.base.RayCells`, :meth:`~lenetlab.experiments.base.Cells.prefetch`).

Example::

    from lenetlab.experiments.suite import reproduce_all
    outcomes = reproduce_all("runs/all", only=["abs"])
    [(o.name, o.status) for o in outcomes]
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError
from lenetlab.experiments.base import Result, config_hash, reproduce
from lenetlab.experiments.report import Section, write_suite_report
from lenetlab.experiments.stats import VERDICTS
from lenetlab.fileio import DISK_FULL, atomic_write_bytes, atomic_write_json


@dataclass
class Outcome:
    name: str
    status: str                  # ran | skipped | failed
    result: Result | None
    error: str | None = None
    seconds: float = 0.0


def verdict_counts(r: Result) -> str:
    """``"3 claims: 1 supported, 1 not supported, 1 inconclusive"`` (verdicts with no claim left out)."""
    counts = [f"{n} {v}" for v in VERDICTS if (n := sum(c.verdict == v for c in r.claims))]
    return f"{len(r.claims)} claim{'s' if len(r.claims) != 1 else ''}" + (": " + ", ".join(counts) if counts else "")


def stored_result(out: Path, expected_hash: str) -> Result | None:
    """The result in ``out/result.json`` if it was produced for ``expected_hash``, else None."""
    path = out / "result.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("config_hash") != expected_hash:
        return None
    return Result.load(out)     # with its clock readings (timings.json)


def _failed(out: Path, name: str, e: BaseException) -> str:
    """Record experiment ``name``'s exception (traceback in ``out/name/error.txt``); its one-line message."""
    msg = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
    try:
        atomic_write_bytes(out / name / "error.txt",
                           "".join(traceback.format_exception(type(e), e, e.__traceback__)).encode())
    except OSError as w:
        if w.errno in DISK_FULL:
            raise
        msg += f" (no traceback file: {w.strerror or w})"   # e.g. a file stands where its folder should be
    return msg


def _in_worker(name: str, out: str, full: bool, force: bool, tiny: bool, quiet: bool,
               watch_parent: bool = True, cells_on_ray: bool = False) -> tuple[str, str | None]:
    """One experiment of a ``jobs`` > 1 run, in its own process: ("ran", None) or ("failed", message).
    ``watch_parent``: end with the process that started this one (a pool's spawned worker; a Ray worker is
    reused across tasks and belongs to Ray). ``cells_on_ray``: the experiment's prefetched cells become Ray
    tasks of their own (the experiment is one)."""
    if watch_parent:
        _exit_with_parent()
    log = (lambda s: None) if quiet else (lambda s: print(f"  [{name}] {s}", flush=True))
    runner = None
    if cells_on_ray:
        from lenetlab.experiments.base import RayCells

        runner = RayCells()
    try:
        reproduce(name, Path(out) / name, full=full, force=force, tiny=tiny, log=log, runner=runner)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise
        return "failed", _failed(Path(out), name, e)
    return "ran", None


def _exit_with_parent() -> None:
    """End this worker at once when the process that started it is gone (killed with SIGKILL, say): an orphan
    would go on writing the experiment's folder while a re-run continues it."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="lenetlab-parent-watch").start()


def _longest_first(names: Sequence[str], out: Path) -> list[str]:
    """``names`` in the order a pool should start them: by the wall time ``out/<name>/timings.json`` recorded
    (a previous run), else by the experiments' ``cost`` hints."""
    from lenetlab.registry import get

    def recorded(n: str) -> float:
        try:
            return float(json.loads((out / n / "timings.json").read_text())["wall_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1.0

    return sorted(names, key=lambda n: (-recorded(n), -get("experiment", n).cost, n))


class _LocalPool:
    """``jobs`` spawned processes (concurrent.futures)."""

    def __init__(self, jobs: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, *args: Any) -> Any:
        return self.pool.submit(_in_worker, *args)

    def wait_one(self, running: dict[Any, Any]) -> list[Any]:
        from concurrent.futures import FIRST_COMPLETED, wait

        return list(wait(running, return_when=FIRST_COMPLETED)[0])

    def result(self, fut: Any) -> tuple[str, str | None]:
        return fut.result()     # a full disk or an interrupt comes out of here

    def close(self, running: dict[Any, Any]) -> None:
        for fut in running:
            fut.cancel()
        self.pool.shutdown(wait=not running, cancel_futures=True)


class _RayPool:
    """Ray tasks of one CPU each, on the cluster at ``address`` or a local instance with ``jobs`` CPUs. Every
    task writes into ``out/<name>/`` itself: on a cluster ``out`` must be a folder every node sees at the same
    path (a shared filesystem)."""

    def __init__(self, jobs: int, address: str | None) -> None:
        from lenetlab.sweep.backends import ray_init

        self.ray, self.started = ray_init(jobs, address)
        self.task = self.ray.remote(num_cpus=1, max_retries=0)(_in_worker)

    def submit(self, *args: Any) -> Any:
        return self.task.remote(*args, watch_parent=False, cells_on_ray=True)

    def wait_one(self, running: dict[Any, Any]) -> list[Any]:
        return self.ray.wait(list(running), num_returns=1)[0]

    def result(self, ref: Any) -> tuple[str, str | None]:
        from lenetlab.sweep.backends import RayLost, ray_result

        try:   # a full disk, say, is the worker's own error and raised as such
            return ray_result(self.ray, ref)
        except RayLost as e:                               # a worker or node died
            return "failed", str(e)

    def close(self, running: dict[Any, Any]) -> None:
        for ref in running:
            self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()


def _run_pool(todo: list[str], out: Path, full: bool, force: bool, tiny: bool, jobs: int,
              log: Callable[[str], None], quiet: bool, progress: Any, backend: str = "local",
              address: str | None = None) -> dict[str, Outcome]:
    """Run ``todo`` ``jobs`` at a time in spawned processes (``backend`` "local") or as Ray tasks ("ray");
    the outcome of each."""
    done: dict[str, Outcome] = {}
    pool = _RayPool(jobs, address) if backend == "ray" else _LocalPool(jobs)
    if backend == "ray":      # Ray workers do not run in this process's cwd (on a cluster, not on this machine)
        out = out.resolve()
    if progress is not None:
        progress.start("experiments", total=len(todo), done=0)
    queue = _longest_first(todo, out)
    running: dict[Any, tuple[str, float]] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                name = queue.pop(0)
                log(f"[{len(done) + len(running) + 1}/{len(todo)}] {name}: started "
                    f"({'tiny' if tiny else 'full' if full else 'quick'} mode, config "
                    f"{config_hash(name, full, tiny)})")
                fut = pool.submit(name, str(out), full, force, tiny, quiet or backend == "ray")
                running[fut] = (name, time.perf_counter())
            for fut in pool.wait_one(running):
                name, t0 = running.pop(fut)
                dt = time.perf_counter() - t0
                status, msg = pool.result(fut)
                if status == "failed":
                    log(f"{name}: FAILED after {dt:.0f} s: {msg} (traceback in {out / name / 'error.txt'})")
                    done[name] = Outcome(name, "failed", None, msg, dt)
                else:
                    r = Result.load(out / name)
                    log(f"{name}: done in {r.wall_seconds:.0f} s, {verdict_counts(r)}")
                    done[name] = Outcome(name, "ran", r, None, r.wall_seconds)
                if progress is not None:
                    progress(1)
    finally:
        pool.close(running)
    return done


def reproduce_all(out: str | Path, full: bool = False, force: bool = False, only: Sequence[str] | None = None,
                  tiny: bool = False, log: Callable[[str], None] | None = None,
                  sections: Sequence[Section] = (), progress: Any = None, jobs: int = 1,
                  quiet_workers: bool = False, backend: str = "local", address: str | None = None) -> list[Outcome]:
    """Run (or reuse) every registered experiment (or those in ``only``) and write the suite report.

    ``progress``: passed to each :func:`~lenetlab.experiments.base.reproduce` (its cells' progress bar); with
    ``jobs`` > 1, a bar of finished experiments. ``jobs``: experiments run at once, each in its own process
    (``quiet_workers``: they print nothing; else their log lines, tagged with the experiment). ``backend``
    "ray": each experiment is a Ray task (one CPU) on the cluster at ``address`` (None: a local Ray instance
    with ``jobs`` CPUs), ``jobs`` of them at once; the tasks write into ``out`` themselves, so on a cluster
    ``out`` must be on a filesystem every node shares. Ray workers print nothing."""
    from lenetlab.registry import get, names

    log = log or (lambda s: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LenetlabError(f"{out} exists and is not a directory")
    registered = names("experiment")
    todo = list(only) if only else registered
    unknown = [n for n in todo if n not in registered]
    if unknown:
        raise LenetlabError(f"unknown experiment {', '.join(map(repr, unknown))}; "
                            f"choose from: {', '.join(registered)}")
    todo = sorted(dict.fromkeys(todo), key=lambda n: (get("experiment", n).order, n))   # summaries last
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 64:
        raise LenetlabError(f"jobs must be an integer from 1 to 64, got {jobs!r}")
    if backend not in ("local", "ray"):
        raise LenetlabError(f"backend must be local or ray, got {backend!r}")
    if address is not None and backend != "ray":
        raise LenetlabError("an address goes with the ray backend")
    out.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    if jobs > 1 or backend == "ray":
        to_run = [n for n in todo if force or stored_result(out / n, config_hash(n, full, tiny)) is None]
        # local: one experiment to run goes to the serial loop below (same files; no process to start)
        if len(to_run) > 1 or (backend == "ray" and to_run):
            for n in todo:
                if n not in to_run:
                    log(f"{n}: skipped, result for config {config_hash(n, full, tiny)} exists "
                        f"({out / n / 'result.json'})")
            ran = _run_pool(to_run, out, full, force, tiny, min(jobs, len(to_run)), log, quiet_workers, progress,
                            backend, address)
            outcomes = [ran[n] if n in ran else
                        Outcome(n, "skipped", stored_result(out / n, config_hash(n, full, tiny))) for n in todo]
            return _finish(outcomes, out, tiny, full, sections)
    for i, name in enumerate(todo):
        tag = f"[{i + 1}/{len(todo)}] {name}"
        h = config_hash(name, full, tiny)
        stored = None if force else stored_result(out / name, h)
        if stored is not None:
            log(f"{tag}: skipped, result for config {h} exists ({out / name / 'result.json'})")
            outcomes.append(Outcome(name, "skipped", stored))
            continue
        log(f"{tag}: running ({'tiny' if tiny else 'full' if full else 'quick'} mode, config {h})")
        t0 = time.perf_counter()
        try:
            r = reproduce(name, out / name, full=full, force=force, tiny=tiny,
                          log=lambda s, tag=tag: log(f"  {tag}: {s}"), progress=progress)
        except KeyboardInterrupt:
            raise
        except Exception as e:   # one broken experiment must not cost the others
            if isinstance(e, OSError) and e.errno in DISK_FULL:
                raise   # but a full disk is no experiment's fault, and the next one could not write either
            dt = time.perf_counter() - t0
            msg = _failed(out, name, e)
            log(f"{tag}: FAILED after {dt:.0f} s: {msg} (traceback in {out / name / 'error.txt'})")
            outcomes.append(Outcome(name, "failed", None, msg, dt))
            continue
        log(f"{tag}: done in {r.wall_seconds:.0f} s, {verdict_counts(r)}")
        outcomes.append(Outcome(name, "ran", r, None, r.wall_seconds))
    return _finish(outcomes, out, tiny, full, sections)


def _finish(outcomes: list[Outcome], out: Path, tiny: bool, full: bool, sections: Sequence[Section]) -> list[Outcome]:
    write_suite_report(outcomes, out, list(sections))
    atomic_write_json(out / "manifest.json", {
        "mode": "tiny" if tiny else ("full" if full else "quick"),
        "experiments": [{"name": o.name, "status": o.status, "error": o.error,
                         "config_hash": o.result.config_hash if o.result else None,
                         "claims": {c.name: c.verdict for c in o.result.claims} if o.result else {}}
                        for o in outcomes]})   # the wall times: timings.json (write_suite_report)
    return outcomes
