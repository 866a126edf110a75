"""Atomic writes (lenetlab.fileio): the temporary files of writes killed before their rename are cleaned by the
next successful write of the same target - only names of our own pattern, never one a live write holds.
Fast: no torch."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys

from lenetlab.fileio import atomic_write_bytes, atomic_write_json, is_leftover, leftovers, remove_leftovers

KILLED = ("import sys\n"
          "from lenetlab.fileio import atomic_write_bytes\n"
          "atomic_write_bytes(sys.argv[1], b'new')\n")


def test_a_killed_writes_leftover_goes_with_the_next_write_of_its_target(tmp_path):
    target = tmp_path / "result.json"
    target.write_bytes(b"old")
    # a real kill between the write and the rename (the test-only hook): the whole temporary file stays behind
    env = {**os.environ, "LENETLAB_KILL_AFTER_WRITES": "1"}
    r = subprocess.run([sys.executable, "-c", KILLED, str(target)], env=env, capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    (left,) = leftovers(target)
    assert is_leftover(left) and left.read_bytes() == b"new" and target.read_bytes() == b"old"
    # look-alikes that are not ours, and another target's leftover: never touched
    keep = [tmp_path / n for n in (".result.json.tmp", ".result.json.abc.tmp", ".result.json.ABCDEFGH.tmp",
                                   ".result.json.abcdefgh.tmp.bak", "result.json.abcdefgh.tmp",
                                   ".other.json.abcdefgh.tmp", ".result.jsonx.abcdefgh.tmp")]
    for p in keep:
        p.write_bytes(b"not ours to delete")
    atomic_write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert not left.exists() and leftovers(target) == []
    assert all(p.read_bytes() == b"not ours to delete" for p in keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, *(p.name for p in keep)])


def test_a_temporary_file_a_live_write_holds_is_not_a_leftover(tmp_path):
    """Two writers of one target: the one that finishes first must not delete the other's temporary file."""
    target = tmp_path / "t.bin"
    live = tmp_path / ".t.bin.a1b2c3d4.tmp"
    stale = tmp_path / ".t.bin.zz_99zz9.tmp"
    live.write_bytes(b"being written")
    stale.write_bytes(b"killed")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)        # what atomic_write holds until its rename
        atomic_write_bytes(target, b"x")
        assert live.exists() and not stale.exists()
    finally:
        os.close(fd)
    assert remove_leftovers(target) == [live] and not live.exists() and target.read_bytes() == b"x"
