"""NumPy runtime for flat models: a readable reference and a vectorised fast path.

Both read only a :class:`~lenetlab.deploy.flat.FlatModel` (never PyTorch) and
work on flat 1-D activations, element (c, y, x) of a C x H x W map at
``c*H*W + y*W + x`` (docs/papers/deploy.md). Batches ride along a leading axis.

- ``mode="reference"``: one output position at a time, its receptive field
  gathered by explicit index arithmetic - the paper's method, easy to follow
  and to port (the C and JavaScript runtimes do the same loops).
- ``mode="fast"``: the same index arithmetic precomputed once into gather
  matrices (im2col), one matrix product per layer.

int8 files run in integers only (see the spec's "int8 files"): the fast path
is the one int8 executor, :func:`lenetlab.quant.int8.run_layer`, shared with
the integer engine, the fused simulator and the fault campaigns; the reference
path keeps its own loops (products in float64, exact because every partial
sum stays far below 2^53) as the readable oracle it is tested against.

Example::

    from lenetlab.deploy import flat, runtime
    fm = flat.load("runs/demo/export/model.flat")
    logits = runtime.run(fm, images_u8)          # (N, 10)
"""

from __future__ import annotations

import numpy as np

from lenetlab.deploy.flat import FlatModel, Layer
from lenetlab.errors import LenetlabError
from lenetlab.quant import int8
from lenetlab.quant.int8 import I32_MAX, I32_MIN, requantize

__all__ = ["I32_MAX", "I32_MIN", "activation", "predict", "prepare_input", "receptive_field", "requantize",
           "run"]

SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """Float activations of the spec (float32 in, float32 out)."""
    if name == "identity":
        return x
    if name == "relu":
        return np.maximum(x, np.float32(0))
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    if name == "selu":
        x64 = x.astype(np.float64)
        return (SELU_SCALE * np.where(x64 > 0, x64, SELU_ALPHA * np.expm1(np.minimum(x64, 0)))).astype(np.float32)
    if name == "scaled_tanh":
        return (np.float32(1.7159) * np.tanh(np.float32(2.0 / 3.0) * x)).astype(np.float32)
    if name == "abs":
        return np.abs(x)
    raise LenetlabError(f"unknown activation {name!r}")


def prepare_input(fm: FlatModel, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W) -> flat padded input (N, 1*H'*W'): float32 or int64 for int8 files."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != fm.img_hw:
        raise LenetlabError(f"expected uint8 images of shape (N, {fm.img_hw[0]}, {fm.img_hw[1]}), "
                            f"got {images.dtype} {images.shape}")
    p = fm.pad
    if fm.dtype == "int8":
        x = fm.in_lut.astype(np.int64)[images]
        fill = int(fm.in_lut[0])
    else:
        x = images.astype(np.float32) * np.float32(fm.in_scale) + np.float32(fm.in_shift)
        fill = np.float32(fm.in_shift)
    if p:
        x = np.pad(x, ((0, 0), (p, p), (p, p)), constant_values=fill)
    return x.reshape(len(x), -1)


# ---------------------------------------------------------------- index arithmetic
def receptive_field(layer: Layer, oy: int, ox: int) -> tuple[list[int], list[int]]:
    """Flat input indices c*H*W + y*W + x under output (oy, ox), and their (c, u, v) kernel columns.

    Positions in the zero padding are left out (they contribute 0).
    """
    c_in, h, w = layer.in_shape
    k, pad = layer.k, layer.pad
    idx, cols = [], []
    for c in range(c_in):
        for u in range(k):
            y = oy + u - pad
            if not 0 <= y < h:
                continue
            for v in range(k):
                x = ox + v - pad
                if 0 <= x < w:
                    idx.append(c * h * w + y * w + x)
                    cols.append(c * k * k + u * k + v)
    return idx, cols


def _conv_weights(layer: Layer) -> np.ndarray:
    oc = layer.out_shape[0]
    wmat = layer.arrays["w"].reshape(oc, -1)
    t = layer.arrays.get("t")
    if t is not None and t.size:   # skipped (o, c) pairs: their kernels count as zero
        keep = np.repeat(t.reshape(oc, layer.in_shape[0]), layer.k * layer.k, axis=1)
        wmat = wmat * keep
    return wmat


