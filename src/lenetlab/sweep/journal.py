"""``trials.jsonl``: one line per finished trial, appended and fsynced as each finishes.

Only the sweep's parent process writes it. A kill can leave the last line cut
short; opening the journal drops that partial line (it was never a finished
trial), so resumed appends start on a fresh line. A lock file keeps a second
sweep from writing into the same directory at the same time.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError


class Journal:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.parent / ".sweep.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise LenetlabError(f"another sweep is writing {self.path.parent}") from None
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):          # a line cut short by a kill: drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "trial" in row:
                self.rows.setdefault(row["trial"], row)

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self.rows

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.setdefault(row["trial"], row)

    def close(self) -> None:
        self._lock.close()
