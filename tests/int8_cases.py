"""Random int8 flat layers for tests/test_int8.py (seeded NumPy only, so the cases are the same everywhere).

Each case is one flat-format layer (``docs/flat-format.md``, int8 files) with random int8 weights, int32
biases, fixed-point requantisation (M in [2^30, 2^31), shift chosen so outputs span the int8 range) and a
random int8 input batch. ``tests/data/int8_reference.npz`` holds the outputs that the int8 executors which
existed before :mod:`lenetlab.quant.int8` gave on these cases: the deploy runtime in fast and reference
modes, the integer engine and the fused tile kernels, checked equal to one another while recording (the
fault engine ran the runtime's own layer and requantisation functions). The test checks the one executor
against them.
"""

from __future__ import annotations

import numpy as np

from lenetlab.deploy.flat import Layer

N_IMAGES = 3


def _requant(rng: np.random.Generator, oc: int, fan_in: int) -> dict[str, np.ndarray]:
    # typical accumulators ~ 128 * 128 * sqrt(fan_in) / 2; map them onto about +-127 with M / 2^n
    spread = 128 * 128 * np.sqrt(fan_in) / 2
    shift = (31 + np.ceil(np.log2(spread / 127)) + rng.integers(-1, 2, oc)).astype(np.int64)
    return {"m": rng.integers(2**30, 2**31, oc).astype("<i4"), "s": np.clip(shift, 1, 62).astype("<i4")}


def cases() -> dict[str, tuple[Layer, np.ndarray]]:
    """name -> (int8 layer, (N, C*H*W) int64 input in [-128, 127])."""
    rng = np.random.default_rng(20261203)
    out: dict[str, tuple[Layer, np.ndarray]] = {}

    def x_of(shape: tuple[int, int, int]) -> np.ndarray:
        return rng.integers(-128, 128, (N_IMAGES, int(np.prod(shape)))).astype(np.int64)

    def w8(n: int) -> np.ndarray:
        return rng.integers(-128, 128, n).astype(np.int8)

    def b32(n: int, scale: int) -> np.ndarray:
        return rng.integers(-scale, scale + 1, n).astype("<i4")

    for name, (c, h, w), oc, k, pad, table in [
        ("conv_pad", (1, 28, 28), 6, 5, 2, False),
        ("conv_valid", (6, 14, 14), 16, 5, 0, False),
        ("conv_table", (6, 14, 14), 16, 5, 0, True),
        ("conv_3x3_odd", (3, 9, 7), 4, 3, 1, False),
        ("conv_5x5_to_1x1", (16, 5, 5), 120, 5, 0, False),
    ]:
        fan = c * k * k
        t = rng.integers(0, 2, oc * c).astype(np.uint8) if table else np.zeros(0, np.uint8)
        arrays = {"w": w8(oc * fan), "b": b32(oc, 2**16), "t": t, **_requant(rng, oc, fan)}
        layer = Layer("conv", (c, h, w), (oc, h + 2 * pad - k + 1, w + 2 * pad - k + 1), out_bits=8, k=k,
                      pad=pad, arrays=arrays)
        out[name] = (layer, x_of(layer.in_shape))
    for name, d_in, d_out, bits in [("dense", 120, 84, 8), ("dense_logits", 84, 10, 32), ("dense_wide", 400, 120, 8)]:
        arrays = {"w": w8(d_out * d_in), "b": b32(d_out, 2**16), **_requant(rng, d_out, d_in)}
        if bits == 32:   # logits: shift large enough to stay far inside int32
            arrays["s"] = np.full(d_out, 31, "<i4")
        out[name] = (Layer("dense", (d_in, 1, 1), (d_out, 1, 1), out_bits=bits, arrays=arrays), x_of((d_in, 1, 1)))
    for name, (c, h, w) in [("subsample", (6, 28, 28)), ("subsample_odd", (4, 11, 9))]:
        arrays = {"w": w8(c), "b": b32(c, 2**10), **_requant(rng, c, 4)}
        out[name] = (Layer("subsample", (c, h, w), (c, h // 2, w // 2), out_bits=8, k=2, arrays=arrays),
                     x_of((c, h, w)))
    for op in ("maxpool", "avgpool"):
        for tag, shape in (("", (6, 28, 28)), ("_odd", (3, 7, 9))):
            c, h, w = shape
            out[op + tag] = (Layer(op, shape, (c, h // 2, w // 2), k=2), x_of(shape))
    lut = rng.integers(-128, 128, 256).astype(np.int8)
    out["act"] = (Layer("act", (6, 10, 10), (6, 10, 10), act="tanh", arrays={"t": lut}), x_of((6, 10, 10)))
    arrays = {"w": w8(10 * 84)}
    out["rbf"] = (Layer("rbf", (84, 1, 1), (10, 1, 1), out_bits=32, arrays=arrays), x_of((84, 1, 1)))
    return out


def requant_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random accumulators over the whole int32 range and a small one (rows of 64), with random multipliers
    and shifts (one per row): requantisation alone, for both output widths."""
    rng = np.random.default_rng(7)
    acc = np.concatenate([rng.integers(-(2**31), 2**31, (40, 64)), rng.integers(-(2**16), 2**16, (40, 64))])
    mult = rng.integers(0, 2**31, (80, 1))
    shift = rng.integers(1, 63, (80, 1))
    return acc.astype(np.int64), mult.astype(np.int64), shift.astype(np.int64)
