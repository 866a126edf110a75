"""Checked numbers for command-line options, refused while the command line is parsed.

Every numeric flag of every ``lenetlab`` command takes its value through one of
these argparse ``type`` callables. A value that is not a number, not finite
(nan, inf), or outside the option's range raises :class:`LenetlabError` from
inside ``parse_args`` - argparse lets any exception other than
``ValueError``/``TypeError`` through - so ``lenetlab.cli.main`` prints one
``lenetlab: error: ...`` line and exits 2 before the command has loaded or
written anything.

Example::

    p.add_argument("--limit", type=count("--limit"))            # 1 .. MAX_COUNT
    p.add_argument("--sigma", type=real("--sigma", lo=0.0, hi=MAX_SIGMA))
    p.add_argument("--seed", type=seed(), default=0)

:func:`check` applies the same rule to a value that did not come from the
command line (a library call, an attack option parsed as a TOML literal).
"""

from __future__ import annotations

import math
from typing import Any

from lenetlab.errors import LenetlabError

MAX_COUNT = 2**31 - 1      # images, trials, top-k ...: beyond this numpy/torch indices overflow
MAX_SEED = 2**32 - 1       # every seed is usable by numpy, torch and random alike
MAX_STEPS = 100_000        # iterations of one attack / fit (each is a full pass over the images)
L2_EPS_MAX = 64.0   # an L2 attack radius above every [0, 1] image's diameter here (1x28x28: 28; 3x32x32: 55.4)
MAX_SIGMA = 1e6            # noise std in activation units: far past "all noise", still finite in float32


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is None and not lo_open:
        return f">= {lo:g}" if isinstance(lo, float) else f">= {lo}"
    if lo is not None and hi is None:
        return f"> {lo:g}" if isinstance(lo, float) else f"> {lo}"
    left = "(-inf" if lo is None else ("(" if lo_open else "[") + (f"{lo:g}" if isinstance(lo, float) else str(lo))
    right = "inf)" if hi is None else (f"{hi:g}" if isinstance(hi, float) else str(hi)) + (")" if hi_open else "]")
    return f"in {left}, {right}"


def check(value: Any, flag: str, *, integer: bool = False, lo: float | None = None, hi: float | None = None,
          lo_open: bool = False, hi_open: bool = False) -> Any:
    """``value`` if it is a finite number (an integer with ``integer``) in the range, else LenetlabError."""
    where = _interval(lo, hi, lo_open, hi_open)
    what = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise LenetlabError(f"{flag} must be {what} {where}, got {value!r}")
    if not integer and not math.isfinite(value):
        raise LenetlabError(f"{flag} must be a finite number {where}, got {value!r}")
    low = lo is None or (value > lo if lo_open else value >= lo)
    high = hi is None or (value < hi if hi_open else value <= hi)
    if not (low and high):
        raise LenetlabError(f"{flag} must be {where}, got {value!r}")
    return value


class Number:
    """An argparse ``type``: text -> int or float, checked by :func:`check` (errors are LenetlabError)."""

    def __init__(self, flag: str, integer: bool, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False):
        self.flag, self.integer = flag, integer
        self.bounds = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
        self.__name__ = "int" if integer else "float"   # argparse names the type in its messages

    def __call__(self, text: str) -> int | float:
        s = str(text).strip()
        try:
            value: int | float = int(s) if self.integer else float(s)
        except ValueError:
            what = "an integer" if self.integer else "a number"
            shown = s if len(s) <= 40 else s[:37] + "..."
            raise LenetlabError(f"{self.flag} must be {what} "
                                f"{_interval(**self.bounds)}, got {shown!r}") from None
        return check(value, self.flag, integer=self.integer, **self.bounds)

    def __repr__(self) -> str:
        return f"Number({self.flag!r}, integer={self.integer}, {self.bounds})"


def count(flag: str, lo: int = 1, hi: int = MAX_COUNT) -> Number:
    """An integer in [lo, hi] (default: a positive count)."""
    return Number(flag, True, lo, hi)


def real(flag: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False) -> Number:
    """A finite float in the given range (open ends with ``lo_open`` / ``hi_open``)."""
    return Number(flag, False, lo, hi, lo_open, hi_open)


def seed(flag: str = "--seed") -> Number:
    return Number(flag, True, 0, MAX_SEED)


def port(flag: str = "--port") -> Number:
    """A TCP port; 0 asks the system for any free one."""
    return Number(flag, True, 0, 65535)
