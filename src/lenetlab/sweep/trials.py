"""What one trial does, in whichever process runs it (a pool worker or a Ray task).

:func:`run_trial` is the one entry point both backends call with a trial's
payload; it returns the trial's metrics (a JSON-able dict). It pins torch to
one thread, so a trial computes the same numbers on every backend and never
competes with its sibling workers for cores.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from lenetlab.errors import LenetlabError


def run_trial(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one trial; returns ``{"metrics": {...}, "seconds": wall time}``."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    kind = payload["kind"]
    tracking = _trackers(payload)
    status = "FAILED"
    try:
        if kind == "train":
            metrics = _train(payload["config"], payload.get("out"), tracking, payload.get("device", "cpu"))
        elif kind == "experiment":
            metrics = _experiment(payload)
        elif kind == "function":
            metrics = import_function(payload["function"])(**payload["params"])
            if not isinstance(metrics, dict):
                raise LenetlabError(f"{payload['function']} returned {type(metrics).__name__}, not a dict of "
                                    "metrics")
        else:
            raise LenetlabError(f"unknown trial kind {kind!r}")
        json.dumps(metrics)   # a metric that cannot be written to the JSONL fails this trial, not the sweep
        if kind != "train":   # one step: the trial's metrics (a training trial logged every epoch)
            from lenetlab.train.loggers import scalars

            for t in tracking:
                t.log(0, scalars(metrics))
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for t in tracking:
            t.close(status)
    return {"metrics": metrics, "seconds": round(time.perf_counter() - t0, 3)}


def _trackers(payload: dict[str, Any]) -> list[Any]:
    """The trial's loggers (``lenetlab sweep --logger``): one run per trial, named by its id."""
    spec = payload.get("loggers")
    if not spec:
        return []
    from lenetlab.train import loggers

    root = Path(spec["root"])
    params = None if payload["kind"] == "train" else loggers.flatten(
        payload.get("params") or {"experiment": payload.get("experiment"), "mode": payload.get("mode"),
                                  **(payload.get("options") or {})})
    return loggers.make(spec["names"], root, run_name=spec["trial"], experiment=spec["experiment"],
                        tensorboard_dir=root / loggers.SUBDIRS["tensorboard"] / spec["trial"], params=params)


def _train(config: dict[str, Any], out: str | None, callbacks: list[Any] = (), device: str = "cpu"
           ) -> dict[str, Any]:
    from lenetlab.config import RunConfig, from_dict
    from lenetlab.sweep.spec import TRAIN_METRICS
    from lenetlab.train import fit

    cfg = from_dict(RunConfig, config)
    summary = fit(cfg, out=out, force=out is not None, splits=_splits(json.dumps(config["data"], sort_keys=True)),
                  log=None, progress=False, callbacks=callbacks, device=device)
    return {k: summary[k] for k in TRAIN_METRICS}


def _experiment(payload: dict[str, Any]) -> dict[str, Any]:
    from lenetlab.experiments import reproduce

    mode = payload["mode"]
    r = reproduce(payload["experiment"], payload["out"], full=mode == "full", tiny=mode == "tiny",
                  options=payload["options"])
    claims = r.all_claims      # those decided from clock readings (timings.json) too
    verdicts = [c.supported for c in claims]
    return {"claims_supported": verdicts.count(True), "claims_refuted": verdicts.count(False),
            "claims_inconclusive": verdicts.count(None), "claims": {c.name: c.supported for c in claims},
            **{f"metrics.{k}": v for k, v in {**r.metrics, **r.timings.metrics}.items()}}


@functools.lru_cache(maxsize=2)
def _splits(data_json: str):
    """The data of the last trials in this worker: consecutive trials mostly share it."""
    from lenetlab.config import DataConfig, from_dict
    from lenetlab.data import load_splits

    return load_splits(from_dict(DataConfig, json.loads(data_json)))


def import_function(ref: str | None) -> Callable[..., dict[str, Any]]:
    """``"package.module:function"`` -> the function (one clear error when it is not there)."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise LenetlabError(f"function {ref!r}: expected \"package.module:function\"")
    mod, name = ref.split(":")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise LenetlabError(f"function {ref!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise LenetlabError(f"function {ref!r} is not callable")
    return fn


def toy(x: float = 0.0, y: float = 0.0, seed: int = 0, sleep: float = 0.0) -> dict[str, Any]:
    """A cheap deterministic trial for trying sweeps out (and for their tests): the Rosenbrock
    function at (x, y) plus seeded noise, after ``sleep`` seconds of pretend work."""
    import random

    time.sleep(sleep)
    noise = random.Random(seed).gauss(0.0, 0.01)
    value = (1 - x) ** 2 + 100 * (y - x * x) ** 2 + noise
    return {"value": value, "log_value": math.log10(abs(value) + 1e-12)}
