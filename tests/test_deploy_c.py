"""The plain-C runtime (``lenetlab export --format c``): real compiler, real MNIST, deterministic.

- parity on the full 10k MNIST test set: float32 logits within 64 float32 eps of the logit scale of
  PyTorch's (conftest.logit_tolerance); int8 logits bit-exact with the NumPy reference runtime; int8
  accuracy within 0.3 points of float on the 60k-image models (slow);
- the loader fuzz: >= 2,000 damaged flat files (truncated, bit-flipped with the CRC stale and recomputed,
  header/record fields and single array values overwritten, resized) through ``lenet5_check`` built with
  ASan + UBSan; the C verdict must equal ``flat.decode``'s on every file, and every accepted file is also
  run through the interpreter;
- the interpreter on odd models: the int8 fuzz survivors and every prefix of the models (each op as the
  output layer, int8 out_bits 8 and 32) give the NumPy runtime's values; crafted over-limit files are
  refused, and a valid model larger than the build's static buffers is refused, not overrun;
- ``lenet5_eval`` rejects bad input cleanly; ``lenetlab export --format c`` + ``make`` builds and the binary
  reproduces the NumPy runtime's accuracy.

The binaries are compiled once per test session (conftest.c_program): ``lenet5_eval`` with ``gcc -std=c99
-Wall -Wextra -Werror -O2 -DLENET5_THREADS -pthread``, the loader harness with ASan + UBSan.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEPLOY_IMAGES, assert_logits_match, run_cli
from lenetlab.config import DataConfig
from lenetlab.data.idx import write_idx
from lenetlab.data.transforms import to_model_input
from lenetlab.deploy import flat, runtime
from lenetlab.deploy.c_eval import MAKEFILE_FLAGS
from lenetlab.deploy.c_runtime import STRICT_FLAGS, THREAD_FLAGS, compile_program, model_source
from lenetlab.deploy.export import build_flat
from lenetlab.deploy.graph import to_flat
from lenetlab.deploy.quantize import quantize
from lenetlab.models import create_model, model_entry
from lenetlab.rundir import load_model

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")

SANITIZE = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"]
# The fast tier's sanitizer builds use -O0: ASan and UBSan instrument every access at any optimisation level (at
# -O0 none is optimised away) and gcc takes ~1.5 s instead of ~8.5 s; the warnings that need the optimiser are
# kept by the -O2 -Werror build (STRICT_FLAGS). The slow loader fuzz, which runs 2,400 files through the
# interpreter, keeps -O1.
SANITIZE_FAST = [flag if flag != "-O1" else "-O0" for flag in SANITIZE]
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
NAMES = ["lenet5", "lenet5_classic"]
LINE_KEYS = ("accuracy", "images", "seconds", "images_per_s")


# ---------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def cdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cbin")
    (d / "no_model.c").write_text(model_source(b"", "no embedded model"))
    return d


@pytest.fixture(scope="module")
def eval_bin(c_program) -> Path:
    """``lenet5_eval`` -O2 -Werror with the threaded entry points, as the exported Makefile builds it by default
    (runs here use one thread: the single-threaded interpreter); the same build as test_deploy_c_threads.py's,
    so the fast tier compiles it once. A build without threads: test_deploy_c_threads.py (slow)."""
    return c_program("lenet5_eval", (*STRICT_FLAGS, *THREAD_FLAGS))


@pytest.fixture(scope="module")
def check_san(c_program) -> Path:
    return c_program("lenet5_check", SANITIZE_FAST)


@pytest.fixture(scope="module")
def idx(tmp_path_factory, mnist_test) -> dict[str, Path]:
    """Plain (uncompressed) IDX files of the 10k test set and of its first DEPLOY_IMAGES and 100 images."""
    d = tmp_path_factory.mktemp("idx")
    x, y = mnist_test
    files = {}
    for tag, n in (("", len(x)), (str(DEPLOY_IMAGES), DEPLOY_IMAGES), ("100", 100)):
        files[f"images{tag}"], files[f"labels{tag}"] = d / f"images{tag}.idx", d / f"labels{tag}.idx"
        write_idx(files[f"images{tag}"], x[:n], compress=False)
        write_idx(files[f"labels{tag}"], y[:n].astype(np.uint8), compress=False)
    return files


_TRAINED: dict[tuple[str, int], dict] = {}


def trained(name: str, deploy_runs, deploy_flats, mnist_test, n: int = DEPLOY_IMAGES) -> dict:
    """``float`` / ``int8`` flat files of a trained run, its PyTorch logits (``torch``) and the NumPy reference
    int8 logits (``int8_ref``) on the first ``n`` test images: the session's shared ones (conftest.deploy_flats,
    DEPLOY_IMAGES images) in the fast tier, computed here (cached) for all 10k in the slow one."""
    if n == DEPLOY_IMAGES:
        return deploy_flats[name]
    if (name, n) not in _TRAINED:
        x = mnist_test[0][:n]
        model, cfg = load_model(deploy_runs[name])
        with torch.no_grad():
            ref = torch.cat([model(to_model_input(torch.from_numpy(x[i:i + 2000]), cfg.data))
                             for i in range(0, len(x), 2000)]).numpy()
        f = deploy_flats[name]
        _TRAINED[name, n] = {"float": f["float"], "int8": f["int8"], "torch": ref,
                             "int8_ref": runtime.run(flat.load(str(f["int8"])), x, mode="reference")}
    return _TRAINED[name, n]


def run_eval(exe: Path, *args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", r.stderr
    return r


def parse_line(stdout: str) -> dict[str, float]:
    """The one result line: ``accuracy A images N seconds S images_per_s R ...``."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("accuracy ")]
    assert len(lines) == 1, stdout
    words = lines[0].split()
    out = {k: float(v) for k, v in zip(words[::2], words[1::2])}
    assert all(k in out for k in LINE_KEYS), stdout
    return out


