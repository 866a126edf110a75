"""Fuzzing ``flat.decode`` and the NumPy runtime with damaged and hostile flat files (hypothesis).

The files start as real exports (float32 and int8 files of lenet5 and lenet5_classic, untrained weights,
int8 calibrated on real MNIST digits) and are then truncated, extended, bit-flipped (with the stale CRC,
and with the CRC recomputed so that the deeper checks are reached), or get a header field, a layer-record
field or a single weight overwritten with boundary and random values.

Properties (for every mutated file):

1. ``flat.decode`` returns a model or raises :class:`FlatFormatError` with a one-line message - never any
   other exception (no IndexError, struct.error, ValueError, MemoryError, OverflowError...).
2. Where the outcome is known it is checked exactly: a truncated or extended file, a 1- or 2-bit flip under
   the stale CRC (CRC-32 detects every such error), or a changed structural header field, shape, kernel
   size or array count is rejected; an overwritten weight is accepted exactly when the spec allows the
   value (finite floats, shifts 1..62, non-negative multipliers, 0/1 connection tables); bytes appended
   with a consistent header decode to the original model.
3. When decode accepts a file, ``runtime.run(fm, images)`` returns an (N, num_classes) array - int64 within
   the int32 range for int8 files, float32 for float files - or raises :class:`LenetlabError`; never
   another exception. For float files NaN/inf logits are legitimate only when the mutated weights can
   overflow float32: if interval arithmetic over the decoded weights bounds every intermediate value
   below 1e30 (float32 overflows at 3.4e38), every logit must be finite.

Each fuzzer runs a fifth of its examples in the fast tier and all of them as its ``_full`` twin (slow tier).
"""

from __future__ import annotations

import math
import struct
import sys
from functools import lru_cache

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from lenetlab.config import DataConfig
from lenetlab.data.datasets import load_raw
from lenetlab.deploy import flat, runtime
from lenetlab.deploy.graph import to_flat
from lenetlab.deploy.quantize import quantize
from lenetlab.errors import LenetlabError
from lenetlab.models import create_model
from lenetlab.models.base import model_entry

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # float32 overflow of mutated weights

BASES = ("lenet5/float32", "lenet5/int8", "lenet5_classic/float32", "lenet5_classic/int8")
FINITE_BOUND = 1e30

# (name, byte offset, struct format) of every header field after the magic (docs/flat-format.md)
HEADER_FIELDS = [
    ("version", 8, "<H"), ("endian", 10, "<B"), ("dtype", 11, "<B"), ("header_bytes", 12, "<I"),
    ("n_layers", 16, "<I"), ("record_bytes", 20, "<I"), ("blob_offset", 24, "<I"), ("blob_bytes", 28, "<I"),
    ("img_h", 32, "<H"), ("img_w", 34, "<H"), ("pad", 36, "<H"), ("num_classes", 38, "<H"),
    ("in_scale", 40, "<f"), ("in_shift", 44, "<f"), ("in_lut_off", 48, "<I"), ("in_qscale", 52, "<f"),
    ("file_bytes", 56, "<I"),
]
# header fields that fully determine structure: any change must be rejected
STRICT_HEADER = {"version", "endian", "dtype", "header_bytes", "n_layers", "record_bytes", "blob_offset",
                 "blob_bytes", "img_h", "img_w", "pad", "num_classes", "file_bytes"}
RECORD_FIELDS = [
    ("op", 0, "<B"), ("sub", 1, "<B"), ("out_bits", 2, "<B"), ("flags", 3, "<B"),
    ("in_c", 4, "<H"), ("in_h", 6, "<H"), ("in_w", 8, "<H"), ("out_c", 10, "<H"), ("out_h", 12, "<H"),
    ("out_w", 14, "<H"), ("k", 16, "<H"), ("pad", 18, "<H"),
    ("w_off", 20, "<I"), ("w_count", 24, "<I"), ("b_off", 28, "<I"), ("b_count", 32, "<I"),
    ("t_off", 36, "<I"), ("t_count", 40, "<I"), ("m_off", 44, "<I"), ("m_count", 48, "<I"),
    ("s_off", 52, "<I"), ("s_count", 56, "<I"), ("out_scale", 60, "<f"),
]
# record fields whose change always breaks the shape chain or the implied counts
STRICT_RECORD = {"in_c", "in_h", "in_w", "out_c", "out_h", "out_w", "k", "w_count", "b_count", "t_count",
                 "m_count", "s_count"}

