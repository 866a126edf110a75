"""The flat 1-D model format (``docs/flat-format.md`` is the spec, version 1).

HoloLens deployment (docs/papers/deploy.md): a network trained in PyTorch runs
where no matrix library exists by storing every tensor as a 1-D array and
addressing it with ``c*H*W + y*W + x``. :func:`encode` writes a
:class:`FlatModel` as bytes; :func:`decode` validates every size, offset,
shape and the CRC before handing back arrays, so a damaged or hostile file is
a :class:`FlatFormatError`, never an out-of-bounds read.

Example::

    from lenetlab.deploy import flat
    m = flat.decode(open("model.flat", "rb").read())
    m.layers[0].op, m.dtype
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from lenetlab.errors import LenetlabError

MAGIC = b"LENET5FL"
VERSION = 1
HEADER_BYTES = 64
RECORD_BYTES = 64
NO_OFFSET = 0xFFFFFFFF
MAX_LAYERS = 64
MAX_MAP = 1 << 20
MAX_DIM = 1024
MAX_FILE = 64 * 1024 * 1024
MAX_WORK = 1 << 26          # multiply-adds per layer per image

OPS = {1: "conv", 2: "maxpool", 3: "avgpool", 4: "subsample", 5: "act", 6: "dense", 7: "rbf"}
OP_CODES = {v: k for k, v in OPS.items()}
ACTS = {0: "identity", 1: "relu", 2: "tanh", 3: "sigmoid", 4: "selu", 5: "scaled_tanh", 6: "abs"}
ACT_CODES = {v: k for k, v in ACTS.items()}
DTYPES = {0: "float32", 1: "int8"}

_HEADER = struct.Struct("<8sHBBIIIIIHHHHffIfII")
_RECORD = struct.Struct("<BBBB6HHH10If")
assert _HEADER.size == HEADER_BYTES and _RECORD.size == RECORD_BYTES

ARRAYS = ("w", "b", "t", "m", "s")


class FlatFormatError(LenetlabError):
    """A flat file that is not a valid version-1 model."""


@dataclass
class Layer:
    op: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    act: str = "identity"
    out_bits: int = 32
    k: int = 0
    pad: int = 0
    out_scale: float = 1.0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)   # w, b, t, m, s (1-D)


@dataclass
class FlatModel:
    dtype: str                      # float32 | int8
    img_hw: tuple[int, int]
    pad: int
    num_classes: int
    in_scale: float
    in_shift: float
    layers: list[Layer]
    in_lut: np.ndarray | None = None   # int8 files: 256 int8
    in_qscale: float = 0.0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w = self.img_hw
        return (1, h + 2 * self.pad, w + 2 * self.pad)


def elem_dtype(file_dtype: str, op: str, name: str) -> np.dtype:
    """numpy dtype of array ``name`` of an ``op`` layer in a file of ``file_dtype``."""
    if name == "t":
        return np.dtype(np.int8) if op == "act" else np.dtype(np.uint8)
    if name in ("m", "s"):
        return np.dtype("<i4")
    if file_dtype == "float32":
        return np.dtype("<f4")
    return np.dtype(np.int8) if name == "w" else np.dtype("<i4")


def out_shape(op: str, in_shape: tuple[int, int, int], out_c: int, k: int, pad: int) -> tuple[int, int, int]:
    """The output shape each op's rule gives (the spec's "Operations")."""
    c, h, w = in_shape
    if op == "conv":
        return (out_c, h + 2 * pad - k + 1, w + 2 * pad - k + 1)
    if op in ("maxpool", "avgpool", "subsample"):
        return (c, h // 2, w // 2)
    if op == "act":
        return in_shape
    return (out_c, 1, 1)   # dense, rbf


def expected_counts(dtype: str, layer: Layer, has_table: bool) -> dict[str, int]:
    """Element counts every array of ``layer`` must have (0 = absent)."""
    ic, ih, iw = layer.in_shape
    oc = layer.out_shape[0]
    n_in = ic * ih * iw
    q = dtype == "int8"
    op = layer.op
    counts = dict.fromkeys(ARRAYS, 0)
    if op == "conv":
        counts.update(w=oc * ic * layer.k * layer.k, b=oc, t=oc * ic if has_table else 0)
    elif op == "subsample":
        counts.update(w=ic, b=ic)
    elif op == "dense":
        counts.update(w=oc * n_in, b=oc)
    elif op == "rbf":
        counts.update(w=oc * n_in)
    elif op == "act" and q:
        counts.update(t=256)
    if q and op in ("conv", "subsample", "dense"):
        counts.update(m=oc, s=oc)
    return counts


def layer_work(op: str, in_shape: tuple[int, int, int], out: tuple[int, int, int], k: int) -> int:
    """Multiply-adds of one layer for one image (bounded so a small file cannot demand huge work)."""
    n_in = in_shape[0] * in_shape[1] * in_shape[2]
    if op == "conv":
        return out[0] * out[1] * out[2] * in_shape[0] * k * k
    if op in ("dense", "rbf"):
        return out[0] * n_in
    return n_in


# ---------------------------------------------------------------- writing
def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def encode(model: FlatModel) -> bytes:
    """Serialise ``model``; the result passes :func:`decode` (checked here too)."""
    blob = bytearray()

    def put(arr: np.ndarray | None, dt: np.dtype) -> tuple[int, int]:
        if arr is None or arr.size == 0:
            return 0, 0
        data = np.ascontiguousarray(arr, dtype=dt).reshape(-1)
        off = _align(len(blob), 4)
        blob.extend(b"\0" * (off - len(blob)))
        blob.extend(data.tobytes())
        return off, int(data.size)

    lut_off = NO_OFFSET
    if model.dtype == "int8":
        if model.in_lut is None or model.in_lut.size != 256:
            raise FlatFormatError("an int8 model needs a 256-entry input look-up table")
        lut_off, _ = put(model.in_lut, np.dtype(np.int8))
    records = []
    for layer in model.layers:
        offs = []
        for name in ARRAYS:
            offs.extend(put(layer.arrays.get(name), elem_dtype(model.dtype, layer.op, name)))
        flags = 1 if layer.op == "conv" and layer.arrays.get("t") is not None and layer.arrays["t"].size else 0
        records.append(_RECORD.pack(
            OP_CODES[layer.op], ACT_CODES[layer.act] if layer.op == "act" else 0, layer.out_bits, flags,
            *layer.in_shape, *layer.out_shape, layer.k, layer.pad, *offs, layer.out_scale))
    blob_offset = _align(HEADER_BYTES + RECORD_BYTES * len(records), 16)
    file_bytes = blob_offset + len(blob)
    h, w = model.img_hw
    header = bytearray(_HEADER.pack(
        MAGIC, VERSION, 1, 0 if model.dtype == "float32" else 1, HEADER_BYTES, len(records), RECORD_BYTES,
        blob_offset, len(blob), h, w, model.pad, model.num_classes, model.in_scale, model.in_shift,
        lut_off, model.in_qscale, file_bytes, 0))
    body = b"".join(records) + b"\0" * (blob_offset - HEADER_BYTES - RECORD_BYTES * len(records)) + bytes(blob)
    struct.pack_into("<I", header, 60, crc(bytes(header), body))
    data = bytes(header) + body
    decode(data)   # never write a file our own reader rejects
    return data


def crc(header: bytes, body: bytes) -> int:
    """CRC-32 of header bytes [0, 60) then everything after the header."""
    return zlib.crc32(body, zlib.crc32(header[:60])) & 0xFFFFFFFF


# ---------------------------------------------------------------- reading
def _need(ok: bool, what: str) -> None:
    if not ok:
        raise FlatFormatError(f"invalid flat model: {what}")


def decode(data: bytes) -> FlatModel:
    """Parse and fully validate a flat file (see the spec's "Validation")."""
    n = len(data)
    _need(n <= MAX_FILE, f"file is {n} bytes, larger than the 64 MiB limit")
    _need(n >= HEADER_BYTES, f"file is {n} bytes, shorter than the {HEADER_BYTES}-byte header")
    (magic, version, endian, dtype_code, header_bytes, n_layers, record_bytes, blob_offset, blob_bytes,
     img_h, img_w, pad, num_classes, in_scale, in_shift, lut_off, in_qscale, file_bytes, stored_crc
     ) = _HEADER.unpack_from(data, 0)
    _need(magic == MAGIC, f"bad magic {magic!r} (expected {MAGIC!r})")
    _need(version == VERSION, f"unsupported version {version} (this reader knows {VERSION})")
    _need(endian == 1, f"endian flag {endian} (only 1 = little-endian is defined)")
    _need(dtype_code in DTYPES, f"unknown dtype code {dtype_code}")
    _need(header_bytes == HEADER_BYTES and record_bytes == RECORD_BYTES, "header/record size fields")
    _need(file_bytes == n, f"file_bytes says {file_bytes} but the file has {n} bytes")
    _need(1 <= n_layers <= MAX_LAYERS, f"n_layers {n_layers} not in 1..{MAX_LAYERS}")
    _need(blob_offset == _align(HEADER_BYTES + RECORD_BYTES * n_layers, 16), f"blob_offset {blob_offset}")
    _need(blob_offset + blob_bytes == n, "blob_offset + blob_bytes differs from the file length")
    _need(crc(data[:HEADER_BYTES], data[HEADER_BYTES:]) == stored_crc, "CRC mismatch (the file is damaged)")
    _need(1 <= img_h <= MAX_DIM and 1 <= img_w <= MAX_DIM, f"image size {img_h}x{img_w}")
    _need(pad <= 64, f"pad {pad} > 64")
    _need(1 <= num_classes <= MAX_DIM, f"num_classes {num_classes}")
    _need(np.isfinite(in_scale) and np.isfinite(in_shift), "input scale/shift not finite")
    _need((img_h + 2 * pad) * (img_w + 2 * pad) <= MAX_MAP, "padded input map larger than 2^20 values")
    dtype = DTYPES[dtype_code]
    _need(dtype == "int8" or (in_qscale == 0 and lut_off == NO_OFFSET), "float file with int8 input fields")
    blob = memoryview(data)[blob_offset:]

    def array(off: int, count: int, dt: np.dtype, what: str) -> np.ndarray:
        if count == 0:
            _need(off == 0, f"{what}: offset {off} with count 0")
            return np.zeros(0, dt)
        _need(off % dt.itemsize == 0, f"{what}: offset {off} not aligned to {dt.itemsize}")
        _need(off <= blob_bytes and count <= (blob_bytes - off) // dt.itemsize,
              f"{what}: {count} x {dt.itemsize} bytes at {off} run past the blob ({blob_bytes} bytes)")
        return np.frombuffer(blob, dt, count, off).copy()

    in_lut = None
    if dtype == "int8":
        in_lut = array(lut_off, 256, np.dtype(np.int8), "input LUT")
        _need(np.isfinite(in_qscale) and in_qscale > 0, "in_qscale must be positive")
    else:
        _need(lut_off == NO_OFFSET, "float file with an input LUT offset")
    model = FlatModel(dtype, (img_h, img_w), pad, num_classes, in_scale, in_shift, [], in_lut, in_qscale)
    shape = model.input_shape
    for i in range(n_layers):
        rec = _RECORD.unpack_from(data, HEADER_BYTES + i * RECORD_BYTES)
        op_code, sub, out_bits, flags = rec[:4]
        ins, outs, k, lpad, offs, out_scale = tuple(rec[4:7]), tuple(rec[7:10]), rec[10], rec[11], rec[12:22], rec[22]
        where = f"layer {i}"
        _need(op_code in OPS, f"{where}: unknown op code {op_code}")
        op = OPS[op_code]
        where = f"layer {i} ({op})"
        _need(sub in ACTS if op == "act" else sub == 0, f"{where}: activation code {sub}")
        last = i == n_layers - 1
        allowed = {32} if dtype == "float32" else ({8, 32} if last else {8})
        if op == "rbf":   # an output layer only: its 32-bit distances feed nothing
            _need(last, f"{where}: RBF must be the last layer")
            allowed = {32}
        _need(out_bits in allowed, f"{where}: out_bits {out_bits}")
        _need(flags in (0, 1) and (flags == 0 or op == "conv"), f"{where}: flags {flags}")
        _need(ins == shape, f"{where}: input shape {ins} but the previous output is {shape}")
        _need(all(1 <= d <= MAX_DIM for d in outs), f"{where}: output shape {outs}")
        if op == "conv":
            _need(1 <= k <= 16 and lpad < k, f"{where}: kernel {k} pad {lpad}")
        else:
            _need(k == (2 if op in ("maxpool", "avgpool", "subsample") else 0) and lpad == 0, f"{where}: k/pad")
        want = out_shape(op, ins, outs[0], k, lpad)
        _need(outs == want, f"{where}: output shape {outs}, the op gives {want}")
        _need(outs[0] * outs[1] * outs[2] <= MAX_MAP, f"{where}: output map too large")
        _need(out_scale == 1.0 if dtype == "float32" else bool(np.isfinite(out_scale) and out_scale > 0),
              f"{where}: out_scale {out_scale}")
        _need(layer_work(op, ins, outs, k) <= MAX_WORK, f"{where}: more than 2^26 multiply-adds")
        layer = Layer(op, ins, outs, ACTS[sub] if op == "act" else "identity", out_bits, k, lpad, out_scale)
        counts = expected_counts(dtype, layer, bool(flags))
        for j, name in enumerate(ARRAYS):
            off, count = offs[2 * j], offs[2 * j + 1]
            _need(count == counts[name], f"{where}: array {name} has {count} values, expected {counts[name]}")
            layer.arrays[name] = array(off, count, elem_dtype(dtype, op, name), f"{where} array {name}")
        if op == "conv" and flags:
            _need(bool(np.all(layer.arrays["t"] <= 1)), f"{where}: connection table values must be 0/1")
        if dtype == "int8" and op in ("conv", "dense"):
            fan_in = ins[0] * k * k if op == "conv" else ins[0] * ins[1] * ins[2]
            _need(fan_in <= 65536, f"{where}: fan-in {fan_in} > 65536 (int8 sums must fit in 32 bits)")
        if dtype == "int8" and counts["s"]:
            _need(bool(np.all((layer.arrays["s"] >= 1) & (layer.arrays["s"] <= 62))), f"{where}: shift not in 1..62")
            _need(bool(np.all(layer.arrays["m"] >= 0)), f"{where}: negative multiplier")
        if dtype == "float32":
            for name in ("w", "b"):
                _need(bool(np.all(np.isfinite(layer.arrays[name]))), f"{where}: non-finite {name}")
        model.layers.append(layer)
        shape = outs
    _need(shape[0] * shape[1] * shape[2] == num_classes,
          f"the last layer gives {shape[0] * shape[1] * shape[2]} values, num_classes is {num_classes}")
    return model


def load(path: str) -> FlatModel:
    """Read and validate a flat file from disk."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise FlatFormatError(f"cannot read {path}: {e.strerror or e}") from None
    _need(len(data) <= MAX_FILE, "file larger than 64 MiB")
    return decode(data)
