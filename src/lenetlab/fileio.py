"""Files that survive a kill: atomic writes and one append-only JSONL journal.

Atomic writes: write to a temporary file in the same directory, flush and
fsync, then ``os.replace`` it over the target (atomic on POSIX), so a reader
never sees a half-written file. :class:`JsonlJournal`: append-only JSON lines
whose cut-short last line never swallows the next record.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, w)


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
        with open(self.path, "a+b") as f:
            _repair_tail(f)
            f.write(line)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

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
