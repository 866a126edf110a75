"""Claim statistics: three-valued verdicts decided by stated rules from 95% intervals.

A reproduction's claim ("QAT is more robust to noise than float") is judged
the way a reviewer would judge it: from several training seeds and the test
images, with an interval, by a rule written down in the claim. A verdict is
one of

- ``"supported"``: the interval lies on the claim's side of the rule's threshold;
- ``"not supported"``: it lies on the other side;
- ``"inconclusive"``: it straddles the threshold, or there are too few seeds
  (fewer than :data:`QUICK_MIN_SEEDS` in quick mode, :data:`FULL_MIN_SEEDS`
  recommended in ``--full``) to decide anything.

Three layers, each usable alone (docs/claims.md explains them for readers of
a report):

1. **Estimators** return an :class:`Estimate` (point value, interval, how it
   was computed): :func:`wilson` for a rate k of n; :func:`bootstrap_accuracy`
   over seeds *and* test images; :func:`bootstrap_difference` and
   :func:`bootstrap_ratio` for two groups (paired by seed when the seeds are
   shared); :func:`mean_interval` (t or bootstrap over seeds) for continuous
   per-seed metrics such as times; :func:`exact` for pure counting.
2. **Rules** (:class:`GreaterThan`, :class:`LessThan`, :class:`Difference`,
   :class:`WithinRange`, :class:`AtLeastFactor`, :class:`Separated`) decide
   a verdict from an estimate and state themselves in words (``rule.text``).
3. :func:`make_claim` ties them together into a
   :class:`~lenetlab.experiments.base.Claim` carrying rule, seeds, test
   images, estimate, interval and verdict, with the minimum-seeds guard;
   :func:`untestable` records a claim the reproduction cannot test.

Per-seed samples, the input of the bootstrap estimators, come in three kinds
(all samples of one group must be of one kind):

- a 0/1 (or bool) vector per seed - the per-image correctness (or a score
  in [0, 1] per image, e.g. the correctness averaged over noise draws). Vectors of
  equal length are taken to be the *same* test images in the same order: one
  image resample is drawn per bootstrap replicate and shared by every seed and
  group, so the test-set sampling error that all seeds share is in the
  interval, and two groups evaluated on the same images are paired image by
  image. Pass ``same_images=False`` when they are different images;
- a ``(correct, n)`` tuple (or :class:`Counts`) per seed - images are
  resampled independently per seed (nested bootstrap: binomial draws). Give
  vectors when the seeds share one test set; counts cannot show that;
- a float per seed - a continuous metric (seconds, bytes, a ratio); only the
  seeds are resampled.

The point estimate of a group is the mean over seeds of each seed's value
(every trained model weighs the same). Bootstrap intervals are percentile
intervals, deterministic for a given ``seed``. What they are worth, measured
on synthetic data in tests/test_stats.py:

- resampling seeds *and* shared images counts the seed-by-image interaction
  twice, so the interval is, if anything, a little wide (conservative: more
  inconclusive verdicts, not false ones); on a shared test set it covers the
  population accuracy where per-seed counts do not (0.95 against 0.69);
- with 3 seeds the seed level of a percentile bootstrap cannot reach beyond
  the range of the seeds' values, so seed-to-seed spread is judged narrowly;
  ``--full`` trains 5. For continuous metrics (only seeds vary)
  :func:`mean_interval` uses Student's t by default, exact for normal data
  and properly wide for few seeds.

Example::

    from lenetlab.experiments import stats
    qat = [correct_qat_seed0, correct_qat_seed1, correct_qat_seed2]     # 0/1 per test image
    flt = [correct_float_seed0, correct_float_seed1, correct_float_seed2]
    est = stats.bootstrap_difference(qat, flt, paired=True)           # same seeds, same images
    rule = stats.Difference("QAT", "float", 0.0, metric="accuracy under noise", scale=100, unit=" points")
    claim = stats.make_claim("qat_beats_float", "QAT improves noise tolerance", rule, est, seeds=[0, 1, 2])
    claim.verdict, claim.interval, rule.text
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from lenetlab.experiments.base import Claim

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)

EXACT = "n/a"            # ``seeds=EXACT``: the claim is pure counting (deterministic, no training)
QUICK_MIN_SEEDS = 3      # fewer trained seeds than this: the verdict is inconclusive
FULL_MIN_SEEDS = 5       # what --full runs should train (pass as ``min_seeds``)
LEVEL = 0.95             # default confidence level of every interval
N_BOOT = 2000            # default bootstrap replicates (read at call time: a caller may lower it for a quick check)
_IMAGE_BLOCK = 256       # replicates per block when resampling shared images (bounds memory at N x 256)


def verdict_of(supported: bool | None) -> str:
    """The verdict of a legacy two-valued ``supported`` flag (True / False / None)."""
    return {True: SUPPORTED, False: NOT_SUPPORTED, None: INCONCLUSIVE}[supported]


def supported_of(verdict: str) -> bool | None:
    """The legacy flag of a verdict: supported -> True, not supported -> False, inconclusive -> None."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; valid: {', '.join(VERDICTS)}")
    return {SUPPORTED: True, NOT_SUPPORTED: False, INCONCLUSIVE: None}[verdict]


