"""Run directories: the one place results live.

Every command that produces results writes a run directory::

    config.json        the full resolved config (re-run it with --config)
    metrics.jsonl      one JSON line per epoch
    model.safetensors  final weights (+ model name/options in its metadata)
    summary.json       {"model", "params", "epochs", "test_accuracy", "wall_seconds", ...}
    checkpoint.safetensors  last complete epoch, for --resume
    timings.jsonl      only for runs trained inside ``lenetlab reproduce``: the clock readings
                       (epoch_seconds, wall_seconds, unix_time per epoch; the run's wall_seconds), which
                       there are kept out of metrics.jsonl, summary.json and the checkpoint so that two
                       equal runs give byte-identical files (:func:`lenetlab.train.trainer.clock_apart`)

All files are written atomically, so an interrupted run never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from lenetlab import weights
from lenetlab.config import RunConfig, from_dict, to_dict
from lenetlab.errors import LenetlabError
from lenetlab.fileio import JsonlJournal, atomic_write_json, is_leftover

CONFIG, METRICS, MODEL, SUMMARY = "config.json", "metrics.jsonl", "model.safetensors", "summary.json"
TIMINGS = "timings.jsonl"
OWNED = (CONFIG, METRICS, MODEL, SUMMARY, "checkpoint.safetensors", TIMINGS)


def prepare(out: Path, resume: bool, force: bool) -> None:
    """Check that ``out`` may be written (nothing is created here)."""
    if resume:
        if not (out / CONFIG).is_file():
            raise LenetlabError(f"{out}: not a run directory (no {CONFIG}); nothing to resume")
        return
    if out.exists() and not out.is_dir():
        raise LenetlabError(f"{out}: exists and is not a directory")
    # the temporary file of a write cut short by a kill is not a run (else --resume and a plain re-run
    # would each send the user to the other)
    if out.is_dir() and any(not is_leftover(p) for p in out.iterdir()) and not force:
        raise LenetlabError(f"{out}: already exists and is not empty; use --resume to continue it or --force")


def clear(out: Path) -> None:
    for name in OWNED:
        p = out / name
        if p.exists():
            p.unlink()


def require_run(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if not p.is_dir():
        raise LenetlabError(f"{p}: no such run directory")
    for name in (CONFIG, MODEL):
        if not (p / name).is_file():
            raise LenetlabError(f"{p}: not a finished run directory (missing {name})")
    return p


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LenetlabError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LenetlabError(f"{path}: not valid JSON ({e})") from None


def load_config(run_dir: Path) -> RunConfig:
    return from_dict(RunConfig, read_json(run_dir / CONFIG), where="")


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write_json(run_dir / CONFIG, to_dict(cfg))


def save_model(run_dir: Path, model: nn.Module, cfg: RunConfig) -> None:
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"model": cfg.model.name, "options": json.dumps(cfg.model.options, sort_keys=True)}
    weights.save(tensors, run_dir / MODEL, meta)   # reproducible bytes: equal runs, equal files


def load_model(run_dir: str | Path) -> tuple[nn.Module, RunConfig]:
    """Rebuild the model of a finished run and load its weights (safetensors, no pickle)."""
    from lenetlab.models import create_model

    p = require_run(run_dir)
    cfg = load_config(p)
    model = create_model(cfg.model.name, **cfg.model.options)
    sd, _ = weights.load(p / MODEL)   # refuses NaN/Inf weights, naming the tensor
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise LenetlabError(f"{p / MODEL}: weights do not match {cfg.model.name} "
                            f"({str(e).splitlines()[0]})") from None
    model.eval()
    return model, cfg


#: the clock readings of a run: its metrics.jsonl rows' and summary's keys that vary run to run
CLOCK_KEYS = ("epoch_seconds", "wall_seconds", "unix_time", "compress_wall_seconds")
_CLOCK_APART: contextvars.ContextVar[bool] = contextvars.ContextVar("lenetlab_clock_apart", default=False)


@contextmanager
def clock_apart() -> Iterator[None]:
    """Within the block, run directories keep their clock readings (:data:`CLOCK_KEYS`) out of metrics.jsonl,
    summary.json and the checkpoint and journal them in :data:`TIMINGS` instead, so two runs of the same config
    give byte-identical files. ``lenetlab reproduce`` trains under it; ``lenetlab train``'s run format is
    unchanged. The summaries and metrics that ``fit`` returns or hands to callbacks still hold the readings."""
    token = _CLOCK_APART.set(True)
    try:
        yield
    finally:
        _CLOCK_APART.reset(token)


def clock_is_apart() -> bool:
    """Whether :func:`clock_apart` is in force (a reproduction is running)."""
    return _CLOCK_APART.get()


def off_clock(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``row`` split into (what the run's files keep, its clock readings) under :func:`clock_apart`; else
    (``row``, {})."""
    if not _CLOCK_APART.get():
        return row, {}
    return ({k: v for k, v in row.items() if k not in CLOCK_KEYS},
            {k: row[k] for k in CLOCK_KEYS if k in row})


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json (under :func:`clock_apart`, its clock readings go to timings.jsonl as ``{"run": ...}``)."""
    kept, clock = off_clock(summary)
    if clock:
        append_timings(run_dir, {"run": clock})
    atomic_write_json(run_dir / SUMMARY, kept)


def read_summary(run_dir: Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / SUMMARY)


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    JsonlJournal(Path(run_dir) / METRICS).append(row)


def append_timings(run_dir: Path, row: dict[str, Any]) -> None:
    JsonlJournal(Path(run_dir) / TIMINGS).append(row)


def truncate_metrics(run_dir: Path, last_epoch: int, last_row: dict[str, Any] | None = None) -> None:
    """Drop metric lines past the checkpointed epoch (they will be recomputed), and any cut-short line.

    ``last_row``: the checkpointed epoch's own line, which the checkpoint carries. The checkpoint is written
    just before its metrics line, so a kill between the two (or halfway through the line) would otherwise
    lose that epoch's line for good; it is put back if missing."""
    journal = JsonlJournal(Path(run_dir) / METRICS)
    rows = [row for row in journal.read() if row.get("epoch", 0) <= last_epoch]
    if last_row is not None and all(row.get("epoch") != last_row.get("epoch") for row in rows):
        rows.append(last_row)
    if journal.path.exists() or rows:
        journal.rewrite(rows)
    clock = JsonlJournal(Path(run_dir) / TIMINGS)
    if clock.path.exists():   # the readings of the epochs to be recomputed go too (and the run's total)
        clock.rewrite([row for row in clock.read() if 0 < row.get("epoch", 0) <= last_epoch])