SPECIAL_INTS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 62, 63, 64, 65, 127, 128, 255, 256,
                1023, 1024, 1025, 4095, 4096, 65534, 65535, 65536, 1 << 20, (1 << 20) + 1, 1 << 24,
                (1 << 26) + 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 4, (1 << 32) - 1)
SPECIAL_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, -1e-45, 1e-38, 1e10, 1e20, 1e30, -1e30, 3.4e38, -3.4e38,
                  math.inf, -math.inf, math.nan)


# ---------------------------------------------------------------- the real files under test
@lru_cache(maxsize=1)
def mnist_images() -> np.ndarray:
    return np.ascontiguousarray(load_raw("mnist")[2][:64])


@lru_cache(maxsize=None)
def base(name: str) -> bytes:
    """The encoded flat file of an untrained ``model/dtype`` (weights seeded, int8 calibrated on MNIST)."""
    model_name, dtype = name.split("/")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(model_name).eval()
    fm = to_flat(model, DataConfig(**model_entry(model_name).data_defaults))
    if dtype == "int8":
        fm = quantize(fm, mnist_images())
    return flat.encode(fm)


@lru_cache(maxsize=None)
def layout(name: str) -> dict:
    """Where things are in a base file: blob offset, layer records, and each array's (element) locations."""
    data = base(name)
    fm = flat.decode(data)
    blob_offset = struct.unpack_from("<I", data, 24)[0]
    arrays = []   # (file offset, count, dtype, op, array name, layer index; -1 for the input LUT)
    lut_off = struct.unpack_from("<I", data, 48)[0]
    if fm.dtype == "int8":
        arrays.append((blob_offset + lut_off, 256, np.dtype(np.int8), "input", "lut", -1))
    for i, layer in enumerate(fm.layers):
        rec = flat._RECORD.unpack_from(data, flat.HEADER_BYTES + i * flat.RECORD_BYTES)
        offs = rec[12:22]
        for j, arr in enumerate(flat.ARRAYS):
            off, count = offs[2 * j], offs[2 * j + 1]
            if count:
                arrays.append((blob_offset + off, count, flat.elem_dtype(fm.dtype, layer.op, arr), layer.op, arr, i))
    return {"fm": fm, "blob_offset": blob_offset, "n_layers": len(fm.layers), "arrays": arrays}


def test_bases_are_real_models():
    """Sanity of the fixtures and of the field tables against flat.py's own struct layout."""
    for name in BASES:
        data = base(name)
        values = flat._HEADER.unpack_from(data, 0)
        for k, (_, off, fmt) in enumerate(HEADER_FIELDS):
            got = struct.unpack_from(fmt, data, off)[0]
            assert got == values[k + 1] or (math.isnan(got) and math.isnan(values[k + 1]))
        out = runtime.run(flat.decode(data), mnist_images()[:2])
        assert out.shape == (2, 10) and np.all(np.isfinite(out))
    assert {layer.op for layer in layout("lenet5_classic/int8")["fm"].layers} >= {"conv", "subsample", "act",
                                                                                 "dense", "rbf"}


# ---------------------------------------------------------------- helpers
def event(what: str) -> None:
    """Count an outcome in hypothesis' statistics (--hypothesis-show-statistics); a no-op outside @given."""
    try:
        _event(what)
    except InvalidArgument:
        pass


def with_crc(buf: bytearray) -> bytes:
    """``buf`` with its CRC field recomputed (so decode gets past the CRC check)."""
    if len(buf) >= flat.HEADER_BYTES:
        struct.pack_into("<I", buf, 60, flat.crc(bytes(buf[:flat.HEADER_BYTES]), bytes(buf[flat.HEADER_BYTES:])))
    return bytes(buf)


def decode(data: bytes) -> flat.FlatModel | None:
    """Property 1: a model, or None for a FlatFormatError with a clean one-line message."""
    try:
        fm = flat.decode(data)
    except flat.FlatFormatError as e:
        msg = str(e)
        assert msg.startswith("invalid flat model: ") and "\n" not in msg, msg
        event("decode: rejected")
        return None
    event("decode: accepted")
    return fm


