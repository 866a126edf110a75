'''Grid and random sweeps over training configs (or any function), on a local pool or a Ray cluster.

``lenetlab sweep SWEEP.toml --backend local|ray [--address ADDR] [--workers N] [--out DIR]``

Every finished trial is appended - one JSON line, flushed and fsynced - to
``DIR/trials.jsonl``::

    {"trial": "3f9c0a1b2d4e", "index": 4, "params": {"train.lr": 0.004, "train.seed": 1}, "seed": 1,
     "metrics": {"test_accuracy": 0.9312, ...}, "seconds": 6.1, "backend": "local", "config": {...}}

``trial`` is a hash of everything the result depends on (for training: the
whole resolved config), so re-running the same command after a kill (SIGTERM,
SIGKILL, a lost node) skips every trial already in the file and runs the rest;
a line cut short by the kill is dropped. Editing the sweep file and re-running
keeps the trials that did not change. A trial that raises is reported (and
listed in ``DIR/errors.jsonl``) and retried by the next run; the sweep goes on.

Same seeds, same numbers on both backends: :func:`~lenetlab.sweep.trials.run_trial`
is the one function both run, with torch on one thread.

The sweep file
--------------

.. code-block:: toml

    [sweep]
    kind = "train"            # train (default) | experiment | function
    name = "lr-activation"    # default: the file name
    metric = "test_accuracy"  # what the summary ranks by; goal = "max" (default) | "min"
    save_runs = false         # true: keep each trial's run directory in DIR/runs/<trial>/

    [base]                    # kind = train: a training config, as for `lenetlab train --config`
    preset = "fast"
    model = { name = "lenet5" }
    data = { train_subset = 2000, test_subset = 1000 }
    train = { epochs = 1 }

    [grid]                    # dotted config keys -> lists; every combination is one trial
    "model.activation" = ["relu", "abs"]
    "train.seed" = [0, 1]

    [random]                  # n samples (drawn with `seed`), each combined with every grid point
    n = 4
    seed = 0
    "train.lr" = { log_uniform = [1e-4, 1e-2] }   # also: uniform, int_uniform (ends included), choice = [...]

A ``kind = "experiment"`` sweep runs ``experiment = "NAME"`` (``mode =
"quick"`` | ``"full"`` | ``"tiny"``) once per point, with ``[base]`` and the
swept values overriding keys of the experiment's settings (plain keys, e.g.
``seeds = [[0], [1]]``), each into ``DIR/runs/<trial>/``; it reports claim
verdicts (``claims_supported``, ...) and the experiment's headline numbers as
``metrics.NAME`` (e.g. ``metric = "metrics.noisy.noise_accuracy"`` for the
robustness matrix). Every registered experiment reads its settings through
``ctx.resolve_settings`` (``accepts_options = True``); one that does not is
refused up front.

A ``kind = "function"`` sweep calls ``function = "package.module:name"`` with
``[base]`` and the swept values as keyword arguments (plain, undotted keys);
it returns a dict of metrics. :func:`lenetlab.sweep.trials.toy` is a
ready-made cheap one.

Ray: ``pip install 'lenetlab[ray]'`` on every node; ``--address auto`` on a
cluster node (or ``ray://HEAD:10001``); without ``--address`` a local Ray
instance with ``--workers`` CPUs is started and stopped.

Example::

    from lenetlab.sweep import load, run_sweep
    summary = run_sweep(load("examples/sweeps/lr_activation.toml"), "runs/sweep", backend="local", workers=2)
'''

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError
from lenetlab.fileio import JsonlJournal
from lenetlab.sweep.backends import BACKENDS, run_local, run_ray
from lenetlab.sweep.journal import Journal
from lenetlab.sweep.spec import Sweep, Trial, load, parse

__all__ = ["Sweep", "Trial", "load", "parse", "run_sweep", "read_trials"]


