"""Resilience of an int8 engine to accumulator bit flips at a bit-error rate (BER): SDC per image and
accuracy over a BER sweep (Ahmadilivani et al. 2023; method note docs/papers/faults.md).

Every int32 accumulator bit - copies of hardened neurons included, since a
hardened model also has more bits that can fail - flips independently at
rate ``ber``, in ``draws`` independent fault draws of the whole test batch.
A silent data corruption (SDC) is a top-1 change against the fault-free
prediction. :func:`sdc_counts` keeps, per image, how many draws corrupted
it, so a study can bootstrap over images (and trained models) instead of
treating the images x draws trials as independent.

Example::

    from lenetlab.faults.resilience import sdc_counts
    x0 = engine.input(images)
    counts = sdc_counts(engine, x0, ber=2e-4, draws=16)     # (N,) in 0..16
    rate = counts.sum() / (16 * len(counts))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lenetlab.quant.engine import IntEngine


def acc_ber_predictions(engine: IntEngine, x0: np.ndarray, ber: float, draws: int, seed: int) -> np.ndarray:
    """Top-1 (draws, M) with every accumulator bit (copies included) flipped independently at rate ``ber``."""
    from lenetlab.faults.models import ber_flip

    rng = np.random.default_rng(seed)
    hooks = {j: (lambda a: ber_flip(a, 32, ber, rng)) for j in range(len(engine.stages))}
    out = []
    for _ in range(draws):
        out.append(np.argmax(engine.forward(x0, acc_hooks=hooks), axis=1))
    return np.stack(out)


def sdc_counts(engine: IntEngine, x0: np.ndarray, ber: float, draws: int, seed: int = 1,
               clean: np.ndarray | None = None) -> np.ndarray:
    """Per image, how many of ``draws`` fault draws at ``ber`` changed its top-1 (int array, 0..draws).

    ``clean``: the fault-free top-1 to compare with (default: this engine's own, which a hardened engine
    shares with its base - its fault-free outputs are identical)."""
    if clean is None:
        clean = np.argmax(engine.forward(x0), axis=1)
    pred = acc_ber_predictions(engine, x0, ber, draws, seed)
    return (pred != clean[None]).sum(axis=0).astype(np.int64)


def ber_sweep(engine: IntEngine, x0: np.ndarray, labels: np.ndarray, clean: np.ndarray, bers: list[float],
              draws: int, seed: int = 100) -> list[dict[str, Any]]:
    """Accuracy and SDC rate at each BER in ``bers`` (``draws`` draws each, seeds ``seed + i``)."""
    out = []
    for i, ber in enumerate(bers):
        p = acc_ber_predictions(engine, x0, ber, draws, seed + i)
        out.append({"ber": ber, "accuracy": float((p == labels[None]).mean()),
                    "sdc": float((p != clean[None]).mean())})
    return out
