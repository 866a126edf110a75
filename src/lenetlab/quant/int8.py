"""The int8 executor: integer-only kernels of the flat format's int8 files (docs/flat-format.md, "int8 files").

One implementation of the spec's "int8 files" (``docs/flat-format.md``), shared by
every integer path in lenetlab: the NumPy runtime
(:func:`lenetlab.deploy.runtime.run`, fast mode), the integer engine faults are
injected into (:class:`lenetlab.quant.engine.IntEngine`), the fused-layer tile
kernels (:mod:`lenetlab.fused.kernels`) and the fast fault campaign
(:mod:`lenetlab.faults.fast`). Activations are flat 1-D rows, element (c, y, x)
of a C x H x W map at ``c*H*W + y*W + x``, batches along a leading axis, held
as int64.

- :func:`conv2d`, :func:`linear`, :func:`subsample`: int8 x int8 products with
  int32 accumulation (``(N, R, P)`` accumulators: R output rows, P positions);
- :func:`requantize`: accumulator -> int8 (or int32) by a per-channel
  fixed-point multiplier M and shift n, round half away from zero;
- :func:`pool`, :func:`lut`, :func:`rbf`: 2x2 max / average pooling on the
  integer grid, activation look-up tables, RBF distances;
- :func:`run_layer`: any int8 flat layer, composed of the above.

Why products go through floating point: a BLAS matrix product is far faster
than an integer one, and it is *exact* while every partial sum is an integer
below the float's mantissa (2^24 for float32, 2^53 for float64).
:func:`exact_dtype` picks float32 when the operands' magnitudes prove that
(int8 x int8 with fan-in <= 1023), float64 below 2^53, and int64 arithmetic
beyond (only reachable with hostile files), so every result is the exact
integer the spec defines, whatever the path.

Example::

    import numpy as np
    from lenetlab.quant import int8
    x = np.random.default_rng(0).integers(-128, 128, (2, 1 * 28 * 28))   # two int8 images
    w = np.ones((6, 25), np.int64)                                          # 6 5x5 kernels
    acc = int8.conv2d(x, w, np.zeros(6, np.int64), (1, 28, 28), k=5, pad=2)   # (2, 6, 784)
    y = int8.requantize(acc, np.full((1, 6, 1), 2**30), np.full((1, 6, 1), 35), 8)
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from lenetlab.errors import LenetlabError

if TYPE_CHECKING:
    from lenetlab.deploy.flat import Layer

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
STAGE_OPS = ("conv", "dense", "subsample", "rbf")   # the layers with weights
GATHER_VALUES = 1 << 22   # values of one (images, P, K) im2col block: bounded so it stays in cache-sized steps


def blas_threads(n: int = 1) -> contextlib.AbstractContextManager:
    """Context limiting BLAS threads: the executor's many small matmuls are slower with a thread pool (and on a
    busy machine, far slower). Uses threadpoolctl when installed, else does nothing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:   # optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


# ---------------------------------------------------------------- requantisation
def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, bits: int) -> np.ndarray:
    """sign(acc) * ((|acc| * M + 2^(n-1)) >> n), clamped to int8 (``bits=8``) or int32.

    ``mult`` (M, 0 <= M < 2^31) and ``shift`` (n, 1..62) broadcast against ``acc`` (per output channel);
    the product is formed in 64 unsigned bits, which holds |acc| <= 2^31 times M < 2^31. Returns int64.
    """
    mag = np.abs(acc).astype(np.uint64)
    n = shift.astype(np.uint64)
    r = (mag * mult.astype(np.uint64) + (np.uint64(1) << (n - np.uint64(1)))) >> n
    out = np.where(acc < 0, -r.astype(np.int64), r.astype(np.int64))
    lo, hi = (-128, 127) if bits == 8 else (I32_MIN, I32_MAX)
    return np.clip(out, lo, hi)


# ---------------------------------------------------------------- products
def exact_dtype(x_max: int, w_max: int, fan_in: int) -> type:
    """The cheapest dtype whose matrix product of ``fan_in`` terms |x * w| <= x_max * w_max is exact."""
    bound = int(x_max) * int(w_max) * max(int(fan_in), 1)
    if bound < 2**24:
        return np.float32
    if bound < 2**53:
        return np.float64
    return np.int64


