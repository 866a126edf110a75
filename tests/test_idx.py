import gzip

import numpy as np
import pytest

from lenetlab.data.idx import IdxError, read_idx, write_idx


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8", "<f4", "<i4"])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_roundtrip(tmp_path, dtype, name):
    a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    write_idx(tmp_path / name, a)
    b = read_idx(tmp_path / name)
    assert b.shape == a.shape and np.array_equal(a, b)


def test_reads_bundled_mnist_layout():
    from lenetlab.data.datasets import bundled_dir

    y = read_idx(bundled_dir() / "t10k-labels-idx1-ubyte.gz")
    assert y.shape == (10000,) and y.dtype == np.uint8 and y.max() == 9
    # the first test digits of MNIST are 7, 2, 1, 0, 4
    assert list(y[:5]) == [7, 2, 1, 0, 4]


def _good(tmp_path):
    p = tmp_path / "good.idx"
    write_idx(p, np.ones((4, 3), np.uint8))
    return p.read_bytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x01" + b[1:], "bad magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX dtype code 0x07"),
    (lambda b: b[:3] + b"\x00" + b[4:], "bad number of dimensions 0"),
    (lambda b: b[:3] + b"\x0f" + b[4:], "bad number of dimensions 15"),
    (lambda b: b[:6], "truncated: the dimension sizes"),
    (lambda b: b[:2], "truncated: the 4-byte header"),
    (lambda b: b[:-1], "truncated: the payload of shape (4, 3)"),
    (lambda b: b + b"\x00", "unexpected bytes after the payload"),
    (lambda b: b[:4] + b"\xff\xff\xff\xff" * 2 + b[12:], "over the limit"),
])
def test_corrupt_raw(tmp_path, mutate, message):
    p = tmp_path / "bad.idx"
    p.write_bytes(mutate(_good(tmp_path)))
    with pytest.raises(IdxError, match=None) as e:
        read_idx(p)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_truncated_gzip(tmp_path):
    blob = gzip.compress(_good(tmp_path) * 1)
    p = tmp_path / "bad.idx.gz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IdxError, match="corrupt gzip|truncated"):
        read_idx(p)


def test_corrupt_gzip_crc(tmp_path):
    blob = bytearray(gzip.compress(_good(tmp_path)))
    blob[-6] ^= 0xFF  # damage the CRC
    p = tmp_path / "bad.idx.gz"
    p.write_bytes(bytes(blob))
    with pytest.raises(IdxError, match="corrupt gzip"):
        read_idx(p)


def test_missing_file(tmp_path):
    with pytest.raises(IdxError, match="no such file"):
        read_idx(tmp_path / "nope.idx")


def test_write_rejects_bad_dtype(tmp_path):
    with pytest.raises(IdxError, match="cannot write dtype"):
        write_idx(tmp_path / "x.idx", np.zeros(3, np.complex64))
    assert not (tmp_path / "x.idx").exists()
