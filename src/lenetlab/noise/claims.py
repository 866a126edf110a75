"""The claim rules of the noise-hardening work (Wang et al. 2025, docs/papers/noise.md), shared by experiments.

``lenetlab reproduce noise`` and ``lenetlab reproduce matrix`` both test "QAT (or noisy training) makes a
network more robust to noisy computation than the float baseline". They decide it by the one rule here, so
the two reports cannot disagree because of how they judge, only because they measure under different noise
(docs/claims.md explains verdicts):

- :func:`beats_under_noise` (and :func:`qat_beats_float`, its QAT-versus-float form): the paired bootstrap
  difference (method - baseline) of accuracy under noise, over the training seeds (method seed i paired
  with baseline seed i) and the shared test images, each image scored by its fraction of noise draws
  classified correctly; supported when the 95% interval lies above 0 points.
- :func:`contrast`: the same bootstrap for a linear combination of several groups, e.g. "the noisy-training
  margin over QAT is larger on the larger network" = (noisy_L - qat_L) - (noisy_S - qat_S).

Example::

    from lenetlab.noise.claims import qat_beats_float
    claim = qat_beats_float(qat_scores, float_scores, noise="absolute sigma 0.3 after every layer")
    claim.verdict, claim.interval
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lenetlab.experiments import stats
from lenetlab.experiments.base import Claim

QAT_STATEMENT = "Wang et al. 2025: constant-scale QAT makes a network more robust to noisy computation"


def beats_under_noise(name: str, statement: str, method: str, baseline: str, method_scores: Sequence,
                      baseline_scores: Sequence, *, noise: str, min_seeds: int = stats.QUICK_MIN_SEEDS,
                      seed: int = 0) -> Claim:
    """``method`` beats ``baseline`` under ``noise``: the 95% CI of their paired accuracy difference > 0 points.

    ``method_scores`` / ``baseline_scores``: one per-image score vector per training seed (the fraction of
    noise draws that classify each test image correctly), in the same seed order and on the same images."""
    est = stats.bootstrap_difference(method_scores, baseline_scores, paired=True, seed=seed)
    rule = stats.Difference(method, baseline, 0.0, metric=f"accuracy under {noise}", scale=100, unit=" points")
    return stats.make_claim(name, statement, rule, est, min_seeds=min_seeds)


def qat_beats_float(qat_scores: Sequence, float_scores: Sequence, *, noise: str, name: str = "qat_beats_float",
                    statement: str = QAT_STATEMENT, min_seeds: int = stats.QUICK_MIN_SEEDS) -> Claim:
    """The one "QAT beats float under noise" rule (:func:`beats_under_noise` with QAT against float)."""
    return beats_under_noise(name, statement, "QAT", "float", qat_scores, float_scores, noise=noise,
                             min_seeds=min_seeds)


def contrast(groups: Mapping[str, Sequence], weights: Mapping[str, float], *, level: float = stats.LEVEL,
             n_boot: int | None = None, seed: int = 0) -> stats.Estimate:
    """``sum_g weights[g] * mean accuracy of g`` with a percentile bootstrap interval.

    Every group holds one per-image score vector per seed, all groups the same number of seeds (resampled
    jointly: seed i of each group is one draw) and the same test images (one image resample per replicate,
    shared by all groups), as :func:`lenetlab.experiments.stats.bootstrap_difference` does for two."""
    n_boot = stats.N_BOOT if n_boot is None else n_boot
    names = list(weights)
    if not names or set(names) - set(groups):
        raise ValueError(f"contrast: weights name groups {names}, groups are {list(groups)}")
    mats = [np.stack([np.asarray(v, dtype=np.float64) for v in groups[g]]) for g in names]
    shapes = {m.shape for m in mats}
    if len(shapes) != 1 or mats[0].ndim != 2 or 0 in mats[0].shape:
        raise ValueError(f"contrast: every group needs the same seeds x images, got {[m.shape for m in mats]}")
    if any(((m < 0) | (m > 1)).any() for m in mats):
        raise ValueError("contrast: per-image scores must lie in [0, 1]")
    n_seeds, n_img = mats[0].shape
    w = np.array([weights[g] for g in names])
    point = float(sum(wi * m.mean() for wi, m in zip(w, mats)))
    combined = sum(wi * m for wi, m in zip(w, mats))        # (S, N): the contrast per seed and image
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for start in range(0, n_boot, 256):
        b = min(256, n_boot - start)
        u = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=b).astype(np.float64)   # (b, S)
        picks = rng.integers(0, n_img, size=(b, n_img)) + np.arange(b)[:, None] * n_img
        iw = np.bincount(picks.ravel(), minlength=b * n_img).reshape(b, n_img).astype(np.float64)  # (b, N)
        per_seed = iw @ combined.T / n_img                                                          # (b, S)
        reps[start:start + b] = (u * per_seed).sum(1) / n_seeds
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return stats.Estimate(point, float(lo), float(hi),
                          f"percentile bootstrap ({n_boot} resamples) over {n_seeds} seeds (paired) and {n_img} "
                          "shared test images", level, n_seeds, n_img)