def _max_abs(a: np.ndarray) -> int:
    return max(int(a.max(initial=0)), -int(a.min(initial=0)))


def _product_dtype(x: np.ndarray, w: np.ndarray) -> type:
    # int8 operands (the normal case) decide without a pass over the data: |x|, |w| <= 128
    xm = 128 if x.dtype == np.int8 else _max_abs(x)
    return exact_dtype(xm, _max_abs(w), w.shape[-1])


@lru_cache(maxsize=256)
def im2col(in_shape: tuple[int, int, int], k: int, pad: int) -> np.ndarray:
    """(P, C*k*k) flat input index under every output position and kernel tap of a k x k convolution.

    Taps that fall in the zero padding point at index C*H*W, one past the input: callers append a zero
    cell there. Output positions are row-major, kernel taps (c, u, v) in the weights' order. Cached and
    read-only.
    """
    c_in, h, w = in_shape
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    c, u, v = np.meshgrid(np.arange(c_in), np.arange(k), np.arange(k), indexing="ij")
    oy, ox = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    y = oy.reshape(-1, 1) + u.reshape(1, -1) - pad
    x = ox.reshape(-1, 1) + v.reshape(1, -1) - pad
    idx = c.reshape(1, -1) * h * w + y * w + x
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    out = np.where(inside, idx, c_in * h * w)
    out.setflags(write=False)
    return out


