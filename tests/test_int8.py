"""The one int8 executor (lenetlab.quant.int8) against the outputs of the four executors it replaced.

``tests/data/int8_reference.npz`` was recorded from the deploy runtime (fast and reference modes), the
integer engine and the fused tile kernels as they were before :mod:`lenetlab.quant.int8` existed (they
agreed on every case, checked while recording; the fault engine ran the runtime's own functions), on the
seeded random int8 layers of ``tests/int8_cases.py``. Bit for bit: the refactor changed no number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from int8_cases import cases, requant_case
from lenetlab.errors import LenetlabError
from lenetlab.quant import int8

REFERENCE = np.load(Path(__file__).parent / "data" / "int8_reference.npz")
CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_layer_matches_the_recorded_executors(name):
    layer, x = CASES[name]
    np.testing.assert_array_equal(int8.run_layer(layer, x), REFERENCE[name + "/out"])


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n][0].op in ("conv", "dense", "subsample")))
def test_accumulators_match_the_recorded_engine(name):
    layer, x = CASES[name]
    acc = int8.accumulate(layer, x)
    assert acc.dtype == np.int64
    np.testing.assert_array_equal(acc, REFERENCE[name + "/acc"])


def test_rbf_matches_the_recorded_engine():
    layer, x = CASES["rbf"]
    np.testing.assert_array_equal(int8.rbf(x, layer.arrays["w"].reshape(10, -1))[:, :, None],
                                  REFERENCE["rbf/acc"])


def test_requantize_matches_the_recorded_runtime():
    acc, m, s = requant_case()
    np.testing.assert_array_equal(int8.requantize(acc, m, s, 8), REFERENCE["requant/out8"])
    np.testing.assert_array_equal(int8.requantize(acc, m, s, 32), REFERENCE["requant/out32"])


def test_conv2d_is_a_direct_convolution():
    """Small odd shapes against a plain loop (padding taps read zero); int8 and int64 inputs agree."""
    rng = np.random.default_rng(1)
    c, h, w, oc, k, pad = 2, 5, 4, 3, 3, 1
    x = rng.integers(-128, 128, (2, c * h * w))
    wt = rng.integers(-128, 128, (oc, c * k * k))
    b = rng.integers(-1000, 1000, oc)
    xp = np.pad(x.reshape(2, c, h, w), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kern = wt.reshape(oc, c, k, k)
    want = np.zeros((2, oc, h, w), np.int64)
    for y in range(h):
        for xx in range(w):
            want[:, :, y, xx] = np.einsum("ncuv,ocuv->no", xp[:, :, y:y + k, xx:xx + k], kern)
    want += b[None, :, None, None]
    got = int8.conv2d(x, wt, b, (c, h, w), k, pad)
    np.testing.assert_array_equal(got, want.reshape(2, oc, -1))
    np.testing.assert_array_equal(int8.conv2d(x.astype(np.int8), wt, b, (c, h, w), k, pad), got)


def test_products_stay_exact_beyond_float_mantissas():
    """Operands too large for float32 (then float64) sums take the next exact path."""
    assert int8.exact_dtype(128, 128, 1023) is np.float32
    assert int8.exact_dtype(128, 128, 1024) is np.float64
    assert int8.exact_dtype(2**31, 128, 2**16) is np.int64
    x = np.array([[2**31 - 1, 2**31 - 1, 1]])
    w = np.array([[2**22 + 1, 2**22 - 1, 3]])           # exact sum needs > 53 bits
    want = (2**31 - 1) * (2**22 + 1) + (2**31 - 1) * (2**22 - 1) + 3
    assert int(int8.linear(x, w, np.zeros(1, np.int64))[0, 0]) == want


def test_pool_rejects_an_unknown_op():
    with pytest.raises(LenetlabError, match="maxpool or avgpool"):
        int8.pool(np.zeros((1, 4), np.int64), "sumpool", (1, 2, 2))