def float_bound(fm: flat.FlatModel) -> float:
    """Largest |value| any float32 layer can produce on uint8 input, by interval arithmetic in float64."""
    with np.errstate(all="ignore"):
        pix = np.abs(np.array([0.0, 255.0]) * fm.in_scale + fm.in_shift)
        b = float(pix.max())
        worst = b
        for layer in fm.layers:
            a = {k: np.abs(v.astype(np.float64)) for k, v in layer.arrays.items()}
            oc = layer.out_shape[0]
            if layer.op in ("conv", "dense"):
                w = a["w"].reshape(oc, -1)
                b = float(np.max(w.sum(1) * b + a["b"]))
            elif layer.op == "subsample":
                b = float(np.max(a["w"] * 4 * b + a["b"]))
            elif layer.op == "rbf":
                b = float(np.max(((b + a["w"].reshape(oc, -1)) ** 2).sum(1)))
            elif layer.op == "act":
                b = {"tanh": 1.0, "sigmoid": 1.0, "scaled_tanh": 1.7159,
                     "selu": runtime.SELU_SCALE * max(b, runtime.SELU_ALPHA)}.get(layer.act, b)
            # max/avg pool: |y| <= b
            if not b <= FINITE_BOUND:   # inf or nan
                return math.inf
            worst = max(worst, b)
    return worst


def check_runtime(fm: flat.FlatModel) -> None:
    """Property 3 for a model decode accepted."""
    h, w = fm.img_hw
    real = mnist_images()
    if (h, w) == real.shape[1:]:
        images = real[:2]
    else:
        images = (np.arange(2 * h * w, dtype=np.int64).reshape(2, h, w) * 37 % 256).astype(np.uint8)
    with np.errstate(all="ignore"):   # float overflow of huge mutated weights is allowed (see below)
        try:
            out = runtime.run(fm, images)
        except LenetlabError:
            event("runtime: LenetlabError")
            return
    event("runtime: ran")
    assert out.shape == (2, fm.num_classes)
    if fm.dtype == "int8":
        assert out.dtype == np.int64
        assert out.min() >= runtime.I32_MIN and out.max() <= runtime.I32_MAX
    else:
        assert out.dtype == np.float32
        bounded = float_bound(fm) <= FINITE_BOUND
        event(f"runtime: float, bounded={bounded}, finite={bool(np.all(np.isfinite(out)))}")
        if bounded:
            assert np.all(np.isfinite(out)), "non-finite logits although every value is bounded by 1e30"