def _matmul(x: np.ndarray, w: np.ndarray, integer: bool) -> np.ndarray:
    if integer:   # exact: |partial sums| << 2^53
        return (x.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
    return x.astype(np.float32) @ w.astype(np.float32)


# ---------------------------------------------------------------- layers
def _conv(layer: Layer, x: np.ndarray, integer: bool, reference: bool) -> np.ndarray:
    oc, oh, ow = layer.out_shape
    wmat = _conv_weights(layer)
    n = len(x)
    if reference:
        y = np.zeros((n, oc * oh * ow), np.int64 if integer else np.float32)
        for oy in range(oh):
            for ox in range(ow):
                idx, cols = receptive_field(layer, oy, ox)
                acc = _matmul(x[:, idx], wmat[:, cols].T, integer)          # (N, oc)
                y[:, np.arange(oc) * oh * ow + oy * ow + ox] = acc
    else:
        gather = int8.im2col(layer.in_shape, layer.k, layer.pad)
        xz = np.concatenate([x, np.zeros((n, 1), x.dtype)], axis=1)
        step = max(1, (1 << 24) // gather.size)   # bound the (images, P, K) gather to 2^24 values
        parts = []
        for i in range(0, n, step):
            cols = xz[i:i + step][:, gather]                                 # (n', P, K)
            part = _matmul(cols.reshape(-1, gather.shape[1]), wmat.T, integer)   # (n'*P, oc)
            parts.append(part.reshape(-1, oh * ow, oc).transpose(0, 2, 1).reshape(len(cols), -1))
        y = np.concatenate(parts) if parts else np.zeros((0, oc * oh * ow), np.int64 if integer else np.float32)
    b = layer.arrays["b"]
    return y + np.repeat(b.astype(y.dtype), oh * ow)


def _pool(layer: Layer, x: np.ndarray, integer: bool, reference: bool) -> np.ndarray:
    c, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    if reference:
        corners = []
        for dy in (0, 1):
            for dx in (0, 1):
                idx = [ch * h * w + (2 * oy + dy) * w + 2 * ox + dx
                       for ch in range(c) for oy in range(oh) for ox in range(ow)]
                corners.append(x[:, idx])
    else:
        m = x.reshape(len(x), c, h, w)[:, :, : 2 * oh, : 2 * ow]
        corners = [m[:, :, dy::2, dx::2].reshape(len(x), -1) for dy in (0, 1) for dx in (0, 1)]
    if layer.op == "maxpool":
        return np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
    s = (corners[0] + corners[1]) + (corners[2] + corners[3])
    if layer.op == "avgpool":
        if integer:
            return np.sign(s) * ((np.abs(s) + 2) >> 2)
        return s * np.float32(0.25)
    # subsample: w[c] * block sum + b[c]
    per = oh * ow
    wv, bv = layer.arrays["w"], layer.arrays["b"]
    if integer:
        return np.repeat(wv.astype(np.int64), per) * s + np.repeat(bv.astype(np.int64), per)
    return np.repeat(wv, per) * s + np.repeat(bv, per)


def _dense(layer: Layer, x: np.ndarray, integer: bool, reference: bool) -> np.ndarray:
    oc = layer.out_shape[0]
    wmat = layer.arrays["w"].reshape(oc, -1)
    b = layer.arrays["b"]
    if reference:
        y = np.zeros((len(x), oc), np.int64 if integer else np.float32)
        for o in range(oc):
            y[:, o] = _matmul(x, wmat[o], integer)
    else:
        y = _matmul(x, wmat.T, integer)
    return y + b.astype(y.dtype)


def _rbf(layer: Layer, x: np.ndarray, integer: bool) -> np.ndarray:
    oc = layer.out_shape[0]
    centres = layer.arrays["w"].reshape(oc, -1)
    if integer:
        return int8.rbf(x, centres)
    # float32 inputs, float64 sum (the spec's rule: distances are large, their float32 sum loses digits)
    d = x.astype(np.float32)[:, None, :].astype(np.float64) - centres[None].astype(np.float32).astype(np.float64)
    return (-(d * d).sum(-1)).astype(np.float32)


def _layer(fm: FlatModel, layer: Layer, x: np.ndarray, reference: bool) -> np.ndarray:
    integer = fm.dtype == "int8"
    if integer and not reference:
        return int8.run_layer(layer, x)
    op = layer.op
    if op == "act":
        if integer:
            return int8.lut(x, layer.arrays["t"])
        return activation(layer.act, x)
    if op == "rbf":
        return _rbf(layer, x, integer)
    if op == "conv":
        y = _conv(layer, x, integer, reference)
    elif op == "dense":
        y = _dense(layer, x, integer, reference)
    else:
        y = _pool(layer, x, integer, reference)
        if op != "subsample":
            return y
    if integer:
        per = y.shape[1] // layer.out_shape[0]
        m = np.repeat(layer.arrays["m"].astype(np.int64), per)
        s = np.repeat(layer.arrays["s"].astype(np.int64), per)
        return requantize(y, m, s, layer.out_bits)
    return y.astype(np.float32)


def run(fm: FlatModel, images: np.ndarray, mode: str = "fast", batch_size: int = 1000,
        collect: bool = False) -> np.ndarray | list[np.ndarray]:
    """Logits (N, num_classes) for uint8 images (N, H, W): float32, or int64 for int8 files.

    ``collect=True`` returns every layer's output instead (used by calibration).
    """
    if mode not in ("fast", "reference"):
        raise LenetlabError(f"mode must be 'fast' or 'reference', got {mode!r}")
    x_all = prepare_input(fm, images)
    outs: list[list[np.ndarray]] = [[] for _ in fm.layers]
    logits = []
    for i in range(0, len(x_all), batch_size):
        x = x_all[i: i + batch_size]
        for j, layer in enumerate(fm.layers):
            x = _layer(fm, layer, x, mode == "reference")
            if collect:
                outs[j].append(x)
        logits.append(x.reshape(len(x), -1))
    if collect:
        return [np.concatenate(o) for o in outs]
    return np.concatenate(logits) if logits else np.zeros((0, fm.num_classes))


def predict(fm: FlatModel, images: np.ndarray, mode: str = "fast") -> np.ndarray:
    """Top-1 class of each image."""
    return np.argmax(run(fm, images, mode), axis=1)
