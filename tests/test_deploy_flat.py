"""Flat format + NumPy runtime: PyTorch is the oracle, the spec is the contract."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from conftest import DEPLOY_IMAGES, assert_logits_match, run_cli
from lenetlab.config import DataConfig
from lenetlab.data.transforms import to_model_input
from lenetlab.deploy import flat, runtime
from lenetlab.deploy.graph import to_flat
from lenetlab.deploy.quantize import fixed_point, quantize
from lenetlab.errors import LenetlabError
from lenetlab.models import create_model, model_entry
from lenetlab.quant import int8
from lenetlab.rundir import load_model

ACTS = ["relu", "tanh", "sigmoid", "selu", "scaled_tanh", "abs", "identity"]
# untrained variants on the first 100 test images (300 before: 3x the reference runtime's work for the same
# check); the trained models run 300 (10k: slow) in test_trained_parity_on_the_test_set
VARIANT_IMAGES = 100


def _torch_logits(model, images: np.ndarray, data: DataConfig) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(to_model_input(torch.from_numpy(images), data)).numpy()


def _data_cfg(name: str) -> DataConfig:
    return DataConfig(**model_entry(name).data_defaults)


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("act", ACTS)
def test_every_lenet5_variant_matches_torch(act, pool, mnist_test):
    torch.manual_seed(0)
    model = create_model("lenet5", activation=act, pool=pool, width=0.5 if act == "abs" else 1.0)
    data = _data_cfg("lenet5")
    x = mnist_test[0][:VARIANT_IMAGES]
    ref = _torch_logits(model, x, data)
    fm = flat.decode(flat.encode(to_flat(model, data)))
    for mode in ("fast", "reference"):
        got = runtime.run(fm, x, mode)
        assert np.abs(got - ref).max() <= 1e-4, (mode, np.abs(got - ref).max())
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_classic_untrained_matches_torch(mnist_test):
    torch.manual_seed(1)
    model = create_model("lenet5_classic")
    data = _data_cfg("lenet5_classic")
    x = mnist_test[0][:VARIANT_IMAGES]
    fm = flat.decode(flat.encode(to_flat(model, data)))
    conv3 = [layer for layer in fm.layers if layer.op == "conv"][1]
    assert conv3.arrays["t"].sum() == 60          # the C3 table survives the round trip
    got = runtime.run(fm, x, "reference")
    assert np.abs(got - _torch_logits(model, x, data)).max() <= 1e-4


@pytest.mark.parametrize("n", [DEPLOY_IMAGES, pytest.param(10000, marks=pytest.mark.slow)],
                         ids=[str(DEPLOY_IMAGES), "10k"])
@pytest.mark.parametrize("name", ["lenet5", "lenet5_classic"])
def test_trained_parity_on_the_test_set(name, n, deploy_runs, deploy_flats, mnist_test):
    """Acceptance 1 for the NumPy runtimes: the same logits as PyTorch up to float32 summation order (hence
    the same top-1 wherever that is not a float32 tie) on the first ``n`` test images (all 10k: slow); the int8
    model's reference and fast paths agree bit for bit, and its file is about 4x smaller. (int8 accuracy
    within 0.3 points of float is a claim about fully trained models: tests/test_deploy_c.py, slow.) The flat
    files are build_flat's (conftest.deploy_flats, which also holds PyTorch's logits and the reference int8
    logits on the first DEPLOY_IMAGES (300) images, shared with the C tests)."""
    x = mnist_test[0][:n]
    shared = deploy_flats[name]
    fm, fq = flat.load(str(shared["float"])), flat.load(str(shared["int8"]))
    if n == DEPLOY_IMAGES:
        ref, q_ref = shared["torch"], shared["int8_ref"]
    else:
        model, cfg = load_model(deploy_runs[name])
        ref, q_ref = _torch_logits(model, x, cfg.data), runtime.run(fq, x, "reference")
    for mode in ("fast", "reference"):
        assert_logits_match(runtime.run(fm, x, mode), ref, f"{name} {mode}")
    q_fast = runtime.run(fq, x, "fast")
    assert q_ref.dtype == np.int64 and np.array_equal(q_ref, q_fast)
    assert len(flat.encode(fq)) * 3.5 < len(flat.encode(fm))   # ~4x smaller


def test_fixed_point_multiplier():
    for m in (1e-6, 0.0123, 0.5, 0.99999, 1.0, 3.7, 1000.0):
        mult, n = fixed_point(m)
        assert 1 <= n <= 62
        assert 2**30 <= mult < 2**31                         # full 31-bit precision
        assert abs(mult / 2**n - m) <= m * 2**-30
    assert fixed_point(0.5) == (2**30, 31)
    assert fixed_point(1.0) == (2**30, 30)
    assert fixed_point(1e-30) == (0, 62)                    # below 2^-62: the multiplier underflows to 0
    assert fixed_point(0.0) == (0, 1)
    with pytest.raises(LenetlabError, match="too large"):
        fixed_point(2.0**31)


def test_requantize_rounds_half_away_from_zero():
    acc = np.array([5, -5, 6, -6, 7, -7, 0])
    # multiplier 0.5 exactly: M = 2^30, n = 31
    got = int8.requantize(acc, np.full(7, 2**30), np.full(7, 31), 8)
    assert got.tolist() == [3, -3, 3, -3, 4, -4, 0]
    big = int8.requantize(np.array([10**6, -(10**6)]), np.full(2, 2**30), np.full(2, 31), 8)
    assert big.tolist() == [127, -128]


def test_int8_lut_is_exact_for_relu(mnist_test):
    torch.manual_seed(0)
    model = create_model("lenet5")
    fq = quantize(to_flat(model, _data_cfg("lenet5")), mnist_test[0][:200])
    relu = [layer for layer in fq.layers if layer.op == "act"][0]
    t = relu.arrays["t"].astype(int)
    assert t[:128].tolist() == [0] * 128 and t[128:].tolist() == list(range(128))


# ---------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def good_bytes() -> bytes:
    torch.manual_seed(0)
    return flat.encode(to_flat(create_model("lenet5"), _data_cfg("lenet5")))


def _patch(data: bytes, offset: int, fmt: str, value, fix_crc: bool = True) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    if fix_crc:
        struct.pack_into("<I", b, 60, flat.crc(bytes(b[:64]), bytes(b[64:])))
    return bytes(b)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:40], "shorter than the 64-byte header"),
    (lambda d: b"XXXXXXXX" + d[8:], "bad magic"),
    (lambda d: _patch(d, 8, "<H", 2), "unsupported version"),
    (lambda d: d[:-1], "file_bytes"),
    (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "CRC mismatch"),
    (lambda d: _patch(d, 16, "<I", 10**6), "n_layers"),
    (lambda d: _patch(d, 64 + 20, "<I", 2**31), "run past the blob"),        # layer 0 w_off
    (lambda d: _patch(d, 64 + 24, "<I", 7), "array w has 7 values"),       # layer 0 w_count
    (lambda d: _patch(d, 64 + 0, "<B", 99), "unknown op code 99"),
    (lambda d: _patch(d, 64 + 12, "<H", 7), "output shape"),               # layer 0 out_h
    (lambda d: _patch(d, 64 + 64 + 4, "<H", 3), "input shape"),            # layer 1 in_c
])
def test_decode_rejects(good_bytes, mutate, message):
    with pytest.raises(flat.FlatFormatError, match=message):
        flat.decode(mutate(good_bytes))


def test_runtime_rejects_wrong_images(good_bytes):
    fm = flat.decode(good_bytes)
    with pytest.raises(LenetlabError, match="uint8 images"):
        runtime.run(fm, np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(LenetlabError, match="uint8 images"):
        runtime.run(fm, np.zeros((2, 28, 28), np.float32))


def test_cli_export_flat_and_errors(deploy_runs, tmp_path):
    run = deploy_runs["lenet5"]       # a trained lenet5 run (the deployment tests' own)
    out = tmp_path / "ex"
    r = run_cli("export", str(run), "--int8", "--out", str(out), "--check-images", "200", check=True)
    assert "model_int8.flat" in r.stdout and "same top-1 on" in r.stdout
    fm = flat.load(str(out / "model_int8.flat"))
    assert fm.dtype == "int8" and fm.num_classes == 10
    r = run_cli("export", str(run), "--format", "nope", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown exporter 'nope'" in r.stderr and "flat" in r.stderr
    r = run_cli("export", str(tmp_path / "missing"))
    assert r.returncode == 2 and "lenetlab: error:" in r.stderr
    bad = tmp_path / "bad.flat"
    bad.write_bytes(b"LENET5FL" + b"\0" * 10)
    with pytest.raises(flat.FlatFormatError, match="shorter than"):
        flat.load(str(bad))


def test_decode_bounds_the_work_a_small_file_can_demand():
    """A 1.7 MB file describing a 2^28 multiply-add conv is rejected before any runtime sees it."""
    L = flat.Layer
    zeros = np.zeros
    layers = [L("conv", (1, 1, 1009), (1024, 1, 1009), k=1, arrays={"w": np.ones(1024, np.float32),
                                                                     "b": zeros(1024, np.float32)}),
              L("conv", (1024, 1, 1009), (1, 16, 1024), k=16, pad=15,
                arrays={"w": np.full(1024 * 256, 1e-3, np.float32), "b": zeros(1, np.float32)}),
              L("dense", (1, 16, 1024), (10, 1, 1), arrays={"w": zeros(10 * 16384, np.float32),
                                                            "b": zeros(10, np.float32)})]
    with pytest.raises(flat.FlatFormatError, match="2\\^26 multiply-adds"):
        flat.encode(flat.FlatModel("float32", (1, 1009), 0, 10, 1 / 255, 0.0, layers))
