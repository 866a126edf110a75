"""Where trials run: a local process pool, or Ray tasks on a cluster (or a local Ray instance).

A backend takes the trials still to run and yields ``(trial, outcome)`` as
each finishes, in completion order; ``outcome`` is :func:`run_trial`'s dict
or the exception the trial raised. Both call the same :func:`run_trial`, so a
trial's metrics do not depend on the backend.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

from lenetlab.errors import LenetlabError
from lenetlab.sweep.spec import Trial
from lenetlab.sweep.trials import run_trial

BACKENDS = ("local", "ray")


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: let the parent alone decide what happens
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:   # Linux: die with the parent, even when it is SIGKILLed, instead of finishing orphaned trials
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_local(trials: list[Trial], workers: int) -> Iterator[tuple[Trial, Any]]:
    """A ``spawn`` process pool of ``workers`` processes, one torch thread each."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ex = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init)
    try:
        futures = {ex.submit(run_trial, t.payload): t for t in trials}
        for f in as_completed(futures):
            try:
                yield futures[f], f.result()
            except Exception as e:   # noqa: BLE001  (the trial's own error, reported per trial)
                yield futures[f], e
    finally:
        # interrupted or done: never wait for running trials (shutdown(wait=True) would)
        ex.shutdown(wait=False, cancel_futures=True)
        if hasattr(ex, "terminate_workers"):     # Python >= 3.14
            ex.terminate_workers()
        else:
            for p in list((getattr(ex, "_processes", None) or {}).values()):
                p.terminate()


def ray_init(workers: int | None, address: str | None) -> tuple[Any, bool]:
    """Ray, connected to the cluster at ``address`` (``auto``: the one this machine belongs to) or to a fresh
    local instance with ``workers`` CPUs; and whether this call started it (then the caller shuts it down)."""
    try:
        import ray
    except ImportError:
        raise LenetlabError("the ray backend needs Ray: pip install 'lenetlab[ray]'") from None
    started = not ray.is_initialized()
    if started:
        import logging

        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if address:
            kw["address"] = address
        else:
            kw["num_cpus"] = workers or os.cpu_count() or 1
        try:
            ray.init(**kw)
        except ConnectionError as e:
            raise LenetlabError(f"cannot connect to the Ray cluster at {address}: {e}") from None
    return ray, started


class RayLost(Exception):
    """A Ray task whose worker or node died: no error of its own to show, only what Ray says."""


def ray_result(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``, raising the task's own error as if it had run here, or :class:`RayLost` (message: the
    Ray error's name and first line) when its worker or node died."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise e.as_instanceof_cause() from None
    except ray.exceptions.RayError as e:
        raise RayLost(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def run_ray(trials: list[Trial], workers: int | None, address: str | None) -> Iterator[tuple[Trial, Any]]:
    """The same trials as Ray tasks (one CPU each) on the cluster at ``address`` (``auto``: the one this
    machine belongs to), or on a fresh local instance with ``workers`` CPUs when no address is given."""
    ray, started = ray_init(workers, address)
    task = ray.remote(num_cpus=1, max_retries=0)(run_trial)
    pending: dict[Any, Trial] = {}
    queue = list(trials)
    window = workers or len(trials)   # with --workers, at most that many trials in flight
    try:
        while queue or pending:
            while queue and len(pending) < window:
                t = queue.pop(0)
                pending[task.remote(t.payload)] = t
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(ref)
            try:
                yield t, ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                yield t, e.as_instanceof_cause()
            except ray.exceptions.RayError as e:      # a worker or node died
                yield t, e
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
