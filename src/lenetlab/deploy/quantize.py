"""Post-training int8 quantisation of a float flat model (integer-only inference).

Scheme (``docs/flat-format.md``, "int8 files"): symmetric int8 activations
with one scale per tensor, int8 weights with one scale per output channel,
int32 biases, and requantisation by a fixed-point multiplier M and shift n
(real multiplier = M / 2^n). Scales of CONV/DENSE/SUBSAMPLE outputs come from
the largest magnitude seen on calibration images; an activation's output scale
is fixed by its look-up table's own range (exact for relu/abs/identity), so
only pre-activations need calibration. The last layer keeps 32-bit integer
logits on a fine common scale so the argmax is not coarsened.

Example::

    from lenetlab.deploy.quantize import quantize
    fm8 = quantize(fm32, calibration_images_u8)
"""

from __future__ import annotations

import math

import numpy as np

from lenetlab.deploy.flat import FlatModel, Layer
from lenetlab.deploy.runtime import activation, run
from lenetlab.errors import LenetlabError

LOGIT_STEPS = 2**20   # resolution of the final integer logits


def fixed_point(m: float) -> tuple[int, int]:
    """(M, n) with M / 2^n ~ m, 2^30 <= M < 2^31, 1 <= n <= 62 (m tiny: fewer bits of M)."""
    if not (m > 0 and math.isfinite(m)):
        return 0, 1
    f, e = math.frexp(m)             # m = f * 2^e, 0.5 <= f < 1
    mult = round(f * 2**31)
    if mult == 2**31:
        mult, e = mult // 2, e + 1
    n = 31 - e
    if n < 1:
        raise LenetlabError(f"requantisation multiplier {m:g} is too large for the int8 scheme")
    if n > 62:
        mult, n = mult >> (n - 62), 62
    return mult, n


def _weights(w: np.ndarray, oc: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 weights and their scales."""
    wm = w.reshape(oc, -1).astype(np.float64)
    scale = np.abs(wm).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(wm / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(-1), scale


def _requant(s_in: float, w_scale: np.ndarray, s_out: float) -> tuple[np.ndarray, np.ndarray]:
    pairs = [fixed_point(s_in * sw / s_out) for sw in w_scale]
    return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)


def quantize(fm: FlatModel, calibration: np.ndarray) -> FlatModel:
    """An int8 :class:`FlatModel` from a float32 one and uint8 calibration images (N, H, W)."""
    if fm.dtype != "float32":
        raise LenetlabError("quantize() takes a float32 flat model")
    if len(calibration) == 0:
        raise LenetlabError("quantisation needs at least one calibration image")
    outs = run(fm, calibration, collect=True)
    site_max = [float(np.abs(o).max()) if o.size else 0.0 for o in outs]

    pixels = np.arange(256, dtype=np.float64) * fm.in_scale + fm.in_shift
    s = float(np.abs(pixels).max()) / 127.0 or 1.0
    in_lut = np.clip(np.round(pixels / s), -128, 127).astype(np.int8)
    in_qscale = s
    layers: list[Layer] = []
    last = len(fm.layers) - 1
    for i, layer in enumerate(fm.layers):
        a = layer.arrays
        q = Layer(layer.op, layer.in_shape, layer.out_shape, layer.act, 8, layer.k, layer.pad)
        oc = layer.out_shape[0]
        if layer.op in ("conv", "dense", "subsample"):
            out_bits = 32 if i == last else 8
            w = a["w"] if layer.op != "subsample" else a["w"].reshape(-1, 1)
            wq, w_scale = _weights(w, oc)
            s_out = max(site_max[i], 1e-12) / (LOGIT_STEPS if out_bits == 32 else 127.0)
            bias = np.clip(np.round(a["b"].astype(np.float64) / (s * w_scale)), -(2**31), 2**31 - 1)
            m, n = _requant(s, w_scale, s_out)
            q.arrays = {"w": wq, "b": bias.astype(np.int32), "m": m, "s": n}
            if layer.op == "conv" and a.get("t") is not None and a["t"].size:
                q.arrays["t"] = a["t"]
            q.out_bits, q.out_scale, s = out_bits, s_out, s_out
        elif layer.op == "act":
            grid = np.arange(-128, 128, dtype=np.float64) * s
            f = activation(layer.act, grid.astype(np.float32)).astype(np.float64)
            s_out = float(np.abs(f).max()) / 127.0 or s
            if i + 1 <= last and fm.layers[i + 1].op == "rbf":
                # the RBF centres share this scale: make room for them
                s_out = max(s_out, float(np.abs(fm.layers[i + 1].arrays["w"]).max()) / 127.0)
            q.arrays = {"t": np.clip(np.round(f / s_out), -128, 127).astype(np.int8)}
            q.out_scale, s = s_out, s_out
        elif layer.op == "rbf":
            centres = np.clip(np.round(a["w"].astype(np.float64) / s), -127, 127).astype(np.int8)
            q.arrays = {"w": centres}
            q.out_bits, q.out_scale = 32, s * s
        else:   # max/avg pool keep the scale
            q.out_scale = s
        layers.append(q)
    return FlatModel("int8", fm.img_hw, fm.pad, fm.num_classes, fm.in_scale, fm.in_shift, layers,
                     in_lut, in_qscale)
