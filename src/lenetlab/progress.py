"""Progress bars for the long commands: one helper, drawn on stderr, only on a terminal.

Example::

    from lenetlab.progress import progress_bar
    with progress_bar("faults", total=len(faults), quiet=a.quiet) as advance:
        for part in parts:
            ...
            advance(len(part))

The block yields a :class:`Bar`: call it with the amount of work just done (``advance(n=1)``); ``set_total``
once the amount of work is known, ``start`` for a new stretch of work with its own count and clock (the next
epoch), ``info`` for a short note after the count. A library function takes it as a plain
``progress(n)`` callback.

The bar (rich; description, bar, done/total, elapsed, ETA) is drawn on **stderr** and is transient: it is gone
when the block ends. It is drawn only when stderr is a terminal and ``quiet`` is false; otherwise every call
is a no-op and rich is not even imported, so what a command writes to a file or a pipe, and everything it
writes to stdout, is the same with or without it. While a bar is drawn, lines written to stderr (warnings) and,
when stdout is a terminal too, to stdout (``print`` or a rich console) are printed above the bar instead of
through it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SPEED_PERIOD = 3600.0   # seconds of history behind the ETA (rich's default, 30 s, forgets minutes-long steps)
_STDERR: Any = None     # the rich console on stderr, made on first use


class Bar:
    """What :func:`progress_bar` yields; every method is a no-op when no bar is drawn (:attr:`enabled`)."""

    def __init__(self, progress: Any = None, task: Any = None):
        self._p, self._task = progress, task

    @property
    def enabled(self) -> bool:
        """True when a bar is drawn (callers skip work done only for the bar, e.g. a device sync)."""
        return self._p is not None

    def __call__(self, n: int = 1) -> None:
        """``n`` more units of work are done."""
        if self._p is not None and n:
            self._p.advance(self._task, n)

    def set_total(self, total: int | None) -> None:
        """The amount of work, once known (None: not known, the bar shows done/?)."""
        if self._p is not None and total is not None:
            self._p.update(self._task, total=total)

    def info(self, text: str) -> None:
        """A short note shown after the count (e.g. the last loss)."""
        if self._p is not None:
            self._p.update(self._task, info=text)

    def start(self, description: str, total: int | None = None, done: int = 0) -> None:
        """Begin a new stretch of work: new description, total and count (``done`` already finished, e.g. reused
        from a previous run: it is shown but does not speed up the ETA), and a fresh clock."""
        if self._p is not None:
            self._p.remove_task(self._task)
            self._task = _add(self._p, description, total, done)


def _add(p: Any, description: str, total: int | None, done: int) -> Any:
    task = p.add_task(description, total=total, completed=done, info="")
    p.advance(task, 0)   # a first sample at the start: the ETA counts the first step's time too
    return task


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (ValueError, AttributeError):   # closed or replaced by something that is not a file
        return False


@contextmanager
def progress_bar(description: str, total: int | None = None, *, quiet: bool = False, console: Any = None,
                 done: int = 0) -> Iterator[Bar]:
    """A transient rich progress bar on stderr while the block runs; a no-op :class:`Bar` when ``quiet`` or when
    stderr (``console``, a rich Console, where given) is not a terminal. ``done``: work already finished (shown,
    not counted towards the ETA)."""
    on = not quiet and (console.is_terminal if console is not None else stderr_is_terminal())
    if not on:
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    global _STDERR
    if console is None:
        # one console for every bar: a bar opened while another is drawn is drawn below it, not over it
        console = _STDERR = _STDERR or Console(stderr=True)

    class Eta(TimeRemainingColumn):
        def render(self, task):   # no total, no ETA: the count and the elapsed time say it all
            return Text("") if task.total is None else Text.assemble("eta ", super().render(task))

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                 TimeElapsedColumn(), Eta(), console=console, transient=True, redirect_stdout=False,
                 redirect_stderr=True, speed_estimate_period=SPEED_PERIOD)   # warnings: above the bar
    with p:
        restore = _stdout_above(console)
        try:
            yield Bar(p, _add(p, description, total, done))
        finally:
            restore()


def _stdout_above(console: Any):
    """While the bar is drawn: stdout, when it is a terminal, goes through the bar's console (above the bar).
    Returns the function that puts stdout back."""
    from rich.file_proxy import FileProxy

    class Above(FileProxy):
        @property
        def rich_proxied_file(self):   # rich consoles printing to stdout come through here too
            raise AttributeError("rich_proxied_file")

    out = sys.stdout
    try:
        tty = out is not None and out.isatty() and not isinstance(out, FileProxy)
    except (ValueError, AttributeError):
        tty = False
    if not tty:
        return lambda: None
    proxy = Above(console, out)
    sys.stdout = proxy

    def restore() -> None:
        proxy.flush()
        if sys.stdout is proxy:
            sys.stdout = out

    return restore
