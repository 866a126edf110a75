"""Sweep files: parse, validate and expand a SWEEP.toml into trials (format: :mod:`lenetlab.sweep`).

Everything that can be wrong with a sweep file - TOML syntax, unknown
sections or keys, an unknown distribution, a config key the trainer does not
have, a wrong value type - is a :class:`LenetlabError` raised here, in the
parent process, before any trial starts.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError

KINDS = ("train", "experiment", "function")
MODES = ("quick", "full", "tiny")
SECTIONS = {"sweep", "base", "grid", "random"}
SWEEP_KEYS = {"kind", "name", "metric", "goal", "function", "save_runs", "experiment", "mode"}
# what an experiment trial reports: claim verdicts (its tables stay in its own result.json)
EXPERIMENT_METRICS = ("claims_supported", "claims_refuted", "claims_inconclusive")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
# the numbers a training trial reports (the trainer's summary, less what varies between machines)
# at most this many trials in one sweep file (a typo like n = 10000000 is refused, not expanded)
MAX_TRIALS = 100_000
TRAIN_METRICS = ("test_accuracy", "test_error_percent", "val_accuracy", "epochs", "params", "train_images",
                 "test_images", "stopped_early")


@dataclass
class Trial:
    id: str                    # hash of everything the trial's result depends on
    index: int                 # position in the expanded sweep (display only)
    params: dict[str, Any]     # the swept values, dotted keys
    seed: int | None
    payload: dict[str, Any]    # what the worker needs: picklable, JSON-able


@dataclass
class Sweep:
    kind: str
    name: str
    metric: str
    goal: str                  # max | min
    base: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: dict[str, Any] = field(default_factory=dict)     # n, seed, and key -> distribution
    function: str | None = None
    save_runs: bool = False
    experiment: str | None = None
    mode: str = "quick"

    def points(self) -> list[dict[str, Any]]:
        """Every trial's parameters: each random sample combined with each grid point, in a fixed order."""
        keys = list(self.grid)
        grid = [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]
        return [{**g, **r} for r in (self._samples() or [{}]) for g in grid]

    def _samples(self) -> list[dict[str, Any]]:
        if not self.random:
            return []
        rng = random.Random(self.random.get("seed", 0))
        dists = {k: v for k, v in self.random.items() if k not in ("n", "seed")}
        return [{k: _draw(rng, k, dists[k]) for k in sorted(dists)} for _ in range(self.random["n"])]

    def trials(self) -> list[Trial]:
        """Expand and resolve every trial; a bad key or value in any of them fails here."""
        out, seen = [], set()
        for i, params in enumerate(self.points()):
            payload, seed = self._payload(params)
            tid = trial_id(payload)
            if tid in seen:      # e.g. a random choice drawn twice: the same trial runs once
                continue
            seen.add(tid)
            out.append(Trial(tid, i, params, seed, payload))
        return out

    def _payload(self, params: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        if self.kind == "train":
            from lenetlab.config import to_dict
            from lenetlab.train.presets import resolve

            overrides: dict[str, Any] = {}
            for k, v in params.items():
                parts = k.split(".")
                if len(parts) < 2 or not all(parts):
                    raise LenetlabError(f"sweep key {k!r}: training sweeps take dotted config keys "
                                        "such as train.lr or model.activation")
                *parents, last = parts
                node = overrides
                for part in parents:
                    node = node.setdefault(part, {})
                    if not isinstance(node, dict):
                        raise LenetlabError(f"sweep key {k!r}: {part!r} is also swept as a value, not a table")
                if isinstance(node.get(last), dict):
                    raise LenetlabError(f"sweep key {k!r}: also a table of other swept keys")
                node[last] = v
            # resolve() validates: unknown keys, wrong types and unknown model options are errors
            cfg = resolve(file_data=self.base, overrides=overrides)
            _check_model(json.dumps(to_dict(cfg.model), sort_keys=True))
            return {"kind": "train", "config": to_dict(cfg)}, cfg.train.seed
        if self.kind == "experiment":
            from lenetlab.experiments.base import _apply_options
            from lenetlab.registry import get

            cls = get("experiment", self.experiment)
            options = dict(self.base, **params)
            _apply_options(cls().settings(self.mode == "full", self.mode == "tiny"), options)  # unknown key: error
            if not cls.accepts_options:
                raise LenetlabError(f"experiment {self.experiment!r} takes no setting overrides yet, so it cannot "
                                    "be swept (its run() must read settings through ctx.resolve_settings)")
            payload = {"kind": "experiment", "experiment": self.experiment, "mode": self.mode, "options": options}
            return payload, options.get("seed")
        return {"kind": "function", "function": self.function, "params": dict(self.base, **params)}, \
            params.get("seed", self.base.get("seed"))


@functools.lru_cache(maxsize=64)
def _check_model(model_json: str) -> None:
    """Build the model once: an unknown activation (or other option value) fails before any trial runs."""
    from lenetlab.models import create_model

    m = json.loads(model_json)
    create_model(m["name"], **m["options"])


def trial_id(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _draw(rng: random.Random, key: str, dist: dict[str, Any]) -> Any:
    (name, arg), = dist.items()
    if name == "choice":
        return arg[rng.randrange(len(arg))]
    lo, hi = arg
    if name == "uniform":
        return rng.uniform(lo, hi)
    if name == "log_uniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.randint(lo, hi)      # int_uniform, both ends included


def _flatten(table: dict[str, Any], prefix: str = "", leaf=lambda v: not isinstance(v, dict)) -> dict[str, Any]:
    """``{train: {lr: [..]}}`` and ``{"train.lr": [..]}`` are the same sweep key."""
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if leaf(v):
            out[key] = v
        else:
            out.update(_flatten(v, key + ".", leaf))
    return out


def _is_distribution(v: Any) -> bool:
    # {log_uniform = [..]} is a leaf; {lr = {log_uniform = [..]}} is a table of keys
    return not isinstance(v, dict) or not any(isinstance(x, dict) for x in v.values())


def _check_distribution(key: str, d: Any) -> None:
    where = f"[random] {key!r}"
    if not isinstance(d, dict) or len(d) != 1:
        raise LenetlabError(f"{where}: expected one distribution, e.g. {{ log_uniform = [1e-4, 1e-2] }}; "
                            f"choose from: {', '.join(DISTRIBUTIONS)}")
    (name, arg), = d.items()
    if name not in DISTRIBUTIONS:
        raise LenetlabError(f"{where}: unknown distribution {name!r}; choose from: {', '.join(DISTRIBUTIONS)}")
    if name == "choice":
        if not isinstance(arg, list) or not arg:
            raise LenetlabError(f"{where}: choice needs a non-empty list")
        return
    nums = isinstance(arg, list) and len(arg) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in arg)
    if not nums or arg[0] > arg[1]:
        raise LenetlabError(f"{where}: {name} needs [low, high], finite numbers with low <= high")
    if name == "log_uniform" and arg[0] <= 0:
        raise LenetlabError(f"{where}: log_uniform needs positive bounds")
    if name == "int_uniform" and not all(isinstance(a, int) for a in arg):
        raise LenetlabError(f"{where}: int_uniform needs integer bounds")


def parse(data: dict[str, Any], where: str = "sweep") -> Sweep:
    """Build a :class:`Sweep` from a parsed TOML document (strict)."""
    unknown = set(data) - SECTIONS
    if unknown:
        raise LenetlabError(f"{where}: unknown section {sorted(unknown)[0]!r}; valid: {', '.join(sorted(SECTIONS))}")
    head = data.get("sweep", {})
    if not isinstance(head, dict):
        raise LenetlabError(f"{where}: [sweep] must be a table")
    bad = set(head) - SWEEP_KEYS
    if bad:
        raise LenetlabError(f"{where}: unknown key {sorted(bad)[0]!r} in [sweep]; "
                            f"valid: {', '.join(sorted(SWEEP_KEYS))}")
    kind = head.get("kind", "train")
    if kind not in KINDS:
        raise LenetlabError(f"{where}: unknown sweep kind {kind!r}; choose from: {', '.join(KINDS)}")
    for key in ("function", "experiment"):
        if (kind == key) != (key in head):
            raise LenetlabError(f"{where}: [sweep] {key} = ... goes with (and only with) kind = \"{key}\"")
        if key in head and not isinstance(head[key], str):
            raise LenetlabError(f"{where}: [sweep] {key} must be a name (a string), got {type(head[key]).__name__}")
    mode = head.get("mode", "quick")
    if mode not in MODES or ("mode" in head and kind != "experiment"):
        raise LenetlabError(f"{where}: [sweep] mode is for experiment sweeps: one of {', '.join(MODES)}")
    goal = head.get("goal", "max")
    if goal not in ("max", "min"):
        raise LenetlabError(f"{where}: goal must be \"max\" or \"min\", got {goal!r}")
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise LenetlabError(f"{where}: [base] must be a table")

    for section in ("grid", "random"):
        if not isinstance(data.get(section, {}), dict):
            raise LenetlabError(f"{where}: [{section}] must be a table")
    grid = _flatten(data.get("grid", {}), leaf=lambda v: not isinstance(v, dict))
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise LenetlabError(f"{where}: [grid] {k!r} must be a non-empty list of values")
    rnd = dict(data.get("random", {}))
    if rnd:
        n, seed = rnd.pop("n", None), rnd.pop("seed", 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise LenetlabError(f"{where}: [random] needs n = number of samples (an integer >= 1)")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise LenetlabError(f"{where}: [random] seed must be an integer")
        dists = _flatten(rnd, leaf=_is_distribution)
        if not dists:
            raise LenetlabError(f"{where}: [random] names no parameter to sample")
        for k, d in dists.items():
            _check_distribution(k, d)
        both = set(dists) & set(grid)
        if both:
            raise LenetlabError(f"{where}: {sorted(both)[0]!r} is in both [grid] and [random]")
        rnd = {"n": n, "seed": seed, **dists}
    if not grid and not rnd:
        raise LenetlabError(f"{where}: nothing to sweep; add a [grid] or a [random] section")
    total = math.prod(len(v) for v in grid.values()) * (rnd["n"] if rnd else 1)
    if total > MAX_TRIALS:
        raise LenetlabError(f"{where}: {total:,} trials is more than {MAX_TRIALS:,}; split the sweep")
    name = head.get("name", Path(where).stem)
    metric = head.get("metric", {"train": "test_accuracy", "experiment": "claims_supported"}.get(kind, ""))
    sw = Sweep(kind, str(name), str(metric), goal, base, grid, rnd, head.get("function"),
               bool(head.get("save_runs", False)), head.get("experiment"), mode)
    if kind == "function":
        from lenetlab.sweep.trials import import_function

        import_function(sw.function)     # fails now, not in every worker
    allowed = {"train": TRAIN_METRICS, "experiment": EXPERIMENT_METRICS}.get(kind)
    headline = kind == "experiment" and metric.startswith("metrics.") and len(metric) > len("metrics.")
    if allowed and metric not in allowed and not headline:
        more = ", or metrics.NAME (a headline number the experiment reports)" if kind == "experiment" else ""
        raise LenetlabError(f"{where}: metric {metric!r} is not reported by {kind} trials; choose from: "
                            f"{', '.join(allowed)}{more}")
    sw.trials()     # resolves every trial's config: a bad key or value anywhere fails now
    return sw


def load(path: str | Path) -> Sweep:
    """Read and validate a sweep file."""
    from lenetlab.config import load_toml

    if str(path).endswith(".json"):
        raise LenetlabError(f"{path}: a sweep file is TOML")
    return parse(load_toml(str(path)), str(path))
