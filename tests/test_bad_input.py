"""Bad input at the edge: one clear line, exit status 2, nothing written."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from lenetlab.data.images import MAX_PIXELS, load_gray
from lenetlab.errors import LenetlabError


def _png_bomb(path, side: int, rows_per_block: int = 100) -> None:
    """A valid grayscale PNG of side x side black pixels: a few KB compressed per million pixels, side^2 bytes
    decoded. Its zlib stream is one deflate block of ``rows_per_block`` rows, compressed once and repeated:
    after a full flush the compressor starts afresh, so every such block compresses to the same bytes (and a
    decoder reads them one after another). The stream's Adler-32 of n zero bytes is (n mod 65521) << 16 | 1."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    assert side % rows_per_block == 0
    rows = (b"\x00" + b"\x00" * side) * rows_per_block          # filter byte 0, then the row's black pixels
    comp = zlib.compressobj(9)
    first = comp.compress(rows) + comp.flush(zlib.Z_FULL_FLUSH)    # the 2-byte zlib header, then the block
    block = comp.compress(rows) + comp.flush(zlib.Z_FULL_FLUSH)
    assert first[2:] == block
    last = comp.flush()[:-4]                                       # the final (empty) block, without its checksum
    n = side * (side + 1)
    body = first + block * (side // rows_per_block - 1) + last + struct.pack(">I", (n % 65521) << 16 | 1)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """900 megapixels in ~1 MB."""
    p = tmp_path_factory.mktemp("bomb") / "huge.png"
    _png_bomb(p, 30000)
    return p


def test_png_bomb_is_a_valid_png(tmp_path):
    """The bomb's construction, checked on a small one: its zlib stream (checksum included) inflates to the
    filtered rows, and PIL decodes it to all-black pixels."""
    from PIL import Image

    p = tmp_path / "small.png"
    _png_bomb(p, 3000)
    data = p.read_bytes()
    (n,) = struct.unpack(">I", data[33:37])                       # the IDAT chunk follows the 25-byte IHDR
    assert data[37:41] == b"IDAT" and zlib.decompress(data[41:41 + n]) == bytes(3000 * 3001)
    with Image.open(p) as im:
        assert im.size == (3000, 3000) and im.mode == "L" and im.getextrema() == (0, 0)


def test_huge_png_is_refused_before_decoding(bomb):
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(LenetlabError, match="the limit is 16,000,000 pixels"):
        load_gray(bomb)


def test_huge_npy_is_refused_unread(tmp_path):
    p = tmp_path / "huge.npy"
    side = int(MAX_PIXELS ** 0.5) + 10
    a = np.lib.format.open_memmap(p, mode="w+", dtype=np.uint8, shape=(side, side))   # sparse file
    del a
    with pytest.raises(LenetlabError, match="the limit is"):
        load_gray(p)


def test_predict_huge_png_is_one_line_exit_2(small_run, bomb):
    r = run_cli("predict", str(small_run), str(bomb))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "limit" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, what", [
    (["--lr", "nan"], "train.lr' must be a finite number"),
    (["--lr", "inf"], "train.lr' must be a finite number"),
    (["--set", "train.lr=-0.1"], "train.lr' must be in (0, inf)"),
    (["--set", "train.epochs=-1"], "train.epochs' must be in [0, inf)"),
    (["--set", "train.label_smoothing=1.0"], "train.label_smoothing' must be in [0, 1)"),
    (["--set", "data.train_subset=0"], "data.train_subset' must be in [1, inf)"),
])
def test_train_refuses_bad_numbers_before_writing(tmp_path, args, what):
    from lenetlab.cli import main

    out = tmp_path / "run"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", *args, "--out", str(out)])
    assert rc == 2 and what in err.getvalue(), err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
    assert not out.exists()


def test_config_ranges_accept_their_edges():
    from lenetlab.config import DataConfig, TrainConfig, from_dict

    t = from_dict(TrainConfig, {"lr": 1e-30, "warmup_frac": 1.0, "label_smoothing": 0.0, "stop_at_accuracy": 1.0})
    assert t.lr == 1e-30 and t.warmup_frac == 1.0
    assert from_dict(DataConfig, {"val_size": 0, "pad": 0}).val_size == 0
