"""Analog noise on an integer-only int8 model's accumulators (Wang et al. 2025 noise model, docs/papers/noise.md).

The float noise model (:mod:`lenetlab.noise.inject`, ``relative=True``) adds ``sigma * max|y| * N(0, 1)``
(``max`` per image) to every conv/linear output. :func:`int8_noise_hooks` adds the same noise to the int32
accumulators of a :class:`lenetlab.quant.engine.IntEngine`, drawn in the real units the requantisation
implies and rounded back to integers, so the two implementations can be compared (tests/test_matrix.py) and
an int8 model without a gradient (e.g. a hardened one, :mod:`lenetlab.faults.harden`) can be scored under
the same noise as its float parent.

Example::

    from lenetlab.noise.int8 import int8_noisy_accuracy
    r = int8_noisy_accuracy(engine, engine.input(images), labels, sigma=0.1, draws=5, seed=0)
    r["mean"], r["per_image"]
"""

from __future__ import annotations

from typing import Any

import numpy as np


def int8_noise_hooks(engine, sigma: float, rng: np.random.Generator) -> dict[int, Any]:
    """Accumulator hooks adding relative Gaussian noise ``sigma * max|y|`` per image, in real units.

    A stage's real output is proportional to ``acc * m / 2^s`` per channel (one activation scale per
    tensor), so the noise is drawn on that scale and divided back per row (copies like their channel)."""
    hooks = {}
    for j, st in enumerate(engine.stages):
        if st.m is None or st.s is None:   # RBF: no requantisation, no real scale
            continue
        k = (st.m.astype(np.float64) / np.exp2(st.s.astype(np.float64)))[st.row_channel()][None, :, None]

        def hook(acc: np.ndarray, k=k) -> np.ndarray:
            real = acc * k
            scale = np.abs(real).reshape(len(acc), -1).max(1)[:, None, None]
            noise = rng.standard_normal(acc.shape) * sigma * scale / k
            return acc + np.rint(noise).astype(np.int64)

        hooks[j] = hook
    return hooks


def int8_noisy_accuracy(engine, x0: np.ndarray, labels: np.ndarray, sigma: float, draws: int, seed: int
                        ) -> dict[str, Any]:
    """Accuracy under ``draws`` draws of accumulator noise: ``{"mean", "std", "per_draw", "per_image"}``
    (``per_image``: each image's fraction of draws classified correctly, as :func:`lenetlab.noise.noisy_accuracy`)."""
    rng = np.random.default_rng(seed)
    hits = np.stack([np.argmax(engine.forward(x0, acc_hooks=int8_noise_hooks(engine, sigma, rng)), 1) == labels
                     for _ in range(draws)])
    per = hits.mean(1)
    return {"mean": float(per.mean()), "std": float(np.std(per, ddof=1)) if draws > 1 else 0.0,
            "per_draw": per.tolist(), "per_image": hits.mean(0).tolist()}