# ---------------------------------------------------------------- parity on the test set (all 10k: slow tier)
SIZES = pytest.mark.parametrize("n", [DEPLOY_IMAGES, pytest.param(10000, marks=pytest.mark.slow)],
                                ids=[str(DEPLOY_IMAGES), "10k"])


def _tag(n: int) -> str:
    return "" if n == 10000 else str(n)


@SIZES
@pytest.mark.parametrize("name", NAMES)
def test_float_parity_with_pytorch(name, n, deploy_runs, deploy_flats, mnist_test, eval_bin, idx, tmp_path):
    t = trained(name, deploy_runs, deploy_flats, mnist_test, n)
    out = tmp_path / "float.bin"
    r = run_eval(eval_bin, idx[f"images{_tag(n)}"], idx[f"labels{_tag(n)}"], "--model", t["float"],
                 "--logits", out)
    got = np.fromfile(out, "<f4").reshape(n, -1)
    ref = t["torch"]
    assert_logits_match(got, ref, f"{name}: C float vs PyTorch")
    line = parse_line(r.stdout)
    assert line["images"] == len(ref)
    assert line["accuracy"] == pytest.approx((got.argmax(1) == mnist_test[1][:n]).mean(), abs=5e-5)


@SIZES
@pytest.mark.parametrize("name", NAMES)
def test_int8_bit_exact_with_numpy_reference(name, n, deploy_runs, deploy_flats, mnist_test, eval_bin, idx,
                                            tmp_path):
    t = trained(name, deploy_runs, deploy_flats, mnist_test, n)
    y = mnist_test[1][:n]
    out = tmp_path / "int8.bin"
    r = run_eval(eval_bin, idx[f"images{_tag(n)}"], idx[f"labels{_tag(n)}"], "--model", t["int8"],
                 "--logits", out)
    got = np.fromfile(out, "<i4").reshape(len(y), -1)
    want = t["int8_ref"]
    assert want.dtype == np.int64 and np.array_equal(got.astype(np.int64), want)
    assert parse_line(r.stdout)["accuracy"] == pytest.approx((got.argmax(1) == y).mean(), abs=5e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_int8_accuracy_within_0_3_points_of_float_full_data(name, full_deploy_runs, mnist_test, eval_bin, idx,
                                                            tmp_path):
    """How much int8 costs is a property of a fully trained network, so this runs on the 60k-image models
    (slow); the fast tests check the int8 path bit for bit on the subset-trained ones."""
    y = mnist_test[1]
    model, cfg = load_model(full_deploy_runs[name])
    fm8 = build_flat(model, cfg, int8=True)
    (tmp_path / "m.flat").write_bytes(flat.encode(fm8))
    run_eval(eval_bin, idx["images"], idx["labels"], "--model", tmp_path / "m.flat", "--logits", tmp_path / "q.bin")
    got = np.fromfile(tmp_path / "q.bin", "<i4").reshape(len(y), -1)
    assert np.array_equal(got.astype(np.int64), runtime.run(fm8, mnist_test[0], mode="fast"))
    with torch.no_grad():
        ref = torch.cat([model(to_model_input(torch.from_numpy(mnist_test[0][i:i + 2000]), cfg.data))
                         for i in range(0, len(y), 2000)]).numpy()
    acc_q, acc_f = (got.argmax(1) == y).mean(), (ref.argmax(1) == y).mean()
    assert acc_q >= acc_f - 0.003, (acc_f, acc_q)


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_batch_and_repeat_do_not_change_logits(kind, deploy_flats, eval_bin, idx, tmp_path):
    t = deploy_flats["lenet5_classic"]
    dt = "<f4" if kind == "float" else "<i4"
    logits = []
    for extra in ([], ["--batch", "1"], ["--batch", "7", "--repeat", "3"]):
        out = tmp_path / f"l{len(logits)}.bin"
        r = run_eval(eval_bin, idx["images100"], idx["labels100"], "--model", t[kind], "--logits", out,
                     *extra)
        line = parse_line(r.stdout)
        assert line["images"] == 100 and line["images_per_s"] > 0
        logits.append(np.fromfile(out, dt))
    assert all(np.array_equal(logits[0], other) for other in logits[1:])


@pytest.mark.slow   # a sanitizer build of the interpreter; the fast tier's are the loader harness's (-O0)
def test_sanitized_inference_matches(deploy_flats, cdir, idx, tmp_path):
    """The interpreter itself under ASan + UBSan on real images: no report, same logits as the -O2 build."""
    exe = compile_program("lenet5_eval", cdir / "lenet5_eval_san", SANITIZE, model_c=cdir / "no_model.c")
    env = {**os.environ, **SAN_ENV}
    for name in NAMES:
        t = deploy_flats[name]
        for kind in ("float", "int8"):
            out = tmp_path / f"{name}_{kind}.bin"
            run_eval(exe, idx["images100"], idx["labels100"], "--model", t[kind], "--logits", out, env=env)
            if kind == "int8":
                want = t["int8_ref"][:100]
                assert np.array_equal(np.fromfile(out, "<i4").reshape(100, -1), want)
            else:
                assert_logits_match(np.fromfile(out, "<f4").reshape(100, -1), t["torch"][:100], f"{name} (ASan)")


def prefixes(fm: flat.FlatModel) -> list[flat.FlatModel]:
    """Every prefix of ``fm`` with at most 1024 outputs as a model of its own (so each layer gets to be the
    last one), and for int8 files each once more with the last layer's out_bits switched between 8 and 32."""
    out = []
    for n in range(1, len(fm.layers) + 1):
        layers = [flat.Layer(**{**vars(layer), "arrays": dict(layer.arrays)}) for layer in fm.layers[:n]]
        c, h, w = layers[-1].out_shape
        if c * h * w > flat.MAX_DIM:          # num_classes is at most 1024
            continue
        variants = [layers]
        if fm.dtype == "int8" and layers[-1].op != "rbf":
            other = [*layers[:-1], flat.Layer(**{**vars(layers[-1]), "out_bits": 40 - layers[-1].out_bits})]
            variants.append(other)
        for v in variants:
            out.append(flat.decode(flat.encode(flat.FlatModel(
                fm.dtype, fm.img_hw, fm.pad, c * h * w, fm.in_scale, fm.in_shift, v, fm.in_lut, fm.in_qscale))))
    return out


@pytest.mark.slow   # a build per truncated network
def test_every_layer_can_be_the_last(eval_bin, mnist_test, tmp_path):
    """Each op with each output width, as the network's output: the C runtime returns the NumPy runtime's
    values (int8 exactly, float32 within rounding)."""
    x = mnist_test[0][:20]
    write_idx(tmp_path / "x.idx", x, compress=False)
    write_idx(tmp_path / "y.idx", mnist_test[1][:20].astype(np.uint8), compress=False)
    for base in fuzz_bases(mnist_test[0][:200]):
        for i, fm in enumerate(prefixes(flat.decode(base))):
            (tmp_path / "m.flat").write_bytes(flat.encode(fm))
            run_eval(eval_bin, tmp_path / "x.idx", tmp_path / "y.idx", "--model", tmp_path / "m.flat",
                     "--logits", tmp_path / "l.bin")
            want = runtime.run(fm, x, mode="reference")
            if fm.dtype == "int8":
                got = np.fromfile(tmp_path / "l.bin", "<i4").reshape(want.shape)
                assert np.array_equal(got, want), (i, fm.layers[-1].op, fm.layers[-1].out_bits)
            else:
                got = np.fromfile(tmp_path / "l.bin", "<f4").reshape(want.shape)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{i} {fm.layers[-1].op}")


# ---------------------------------------------------------------- loader fuzz
RECORD = struct.Struct("<BBBB6HHH10If")
HEADER_FIELDS = [(8, "<H"), (10, "<B"), (11, "<B"), (12, "<I"), (16, "<I"), (20, "<I"), (24, "<I"), (28, "<I"),
                 (32, "<H"), (34, "<H"), (36, "<H"), (38, "<H"), (40, "<f"), (44, "<f"), (48, "<I"), (52, "<f"),
                 (56, "<I")]
RECORD_FIELDS = ([(0, "<B"), (1, "<B"), (2, "<B"), (3, "<B")] + [(4 + 2 * j, "<H") for j in range(8)]
                 + [(20 + 4 * j, "<I") for j in range(10)] + [(60, "<f")])
KINDS = ("truncate", "resize", "flip_stale", "flip_crc", "header_field", "record_field", "array_value",
         "garbage_header")
CASES_PER_KIND = 300   # x 8 kinds = 2,400 files


_BASES: list[bytes] = []


def fuzz_bases(images: np.ndarray) -> list[bytes]:
    """Real exports with untrained weights: lenet5_classic (C3 table, subsampling, RBF) float32 and int8,
    lenet5 at half width with avg-pool + tanh (float32) and max-pool + ReLU (int8). Cached."""
    if _BASES:
        return _BASES
    out = _BASES
    for name, opts in (("lenet5_classic", {}), ("lenet5", {"width": 0.5, "pool": "avg", "activation": "tanh"}),
                       ("lenet5", {"width": 0.5})):
        torch.manual_seed(len(out))
        fm = to_flat(create_model(name, **opts), DataConfig(**model_entry(name).data_defaults))
        if opts != {"width": 0.5}:
            out.append(flat.encode(fm))
        if opts.get("pool") != "avg":
            out.append(flat.encode(quantize(fm, images)))
    return out


def with_crc(buf: bytearray) -> bytes:
    struct.pack_into("<I", buf, 60, flat.crc(bytes(buf[:64]), bytes(buf[64:])))
    return bytes(buf)


def nasty(rng: np.random.Generator, fmt: str, orig):
    """A boundary or random value for a field of struct format ``fmt`` (original value ``orig``)."""
    if fmt.endswith("f"):
        pick = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 3.4e38, 1e-45, 2 * orig, -orig,
                float(rng.normal() * 10)]
        return float(pick[rng.integers(len(pick))])
    bits = {"B": 8, "H": 16, "I": 32, "i": 32, "b": 8}[fmt[-1]]
    pick = [0, 1, 2, orig - 1, orig + 1, orig * 2, orig + 4, orig - 4, orig + 64, 2**bits - 1, 2**(bits - 1),
            2**(bits - 1) - 1, int(rng.integers(0, 2**bits))]
    v = int(pick[rng.integers(len(pick))]) % 2**bits
    if fmt[-1] in "bi" and v >= 2**(bits - 1):
        v -= 2**bits
    return v


