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


def reproduce_all(out: str | Path, full: bool = False, force: bool = False, only: Sequence[str] | None = None,
                  tiny: bool = False, log: Callable[[str], None] | None = None,
                  sections: Sequence[Section] = (), progress: Any = None) -> list[Outcome]:
    """Run (or reuse) every registered experiment (or those in ``only``) and write the suite report.

    ``progress``: passed to each :func:`~lenetlab.experiments.base.reproduce` (its cells' progress bar)."""
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
    out.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
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
            msg = f"{type(e).__name__}: {e}".splitlines()[0]
            atomic_write_bytes(out / name / "error.txt", traceback.format_exc().encode())
            log(f"{tag}: FAILED after {dt:.0f} s: {msg} (traceback in {out / name / 'error.txt'})")
            outcomes.append(Outcome(name, "failed", None, msg, dt))
            continue
        log(f"{tag}: done in {r.wall_seconds:.0f} s, {verdict_counts(r)}")
        outcomes.append(Outcome(name, "ran", r, None, r.wall_seconds))
    write_suite_report(outcomes, out, list(sections))
    atomic_write_json(out / "manifest.json", {
        "mode": "tiny" if tiny else ("full" if full else "quick"),
        "experiments": [{"name": o.name, "status": o.status, "error": o.error,
                         "config_hash": o.result.config_hash if o.result else None,
                         "claims": {c.name: c.verdict for c in o.result.claims} if o.result else {}}
                        for o in outcomes]})   # the wall times: timings.json (write_suite_report)
    return outcomes