def min_seeds(full: bool) -> int:
    """The seeds a claim needs before it may be decided: 5 in --full, 3 in quick mode."""
    return FULL_MIN_SEEDS if full else QUICK_MIN_SEEDS


# ------------------------------------------------------------------ estimates
@dataclass(frozen=True)
class Estimate:
    """A point value with its interval ``[lo, hi]`` at ``level``, and how it was obtained.

    ``seeds`` and ``test_images`` record what the estimate rests on where the
    estimator knows it (None otherwise); :func:`make_claim` uses them unless
    told otherwise."""

    value: float
    lo: float
    hi: float
    method: str
    level: float = LEVEL
    seeds: int | None = None
    test_images: int | None = None

    @property
    def interval(self) -> tuple[float, float]:
        return (self.lo, self.hi)

    def format(self, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
        """``value [lo, hi]`` scaled for reading, e.g. ``est.format(100, "%")`` -> ``"91.20% [90.10, 92.30]"``."""
        def f(x: float) -> str:
            return f"{x * scale:.{digits}f}" if math.isfinite(x) else ("-inf" if x < 0 else "inf")

        if self.lo == self.value == self.hi:      # exact: no interval to show
            return f"{f(self.value)}{unit} (exact)"
        return f"{f(self.value)}{unit} [{f(self.lo)}, {f(self.hi)}]"


class Counts(NamedTuple):
    """One seed's accuracy as counts: ``correct`` of ``n`` test images."""

    correct: int
    n: int


def exact(value: float, what: str = "exact (counted, no sampling)") -> Estimate:
    """A deterministic quantity (MACs, bytes, a count): its interval is the point itself."""
    v = float(value)
    return Estimate(v, v, v, what)


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(k: int, n: int, level: float = LEVEL) -> Estimate:
    """Wilson score interval of a rate ``k/n`` (better than the normal interval near 0 and 1, and for small n).

    Example: ``wilson(7, 10)`` -> value 0.7, interval about [0.397, 0.892]."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"a rate needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = _z(level)
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    lo = 0.0 if k == 0 else max(0.0, centre - half)      # exact ends: no rounding residue at 0 and 1
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Estimate(p, lo, hi, f"Wilson score interval, n={n}", level)


def t_quantile(q: float, df: float) -> float:
    """Quantile ``q`` of Student's t with ``df`` degrees of freedom (no SciPy needed).

    Substituting x = sqrt(df) tan(theta) turns the t density into c cos(theta)^(df-1) on [0, pi/2): a
    smooth, bounded integrand, so Simpson's rule on a fixed grid is accurate to ~1e-10, and bisection on
    theta inverts it."""
    if df < 1 or not 0 < q < 1:
        raise ValueError(f"t quantile needs df >= 1 and 0 < q < 1, got df={df}, q={q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_quantile(1 - q, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)

    def upper_mass(theta: float) -> float:     # P(0 < T < sqrt(df) tan(theta))
        x = np.linspace(0.0, theta, 2001)
        y = np.cos(x) ** (df - 1)
        h = theta / 2000
        return c * h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())

    lo, hi = 0.0, math.pi / 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if upper_mass(mid) < q - 0.5 else (lo, mid)
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def mean_interval(values: Sequence[float], method: str = "t", level: float = LEVEL, n_boot: int | None = None,
                  seed: int = 0) -> Estimate:
    """Mean of a continuous per-seed metric (seconds, bytes, a ratio) with a ``"t"`` or ``"bootstrap"`` interval.

    One value has no spread to estimate: its t interval is (-inf, inf), so every rule says inconclusive."""
    n_boot = N_BOOT if n_boot is None else n_boot
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError("mean_interval needs a non-empty list of per-seed values")
    if method == "bootstrap":
        return bootstrap_accuracy(list(v), level=level, n_boot=n_boot, seed=seed)
    if method != "t":
        raise ValueError(f"unknown interval method {method!r}; valid: t, bootstrap")
    m = float(v.mean())
    if len(v) == 1:
        return Estimate(m, -math.inf, math.inf, "t interval over 1 seed (undefined)", level, 1)
    half = t_quantile(0.5 + level / 2, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return Estimate(m, m - half, m + half, f"t interval over {len(v)} seeds", level, len(v))


# ------------------------------------------------------------------ the bootstrap
@dataclass
class _Group:
    kind: str                      # "images" (0/1 matrix), "counts" or "values"
    point: np.ndarray              # per-seed value (accuracy or metric), shape (S,)
    k: np.ndarray | None = None    # per-seed correct, counts/images
    n: np.ndarray | None = None    # per-seed test images
    matrix: np.ndarray | None = None   # (S, N) correctness, images only

    @property
    def seeds(self) -> int:
        return len(self.point)

    @property
    def images(self) -> int | None:
        return None if self.n is None else int(self.n.min())


def _group(samples: Sequence[Any], name: str) -> _Group:
    if isinstance(samples, (str, bytes)) or len(samples) == 0:
        raise ValueError(f"{name}: need a non-empty list with one sample per seed")
    kinds = set()
    for s in samples:
        if isinstance(s, tuple):
            kinds.add("counts")
        elif np.ndim(s) == 0:
            kinds.add("values")
        else:
            kinds.add("images")
    if len(kinds) > 1:
        raise ValueError(f"{name}: mixes kinds of per-seed samples ({', '.join(sorted(kinds))}); give one kind "
                         "(0/1 vectors, (correct, n) tuples, or floats)")
    kind = kinds.pop()
    if kind == "values":
        point = np.asarray(samples, dtype=float)
        return _Group("values", point)
    if kind == "counts":
        k = np.array([s[0] for s in samples], dtype=np.int64)
        n = np.array([s[1] for s in samples], dtype=np.int64)
        if any(len(s) != 2 for s in samples) or (n <= 0).any() or (k < 0).any() or (k > n).any():
            raise ValueError(f"{name}: every (correct, n) needs 0 <= correct <= n and n > 0")
        return _Group("counts", k / n, k, n)
    vecs = [np.asarray(s) for s in samples]
    if any(v.ndim != 1 or len(v) == 0 for v in vecs):
        raise ValueError(f"{name}: every correctness vector must be 1-D and non-empty")
    vecs = [v.astype(np.float64) for v in vecs]
    if any(not ((v >= 0) & (v <= 1)).all() for v in vecs):
        raise ValueError(f"{name}: per-image scores must lie in [0, 1] (0/1 correctness, or its mean over draws)")
    k = np.array([v.sum() for v in vecs])
    n = np.array([len(v) for v in vecs], dtype=np.int64)
    if len(set(n.tolist())) == 1:
        return _Group("images", k / n, k, n, np.stack(vecs).astype(np.float32))
    # different images per seed: only their counts can be resampled, which needs whole counts
    if any(not np.isin(v, (0, 1)).all() for v in vecs):
        raise ValueError(f"{name}: vectors of different lengths must hold 0/1 correctness (their counts are "
                         "resampled); per-image scores between 0 and 1 need the same images for every seed")
    return _Group("counts", k / n, k.astype(np.int64), n)


def _replicates(groups: list[_Group], paired: bool, same_images: bool, n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap replicates of each group's mean over seeds: seeds resampled (jointly when ``paired``), then
    images - one shared image resample per replicate for "images" groups when ``same_images``, independent
    binomial draws per seed otherwise."""
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100 for a percentile interval, got {n_boot}")
    rng = np.random.default_rng(seed)
    if paired and len({g.seeds for g in groups}) > 1:
        raise ValueError(f"paired groups need the same seeds, got {[g.seeds for g in groups]} seeds")
    shared = [g for g in groups if g.kind == "images"] if same_images else []
    if len({g.matrix.shape[1] for g in shared}) > 1:
        raise ValueError("same_images=True but the groups' correctness vectors differ in length; pass "
                         "same_images=False if they were evaluated on different images")

    def seed_weights(s: int) -> np.ndarray:    # (B, S): how often each seed is drawn in each replicate
        return rng.multinomial(s, np.full(s, 1 / s), size=n_boot).astype(np.float64)

    weights: list[np.ndarray] = []
    for g in groups:
        weights.append(weights[0] if paired and weights else seed_weights(g.seeds))
    shared_idx = [i for i, g in enumerate(groups) if any(g is s for s in shared)]
    out: list[np.ndarray] = [np.empty(n_boot) for _ in groups]
    for i, (g, u) in enumerate(zip(groups, weights)):
        if g.kind == "values":
            out[i] = u @ g.point / g.seeds
        elif i not in shared_idx:
            if g.kind == "images" and not np.isin(g.matrix, (0, 1)).all():
                raise ValueError("same_images=False needs 0/1 correctness vectors: per-image scores between 0 "
                                 "and 1 can only be resampled on shared images")
            # a seed drawn u times contributes u independent image resamples: Binomial(u * n, p) correct
            draws = rng.binomial((u * g.n).astype(np.int64), np.broadcast_to(g.k / g.n, u.shape))
            out[i] = (draws / g.n).sum(axis=1) / g.seeds
    if shared_idx:   # one image resample per replicate, seen by every seed of every shared group
        n_img = shared[0].matrix.shape[1]
        for start in range(0, n_boot, _IMAGE_BLOCK):
            b = min(_IMAGE_BLOCK, n_boot - start)
            picks = rng.integers(0, n_img, size=(b, n_img)) + np.arange(b)[:, None] * n_img
            w = np.bincount(picks.ravel(), minlength=b * n_img).reshape(b, n_img).astype(np.float32)
            for i in shared_idx:
                correct = w @ groups[i].matrix.T                   # (b, S): correct per seed in this resample
                u = weights[i][start:start + b]
                out[i][start:start + b] = (u * correct / n_img).sum(axis=1) / groups[i].seeds
    return out


def _percentile(reps: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _what(groups: list[_Group], same_images: bool, paired: bool = False) -> str:
    """``"percentile bootstrap (2000 resamples) over 3 seeds (paired) and 1000 shared test images"``."""
    kinds = {g.kind for g in groups}
    counts = sorted({g.seeds for g in groups})
    seeds = f"{counts[0]} seeds" if len(counts) == 1 else f"{' vs '.join(str(g.seeds) for g in groups)} seeds"
    seeds += " (paired)" if paired else ""
    if kinds == {"values"}:
        return seeds
    imgs = min(g.images for g in groups if g.images is not None)
    shared = "shared " if "images" in kinds and same_images else ""
    return f"{seeds} and {imgs} {shared}test images"


def bootstrap_accuracy(per_seed: Sequence[Any], same_images: bool = True, level: float = LEVEL,
                       n_boot: int | None = None, seed: int = 0) -> Estimate:
    """Mean accuracy over seeds with a percentile interval from resampling seeds, then test images.

    ``per_seed``: one sample per trained seed - a 0/1 correctness vector, a ``(correct, n)`` tuple, or a
    float (then only seeds are resampled). See the module docstring for how each kind is resampled."""
    n_boot = N_BOOT if n_boot is None else n_boot
    g = _group(per_seed, "per_seed")
    (reps,) = _replicates([g], False, same_images, n_boot, seed)
    lo, hi = _percentile(reps, level)
    return Estimate(float(g.point.mean()), lo, hi,
                    f"percentile bootstrap ({n_boot} resamples) over {_what([g], same_images)}",
                    level, g.seeds, g.images)


def _two_groups(a: Sequence[Any], b: Sequence[Any], paired: bool, same_images: bool, n_boot: int, seed: int):
    ga, gb = _group(a, "a"), _group(b, "b")
    ra, rb = _replicates([ga, gb], paired, same_images, n_boot, seed)
    imgs = [x for x in (ga.images, gb.images) if x is not None]
    seeds = min(ga.seeds, gb.seeds)
    what = f"percentile bootstrap ({n_boot} resamples) over {_what([ga, gb], same_images, paired)}"
    return ga, gb, ra, rb, seeds, (min(imgs) if imgs else None), what


def bootstrap_difference(a: Sequence[Any], b: Sequence[Any], paired: bool = False, same_images: bool = True,
                         level: float = LEVEL, n_boot: int | None = None, seed: int = 0) -> Estimate:
    """``mean(a) - mean(b)`` (e.g. method accuracy minus baseline accuracy) with a percentile interval.

    ``paired=True`` when a and b come from the same seeds (sample i of each from seed i): seeds are resampled
    jointly, which removes the seed-to-seed variation the two share. Correctness vectors of equal length are
    also paired image by image (one image resample for both) unless ``same_images=False``."""
    n_boot = N_BOOT if n_boot is None else n_boot
    ga, gb, ra, rb, seeds, imgs, what = _two_groups(a, b, paired, same_images, n_boot, seed)
    lo, hi = _percentile(ra - rb, level)
    return Estimate(float(ga.point.mean() - gb.point.mean()), lo, hi, what, level, seeds, imgs)


def bootstrap_ratio(a: Sequence[Any], b: Sequence[Any], paired: bool = False, same_images: bool = True,
                    level: float = LEVEL, n_boot: int | None = None, seed: int = 0) -> Estimate:
    """``mean(a) / mean(b)`` (e.g. a speed-up: baseline time over method time) with a percentile interval.

    Pairing as in :func:`bootstrap_difference`. A replicate whose denominator is 0 counts as +inf."""
    n_boot = N_BOOT if n_boot is None else n_boot
    ga, gb, ra, rb, seeds, imgs, what = _two_groups(a, b, paired, same_images, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = np.where(rb == 0, np.inf, ra / np.where(rb == 0, 1, rb))
        value = float(ga.point.mean() / gb.point.mean()) if gb.point.mean() != 0 else math.inf
    lo, hi = _percentile(reps, level) if np.isfinite(reps).all() else (
        float(np.quantile(np.nan_to_num(reps, posinf=np.finfo(float).max), (1 - level) / 2)), math.inf)
    return Estimate(value, lo, hi, what, level, seeds, imgs)


# ------------------------------------------------------------------ rules
def _num(x: float, scale: float, unit: str) -> str:
    return f"{x * scale:g}{unit}"


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Decides a verdict from one :class:`Estimate` and says how in words (:attr:`text`).

    ``quantity`` names what the interval is of (``"(QAT - float) accuracy under noise"``); ``scale`` and
    ``unit`` only format thresholds in the text (``scale=100, unit=" points"`` for accuracy fractions)."""

    quantity: str = "the estimate"
    scale: float = 1.0
    unit: str = ""
    level: float = LEVEL

    def decide(self, est: Estimate) -> str:
        raise NotImplementedError

    def estimate(self, *estimates: Estimate) -> Estimate:
        """The one estimate this rule judges, from what :func:`make_claim` was given (one, by default)."""
        if len(estimates) != 1:
            raise ValueError(f"{type(self).__name__} judges one estimate, got {len(estimates)}")
        return estimates[0]

    @property
    def ci(self) -> str:
        return f"the {self.level * 100:g}% CI of {self.quantity}"

    @property
    def label(self) -> str:
        """What the judged estimate is of, for the default ``measured`` text of :func:`make_claim`."""
        return self.quantity

    @property
    def text(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class GreaterThan(Rule):
    """Supported if the interval lies above ``threshold``; not supported if it lies at or below it."""

    threshold: float

    def decide(self, est: Estimate) -> str:
        if est.lo > self.threshold:
            return SUPPORTED
        if est.hi <= self.threshold:
            return NOT_SUPPORTED
        return INCONCLUSIVE

    @property
    def text(self) -> str:
        t = _num(self.threshold, self.scale, self.unit)
        return (f"supported if {self.ci} lies above {t}"
                f"; not supported if it lies at or below {t}; inconclusive otherwise")


@dataclass(frozen=True)
class LessThan(Rule):
    """Supported if the interval lies below ``threshold``; not supported if it lies at or above it."""

    threshold: float

    def decide(self, est: Estimate) -> str:
        if est.hi < self.threshold:
            return SUPPORTED
        if est.lo >= self.threshold:
            return NOT_SUPPORTED
        return INCONCLUSIVE

    @property
    def text(self) -> str:
        t = _num(self.threshold, self.scale, self.unit)
        return (f"supported if {self.ci} lies below {t}"
                f"; not supported if it lies at or above {t}; inconclusive otherwise")


def Difference(a: str, b: str, margin: float = 0.0, metric: str = "", scale: float = 1.0, unit: str = "",
               level: float = LEVEL) -> GreaterThan:
    """"``a`` beats ``b`` by more than ``margin``": :class:`GreaterThan` on the estimate of ``a - b``
    (from :func:`bootstrap_difference`), worded as ``(a - b) metric``."""
    return GreaterThan(margin, quantity=f"({a} - {b}) {metric}".rstrip(), scale=scale, unit=unit, level=level)


@dataclass(frozen=True)
class WithinRange(Rule):
    """Supported if the whole interval lies in ``[lo, hi]``; not supported if it lies entirely outside it.

    A paper's range such as "memory overhead 10-20%" is judged strictly: an interval reaching below ``lo``
    (e.g. a negative overhead against a range starting at 0) cannot be supported."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not self.lo <= self.hi:
            raise ValueError(f"WithinRange needs lo <= hi, got [{self.lo}, {self.hi}]")

    def decide(self, est: Estimate) -> str:
        if self.lo <= est.lo and est.hi <= self.hi:
            return SUPPORTED
        if est.hi < self.lo or est.lo > self.hi:
            return NOT_SUPPORTED
        return INCONCLUSIVE

    @property
    def text(self) -> str:
        r = f"[{_num(self.lo, self.scale, self.unit)}, {_num(self.hi, self.scale, self.unit)}]"
        return (f"supported if {self.ci} lies inside {r}; not supported if it lies entirely outside {r}; "
                "inconclusive otherwise")


@dataclass(frozen=True)
class AtLeastFactor(Rule):
    """Supported if the interval of a ratio lies at or above ``factor``; not supported if it lies below it."""

    factor: float
    unit: str = field(default="x", kw_only=True)

    def decide(self, est: Estimate) -> str:
        if est.lo >= self.factor:
            return SUPPORTED
        if est.hi < self.factor:
            return NOT_SUPPORTED
        return INCONCLUSIVE

    @property
    def text(self) -> str:
        f = _num(self.factor, self.scale, self.unit)
        return (f"supported if {self.ci} lies at or above {f}"
                f"; not supported if it lies below {f}; inconclusive otherwise")


@dataclass(frozen=True)
class Separated(Rule):
    """Two groups estimated separately (e.g. two Wilson rates): supported if ``a``'s interval lies entirely
    above ``b``'s, not supported if entirely at or below it, inconclusive when they overlap.

    Pass both estimates to :func:`make_claim` as a tuple ``(est_a, est_b)``; the claim records
    ``a - b`` with the interval ``[a.lo - b.hi, a.hi - b.lo]`` (the differences both intervals allow), which
    is above 0 exactly when the intervals separate. Stricter than :func:`Difference` on a paired bootstrap;
    use that when the raw per-seed samples are at hand."""

    a: str
    b: str

    def estimate(self, *estimates: Estimate) -> Estimate:
        if len(estimates) != 2:
            raise ValueError(f"Separated compares two estimates (a, b), got {len(estimates)}")
        ea, eb = estimates
        if ea.level != eb.level:
            raise ValueError(f"Separated: the two intervals have different levels ({ea.level}, {eb.level})")
        seeds = [s for s in (ea.seeds, eb.seeds) if s is not None]
        imgs = [n for n in (ea.test_images, eb.test_images) if n is not None]
        return Estimate(ea.value - eb.value, ea.lo - eb.hi, ea.hi - eb.lo,
                        f"{self.a}: {ea.method}; {self.b}: {eb.method}", ea.level,
                        min(seeds) if seeds else None, min(imgs) if imgs else None)

    def decide(self, est: Estimate) -> str:
        return GreaterThan(0.0).decide(est)

    @property
    def label(self) -> str:
        what = f" {self.quantity}" if self.quantity != "the estimate" else ""
        return f"({self.a} - {self.b}){what}"

    @property
    def text(self) -> str:
        pct = f"{self.level * 100:g}%"
        what = f" ({self.quantity})" if self.quantity != "the estimate" else ""
        return (f"supported if the {pct} CI of {self.a}{what} lies entirely above that of {self.b}; "
                f"not supported if it lies entirely at or below it; inconclusive if they overlap")


# ------------------------------------------------------------------ claims
def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def make_claim(name: str, statement: str, rule: Rule, estimate: Estimate | tuple[Estimate, ...], *,
               seeds: int | Sequence[int] | str | None = None, test_images: int | None = None, measured: str = "",
               min_seeds: int = QUICK_MIN_SEEDS) -> Claim:
    """A :class:`~lenetlab.experiments.base.Claim` decided by ``rule`` from ``estimate``.

    ``seeds``: the training seeds behind the estimate (a count or the list; default: the estimate's own
    count, which a given count must match), or :data:`EXACT` for pure counting with no training (no seed
    guard). Fewer than ``min_seeds`` seeds make the verdict inconclusive, and ``measured`` says why and what
    the interval alone would have said. ``test_images`` defaults to the estimate's. ``measured`` defaults to
    the estimate with its interval, in the rule's units (the interval's method goes into the rule column).
    ``estimate`` is a tuple ``(a, b)`` for :class:`Separated`."""
    from lenetlab.experiments.base import Claim  # not at the top: base imports this module

    est = rule.estimate(*estimate) if isinstance(estimate, tuple) else rule.estimate(estimate)
    if est.level != rule.level:
        raise ValueError(f"claim {name!r}: the rule is stated at {rule.level}, the interval is at {est.level}")
    if seeds is None:
        if est.seeds is None:
            raise ValueError(f"claim {name!r}: the estimate does not know its seeds; pass seeds= (or stats.EXACT)")
        seeds = est.seeds
    if isinstance(seeds, str):
        if seeds != EXACT:
            raise ValueError(f"claim {name!r}: seeds must be a count, a list of seeds, or stats.EXACT")
        n_seeds = None
    else:
        n_seeds = seeds if isinstance(seeds, int) else len(seeds)
        if n_seeds <= 0:
            raise ValueError(f"claim {name!r}: {n_seeds} seeds; a claim with no training passes seeds=stats.EXACT")
        seeds = n_seeds if isinstance(seeds, int) else [int(s) for s in seeds]
        if est.seeds is not None and est.seeds != n_seeds:
            raise ValueError(f"claim {name!r}: the estimate rests on {est.seeds} seeds, the claim says {n_seeds}")
    verdict = rule.decide(est)
    text = measured or f"{rule.label}: {est.format(rule.scale, rule.unit)}"
    if n_seeds is not None and n_seeds < min_seeds:
        text += (f" [inconclusive: {n_seeds} seed{'s' if n_seeds != 1 else ''}, a verdict needs >= {min_seeds}; "
                 f"the interval alone says {verdict}]")
        verdict = INCONCLUSIVE
    return Claim(name, statement, text, rule=f"{rule.text} [interval: {est.method}]", seeds=seeds,
                 test_images=test_images if test_images is not None else est.test_images,
                 estimate=_finite(est.value), interval=[_finite(est.lo), _finite(est.hi)], verdict=verdict)


NOT_TESTABLE = "not testable here; always inconclusive"


def untestable(name: str, statement: str, why: str) -> Claim:
    """A claim this reproduction cannot test (an energy saving without an energy model, a hardware result
    without the hardware): inconclusive, with the reason as its measurement and :data:`NOT_TESTABLE` as its
    rule, so it is listed rather than silently dropped."""
    from lenetlab.experiments.base import Claim

    return Claim(name, statement, why, rule=NOT_TESTABLE, verdict=INCONCLUSIVE)
