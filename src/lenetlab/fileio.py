"""Files that survive a kill: atomic writes and one append-only JSONL journal.

Atomic writes: write to a temporary file in the same directory, flush and
fsync, then ``os.replace`` it over the target (atomic on POSIX), so a reader
never sees a half-written file. A kill between the write and the rename leaves
that temporary file (``.NAME.XXXXXXXX.tmp``) behind; the next atomic write of
the same target that succeeds deletes such leftovers of that target (only names
of exactly that pattern, and only files no live write holds: each write keeps
an exclusive ``flock`` on its temporary file until the rename).
:class:`JsonlJournal`: append-only JSON lines whose cut-short last line never
swallows the next record.

Test-only hook: with ``LENETLAB_KILL_AFTER_WRITES=N`` in its environment, a process SIGKILLs itself in its
Nth write through this module - an atomic write after its temporary file is complete but before the rename,
a journal append halfway through its line - so ``tests/test_kill_anywhere.py`` can cut a command at the
same point every time. The variable is taken out of the environment at import (child processes do not
inherit it) and only the importing process counts.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

_UMASK = os.umask(0o022)   # read the process umask (the only way is to set it) and put it back
os.umask(_UMASK)
_KILL_AT = int(os.environ.pop("LENETLAB_KILL_AFTER_WRITES", "0") or 0)   # test-only, see the module doc
_KILL_PID = os.getpid()
_writes = 0
try:
    import fcntl
except ImportError:   # no flock (not POSIX): leftovers are then never cleaned, only ignored
    fcntl = None
_TMP_CHARS = "[a-z0-9_]{8}"   # tempfile.mkstemp's random part: 8 of these characters


def _kill_point() -> None:
    """Test-only: SIGKILL this process at its ``LENETLAB_KILL_AFTER_WRITES``-th write (see the module doc)."""
    global _writes
    if _KILL_AT > 0 and os.getpid() == _KILL_PID:
        _writes += 1
        if _writes == _KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if fcntl is not None:   # held until the rename: a live write's temporary file is never taken for a leftover
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes it owner-only; give it a plain new file's mode
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _kill_point()
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _raise_naming(e, path)
        raise
    finally:
        os.close(fd)
    remove_leftovers(path)


def leftovers(path: str | os.PathLike) -> list[Path]:
    """The temporary files that atomic writes of ``path`` left behind when they were killed before their rename
    (``.NAME.XXXXXXXX.tmp`` beside it, NAME = ``path``'s name), whether or not a write holds them now."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + _TMP_CHARS + re.escape(".tmp"))
    try:
        with os.scandir(path.parent) as it:
            return sorted(path.parent / e.name for e in it
                          if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False))
    except OSError:
        return []


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of killed atomic writes of ``path`` (:func:`leftovers`) that no running write
    holds (each write keeps an exclusive flock on its own until the rename); returns those deleted. Called after
    every successful atomic write of ``path``. Never raises: a file that cannot be checked or deleted stays."""
    if fcntl is None:
        return []
    gone = []
    for p in leftovers(path):
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # fails while a live write holds it
            os.unlink(p)
            gone.append(p)
        except OSError:
            pass
        finally:
            os.close(fd)
    return gone


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)   # the errors of a full disk (or a used-up quota)


def _raise_naming(e: BaseException, path: Path) -> None:
    """A full disk: raise the error again naming ``path`` (the file the caller asked for, not a temporary
    one), so ``lenetlab`` can say in one line what it could not write."""
    if isinstance(e, OSError) and e.errno in DISK_FULL:
        raise OSError(e.errno, e.strerror, str(path)) from e


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, w)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kw: Any) -> None:
    """``fig.savefig(path, **savefig_kw)`` (a matplotlib figure), written atomically: a kill or a full disk
    never leaves a cut-short image in place of a whole one."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **savefig_kw)
    atomic_write_bytes(path, buf.getvalue())


def is_leftover(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the temporary file of an atomic write that never finished (a kill between the
    write and the rename leaves one: ``.NAME.XXXXXXXX.tmp``); nothing reads it."""
    return re.fullmatch(r"\..+\." + _TMP_CHARS + r"\.tmp", Path(path).name) is not None


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


class JsonlJournal:
    """An append-only JSON-lines file, one record (a JSON object) per line, safe against a cut last line.

    A kill in the middle of :meth:`append` can leave the last line cut short. Appending blindly after
    such a fragment glues the next record onto it, and the reader then drops both - the finished work
    the second record stood for is lost on the following resume. So every append first looks at the
    file's tail: a fragment that is not a complete JSON object is truncated away (it was never a
    finished record); a complete object that merely lacks its newline (a hand edit) is kept and ended.
    Readers see complete records only. One writer per file (callers that may race hold a lock).

    Used for ``cells.jsonl`` (experiment cells), ``trials.jsonl`` (sweeps) and ``metrics.jsonl`` (runs).

    Example::

        j = JsonlJournal("runs/x/cells.jsonl")
        j.append({"key": "a", "value": 1})
        j.read()   # [{'key': 'a', 'value': 1}]
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync

    def read(self) -> list[dict[str, Any]]:
        """The complete records, in order. Lines that are not a JSON object (a cut-short line) are skipped."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        lines = data[:end].splitlines()
        if _record(data[end:]) is not None:
            lines.append(data[end:])
        return [r for r in map(_record, lines) if r is not None]

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line at the end (after repairing a cut-short tail), flushed to disk."""
        line = (json.dumps(record) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a+b") as f:
                _repair_tail(f)
                if _KILL_AT:                  # test-only: a kill halfway through the line
                    f.write(line[:len(line) // 2])
                    f.flush()
                    _kill_point()
                    f.write(line[len(line) // 2:])
                else:
                    f.write(line)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
        except OSError as e:   # a cut-short line left by a full disk is dropped by the next append
            _raise_naming(e, self.path)
            raise

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the whole journal with ``records``, atomically (e.g. to drop records past a checkpoint)."""
        atomic_write_bytes(self.path, b"".join((json.dumps(r) + "\n").encode() for r in records))


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _repair_tail(f: Any) -> None:
    """Make the file opened as ``f`` (mode a+b) end in a newline or be empty."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    # find the start of the last line, reading backwards in blocks
    pos, start = size, 0
    while pos > 0:
        step = min(pos, 1 << 16)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        nl = block.rfind(b"\n")
        if nl >= 0:
            start = pos + nl + 1
            break
    f.seek(start)
    if _record(f.read()) is not None:
        f.write(b"\n")        # a whole record without its newline: keep it
    else:
        f.truncate(start)     # a fragment cut by a kill: it was never a finished record
