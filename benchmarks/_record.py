"""The machine-readable record a benchmark script writes with ``--json PATH`` (read by run_all.py).

A script builds one :class:`Record` from what its run measured and writes it at the end (also when a check
failed, before it exits non-zero). The object written::

    {"benchmark": "noise_eval",               # the script's name
     "argv": ["benchmarks/noise_eval.py", "--images", "200", ...],
     "ratios": {"fast_vs_reference_all": 4.3, ...},     # key -> number (x times; higher = the new thing wins)
     "goals": [{"name": "...", "value": 4.3, "target": 10.0, "op": ">=", "met": false}, ...],
     "notes": ["..."],                        # free text: what was left out, what a number means
     "checks": {"results_identical": true},   # name -> bool (correctness checks the run made)
     "values": {...},                         # the raw measurements (images/s, seconds, bytes), any JSON
     "skipped": null}                         # or the reason the benchmark could not run here (exit status 0)

A goal is met when ``value op target`` holds (op ">=" or "<="); a value that is not a finite number is
written as null and its goal is not met.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the measured ratios and goals as a JSON object "
                                                       "to PATH (format: benchmarks/_record.py)")


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is not a finite number (JSON has no NaN or infinity)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _clean(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (tuples become lists, NumPy scalars Python ones)."""
    if getattr(obj, "ndim", None) == 0 and callable(getattr(obj, "item", None)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` (non-finite floats as null) as JSON to ``path`` atomically (lenetlab.fileio)."""
    from lenetlab.fileio import atomic_write_bytes

    data = json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"     # before anything is written
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data.encode())


class Record:
    """What one benchmark run measured; :meth:`write` is a no-op when ``path`` is None (no --json given)."""

    def __init__(self, benchmark: str, argv: list[str] | None = None):
        self.data: dict[str, Any] = {
            "benchmark": benchmark, "argv": list(sys.argv if argv is None else argv), "ratios": {}, "goals": [],
            "notes": [], "checks": {}, "values": {}, "skipped": None}

    def ratio(self, key: str, value: float) -> None:
        self.data["ratios"][key] = finite(value)

    def goal(self, name: str, value: float, target: float, op: str = ">=") -> bool:
        """Record a goal; returns whether it is met (``value >= target`` or ``value <= target``)."""
        if op not in (">=", "<="):
            raise ValueError(f"op must be '>=' or '<=', not {op!r}")
        v, t = finite(value), finite(target)
        met = v is not None and t is not None and (v >= t if op == ">=" else v <= t)
        self.data["goals"].append({"name": name, "value": v, "target": t, "op": op, "met": met})
        return met

    def note(self, text: str) -> None:
        self.data["notes"].append(str(text))

    def check(self, name: str, ok: bool) -> None:
        self.data["checks"][name] = bool(ok)

    def value(self, key: str, value: Any) -> None:
        self.data["values"][key] = value

    def skip(self, reason: str) -> None:
        self.data["skipped"] = str(reason)

    def write(self, path: str | os.PathLike | None) -> None:
        if path is not None:
            write_json(path, self.data)