def with_zero_cell(x: np.ndarray, dtype=None) -> np.ndarray:
    """``x`` (N, D) with a zero column appended (what :func:`im2col`'s padding taps read)."""
    dtype = x.dtype if dtype is None else dtype
    return np.concatenate([x.astype(dtype, copy=False), np.zeros((len(x), 1), dtype)], axis=1)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, in_shape: tuple[int, int, int], k: int, pad: int
           ) -> np.ndarray:
    """Accumulators (N, R, P) of a stride-1 k x k convolution of flat inputs ``x`` (N, C*H*W).

    ``w`` (R, C*k*k) holds the integer kernels (connection-table pairs already zeroed, see
    :func:`conv_weights`), ``b`` (R,) the int32 biases; ``pad`` zeros around each map. Exact (see the
    module docstring); computed as im2col gathers times ``w`` in cache-sized batches.
    """
    gather = im2col(tuple(in_shape), k, pad)
    n = len(x)
    dt = _product_dtype(x, w)
    wt = w.T.astype(dt)
    xz = with_zero_cell(x, dt)
    step = max(1, GATHER_VALUES // gather.size)
    out = np.empty((n, w.shape[0], gather.shape[0]), np.int64)
    for i in range(0, n, step):
        out[i:i + step] = (xz[i:i + step][:, gather] @ wt).transpose(0, 2, 1)
    return out + b.astype(np.int64)[None, :, None]


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Accumulators (N, R) of a dense layer: ``x`` (N, K) times ``w`` (R, K) plus int32 biases ``b``. Exact."""
    dt = _product_dtype(x, w)
    return (x.astype(dt) @ w.T.astype(dt)).astype(np.int64) + b.astype(np.int64)[None]


def block_sums(x: np.ndarray, in_shape: tuple[int, int, int]) -> np.ndarray:
    """Sums (N, C, P) of the 2x2 blocks of flat maps ``x`` (a trailing odd row / column is dropped)."""
    c, h, w = in_shape
    oh, ow = h // 2, w // 2
    m = x.reshape(len(x), c, h, w)[:, :, : 2 * oh, : 2 * ow]
    return (m[:, :, 0::2, 0::2] + m[:, :, 0::2, 1::2] + m[:, :, 1::2, 0::2] + m[:, :, 1::2, 1::2]
            ).reshape(len(x), c, -1)


def subsample(x: np.ndarray, w: np.ndarray, b: np.ndarray, in_shape: tuple[int, int, int]) -> np.ndarray:
    """Accumulators (N, C, P) of LeNet-1998 subsampling: coefficient ``w[c]`` times each 2x2 block sum, plus
    ``b[c]``."""
    s = block_sums(x, in_shape)
    return s * w.astype(np.int64).reshape(1, -1, 1) + b.astype(np.int64).reshape(1, -1, 1)


def rbf(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """RBF outputs (N, R): -sum_k (x_k - centre_rk)^2 in 64 bits, clamped to int32."""
    d = x.astype(np.int64)[:, None, :] - centres.astype(np.int64)[None]
    return np.clip(-(d * d).sum(-1), I32_MIN, I32_MAX)


# ---------------------------------------------------------------- element-wise and pooling
def lut(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """An activation on the int8 grid: ``table[x + 128]`` (256 entries, one per int8 input)."""
    return table.astype(np.int64)[x + 128]


def pool(x: np.ndarray, op: str, in_shape: tuple[int, int, int]) -> np.ndarray:
    """2x2 stride-2 pooling of flat maps ``x`` (N, C*H*W) -> (N, C*(H//2)*(W//2)).

    ``maxpool``: the largest of the four; ``avgpool``: their mean rounded half away from zero,
    sign(s) * ((|s| + 2) >> 2) of the block sum s, so it stays on the int8 grid.
    """
    c, h, w = in_shape
    oh, ow = h // 2, w // 2
    m = x.reshape(len(x), c, h, w)[:, :, : 2 * oh, : 2 * ow]
    q = [m[:, :, dy::2, dx::2].reshape(len(x), -1) for dy in (0, 1) for dx in (0, 1)]
    if op == "maxpool":
        return np.maximum(np.maximum(q[0], q[1]), np.maximum(q[2], q[3]))
    if op == "avgpool":
        s = (q[0] + q[1]) + (q[2] + q[3])
        return np.sign(s) * ((np.abs(s) + 2) >> 2)
    raise LenetlabError(f"pool op must be maxpool or avgpool, got {op!r}")


# ---------------------------------------------------------------- flat layers
def conv_weights(layer: Layer) -> np.ndarray:
    """(out_c, in_c*k*k) int64 kernels of an int8 conv layer, unconnected (o, c) pairs of its table zeroed."""
    oc, ic, kk = layer.out_shape[0], layer.in_shape[0], layer.k * layer.k
    w = layer.arrays["w"].astype(np.int64).reshape(oc, -1)
    t = layer.arrays.get("t")
    if t is not None and t.size:
        w = w * np.repeat(t.reshape(oc, ic), kk, axis=1)
    return w


def accumulate(layer: Layer, x: np.ndarray) -> np.ndarray:
    """int32 accumulators (N, C, P) of an int8 conv / dense / subsample layer on flat inputs ``x``."""
    a = layer.arrays
    if layer.op == "conv":
        return conv2d(x, conv_weights(layer), a["b"], layer.in_shape, layer.k, layer.pad)
    if layer.op == "dense":
        return linear(x, a["w"].reshape(layer.out_shape[0], -1), a["b"])[:, :, None]
    if layer.op == "subsample":
        return subsample(x, a["w"], a["b"], layer.in_shape)
    raise LenetlabError(f"layer op {layer.op!r} has no accumulators")


def requantize_layer(layer: Layer, acc: np.ndarray) -> np.ndarray:
    """Accumulators (N, C, P) -> the layer's flat outputs (N, C*P), by its per-channel M and n."""
    m = layer.arrays["m"].astype(np.int64)[None, :, None]
    s = layer.arrays["s"].astype(np.int64)[None, :, None]
    return requantize(acc, m, s, layer.out_bits).reshape(len(acc), -1)


def run_layer(layer: Layer, x: np.ndarray) -> np.ndarray:
    """One layer of an int8 flat file on flat int64 inputs (N, D_in) -> (N, D_out), as the spec defines it."""
    op = layer.op
    if op == "act":
        return lut(x, layer.arrays["t"])
    if op in ("maxpool", "avgpool"):
        return pool(x, op, layer.in_shape)
    if op == "rbf":
        return rbf(x, layer.arrays["w"].reshape(layer.out_shape[0], -1))
    return requantize_layer(layer, accumulate(layer, x))