def array_slots(data: bytes) -> list[tuple[int, str, int]]:
    """(absolute byte offset, struct format, count) of every array in a valid flat file."""
    n_layers, blob_offset = struct.unpack_from("<I", data, 16)[0], struct.unpack_from("<I", data, 24)[0]
    int8 = data[11] == 1
    slots = []
    if int8:
        slots.append((blob_offset + struct.unpack_from("<I", data, 48)[0], "<b", 256))
    for i in range(n_layers):
        rec = RECORD.unpack_from(data, 64 + 64 * i)
        op, offs = rec[0], rec[12:22]
        for j, name in enumerate("wbtms"):
            off, count = offs[2 * j], offs[2 * j + 1]
            if count == 0:
                continue
            if name == "t":
                fmt = "<b" if op == 5 else "<B"
            elif name in "ms" or (int8 and name == "b"):
                fmt = "<i"
            else:
                fmt = "<b" if int8 else "<f"
            slots.append((blob_offset + off, fmt, count))
    return slots


def mutate(rng: np.random.Generator, kind: str, base: bytes) -> bytes:
    n = len(base)
    n_layers = struct.unpack_from("<I", base, 16)[0]
    blob_offset = struct.unpack_from("<I", base, 24)[0]
    buf = bytearray(base)
    if kind == "truncate":   # stale header: file_bytes no longer matches
        cut = int(rng.integers(0, blob_offset + 64)) if rng.random() < 0.5 else int(rng.integers(0, n))
        return bytes(buf[:cut])
    if kind == "resize":     # header kept consistent and the CRC recomputed: the array bounds checks decide
        new = int(rng.integers(blob_offset, n)) if rng.random() < 0.5 else n + int(rng.integers(1, 65))
        buf = buf[:new] + bytearray(rng.integers(0, 256, max(0, new - n), dtype=np.uint8).tobytes())
        struct.pack_into("<I", buf, 28, new - blob_offset)
        struct.pack_into("<I", buf, 56, new)
        return with_crc(buf)
    if kind in ("flip_stale", "flip_crc"):
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, blob_offset)) if rng.random() < 0.7 else int(rng.integers(0, n))
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        return with_crc(buf) if kind == "flip_crc" else bytes(buf)
    if kind == "header_field":
        off, fmt = HEADER_FIELDS[rng.integers(len(HEADER_FIELDS))]
        struct.pack_into(fmt, buf, off, nasty(rng, fmt, struct.unpack_from(fmt, buf, off)[0]))
        return with_crc(buf) if rng.random() < 0.85 else bytes(buf)
    if kind == "record_field":
        at = 64 + 64 * int(rng.integers(0, n_layers))
        off, fmt = RECORD_FIELDS[rng.integers(len(RECORD_FIELDS))]
        struct.pack_into(fmt, buf, at + off, nasty(rng, fmt, struct.unpack_from(fmt, buf, at + off)[0]))
        return with_crc(buf)
    if kind == "array_value":
        slots = array_slots(base)
        start, fmt, count = slots[rng.integers(len(slots))]
        pos = start + struct.calcsize(fmt) * int(rng.integers(0, count))
        special = {"<B": [2, 255, 0, 1], "<b": [-128, 127, 0, -1], "<i": [0, -1, 1, 62, 63, -2**31, 2**31 - 1]}
        if fmt == "<f":
            value = nasty(rng, fmt, struct.unpack_from(fmt, buf, pos)[0])
        else:
            choices = special[fmt]
            value = choices[rng.integers(len(choices))]
        struct.pack_into(fmt, buf, pos, value)
        return with_crc(buf)
    # garbage_header: several header fields at once (or every byte after the magic) get garbage
    if rng.random() < 0.2:
        buf[8:60] = rng.integers(0, 256, 52, dtype=np.uint8).tobytes()
    else:
        for f in rng.choice(len(HEADER_FIELDS), int(rng.integers(2, 6)), replace=False):
            off, fmt = HEADER_FIELDS[f]
            struct.pack_into(fmt, buf, off, nasty(rng, fmt, struct.unpack_from(fmt, buf, off)[0]))
    return with_crc(buf) if rng.random() < 0.8 else bytes(buf)


