"""``trials.jsonl``: one line per finished trial, appended and fsynced as each finishes.

Only the sweep's parent process writes it, through the one append-only journal
(:class:`lenetlab.fileio.JsonlJournal`): a line cut short by a kill is dropped
(it was never a finished trial) and the next append starts on a fresh line. A
lock file keeps a second sweep from writing into the same directory at the
same time.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError
from lenetlab.fileio import JsonlJournal


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
        self._journal = JsonlJournal(self.path)
        self.rows: dict[str, dict[str, Any]] = {}
        for row in self._journal.read():
            if "trial" in row:
                self.rows.setdefault(row["trial"], row)

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self.rows

    def append(self, row: dict[str, Any]) -> None:
        self._journal.append(row)
        self.rows.setdefault(row["trial"], row)

    def close(self) -> None:
        self._lock.close()
