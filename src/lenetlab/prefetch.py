"""Decompressing the bundled dataset on a thread while the process imports torch.

``lenetlab train`` spends about a second importing torch on one core while
the other idles; the bundled MNIST files take about a quarter second to
inflate, and zlib lets go of the GIL while it does. So the command starts a
thread that inflates them first thing (:func:`start`) and the loader later
takes the bytes (:func:`take`) instead of inflating the files itself - only
if the file is still the very same one (path, inode, size, times), and
always through the same IDX checks (``lenetlab.data.idx.read_idx``). This
module imports nothing but the standard library, so it can run before torch.

Example::

    from lenetlab import prefetch
    prefetch.start(prefetch.bundled_mnist())
    ...
    data = prefetch.take(path)   # the inflated bytes, or None: read the file yourself
"""

from __future__ import annotations

import os
import threading
import zlib
from concurrent.futures import Future
from pathlib import Path

# the four IDX files of an MNIST-layout dataset (lenetlab.data.datasets.FILES)
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
BUNDLED_MNIST = Path(__file__).resolve().parent / "data" / "mnist"
MAX_INFLATED = 1 << 27    # 128 MiB, more than any file we bundle: a larger one is left to the loader

_pending: dict[str, Future] = {}
_lock = threading.Lock()


def bundled_mnist() -> list[Path]:
    return [BUNDLED_MNIST / f for f in IDX_FILES]


def identity(path: Path) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _inflate(path: Path) -> tuple[tuple, bytes | None]:
    key = identity(path)
    with open(path, "rb") as f:
        packed = f.read()
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)     # gzip framing
    data = d.decompress(packed, MAX_INFLATED)
    if not d.eof or d.unconsumed_tail or d.unused_data:
        return key, None     # over the cap, truncated, or more than one member: the loader reads it
    return key, data


def start(paths: list[Path]) -> None:
    """Inflate these gzip files on a daemon thread, one after the other (each once per process)."""
    with _lock:
        todo = [(p, Future()) for p in paths if str(p) not in _pending]
        for p, fut in todo:
            _pending[str(p)] = fut

    def run() -> None:
        for p, fut in todo:      # the futures themselves: take() may have dropped them from _pending already
            try:
                fut.set_result(_inflate(p))
            except BaseException as e:   # noqa: BLE001 - the loader reads the file itself and reports it
                fut.set_exception(e)

    if todo:
        threading.Thread(target=run, name="lenetlab-prefetch", daemon=True).start()


def take(path: Path, wait: bool = True) -> bytes | None:
    """The inflated contents of ``path`` if :func:`start` was asked for it and the file has not changed since
    (waits for the thread if it is still at it); None otherwise. Each file is handed out once; ``wait=False``
    only forgets it (the caller has the file already)."""
    with _lock:
        fut = _pending.pop(str(path), None)
    if fut is None or not wait:
        return None
    try:
        key, data = fut.result()
        return data if data is not None and key == identity(path) else None
    except Exception:   # noqa: BLE001 - the caller reads the file and meets the error itself
        return None
