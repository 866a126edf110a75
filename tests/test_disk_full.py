"""Disk full (issue 22): each long command on a small filesystem ends with one clean error line and keeps what
was complete before.

The test mounts its own small tmpfs (root only; skipped with the reason otherwise) and runs each command into it
twice, after a first run that succeeds while there is room:

- over that good output, with the filesystem filled to the last byte (``--resume`` / the same command again):
  exit 1, exactly one line ``lenetlab: error: no space left on device while writing PATH``, no traceback, and
  every file of the good output still there byte for byte - never replaced by a cut-short one;
- into a fresh folder, with room for about half its largest output file, so it runs out in the middle: the
  same one line, and whatever it did write is whole (JSON parses, weights load, PNGs end in IEND).

Both times no temporary file of an atomic write is left behind. The commands run in-process
(:func:`conftest.run_cli`, the function the console script calls), so a traceback fails the test as an
uncaught exception."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import run_cli
from lenetlab.fileio import is_leftover
from test_kill_anywhere import TRAIN, assert_whole

ONE_LINE = re.compile(r"lenetlab: error: no space left on device while writing \S.*")
SIZE = "8m"        # room for every output below (export --format c, the largest, is ~2 MB)

Args = Callable[[Path, Path], list[str]]
# name -> (the command writing into OUT, with SRC the inputs; how it runs again over its own finished output)
COMMANDS: dict[str, tuple[Args, Args]] = {
    "train": (lambda out, src: ["train", "--out", str(out), "-q", *TRAIN],
              lambda out, src: ["train", "--resume", "--out", str(out), "-q"]),
    "export-flat": (lambda out, src: ["export", str(src / "run"), "--out", str(out), "--check-images", "100"], None),
    "export-c": (lambda out, src: ["export", str(src / "run"), "--format", "c", "--out", str(out), "--no-check"],
                 None),
    "export-web": (lambda out, src: ["export", str(src / "run"), "--format", "web", "--out", str(out),
                                     "--no-check"], None),
    "quantize": (lambda out, src: ["quantize", str(src / "run"), "--out", str(out), "--calibration", "200",
                                   "--limit", "200"], None),
    # compress refuses a non-empty --out and --force discards the old run by request: only the fresh folder
    "compress": (lambda out, src: ["compress", str(src / "run"), "--method", "tt", "--out", str(out),
                                   "--epochs", "1", "--train-subset", "1000", "-q"], False),
    "faults": (lambda out, src: ["faults", "campaign", str(src / "qrun"), "--target", "weights", "--samples", "5",
                                 "--images", "20", "--out", str(out)], None),
    "reproduce": (lambda out, src: ["reproduce", "lenet5", "--tiny", "-q", "--out", str(out)], None),
    "reproduce-all": (lambda out, src: ["reproduce", "all", "--tiny", "--only", "lenet5", "-q", "--out", str(out)],
                      None),
}
SLOW = {"compress", "reproduce", "reproduce-all", "export-c", "export-web", "faults"}


@pytest.fixture
def small_fs(tmp_path) -> Path:
    """A fresh tmpfs of :data:`SIZE`, mounted for this test only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    d = tmp_path / "fs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(d)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or f'mount exited {r.returncode}'}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """A briefly trained run and its int8 quantisation (on the ordinary disk)."""
    d = tmp_path_factory.mktemp("disk-full-src")
    run_cli("train", "--out", str(d / "run"), "-q", *TRAIN, "--epochs", "1", check=True)
    run_cli("quantize", str(d / "run"), "--out", str(d / "qrun"), "--calibration", "200", "--limit", "100",
            check=True)
    return d


def fill(fs: Path, leave: int = 0) -> None:
    """Fill ``fs`` up to ``leave`` bytes of free space."""
    st = os.statvfs(fs)
    n = max(0, st.f_bavail * st.f_frsize - leave)
    with open(fs / f"filler{len(list(fs.glob('filler*')))}", "wb") as f:
        try:
            f.write(bytes(n))
            f.flush()
        except OSError:
            pass


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_clean_line(r) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ONE_LINE.fullmatch(lines[0]), r.stderr


def assert_nothing_torn(fs: Path) -> None:
    left = [p for p in fs.rglob("*") if is_leftover(p)]
    assert not left, f"temporary files left behind: {left}"
    for p in fs.rglob("*"):
        if p.is_file() and not p.name.startswith("filler"):
            assert_whole(p)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in COMMANDS])
def test_a_full_disk_is_one_line_and_keeps_what_was_complete(name, small_fs, src):
    args, again = COMMANDS[name]
    good = small_fs / "good"
    run_cli(*args(good, src), check=True)               # room enough: a complete output
    before = snapshot(good)
    largest = max(map(len, before.values()))

    if again is not False:                               # 1. over the good output, not a byte free
        fill(small_fs)
        r = run_cli(*(again or args)(good, src))
        assert_one_clean_line(r)
        assert snapshot(good) == before, "a file of the complete output changed"
        assert_nothing_torn(small_fs)
        for p in small_fs.glob("filler*"):
            p.unlink()

    fill(small_fs, leave=largest // 2)                   # 2. a fresh folder, runs out in the middle
    r = run_cli(*args(small_fs / "fresh", src))
    assert_one_clean_line(r)
    assert_nothing_torn(small_fs)
    assert snapshot(good) == before
