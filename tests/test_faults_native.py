"""The native (C) fault back end against the naive oracle on random int8 models of many shapes, and its build.

Random models (random int8 weights, biases, ACT tables - monotone or not - and requantisation scales chosen
so that outputs spread over the int8 range) reach layer orders and sizes the trained LeNet-5 does not: odd
maps cropped by a pool, several ACT layers before and after a pool, average pooling, conv after conv, a pool
first, connection tables, more than 16 rows, a subsample stage, hardened stages. Each compares the fast
engine with and without the C back end to the naive oracle, outcome by outcome.
"""

from __future__ import annotations

import numpy as np
import pytest

from lenetlab.deploy.flat import FlatModel, Layer
from lenetlab.faults import native
from lenetlab.faults.campaign import Campaign, FaultList, exhaustive_faults, sample_faults
from lenetlab.faults.harden import harden
from lenetlab.quant import int8
from lenetlab.quant.engine import IntEngine, blas_threads


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with blas_threads(1):
        yield


def random_model(spec: list[tuple], seed: int, hw: tuple[int, int] = (11, 11), n_images: int = 5
                 ) -> tuple[FlatModel, np.ndarray]:
    """An int8 flat model from ``spec`` (("conv", out_c, k, pad, table) | ("dense", n, out_bits) | ("act",) |
    ("maxpool",) | ("avgpool",) | ("subsample",)), and ``n_images`` random uint8 images for it."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_images, *hw), dtype=np.uint8)
    fm = FlatModel("int8", hw, 0, 0, 1.0, 0.0, [], in_lut=rng.integers(-128, 128, 256).astype(np.int8))
    x = fm.in_lut.astype(np.int64)[images].reshape(n_images, -1)
    shape = (1, *hw)
    for sp in spec:
        c, h, w = shape
        op = sp[0]
        if op == "conv":
            _, oc, k, pad, table = sp
            out = (oc, h + 2 * pad - k + 1, w + 2 * pad - k + 1)
            layer = Layer("conv", shape, out, k=k, pad=pad, out_bits=8)
            layer.arrays["w"] = rng.integers(-128, 128, oc * c * k * k).astype(np.int8)
            if table:
                layer.arrays["t"] = rng.integers(0, 2, oc * c).astype(np.uint8)
        elif op == "dense":
            _, n, bits = sp
            out = (n, 1, 1)
            layer = Layer("dense", shape, out, out_bits=bits)
            layer.arrays["w"] = rng.integers(-128, 128, n * c * h * w).astype(np.int8)
        elif op == "subsample":
            out = (c, h // 2, w // 2)
            layer = Layer("subsample", shape, out, k=2, out_bits=8)
            layer.arrays["w"] = rng.integers(-128, 128, c).astype(np.int8)
        elif op == "act":
            out = shape
            layer = Layer("act", shape, out, act="relu")
            t = rng.integers(-128, 128, 256)
            layer.arrays["t"] = (np.sort(t) if rng.random() < 0.5 else t).astype(np.int8)
        else:
            out = (c, h // 2, w // 2)
            layer = Layer(op, shape, out)
        if op in ("conv", "dense", "subsample"):
            layer.arrays["b"] = rng.integers(-2000, 2000, out[0]).astype(np.int32)
            layer.arrays["m"] = np.ones(out[0], np.int32)
            layer.arrays["s"] = np.ones(out[0], np.int32)
            acc = int8.accumulate(layer, x)
            # scales that put the 90th percentile of |acc| near 60 (int8) or 2^20 (int32 logits)
            mag = np.percentile(np.abs(acc).transpose(1, 0, 2).reshape(out[0], -1), 90, axis=1) + 1
            mult = rng.integers(2**29, 2**30, out[0])
            goal = 60 if layer.out_bits == 8 else 2**20
            layer.arrays["m"] = mult.astype(np.int32)
            layer.arrays["s"] = np.clip(np.round(np.log2(mag * mult / goal)), 1, 62).astype(np.int32)
        x = int8.run_layer(layer, x)
        fm.layers.append(layer)
        shape = out
    fm.num_classes = int(np.prod(shape))
    return fm, images


SPECS = {
    "odd maps, ACT before and after the pools, average pool, table":
        ([("conv", 4, 3, 1, False), ("act",), ("act",), ("maxpool",), ("act",), ("conv", 5, 3, 0, True),
          ("avgpool",), ("act",), ("dense", 7, 8), ("act",), ("dense", 10, 32)], (11, 9)),
    "conv after conv, 20 rows": ([("conv", 3, 3, 0, False), ("conv", 20, 3, 1, False), ("act",), ("avgpool",),
                                  ("dense", 10, 32)], (10, 10)),
    "pool first, dense of 33": ([("conv", 3, 2, 0, False), ("avgpool",), ("conv", 6, 3, 1, True), ("maxpool",),
                                 ("dense", 33, 8), ("dense", 10, 32)], (9, 11)),
    "subsample stage first": ([("conv", 4, 3, 1, False), ("act",), ("subsample",), ("act",), ("conv", 5, 3, 0, True),
                               ("maxpool",), ("dense", 10, 32)], (13, 11)),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_native_equals_numpy_equals_naive_on_random_models(name):
    if not native.available():
        pytest.skip(f"native fault propagation unavailable: {native.why_not()}")
    spec, hw = SPECS[name]
    sdc = 0
    for seed in range(2):
        fm, images = random_model(spec, seed, hw)
        eng = IntEngine(fm)
        with_c, numpy_only = Campaign(eng, images), Campaign(eng, images, native=False)
        assert any(with_c._native(j) is not None for j in range(len(eng.stages)))
        for target in ("weights", "activations", "accumulators"):
            f = sample_faults(eng, target, 3, np.random.default_rng(seed))
            naive = with_c.naive(f)
            np.testing.assert_array_equal(with_c.fast(f), naive, err_msg=f"{name} {seed} {target} native")
            np.testing.assert_array_equal(numpy_only.fast(f), naive, err_msg=f"{name} {seed} {target} numpy")
            sdc += int(naive.sum())
        # replace_input (the NVF primitive): every value of one input unit
        u = np.array([0, eng.stages[-1].d_in - 1])
        values = np.broadcast_to(np.array([-128, -1, 0, 127])[:, None, None], (4, 2, len(images)))
        for v in values:
            np.testing.assert_array_equal(with_c.replace_input(len(eng.stages) - 1, u, v),
                                          numpy_only.replace_input(len(eng.stages) - 1, u, v))
    assert sdc > 0


@pytest.mark.parametrize("mode", ["split", "tmr"])
def test_native_after_and_before_hardened_stages(mode):
    """Hardened stages merge copies before requantisation: faults in or before them take the NumPy path,
    faults after them the C one; all must equal the oracle."""
    fm, images = random_model(SPECS["conv after conv, 20 rows"][0], 3, (10, 10), n_images=4)
    eng = IntEngine(fm)
    hard = harden(eng, [(0, 0), (0, 1), (1, 2)], mode)
    camp = Campaign(hard, images)
    for target in ("weights", "activations", "accumulators"):
        f = sample_faults(hard, target, 2, np.random.default_rng(1), bits=[0, 6, 7] if target != "accumulators"
                          else [3, 30, 31])
        np.testing.assert_array_equal(camp.fast(f), camp.naive(f), err_msg=target)
    assert len(eng.stages) == len(hard.stages)


def test_numpy_path_when_every_change_is_cropped_by_the_pool():
    """A change confined to the row a 2x2 pool crops (odd height) reaches nothing: no SDC, on both paths (the
    NumPy path used to fail on the empty window set)."""
    fm, images = random_model([("conv", 3, 2, 0, False), ("act",), ("avgpool",), ("dense", 10, 32)], 0, (12, 9))
    eng = IntEngine(fm)                         # conv output 3 x 11 x 8: its row 10 feeds no pool window
    u = np.arange(11 * 9, 12 * 9)               # input row 11 feeds only conv row 10
    f = FaultList("activations", np.zeros(len(u), np.int64), u, np.full(len(u), 7))
    for use_native in (True, False):
        camp = Campaign(eng, images, native=use_native)
        out = camp.fast(f)
        assert not out.any()
        np.testing.assert_array_equal(out, camp.naive(f))
    ex = exhaustive_faults(eng, "activations", 0, bits=[7])
    np.testing.assert_array_equal(Campaign(eng, images, native=False).fast(ex), Campaign(eng, images).naive(ex))


def test_native_rejects_values_outside_int8_and_falls_back():
    fm, images = random_model(SPECS["conv after conv, 20 rows"][0], 0, (10, 10), n_images=3)
    camp = Campaign(IntEngine(fm), images)
    if camp._native(0) is None:
        pytest.skip(f"native fault propagation unavailable: {native.why_not()}")
    u, v = np.array([5]), np.full((1, 3), 2**20)
    with pytest.raises(ValueError, match="int8"):
        camp._native(0).input_faults(0, u, v)
    np.testing.assert_array_equal(camp.replace_input(0, u, v), Campaign(camp.engine, images, native=False)
                                  .replace_input(0, u, v))       # replace_input takes the NumPy path instead


def test_a_damaged_cached_library_is_rebuilt(tmp_path, monkeypatch):
    if native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native.LIBRARY, "_tried", False)
    monkeypatch.setattr(native.LIBRARY, "_lib", None)
    key, _ = native._key(native._compiler())
    built = native._places()[0] / f"propagate-{key}.so"
    assert str(built).startswith(str(tmp_path))
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\0" * 16)                  # a cut-short file left by another process
    assert native.available(), native.why_not()
    assert built.stat().st_size > 1000


def test_campaign_pickles_after_a_native_run():
    import pickle

    fm, images = random_model(SPECS["conv after conv, 20 rows"][0], 0, (10, 10), n_images=2)
    camp = Campaign(IntEngine(fm), images)
    f = sample_faults(camp.engine, "weights", 1, np.random.default_rng(0))
    first = camp.fast(f)
    again = pickle.loads(pickle.dumps(camp))
    np.testing.assert_array_equal(again.fast(f), first)
