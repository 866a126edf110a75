"""Tile kernels of the fused-layer simulator (USEFUSE, docs/papers/fused.md): flat layers on (N, C, h, w) tiles.

Every function applies one flat-format layer (``docs/flat-format.md``) to a
batch of tiles of any size, so the same code runs a 12 x 12 pyramid tile or a
whole 28 x 28 map. The arithmetic follows the spec exactly:

- int8 models: integer-only, by the one int8 executor
  (:mod:`lenetlab.quant.int8`, the same code as the deploy runtime and the
  fault engine): exact int32 accumulators, the fixed-point requantisation and
  the activation look-up table, on a tile's flat rows.
- float32 models: convolution sums in float64, rounded once to float32 (the
  unfused runtime sums in float32, so the two differ by float32 rounding,
  about 1e-6); pools, subsampling and activations in float32 as the runtime.

Convolutions here take already-padded tiles (the simulator builds the zero
border), so the layer's own ``pad`` is not applied again.

Example::

    from lenetlab.fused.kernels import apply_layer
    y = apply_layer(fm.layers[0], x_tile, integer=True)    # conv1 on one tile
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from lenetlab.deploy.flat import Layer
from lenetlab.deploy.runtime import activation
from lenetlab.quant import int8


def conv_weights(layer: Layer) -> np.ndarray:
    """(out_c, in_c, k, k) kernel with unconnected (o, c) pairs of a connection table zeroed."""
    oc, ic, k = layer.out_shape[0], layer.in_shape[0], layer.k
    w = layer.arrays["w"].reshape(oc, ic, k, k)
    t = layer.arrays.get("t")
    if t is not None and t.size:
        w = w * t.reshape(oc, ic, 1, 1).astype(w.dtype)
    return w


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's and NumPy's matrix products on one thread inside the block (restored afterwards).

    The tile products are small and tall (thousands of rows, 6-16 columns);
    a multi-threaded BLAS spends more time synchronising than multiplying on
    them, badly so on a shared machine (measured: 3.5 ms on one thread vs
    40 ms on two for a 43200 x 25 x 6 product under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with int8.blas_threads(1):
            yield
    finally:
        torch.set_num_threads(before)


def correlate(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid cross-correlation sum_{c,u,v} w[o,c,u,v] x[n,c,i+u,j+v] in float64: (N,C,h,w) -> (N,O,h-k+1,w-k+1).

    For float models (and END's bounds on |w|); int8 convolutions go through :func:`conv_acc`."""
    oc, _, k, _ = w.shape
    win = sliding_window_view(x.astype(np.float64), (k, k), axis=(2, 3))    # (N, C, oh, ow, k, k), a view
    n, c, oh, ow = win.shape[:4]
    cols = np.array(win.transpose(0, 2, 3, 1, 4, 5), order="C").reshape(n * oh * ow, c * k * k)   # one copy
    wt = np.ascontiguousarray(w.reshape(oc, -1).T, dtype=np.float64)
    y = (torch.from_numpy(cols) @ torch.from_numpy(wt)).numpy()
    return y.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2)


def conv_acc(layer: Layer, x: np.ndarray) -> np.ndarray:
    """int8 model: the int64 accumulator b[o] + sum w*x of every output (before requantisation), (N, O, oh, ow)
    from already padded tiles (N, C, h, w)."""
    n, c, h, w = x.shape
    k = layer.k
    acc = int8.conv2d(x.reshape(n, -1), int8.conv_weights(layer), layer.arrays["b"], (c, h, w), k, 0)
    return acc.reshape(n, -1, h - k + 1, w - k + 1)


def _per_channel(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int64).reshape(1, -1, 1, 1)


def requant(layer: Layer, acc: np.ndarray) -> np.ndarray:
    """int8 model: :func:`lenetlab.quant.int8.requantize` of (N, C, h, w) accumulators by the layer's M, n."""
    return int8.requantize(acc, _per_channel(layer.arrays["m"]), _per_channel(layer.arrays["s"]),
                           layer.out_bits)


def _blocks(x: np.ndarray) -> list[np.ndarray]:
    """The four corners of every 2x2 block (floor semantics: a trailing odd row/column is dropped)."""
    oh, ow = x.shape[2] // 2, x.shape[3] // 2
    m = x[:, :, : 2 * oh, : 2 * ow]
    return [m[:, :, dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)]


def _int_pool_stage(layer: Layer, x: np.ndarray) -> np.ndarray:
    """int8 model: a 2x2 pool or subsampling layer on (N, C, h, w) tiles, by the int8 executor."""
    n, c, h, w = x.shape
    flat = x.reshape(n, -1)
    if layer.op == "subsample":
        y = requant(layer, int8.subsample(flat, layer.arrays["w"], layer.arrays["b"], (c, h, w))[..., None])
    else:
        y = int8.pool(flat, layer.op, (c, h, w))
    return y.reshape(n, c, h // 2, w // 2)


def apply_layer(layer: Layer, x: np.ndarray, integer: bool) -> np.ndarray:
    """One flat layer on (N, C, h, w) tiles: int64 in/out for int8 models, float32 otherwise."""
    op = layer.op
    if op not in ("conv", "act", "maxpool", "avgpool", "subsample"):
        raise ValueError(f"layer op {op!r} is not a conv/pool stage layer")
    if op == "conv":
        if integer:
            return requant(layer, conv_acc(layer, x))
        y = correlate(x, conv_weights(layer)) + layer.arrays["b"].astype(np.float64).reshape(1, -1, 1, 1)
        return y.astype(np.float32)
    if op == "act":
        return int8.lut(x, layer.arrays["t"]) if integer else activation(layer.act, x)
    if integer:
        return _int_pool_stage(layer, x)
    c = _blocks(x)
    if op == "maxpool":
        return np.maximum(np.maximum(c[0], c[1]), np.maximum(c[2], c[3]))
    s = (c[0] + c[1]) + (c[2] + c[3])
    if op == "avgpool":
        return s * np.float32(0.25)
    w, b = (layer.arrays[n].astype(np.float32).reshape(1, -1, 1, 1) for n in ("w", "b"))
    return (w * s + b).astype(np.float32)