def decode_ok(data: bytes) -> bool:
    try:
        flat.decode(data)
    except flat.FlatFormatError:
        return False
    return True


_CORPUS: dict[int, list] = {}


def fuzz_corpus(images: np.ndarray, per_kind: int = CASES_PER_KIND) -> list[tuple[str, bytes, bool]]:
    """(kind, file, flat.decode accepts it) for the unmodified bases and ``per_kind`` mutants of each kind
    (2,400 by default; seeded, cached)."""
    if per_kind not in _CORPUS:
        rng = np.random.default_rng(20240613)
        bases = fuzz_bases(images)
        corpus = _CORPUS[per_kind] = [("base", b, decode_ok(b)) for b in bases]
        for kind in KINDS:
            for j in range(per_kind):
                data = mutate(rng, kind, bases[j % len(bases)])
                corpus.append((kind, data, decode_ok(data)))
    return _CORPUS[per_kind]


@pytest.mark.slow   # a sanitizer build; test_loader_rejects_crafted_files_and_reports_build_limits is fast
def test_fuzz_loader_agrees_with_decode_under_sanitizers(c_program, mnist_test, tmp_path):
    check_san = c_program("lenet5_check", SANITIZE)     # -O1: 2,400 files through the interpreter
    corpus = fuzz_corpus(mnist_test[0][:200])
    assert len(corpus) >= 2000 and all(ok for kind, _, ok in corpus if kind == "base")
    files = []
    for i, (kind, data, _) in enumerate(corpus):
        files.append(tmp_path / f"{i:04d}_{kind}.flat")
        files[-1].write_bytes(data)
    want = [ok for _, _, ok in corpus]
    # --run: every file that loads also runs one image through the interpreter
    r = subprocess.run([str(check_san), "--run", *map(str, files)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **SAN_ENV}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == "", r.stderr[-3000:]          # no sanitizer report
    lines = r.stdout.splitlines()
    assert len(lines) == len(files)
    assert all(ln == "ok" or ln.startswith("error: ") for ln in lines)
    got = [ln == "ok" for ln in lines]
    disagree = [(f.name, ln) for f, ln, g, w in zip(files, lines, got, want) if g != w]
    assert not disagree, disagree[:10]
    # both verdicts are common, and many different checks fired (numbers and op names taken out)
    assert 0.1 < np.mean(want) < 0.9, np.mean(want)
    errors = {re.sub(r"[0-9]+|\([a-z]+\)", "#", ln) for ln in lines if ln != "ok"}
    assert len(errors) > 40, sorted(errors)


# the fast tier runs the int8 survivors of 800 mutants (100 of each kind), the slow tier those of the 2,400 of
# the sanitizer fuzz (decoding the corpus is most of this test's cost)
@pytest.mark.parametrize("per_kind,runs", [(100, 40), pytest.param(CASES_PER_KIND, 120, marks=pytest.mark.slow)],
                         ids=["800", "2400"])
def test_fuzz_survivors_int8_run_bit_exact(per_kind, runs, eval_bin, mnist_test, tmp_path):
    """int8 mutants that decode accepts (odd shifts, multipliers, biases, weights, LUT entries, extended
    blobs) give the NumPy runtime's logits exactly."""
    x = mnist_test[0][:4]
    write_idx(tmp_path / "x.idx", x, compress=False)
    write_idx(tmp_path / "y.idx", mnist_test[1][:4].astype(np.uint8), compress=False)
    survivors = [d for kind, d, ok in fuzz_corpus(mnist_test[0][:200], per_kind) if ok and kind != "base"
                 and d[11] == 1]
    assert len(survivors) > runs
    for i, data in enumerate(survivors[::len(survivors) // runs][:runs]):    # spread over the mutation kinds
        (tmp_path / "m.flat").write_bytes(data)
        run_eval(eval_bin, tmp_path / "x.idx", tmp_path / "y.idx", "--model", tmp_path / "m.flat",
                 "--logits", tmp_path / "l.bin")
        want = runtime.run(flat.decode(data), x)
        assert np.array_equal(np.fromfile(tmp_path / "l.bin", "<i4").reshape(want.shape), want), i


def crafted(monkeypatch, fm: flat.FlatModel) -> bytes:
    """Bytes of a model that flat.encode would refuse (its final decode check switched off)."""
    with monkeypatch.context() as m:
        m.setattr(flat, "decode", lambda data: None)
        return flat.encode(fm)


def test_loader_rejects_crafted_files_and_reports_build_limits(check_san, cdir, monkeypatch, mnist_test, tmp_path):
    L, z = flat.Layer, np.zeros
    f32 = np.float32
    bases = fuzz_bases(mnist_test[0][:200])
    padded = bytearray(bases[0])
    struct.pack_into("<HHH", padded, 32, 1024, 1024, 1)
    scale = bytearray(bases[0])
    struct.pack_into("<f", scale, 64 + 60, 2.0)                                  # layer 0 out_scale
    cases = {
        "padded input map larger than 2^20 values": with_crc(padded),
        "out_scale 2": with_crc(scale),
        "larger than the 64 MiB limit": bases[0] + bytes(64 * 2**20),
        "more than 2^26 multiply-adds": crafted(monkeypatch, flat.FlatModel(
            "float32", (1024, 1024), 0, 65, 1 / 255, 0.0,
            [L("dense", (1, 1024, 1024), (65, 1, 1), arrays={"w": z(8, f32), "b": z(65, f32)})])),
        "RBF must be the last layer": crafted(monkeypatch, flat.FlatModel(
            "float32", (4, 4), 0, 3, 1 / 255, 0.0,
            [L("rbf", (1, 4, 4), (3, 1, 1), arrays={"w": z(48, f32)}), L("act", (3, 1, 1), (3, 1, 1), "relu")])),
    }
    paths = []
    for i, data in enumerate(cases.values()):
        assert not decode_ok(data)
        paths.append(tmp_path / f"c{i}.flat")
        paths[-1].write_bytes(data)
    r = subprocess.run([str(check_san), *map(str, paths)], capture_output=True, text=True,
                       env={**os.environ, **SAN_ENV})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for message, line in zip(cases, r.stdout.splitlines()):
        assert line.startswith("error: ") and message in line, (message, line)
    # a valid model that does not fit this build's static buffers is refused, not overrun
    small = compile_program("lenet5_check", cdir / "lenet5_check_small",
                            [*SANITIZE_FAST, "-DLENET5_MAX_ACT=2048", "-DLENET5_MAX_FILE_BYTES=100000"])
    for i, b in enumerate(bases):
        (tmp_path / f"b{i}.flat").write_bytes(b)
    r = subprocess.run([str(small), "--run", *(str(tmp_path / f"b{i}.flat") for i in range(len(bases)))],
                       capture_output=True, text=True, env={**os.environ, **SAN_ENV})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert "this build holds 100000" in lines[0]                                # 248 kB classic float32
    assert all("exceeds this build's LENET5_MAX_ACT (2048)" in ln for ln in lines[1:]), lines


# ---------------------------------------------------------------- lenet5_eval on bad input
def test_eval_rejects_bad_input(eval_bin, idx, deploy_flats, mnist_test, tmp_path):
    t = deploy_flats["lenet5"]
    model = ["--model", t["int8"]]
    img, lab = idx["images100"], idx["labels100"]

    def fails(*args, code: int = 1, message: str) -> None:
        r = run_eval(eval_bin, *args, check=False)
        assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
        assert message in r.stderr, (message, r.stderr)
        assert "accuracy" not in r.stdout

    fails(tmp_path / "missing.idx", lab, *model, message="cannot open")
    fails(lab, lab, *model, message="bad IDX magic 00000801")                    # labels given as images
    fails(img, img, *model, message="bad IDX magic 00000803")
    write_idx(tmp_path / "labels99.idx", mnist_test[1][:99].astype(np.uint8), compress=False)
    fails(img, tmp_path / "labels99.idx", *model, message="100 images but 99 labels")
    (tmp_path / "short.idx").write_bytes(img.read_bytes()[:-1])
    fails(tmp_path / "short.idx", lab, *model, message="truncated or trailing data")
    write_idx(tmp_path / "big.idx", np.zeros((3, 32, 32), np.uint8), compress=False)
    fails(tmp_path / "big.idx", lab, *model, message="images are 32x32, the model takes 28x28")
    write_idx(tmp_path / "gz.idx", mnist_test[0][:2], compress=True)
    fails(tmp_path / "gz.idx", lab, *model, message="gzip-compressed")
    (tmp_path / "bad.flat").write_bytes(t["int8"].read_bytes()[:-1])
    fails(img, lab, "--model", tmp_path / "bad.flat", message="file_bytes says")
    fails(img, lab, message="embedded model: file is 0 bytes")                   # this build embeds nothing
    fails(img, code=2, message="usage:")
    fails(img, lab, *model, "--batch", "0", code=2, message="--batch")
    fails(img, lab, *model, "--repeat", "x", code=2, message="--repeat")
    fails(img, lab, *model, "--frobnicate", code=2, message="unknown option")


def test_check_tool_prints_one_verdict_per_file(check_san, deploy_flats, tmp_path):
    t = deploy_flats["lenet5_classic"]
    (tmp_path / "empty.flat").write_bytes(b"")
    r = subprocess.run([str(check_san), t["float"], tmp_path / "empty.flat", tmp_path / "none.flat",
                        t["int8"]], capture_output=True, text=True, env={**os.environ, **SAN_ENV})
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == ["ok", "error: file is 0 bytes, shorter than the 64-byte header",
                                     r.stdout.splitlines()[2], "ok"]
    assert r.stdout.splitlines()[2].startswith("error: cannot open")
    assert subprocess.run([str(check_san)], capture_output=True).returncode == 2


# ---------------------------------------------------------------- the exporter + Makefile
# `make` with the Makefile's default flags (-O3 -march=native: ~5 s of gcc) runs in the slow tier (int8); the fast
# tier builds the same Makefile with a quick override (make CFLAGS=..., as its header documents) and checks that the
# defaults are c_eval.MAKEFILE_FLAGS, which the deploy experiment's C evaluator compiles in the fast tier too
# (tests/test_experiment_deploy.py::test_tiny_run_end_to_end)
QUICK_CFLAGS = "-std=c99 -O0 -Wall -Wextra -Werror"


@pytest.mark.parametrize("int8,cflags", [(False, QUICK_CFLAGS), pytest.param(True, None, marks=pytest.mark.slow)],
                         ids=["float-quick", "int8-default"])
def test_cli_export_make_and_eval(int8, cflags, deploy_runs, deploy_flats, mnist_test, idx, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    name = "lenet5"
    out = tmp_path / "c"
    args = ["export", str(deploy_runs[name]), "--format", "c", "--out", str(out), "--no-check"]
    r = run_cli(*args, *(["--int8"] if int8 else []), check=True)
    flat_name = "model_int8.flat" if int8 else "model.flat"
    for f in (flat_name, "lenet5.c", "lenet5.h", "lenet5_eval.c", "lenet5_check.c", "lenet5_model.c", "Makefile"):
        assert (out / f).is_file() and f in r.stdout, f
    defaults = dict(re.findall(r"^(\w+) \?= (.*)$", (out / "Makefile").read_text(), re.M))
    assert [f for f in defaults["CFLAGS"].split() if not f.startswith("-W")] + defaults["THREAD_FLAGS"].split() \
        == list(MAKEFILE_FLAGS), defaults
    m = subprocess.run(["make", "-C", str(out), *([f"CFLAGS={cflags}"] if cflags else [])], capture_output=True,
                       text=True, timeout=300)
    assert m.returncode == 0, m.stdout + m.stderr
    if cflags:
        assert cflags in m.stdout, m.stdout                                       # the override reached gcc
    # the embedded model is the exported flat file: no --model needed
    n = DEPLOY_IMAGES
    line = parse_line(run_eval(out / "lenet5_eval", idx[f"images{n}"], idx[f"labels{n}"]).stdout)
    x, y = mnist_test[0][:n], mnist_test[1][:n]
    if int8:
        logits = deploy_flats[name]["int8_ref"]
    else:
        logits = runtime.run(flat.load(str(out / flat_name)), x)
    assert f"{line['accuracy']:.4f}" == f"{(logits.argmax(1) == y).mean():.4f}"
    assert line["images"] == len(y) and line["images_per_s"] > 0
