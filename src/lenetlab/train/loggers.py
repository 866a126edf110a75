"""Experiment tracking: ``fit`` callbacks that log each epoch's metrics to TensorBoard or MLflow.

``lenetlab train --logger tensorboard,mlflow --out RUN_DIR`` (or ``--logger`` twice) writes

- ``RUN_DIR/tensorboard/``: TensorBoard event files (``tensorboard --logdir RUN_DIR/tensorboard``), one
  scalar per number of the epoch's metrics.jsonl row (nested ones as ``grad_norms/conv1``), at step =
  epoch, plus the resolved config as text;
- ``RUN_DIR/mlruns/``: an MLflow file store (no server; tracking URI ``file:RUN_DIR/mlruns``) with one
  experiment, ``lenetlab``, and one run named after RUN_DIR: the resolved config flattened to params
  (``train.lr``, ``model.options.width``...) and the same per-epoch metrics.

``lenetlab sweep --logger ...`` logs every trial as its own run: ``OUT/tensorboard/<trial>/`` and one
MLflow run per trial (named by the trial id) in the experiment named after the sweep, in ``OUT/mlruns``.

Both are optional extras: ``pip install 'lenetlab[tensorboard]'`` / ``'lenetlab[mlflow]'`` (mlflow-skinny
is enough). MLflow 3 keeps its file store only on request: these loggers set ``MLFLOW_ALLOW_FILE_STORE=true``
in their own process; do the same to read the store (``MlflowClient(tracking_uri="file:RUN_DIR/mlruns")``).

From Python, pass a logger as a ``fit`` callback::

    import lenetlab
    from lenetlab.train.loggers import TensorBoardLogger
    lenetlab.fit("fast", out="runs/demo", callbacks=[TensorBoardLogger("runs/demo/tensorboard")])

A logger writes nothing until training starts (``on_train_begin``, after the run directory is checked),
flushes after every epoch (a killed run keeps what it logged), and continues where it stopped on
``--resume``: TensorBoard hides the steps after the checkpoint (``purge_step``), MLflow goes on logging
into the run that was cut short.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError

#: metrics.jsonl keys that are not logged as scalars: the step itself, and the wall-clock time (the
#: event's own timestamp; a float32 scalar would round it to minutes)
NOT_SCALARS = ("epoch", "unix_time")


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (nested mappings joined by ``sep``)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + sep, sep))
        else:
            out[key] = v
    return out


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row (bools, strings and :data:`NOT_SCALARS` left out), nested ones as
    ``outer/inner``."""
    return {k: float(v) for k, v in flatten(metrics, sep="/").items()
            if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Logger:
    """Base class: a ``fit`` callback that opens its store when training starts.

    Subclasses set ``name``, ``module`` and ``extra`` (what is imported, and the lenetlab extra that
    installs it) and implement :meth:`_open`, :meth:`_log`, :meth:`_close`.
    """

    name = ""
    module = ""
    extra = ""

    def __init__(self, log_dir: str | os.PathLike, *, run_name: str | None = None,
                 experiment: str = "lenetlab", params: Mapping[str, Any] | None = None):
        require(self.name)
        self.log_dir = Path(log_dir)
        self.run_name = run_name
        self.experiment = experiment
        self.params = dict(params) if params is not None else None
        self.opened = False
        self.finished = False

    # ---- the fit callback protocol
    def on_train_begin(self, info: Mapping[str, Any]) -> None:
        """``info``: ``config`` (the resolved config as a dict), ``out``, ``start_epoch``, ``resume``."""
        params = self.params if self.params is not None else flatten(info.get("config") or {})
        self.start(params, int(info.get("start_epoch") or 0), bool(info.get("resume")))

    def on_epoch_end(self, metrics: Mapping[str, Any]) -> None:
        if not self.opened:     # fit called without on_train_begin (an older trainer, a hand-written loop)
            self.start(self.params or {})
        self.log(int(metrics["epoch"]), scalars(metrics), metrics.get("unix_time"))

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        self.finished = True
        self.close()

    # ---- direct use (sweep trials that are not training runs)
    def start(self, params: Mapping[str, Any], start_step: int = 0, resume: bool = False) -> None:
        if self.opened:
            return
        self._open(dict(params), start_step, resume)
        self.opened = True

    def log(self, step: int, values: Mapping[str, float], walltime: float | None = None) -> None:
        if not self.opened:
            self.start(self.params or {})
        self._log(step, dict(values), time.time() if walltime is None else float(walltime))

    def close(self, status: str | None = None) -> None:
        """Flush and close; ``status`` (MLflow: FINISHED, KILLED, FAILED) defaults to FINISHED after
        ``on_train_end``, else KILLED. Closing twice does nothing."""
        if self.opened:
            self.opened = False
            self._close(status or ("FINISHED" if self.finished else "KILLED"))

    def _open(self, params: dict[str, Any], start_step: int, resume: bool) -> None:
        raise NotImplementedError

    def _log(self, step: int, values: dict[str, float], walltime: float) -> None:
        raise NotImplementedError

    def _close(self, status: str) -> None:
        raise NotImplementedError


class TensorBoardLogger(Logger):
    """Scalars (and the config as text) in TensorBoard event files under ``log_dir``."""

    name, module, extra = "tensorboard", "tensorboard", "tensorboard"

    def _open(self, params: dict[str, Any], start_step: int, resume: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events a killed run logged after its last checkpoint (and, with --force, an older
        # run's) are hidden from step start_step + 1 on
        self.writer = SummaryWriter(str(self.log_dir), purge_step=start_step + 1)
        if params and not resume:
            blob = json.dumps(params, indent=1, sort_keys=True, default=str)
            self.writer.add_text("config", "    " + blob.replace("\n", "\n    "), 0)
        self.writer.flush()

    def _log(self, step: int, values: dict[str, float], walltime: float) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step, walltime=walltime)
        self.writer.flush()

    def _close(self, status: str) -> None:
        self.writer.close()


class MLflowLogger(Logger):
    """Params and per-step metrics in a local MLflow file store at ``log_dir`` (no server)."""

    name, module, extra = "mlflow", "mlflow", "mlflow"

    def _open(self, params: dict[str, Any], start_step: int, resume: bool) -> None:
        from mlflow.entities import Param, RunStatus

        self.client = client(self.log_dir)
        exp_id = experiment_id(self.client, self.experiment)
        self.run_id = None
        if resume:   # go on in the run a kill cut short
            runs = self.client.search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=1)
            if runs and runs[0].info.status != RunStatus.to_string(RunStatus.FINISHED):
                self.run_id = runs[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
        if self.run_id is None:
            self.run_id = self.client.create_run(exp_id, run_name=self.run_name).info.run_id
            items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):      # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _log(self, step: int, values: dict[str, float], walltime: float) -> None:
        from mlflow.entities import Metric

        ms = int(walltime * 1000)
        items = [Metric(k, v if math.isfinite(v) else float("nan"), ms, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def _close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


LOGGERS: dict[str, type[Logger]] = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
#: where each logger writes, inside a run directory (train) or a sweep's output directory
SUBDIRS = {"tensorboard": "tensorboard", "mlflow": "mlruns"}


def parse_names(values: Iterable[str] | str | None) -> list[str]:
    """``["tensorboard,mlflow"]`` / ``["mlflow", "tensorboard"]`` / ``"mlflow"`` -> checked, de-duplicated
    logger names in the order given."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        for name in str(v).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in LOGGERS:
                raise LenetlabError(f"unknown logger {name!r}; choose from: {', '.join(LOGGERS)}")
            if name not in out:
                out.append(name)
    return out


def require(*names: str) -> None:
    """One clear error (with the pip command) for the first logger whose package is not installed."""
    for name in names:
        cls = LOGGERS[name]
        if importlib.util.find_spec(cls.module) is None:
            raise LenetlabError(f"--logger {name} needs the {cls.module} package: "
                                f"pip install 'lenetlab[{cls.extra}]'")


def make(names: Iterable[str], root: str | os.PathLike, *, run_name: str | None = None,
         experiment: str = "lenetlab", tensorboard_dir: str | os.PathLike | None = None,
         params: Mapping[str, Any] | None = None) -> list[Logger]:
    """Loggers for ``names`` writing under ``root`` (a run directory or a sweep's output directory):
    ``root/tensorboard`` (or ``tensorboard_dir``) and ``root/mlruns``. Nothing is written yet."""
    names = parse_names(list(names))
    require(*names)
    root = Path(root)
    out: list[Logger] = []
    for n in names:
        d = Path(tensorboard_dir) if n == "tensorboard" and tensorboard_dir is not None else root / SUBDIRS[n]
        out.append(LOGGERS[n](d, run_name=run_name, experiment=experiment, params=params))
    return out


def client(store: str | os.PathLike):
    """An ``MlflowClient`` on the local file store at ``store`` (created on first write)."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3: the file store only on request
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=Path(store).resolve().as_uri())


def experiment_id(c: Any, name: str) -> str:
    """The id of experiment ``name`` in client ``c``'s store, created if needed."""
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else c.create_experiment(name)


def _param_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:6000]   # MLflow's limit on a param value


__all__ = ["Logger", "TensorBoardLogger", "MLflowLogger", "LOGGERS", "SUBDIRS", "parse_names", "require", "make",
           "flatten", "scalars", "client", "experiment_id"]