def interesting_int(orig: int, bits: int) -> st.SearchStrategy[int]:
    top = (1 << bits) - 1
    near = [orig + d for d in (-4, -2, -1, 1, 2, 4, 16, 64)] + [orig * 2, orig // 2, orig ^ 0x80, top - orig]
    pool = sorted({v for v in (*SPECIAL_INTS, *near) if 0 <= v <= top and v != orig})
    return st.one_of(st.sampled_from(pool), st.integers(0, top).filter(lambda v: v != orig))


def interesting_float(orig: float) -> st.SearchStrategy[float]:
    near = [orig * f for f in (-1.0, 2.0, 0.5, 1e10, 1e-10)]
    return st.one_of(st.sampled_from([*SPECIAL_FLOATS, *near]), st.floats(width=32))


def put(buf: bytearray, fmt: str, pos: int, value) -> None:
    """Write one field; floats go through float32 (a value beyond its range becomes inf, as a writer would)."""
    if fmt == "<f":
        with np.errstate(over="ignore"):
            buf[pos:pos + 4] = np.array([value], "<f4").tobytes()
    else:
        struct.pack_into(fmt, buf, pos, value)


def field_value(draw, fmt: str, orig):
    if fmt == "<f":
        return draw(interesting_float(orig))
    return draw(interesting_int(orig, 8 * struct.calcsize(fmt)))


def same_model(a: flat.FlatModel, b: flat.FlatModel) -> bool:
    if (a.dtype, a.img_hw, a.pad, a.num_classes, len(a.layers)) != (b.dtype, b.img_hw, b.pad, b.num_classes,
                                                                      len(b.layers)):
        return False
    for la, lb in zip(a.layers, b.layers):
        if (la.op, la.in_shape, la.out_shape, la.act, la.k, la.pad) != (lb.op, lb.in_shape, lb.out_shape, lb.act,
                                                                          lb.k, lb.pad):
            return False
        if any(not np.array_equal(la.arrays[k], lb.arrays[k]) for k in flat.ARRAYS):
            return False
    return True


FUZZ = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
bases = st.sampled_from(BASES)
FAST_SHARE = 5      # the fast tier runs a fifth of each fuzzer's examples; its ``_full`` twin (slow) runs all


def fuzz(max_examples: int):
    """``@fuzz(N)`` on ``test_X(name, data)``: ``test_X`` draws ``N // FAST_SHARE`` examples (at least 25: every
    base file and mutation kind still comes up) in the fast tier, and ``test_X_full``, added to the module, the
    same property with all ``N`` in the slow tier (``pytest -m slow``). Both are derandomized (seeded)."""
    def wrap(body):
        def fuzzer(n: int):
            return settings(max_examples=n, **FUZZ)(given(name=bases, data=st.data())(body))

        module = sys.modules[body.__module__]
        setattr(module, f"{body.__name__}_full", pytest.mark.slow(fuzzer(max_examples)))
        return fuzzer(max(25, max_examples // FAST_SHARE))

    return wrap


# ---------------------------------------------------------------- the fuzz tests
@fuzz(150)
def test_truncated_or_extended_files_are_rejected(name, data):
    """Any change of length under the original header is a clean error (the header states the length)."""
    raw = base(name)
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.one_of(st.integers(0, 80), st.integers(0, len(raw) - 1)), label="keep bytes")
        mutated = raw[:cut]
    else:
        mutated = raw + data.draw(st.binary(min_size=1, max_size=80), label="appended")
    assert decode(mutated) is None


@fuzz(150)
def test_consistent_resize(name, data):
    """Truncations and appended bytes with file_bytes, blob_bytes and the CRC patched to match.

    Cutting into the blob must be rejected (the last array runs to the end of the blob); unused bytes
    appended to the blob are legal and must decode to the very same model.
    """
    raw = base(name)
    lay = layout(name)
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(flat.HEADER_BYTES, len(raw) - 1), label="keep bytes")
        buf = bytearray(raw[:cut])
    else:
        buf = bytearray(raw + data.draw(st.binary(min_size=1, max_size=256), label="appended"))
    struct.pack_into("<I", buf, 56, len(buf))
    struct.pack_into("<I", buf, 28, max(0, len(buf) - lay["blob_offset"]))
    fm = decode(with_crc(buf))
    if len(buf) < len(raw):
        assert fm is None
    else:
        assert fm is not None and same_model(fm, lay["fm"])
        check_runtime(fm)


@fuzz(200)
def test_bit_flips_stale_crc(name, data):
    """Bit flips anywhere with the CRC left as it was: 1 or 2 flips are always caught (CRC-32 has Hamming
    distance >= 3 at these lengths); more flips must still end in a model or a clean error."""
    raw = base(name)
    n_flips = data.draw(st.integers(1, 12), label="flips")
    bits = data.draw(st.lists(st.integers(0, 8 * len(raw) - 1), min_size=n_flips, max_size=n_flips, unique=True),
                     label="bits")
    buf = bytearray(raw)
    for b in bits:
        buf[b // 8] ^= 1 << (b % 8)
    fm = decode(bytes(buf))
    if n_flips <= 2:
        assert fm is None
    elif fm is not None:
        check_runtime(fm)


@fuzz(250)
def test_bit_flips_with_crc_recomputed(name, data):
    """Bit flips in the header, the layer records or the blob, CRC patched: decode validates the rest."""
    raw = base(name)
    lay = layout(name)
    regions = {"header": (0, 60), "records": (flat.HEADER_BYTES, lay["blob_offset"]),
               "blob": (lay["blob_offset"], len(raw))}
    lo, hi = regions[data.draw(st.sampled_from(sorted(regions)), label="region")]
    bits = data.draw(st.lists(st.integers(8 * lo, 8 * hi - 1), min_size=1, max_size=8, unique=True), label="bits")
    buf = bytearray(raw)
    for b in bits:
        buf[b // 8] ^= 1 << (b % 8)
    fm = decode(with_crc(buf))
    if fm is not None:
        check_runtime(fm)


@fuzz(250)
def test_header_field_overwritten(name, data):
    """One header field set to a boundary/garbage value (CRC patched, or stale), or a magic byte changed."""
    raw = base(name)
    buf = bytearray(raw)
    field = data.draw(st.sampled_from([("magic", 0, "8s"), *HEADER_FIELDS]), label="field")
    fname, off, fmt = field
    if fname == "magic":
        i = data.draw(st.integers(0, 7), label="magic byte")
        buf[i] ^= data.draw(st.integers(1, 255), label="xor")
    else:
        orig = struct.unpack_from(fmt, raw, off)[0]
        put(buf, fmt, off, field_value(data.draw, fmt, orig))
    stale = data.draw(st.integers(0, 9), label="stale crc") == 0
    fm = decode(bytes(buf) if stale else with_crc(buf))
    if bytes(buf) == raw:   # e.g. 0.0 * 2 written over a 0.0
        assert fm is not None
    elif stale or fname == "magic" or fname in STRICT_HEADER:
        assert fm is None, f"decode accepted a file with {fname} changed"
    elif fm is not None:
        check_runtime(fm)


@fuzz(300)
def test_layer_record_field_overwritten(name, data):
    """One field of one layer record (op, act code, out_bits, flags, shapes, k, pad, offsets, counts,
    out_scale) set to a boundary/garbage value, CRC patched; occasionally two fields at once."""
    raw = base(name)
    lay = layout(name)
    buf = bytearray(raw)
    touched = []
    for _ in range(data.draw(st.integers(1, 2), label="fields")):
        i = data.draw(st.integers(0, lay["n_layers"] - 1), label="layer")
        fname, off, fmt = data.draw(st.sampled_from(RECORD_FIELDS), label="field")
        pos = flat.HEADER_BYTES + i * flat.RECORD_BYTES + off
        orig = struct.unpack_from(fmt, buf, pos)[0]
        put(buf, fmt, pos, field_value(data.draw, fmt, orig))
        touched.append((fname, pos, struct.calcsize(fmt)))
    changed = {f for f, pos, size in touched if buf[pos:pos + size] != raw[pos:pos + size]}
    fm = decode(with_crc(buf))
    if not changed:
        assert fm is not None
    elif len(changed) == 1 and changed <= STRICT_RECORD:
        assert fm is None, f"decode accepted a file with {changed} changed"
    elif fm is not None:
        check_runtime(fm)


def _valid_value(dtype: str, op: str, arr: str, value) -> bool:
    """Whether the spec allows ``value`` as one element of array ``arr`` (everything else unchanged)."""
    if arr == "t" and op == "conv":
        return value <= 1
    if arr == "s":
        return 1 <= value <= 62
    if arr == "m":
        return value >= 0
    if dtype == "float32" and arr in ("w", "b"):
        return math.isfinite(value)
    return True


@fuzz(250)
def test_weight_overwritten(name, data):
    """One element of one array (weights, biases, C3 table, LUTs, multipliers, shifts) replaced, CRC patched:
    decode accepts exactly the values the spec allows, and the runtime copes with whatever it accepts."""
    raw = base(name)
    lay = layout(name)
    file_off, count, dt, op, arr, _ = data.draw(st.sampled_from(lay["arrays"]), label="array")
    idx = data.draw(st.one_of(st.sampled_from([0, count - 1]), st.integers(0, count - 1)), label="element")
    if dt.kind == "f":
        orig = float(np.frombuffer(raw, dt, 1, file_off + idx * 4)[0])
        value = data.draw(interesting_float(orig), label="value")
    else:
        info = np.iinfo(dt)
        edges = sorted({v for v in (int(info.min), -1, 0, 1, 2, 62, 63, int(info.max)) if v >= info.min})
        value = data.draw(st.one_of(st.sampled_from(edges), st.integers(int(info.min), int(info.max))),
                          label="value")
    buf = bytearray(raw)
    with np.errstate(over="ignore"):
        cell = np.array([value], dt)   # the value as float32 (rounded, or inf beyond its range) / the int type
    buf[file_off + idx * dt.itemsize: file_off + (idx + 1) * dt.itemsize] = cell.tobytes()
    fm = decode(with_crc(buf))
    stored = cell[0].item()
    ok = _valid_value(lay["fm"].dtype, op, arr, stored)
    assert (fm is not None) == ok, f"{op}.{arr}[{idx}] = {value!r}: decode {'accepted' if fm else 'rejected'}"
    if fm is not None:
        check_runtime(fm)


@fuzz(100)
def test_valid_rewirings(name, data):
    """Record/header edits that keep the file well-formed, with an exact oracle, CRC patched: another
    activation code, max <-> avg pooling, an int8 last layer narrowed to 8-bit output, or an array (or the
    int8 input LUT) pointed at other bytes of the blob. The last is valid exactly when the bytes found there
    are valid values of that array. Each accepted file then goes through the runtime."""
    raw = base(name)
    lay = layout(name)
    fm0 = lay["fm"]
    buf = bytearray(raw)
    rec = [flat.HEADER_BYTES + i * flat.RECORD_BYTES for i in range(lay["n_layers"])]
    acts = [i for i, layer in enumerate(fm0.layers) if layer.op == "act"]
    pools = [i for i, layer in enumerate(fm0.layers) if layer.op in ("maxpool", "avgpool")]
    kinds = ["act", "move"] + (["pool"] if pools else [])
    if fm0.dtype == "int8" and fm0.layers[-1].op != "rbf":
        kinds.append("narrow")
    kind = data.draw(st.sampled_from(kinds), label="kind")
    expect = True
    if kind == "act":
        i = data.draw(st.sampled_from(acts), label="layer")
        buf[rec[i] + 1] = data.draw(st.sampled_from(sorted(flat.ACTS)), label="activation code")
    elif kind == "pool":
        i = data.draw(st.sampled_from(pools), label="layer")
        buf[rec[i]] = 5 - buf[rec[i]]   # 2 <-> 3
    elif kind == "narrow":
        buf[rec[-1] + 2] = 8
    else:
        file_off, count, dt, op, arr, i = data.draw(st.sampled_from(lay["arrays"]), label="array")
        blob_bytes = len(raw) - lay["blob_offset"]
        slots = (blob_bytes - count * dt.itemsize) // dt.itemsize
        new = data.draw(st.integers(0, slots), label="new slot") * dt.itemsize
        if i < 0:
            struct.pack_into("<I", buf, 48, new)
        else:
            struct.pack_into("<I", buf, rec[i] + 20 + 8 * flat.ARRAYS.index(arr), new)
        values = np.frombuffer(raw, dt, count, lay["blob_offset"] + new)
        expect = all(_valid_value(fm0.dtype, op, arr, v) for v in values.tolist())
    fm = decode(with_crc(buf))
    assert (fm is not None) == expect, f"{kind}: decode {'accepted' if fm else 'rejected'}, expected {expect}"
    if fm is not None:
        check_runtime(fm)
        if data.draw(st.integers(0, 3), label="also reference mode") == 0:
            check_reference_mode(fm)


def check_reference_mode(fm: flat.FlatModel) -> None:
    """The readable per-position runtime agrees with the fast one: bit for bit on int8 files, to float32
    rounding (relative to the interval bound) on float files."""
    images = mnist_images()[:2]
    with np.errstate(all="ignore"):
        try:
            fast = runtime.run(fm, images)
        except LenetlabError:
            return
        ref = runtime.run(fm, images, "reference")
    event("reference mode compared")
    if fm.dtype == "int8":
        assert np.array_equal(fast, ref)
    else:
        bound = float_bound(fm)
        if bound <= FINITE_BOUND:
            assert float(np.abs(fast - ref).max()) <= 1e-5 * max(1.0, bound)


# ---------------------------------------------------------------- hostile but well-formed files
def test_int8_rbf_before_the_last_layer():
    """An int8 file whose RBF (32-bit output) is followed by another layer: the next layer would index its
    256-entry LUT with an int32 value. Decode must reject it, or the runtime must cope cleanly."""
    fm = flat.decode(base("lenet5_classic/int8"))
    last = fm.layers[-1]
    assert last.op == "rbf"
    fm.layers.append(flat.Layer("act", last.out_shape, last.out_shape, "identity", 8, 0, 0, 1.0,
                                {"t": np.arange(-128, 128).astype(np.int8)}))
    try:
        data = flat.encode(fm)
    except flat.FlatFormatError:
        return
    got = decode(data)
    if got is not None:
        check_runtime(got)

