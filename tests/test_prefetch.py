"""lenetlab.prefetch: the bundled MNIST inflated on a thread while `lenetlab train` imports torch; what the
loader takes from it is what it would have read itself, and anything odd falls back to reading the file."""

from __future__ import annotations

import gzip
import os
import threading

import numpy as np
import pytest

from lenetlab import cli, prefetch
from lenetlab.data import datasets
from lenetlab.data.idx import IdxError, read_idx, write_idx


def _gz(tmp_path, name="x.idx.gz", n=5):
    arr = np.arange(n * 4 * 3, dtype=np.uint8).reshape(n, 4, 3)
    write_idx(tmp_path / name, arr)
    return tmp_path / name, arr


def test_taken_bytes_are_the_files_and_parse_the_same(tmp_path):
    path, arr = _gz(tmp_path)
    prefetch.start([path])
    data = prefetch.take(path)
    with gzip.open(path) as f:
        assert data == f.read()
    assert np.array_equal(read_idx(path, data), arr) and np.array_equal(read_idx(path), arr)
    assert prefetch.take(path) is None             # handed out once


def test_a_changed_file_or_an_unknown_one_is_not_taken(tmp_path):
    path, _ = _gz(tmp_path)
    prefetch.start([path])
    prefetch._pending[str(path)].result()          # the thread is done
    os.utime(path, ns=(1, 1))                      # another mtime: not the file the thread read
    assert prefetch.take(path) is None
    assert prefetch.take(tmp_path / "never-started.gz") is None
    prefetch.start([path])
    assert prefetch.take(path, wait=False) is None and str(path) not in prefetch._pending


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"ab", mtime=0) + gzip.compress(b"cd", mtime=0),
                                     gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde", mtime=0)[:-6]],
                         ids=["not-gzip", "two-members", "truncated"])   # fixed ids: the same in every worker
def test_odd_files_fall_back_to_the_loaders_own_read(tmp_path, content):
    """Not gzip, two gzip members, a truncated stream: take() gives None, so the loader reads the file and
    reports what is wrong with it itself."""
    path = tmp_path / "odd.gz"
    path.write_bytes(content)
    prefetch.start([path])
    assert prefetch.take(path) is None


def test_a_file_dropped_before_the_thread_reaches_it_is_no_error(tmp_path):
    """take(wait=False) right after start(): the thread still inflates what it was given, into a future no
    one waits for, without an exception in the thread."""
    paths = [_gz(tmp_path, f"f{i}.gz", n=200)[0] for i in range(4)]
    errors = []
    hook, threading.excepthook = threading.excepthook, lambda args: errors.append(args.exc_value)
    try:
        prefetch.start(paths)
        for p in paths:
            assert prefetch.take(p, wait=False) is None
        for t in threading.enumerate():
            if t.name == "lenetlab-prefetch":
                t.join()
    finally:
        threading.excepthook = hook
    assert errors == []


def test_over_the_cap_falls_back(tmp_path, monkeypatch):
    path, _ = _gz(tmp_path, n=50)
    monkeypatch.setattr(prefetch, "MAX_INFLATED", 100)
    prefetch.start([path])
    assert prefetch.take(path) is None


def test_bad_bytes_get_the_readers_errors(tmp_path):
    path, _ = _gz(tmp_path)
    with gzip.open(path) as f:
        data = f.read()
    with pytest.raises(IdxError, match="truncated"):
        read_idx(path, data[:-1])
    with pytest.raises(IdxError, match="unexpected bytes"):
        read_idx(path, data + b"\x00")


def test_bundled_files_are_the_loaders_and_load_identically():
    assert [p.name for p in prefetch.bundled_mnist()] == list(datasets.FILES)
    assert prefetch.BUNDLED_MNIST == datasets.bundled_dir()
    path = prefetch.bundled_mnist()[1]               # the training labels: small
    want = read_idx(path)
    datasets._ARRAYS.clear()
    prefetch.start([path])
    assert np.array_equal(datasets._read_cached(path), want)
    assert str(path) not in prefetch._pending      # taken by the loader


def test_the_cli_prefetches_only_for_plain_train(monkeypatch):
    started = []
    monkeypatch.setattr(prefetch, "start", lambda paths: started.append(len(paths)))
    monkeypatch.delenv("LENETLAB_DATA", raising=False)
    for argv in (["train", "--dataset", "fashion_mnist"], ["train", "--set", "data.dataset=x"], ["eval", "r"],
                 ["train", "--resume", "--out", "r"], ["train", "--config=c.toml"], []):
        cli._prefetch_data(argv)
    assert started == []
    monkeypatch.setenv("LENETLAB_DATA", "/somewhere")
    cli._prefetch_data(["train", "--out", "r"])
    assert started == []
    monkeypatch.delenv("LENETLAB_DATA")
    monkeypatch.setattr(datasets, "_ARRAYS", {("read",): np.zeros(1)})     # read in this process already
    cli._prefetch_data(["train", "--out", "r"])
    assert started == []
    monkeypatch.setattr(datasets, "_ARRAYS", {})
    cli._prefetch_data(["train", "--preset", "sprint", "--out", "r"])
    assert started == [4]