def run_sweep(sweep: Sweep, out: str | os.PathLike, backend: str = "local", workers: int | None = None,
              address: str | None = None, log: Callable[[str], None] | None = None,
              loggers: Sequence[str] = (), device: str = "cpu") -> dict[str, Any]:
    """Run every trial of ``sweep`` not yet in ``out/trials.jsonl``; returns a summary dict
    (``total``, ``skipped``, ``ran``, ``failed``, ``best``, ``rows`` = every finished trial's line).

    ``loggers``: ``tensorboard`` and/or ``mlflow`` (:mod:`lenetlab.train.loggers`): each trial that runs is
    logged as its own run, in ``out/tensorboard/<trial>/`` and in ``out/mlruns`` (experiment: the sweep's name,
    run: the trial id).

    ``device`` (:mod:`lenetlab.devices`): where training trials train (``lenetlab sweep`` passes ``auto``); not
    part of a trial's id. Ray tasks ask for CPUs only, and Ray hides the GPUs from them: there ``auto`` is the
    CPU."""
    from lenetlab.train import loggers as tracking

    log = log or (lambda s: None)
    loggers = tracking.parse_names(list(loggers))
    tracking.require(*loggers)
    if backend not in BACKENDS:
        raise LenetlabError(f"unknown backend {backend!r}; choose from: {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise LenetlabError("--workers must be >= 1")
    if address and backend != "ray":
        raise LenetlabError("--address goes with --backend ray")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LenetlabError(f"{out} exists and is not a directory")
    trials = sweep.trials()                     # validates every trial before anything runs
    journal = Journal(out / "trials.jsonl")
    try:
        todo = [t for t in trials if t.id not in journal]
        if sweep.kind == "experiment" or (sweep.save_runs and sweep.kind == "train"):
            for t in todo:   # where the trial writes its run (or experiment) directory; not part of its id
                t.payload = {**t.payload, "out": str((out / "runs" / t.id).resolve())}
        if sweep.kind == "train" and device != "cpu":
            for t in todo:
                t.payload = {**t.payload, "device": device}
        if loggers and todo:
            for t in todo:
                t.payload = {**t.payload, "loggers": {"names": loggers, "root": str(out.resolve()), "trial": t.id,
                                                      "experiment": sweep.name}}
            if "mlflow" in loggers:   # made here, once: parallel trials would each create one of that name
                tracking.experiment_id(tracking.client(out / tracking.SUBDIRS["mlflow"]), sweep.name)
        log(f"sweep {sweep.name}: {len(trials)} trials, {len(trials) - len(todo)} already in "
            f"{journal.path}, {len(todo)} to run on {backend}")
        failed = 0
        if todo:
            n = workers or min(len(todo), os.cpu_count() or 1)
            stream = run_local(todo, n) if backend == "local" else run_ray(todo, workers, address)
            # closing(): an interrupt while we write still stops the workers at once
            with closing(stream):
                for done, (t, outcome) in enumerate(stream, 1):
                    tag = f"[{done}/{len(todo)}] trial {t.id} {_short(t.params)}"
                    if isinstance(outcome, BaseException):
                        failed += 1
                        msg = f"{type(outcome).__name__}: {outcome}".splitlines()[0]
                        log(f"{tag}: FAILED - {msg}")
                        _append_error(out / "errors.jsonl", t, msg, backend)
                        continue
                    row = {"trial": t.id, "index": t.index, "params": t.params, "seed": t.seed,
                           "metrics": outcome["metrics"], "seconds": outcome["seconds"], "backend": backend,
                           "host": platform.node(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "config": _config_of(t.payload)}
                    journal.append(row)
                    m = outcome["metrics"].get(sweep.metric)
                    log(f"{tag}: " + (f"{sweep.metric} {m:.4g} " if isinstance(m, (int, float)) else "")
                        + f"({outcome['seconds']:.1f} s)")
        rows = [journal.rows[t.id] for t in trials if t.id in journal]
    finally:
        journal.close()
    best = _best(rows, sweep)
    return {"total": len(trials), "skipped": len(trials) - len(todo), "ran": len(todo) - failed,
            "failed": failed, "best": best, "rows": rows, "path": str(journal.path)}


def read_trials(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The finished trials in a ``trials.jsonl`` (a cut-short last line is ignored)."""
    return JsonlJournal(path).read()


def _best(rows: list[dict[str, Any]], sweep: Sweep) -> dict[str, Any] | None:
    scored = [r for r in rows if isinstance(r["metrics"].get(sweep.metric), (int, float))]
    if not scored:
        return None
    pick = max if sweep.goal == "max" else min
    return pick(scored, key=lambda r: r["metrics"][sweep.metric])


def _config_of(payload: dict[str, Any]) -> dict[str, Any]:
    """What re-runs the trial: a training config, an experiment's name, mode and setting overrides, or
    a function's name and arguments."""
    if payload["kind"] == "train":
        return payload["config"]
    return {k: v for k, v in payload.items() if k not in ("kind", "out", "loggers", "device")}


def _short(params: dict[str, Any]) -> str:
    def v(x: Any) -> str:
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    return " ".join(f"{k.rsplit('.', 1)[-1]}={v(x)}" for k, x in params.items())


def _append_error(path: Path, t: Trial, msg: str, backend: str) -> None:
    JsonlJournal(path).append({"trial": t.id, "params": t.params, "error": msg, "backend": backend})
