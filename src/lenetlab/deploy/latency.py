"""Side-by-side latency: several runtimes timed in interleaved repetitions on the same machine state.

Timing runtimes one after another lets a change in machine load (other
processes, frequency scaling) land on one runtime only. :func:`interleaved`
instead runs every timer once per repetition, rotating the order each time, so
each repetition is a paired comparison taken within seconds; ratios are then
formed repetition by repetition (:func:`paired_ratios`).

:func:`torch_timer` and :func:`numpy_timer` time one image per call (batch
size 1), like the C (:class:`lenetlab.deploy.c_eval.CEvaluator`) and browser
(:class:`lenetlab.deploy.browser.BrowserPage`) runtimes. PyTorch is pinned to
one thread while it is timed: the flat runtimes are single-threaded, and a
single 28x28 image gains nothing from a second thread.

Example::

    from lenetlab.deploy.latency import interleaved, numpy_timer, torch_timer
    t = interleaved({"torch": torch_timer(model, cfg, imgs), "numpy": numpy_timer(fm, imgs)}, repetitions=10)
    t["numpy"]        # seconds per image, one value per repetition
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

Timer = Callable[[], float]   # one measurement: seconds per image


def interleaved(timers: dict[str, Timer], repetitions: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every timer ``repetitions`` times, all of them in each repetition, in a rotated order.

    ``warmup`` untimed rounds come first (caches, lazy initialisation). Returns name -> list of seconds per
    image, index r of each list taken in repetition r."""
    if repetitions < 1 or not timers:
        raise ValueError("interleaved() needs at least one timer and one repetition")
    names = list(timers)
    for _ in range(warmup):
        for name in names:
            timers[name]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repetitions):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(float(timers[name]()))
    return out


def paired_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, list[float]]:
    """Per repetition, each runtime's time over the baseline's (``< 1``: faster than the baseline)."""
    base = np.asarray(times[baseline], float)
    return {n: (np.asarray(t, float) / base).tolist() for n, t in times.items() if n != baseline}


def torch_timer(model: Any, data_cfg: Any, images: np.ndarray) -> Timer:
    """PyTorch eager (no_grad, eval mode, one thread), one image per forward call."""
    import torch

    from lenetlab.data.transforms import to_model_input

    model.eval()
    x = to_model_input(torch.from_numpy(np.ascontiguousarray(images)), data_cfg)
    singles = [x[i:i + 1] for i in range(len(x))]

    def timer() -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                t0 = time.perf_counter()
                for xi in singles:
                    model(xi)
                return (time.perf_counter() - t0) / len(singles)
        finally:
            torch.set_num_threads(threads)

    return timer


def numpy_timer(fm: Any, images: np.ndarray) -> Timer:
    """The NumPy runtime's fast path, one image per :func:`lenetlab.deploy.runtime.run` call."""
    from lenetlab.deploy.runtime import run

    singles = [np.ascontiguousarray(images[i:i + 1]) for i in range(len(images))]

    def timer() -> float:
        t0 = time.perf_counter()
        for img in singles:
            run(fm, img)
        return (time.perf_counter() - t0) / len(singles)

    return timer
