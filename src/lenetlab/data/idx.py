"""Reader and writer for LeCun's IDX format (the format MNIST ships in).

Layout: two zero bytes, a dtype code byte, the number of dimensions, then one
big-endian uint32 per dimension, then the payload, big-endian, row-major.
Files may be gzip-compressed (detected by the gzip magic, not the name).

The reader trusts nothing: magic, dtype code, dimension count, every size and
the exact payload length are checked, and the gzip stream is read only as far
as the header says, so a corrupt or hostile file gives one clear
:class:`IdxError` instead of a numpy traceback or a memory blow-up.

Example::

    from lenetlab.data.idx import read_idx, write_idx
    write_idx("x.idx.gz", numpy.zeros((2, 28, 28), numpy.uint8))
    read_idx("x.idx.gz").shape   # (2, 28, 28)
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import numpy as np

from lenetlab.errors import LenetlabError

# IDX dtype code -> big-endian numpy dtype
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=").kind + str(dt.itemsize): code for code, dt in DTYPES.items()}
MAX_DIMS = 8
MAX_BYTES = 1 << 33  # 8 GiB: more than any IDX dataset we know of


class IdxError(LenetlabError):
    """A file that is not valid IDX."""


def _read_exact(f: io.BufferedIOBase, n: int, path: Path, what: str) -> bytes:
    try:
        data = f.read(n)
    except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt gzip
        raise IdxError(f"{path}: corrupt gzip stream while reading {what} ({e})") from None
    if len(data) != n:
        raise IdxError(f"{path}: truncated: {what} needs {n} bytes, file has {len(data)}")
    return data


def read_idx(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array. ``data``: the file's contents already
    read (and inflated) elsewhere (:mod:`lenetlab.prefetch`), checked the same way; ``path`` names it."""
    path = Path(path)
    try:
        raw = io.BytesIO(data) if data is not None else open(path, "rb")
    except FileNotFoundError:
        raise IdxError(f"{path}: no such file") from None
    except OSError as e:
        raise IdxError(f"{path}: cannot open ({e.strerror})") from None
    with raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw) if gz else raw
        head = _read_exact(f, 4, path, "the 4-byte header")
        if head[0] != 0 or head[1] != 0:
            raise IdxError(f"{path}: bad magic {head[:2].hex()} (IDX files start with 0000)")
        code, ndim = head[2], head[3]
        if code not in DTYPES:
            raise IdxError(f"{path}: unknown IDX dtype code 0x{code:02x}")
        if not 1 <= ndim <= MAX_DIMS:
            raise IdxError(f"{path}: bad number of dimensions {ndim} (1..{MAX_DIMS})")
        dims = np.frombuffer(_read_exact(f, 4 * ndim, path, "the dimension sizes"), ">u4")
        dims = [int(d) for d in dims]
        dtype = DTYPES[code]
        nbytes = dtype.itemsize
        for d in dims:
            nbytes *= d
        if nbytes > MAX_BYTES:
            raise IdxError(f"{path}: dimensions {dims} declare {nbytes} bytes, over the limit")
        payload = _read_exact(f, nbytes, path, f"the payload of shape {tuple(dims)}")
        extra = _read_exact_tail(f, path)
        if extra:
            raise IdxError(f"{path}: {extra}+ unexpected bytes after the payload of shape {tuple(dims)}")
    return np.frombuffer(payload, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_exact_tail(f: io.BufferedIOBase, path: Path) -> int:
    try:
        return len(f.read(1))
    except (EOFError, OSError, zlib.error) as e:
        raise IdxError(f"{path}: corrupt gzip stream after the payload ({e})") from None


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX, atomically. Gzip if ``compress`` (default: name ends .gz)."""
    path = Path(path)
    a = np.asarray(array)
    key = a.dtype.kind + str(a.dtype.itemsize)
    if key not in _CODES:
        raise IdxError(f"cannot write dtype {a.dtype} as IDX (allowed: u1 i1 i2 i4 f4 f8)")
    if not 1 <= a.ndim <= MAX_DIMS:
        raise IdxError(f"cannot write a {a.ndim}-d array as IDX")
    code = _CODES[key]
    header = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    blob = header + np.ascontiguousarray(a, DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        blob = gzip.compress(blob, mtime=0)
    from lenetlab.fileio import atomic_write_bytes

    atomic_write_bytes(path, blob)
