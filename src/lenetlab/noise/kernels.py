"""C kernels for the noise sweep's stacked forwards: 2x2 max-pooling and ReLU with their site's noise added in
the same pass (``kernels.c`` beside this file, built on first use by :mod:`lenetlab.native`).

In a stacked forward (:func:`lenetlab.noise.inject.noisy_accuracy_sweep`, the default, not exact) the rows
are one copy of a piece of the batch per sigma. torch pools them in two strided passes (the second, over
pairs of columns, cannot use vector loads), then adds the noise in a third and the activation in a fourth,
each into new memory; these kernels do a layer's pooling or activation and (on lenetlab's LeNet-5, where
every module call goes through its hooks: :meth:`lenetlab.noise.inject._PrefetchedNoise.native_op`) its
noise in one pass, with torch's own arithmetic (the same maxima, ``clamp_min(x, 0)``, one fused multiply-add
for the noise, as ``torch.addcmul`` is where torch has FMA kernels: :func:`fma_like_torch`), so the sweep's
numbers do not change (tests/test_noise_fast.py compares them bit for bit; only the sign of an exact zero
may differ where two maxima tie at -0 and +0, which changes no value). Where the library cannot be built
(no C compiler) or ``LENETLAB_NATIVE=0``, the sweep runs the torch ops, a little slower, with the same
results.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from lenetlab.native import Library

SOURCE = Path(__file__).with_name("kernels.c")
# -fno-trapping-math lets the compiler vectorise the compare-and-select loops (no result changes);
# -ffp-contract=off keeps every multiply and add as written (the fused ones are explicit fmaf calls)
# -fno-fast-math: NaN checks and roundings as written, also where a compiler defaults to fast math (icx)
FLAGS = ("-std=c99", "-O3", "-shared", "-fPIC", "-fno-fast-math", "-fno-trapping-math", "-ffp-contract=off")
MODES = {None: 0, "absolute": 1, "relative": 2}


def _bind(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ln_pool2x2.argtypes = [p, p, p, p, i64, i64, i64, i64, i64, i32]
    lib.ln_relu.argtypes = [p, p, p, p, i64, i64, i64, i32]
    lib.ln_pool2x2_fma.argtypes = [p, p, p, p, p, p, i64, i64, i64, i64, i64, i32]
    lib.ln_pool2x2.restype = lib.ln_relu.restype = lib.ln_pool2x2_fma.restype = None


LIBRARY = Library(SOURCE, FLAGS, _bind, "noise sweeps run without their C kernels (slower, same results)")


_FMA: list[bool] = []      # fma_like_torch()'s answer, once found


def fma_like_torch() -> bool:
    """Whether torch's ``addcmul`` rounds ``y + z * f`` once, like the kernels' fmaf (torch's AVX2 / AVX-512
    kernels do; a build or CPU without FMA rounds twice): checked once, on 4,096 random values, against the
    kernels themselves. Where it does not, the sweep adds the noise with torch's ops and uses the kernels for
    the pool and ReLU alone (no rounding there), so the numbers never depend on whether the kernels ran."""
    if not _FMA:
        if library() is None:
            return False
        g = torch.Generator().manual_seed(0)
        x, z = torch.rand(2, 2048, generator=g) + 0.5, torch.randn(1, 2048, generator=g)
        f = torch.rand(2, generator=g)
        ours = _relu(x, z, f, 2, "absolute")         # x > 0: ReLU leaves it, then x + z * f[copy] as fmaf
        _FMA.append(torch.equal(ours, torch.addcmul(x, z, f.view(2, 1))))
    return _FMA[0]


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None when disabled or unavailable (:func:`why_not`)."""
    return LIBRARY.get()


def available() -> bool:
    return library() is not None


def why_not() -> str:
    """Why :func:`library` returned None ('' when it did not)."""
    return LIBRARY.why_not()


def _loaded() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError(f"the noise kernels are unavailable: {why_not()}")
    return lib


def pool2x2(x: torch.Tensor, z: torch.Tensor | None, f: torch.Tensor | None, k: int, mode: str | None,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """2x2 max-pooling (floor) of ``x`` (``k`` copies of a piece, N, C, H, W), plus ``mode`` noise: None,
    "absolute" (``+ z * f[copy]``) or "relative" (``+ z * (f[copy] * max|y|)`` per row); ``z`` the piece's
    normals (N/k, C, H/2, W/2), ``f`` k float32 sigmas."""
    lib = _loaded()
    n, c, h, w = x.shape
    rows = n // k if k > 0 else 0
    shape = (n, c, h // 2, w // 2)
    _need(x, (k * rows, c, h, w))
    if mode is not None:
        _need(z, (rows, *shape[1:]))
        _need(f, (k,))
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    _need(out, shape)
    _apart(out, x, *((z, f) if mode is not None else ()))
    lib.ln_pool2x2(x.data_ptr(), out.data_ptr(), z.data_ptr() if mode else None, f.data_ptr() if mode else None,
                   k, rows, c, h, w, MODES[mode])
    return out


def pool2x2_fma(base: torch.Tensor, v: torch.Tensor | None, g: torch.Tensor | None, k: int,
                z: torch.Tensor | None, f: torch.Tensor | None, mode: str | None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`pool2x2` of the ``k * rows`` rows ``x[c * rows + r] = fma(v[r], g[c * rows + r], base[r])``
    (``v`` None: ``base[r]``) without ``x`` ever being written: ``base``, ``v`` (rows, C, H, W), ``g`` the
    k * rows factors, then ``mode`` noise as in :func:`pool2x2` (``z`` (rows, C, H/2, W/2), ``f`` k sigmas)."""
    lib = _loaded()
    rows, c, h, w = base.shape
    _need(base, (rows, c, h, w))
    if v is not None:
        _need(v, (rows, c, h, w))
        _need(g, (k * rows,))
    if mode is not None:
        _need(z, (rows, c, h // 2, w // 2))
        _need(f, (k,))
    if out is None:
        out = torch.empty((k * rows, c, h // 2, w // 2), dtype=torch.float32)
    _need(out, (k * rows, c, h // 2, w // 2))
    _apart(out, base, v, g, *((z, f) if mode is not None else ()))
    lib.ln_pool2x2_fma(base.data_ptr(), v.data_ptr() if v is not None else None,
                       g.data_ptr() if v is not None else None, out.data_ptr(),
                       z.data_ptr() if mode else None, f.data_ptr() if mode else None, k, rows, c, h, w, MODES[mode])
    return out


def relu(x: torch.Tensor, z: torch.Tensor | None, f: torch.Tensor | None, k: int, mode: str | None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """``clamp_min(x, 0)`` of ``x`` (``k`` copies of a piece), plus ``mode`` noise as in :func:`pool2x2`, ``z``
    of the piece's shape. ``out`` may be ``x`` (in place), but no other memory of the inputs."""
    return _relu(x, z, f, k, mode, out)


def _relu(x: torch.Tensor, z: torch.Tensor | None, f: torch.Tensor | None, k: int, mode: str | None,
          out: torch.Tensor | None = None) -> torch.Tensor:
    lib = _loaded()
    n = len(x)
    rows = n // k if k > 0 else 0
    _need(x, (k * rows, *x.shape[1:]))
    if mode is not None:
        _need(z, (rows, *x.shape[1:]))
        _need(f, (k,))
    if out is None:
        out = torch.empty(x.shape, dtype=torch.float32)
    _need(out, tuple(x.shape))
    _apart(out, None if out.data_ptr() == x.data_ptr() else x, *((z, f) if mode is not None else ()))
    per = x[0].numel() if n else 0
    lib.ln_relu(x.data_ptr(), out.data_ptr(), z.data_ptr() if mode else None, f.data_ptr() if mode else None,
                k, rows, per, MODES[mode])
    return out


def _apart(out: torch.Tensor, *inputs: torch.Tensor | None) -> None:
    """The C code takes ``out`` and its inputs as separate memory (``restrict``): a ValueError where they
    overlap (an ``out`` that is exactly ``x`` is allowed by :func:`relu`, which the caller checks)."""
    lo, hi = out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()
    for t in inputs:
        if t is not None and t.numel():
            a, b = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
            if a < hi and lo < b:
                raise ValueError("noise kernel: the output overlaps an input")


def _need(t: torch.Tensor | None, shape: tuple) -> None:
    """The C code reads and writes ``shape``'s values at ``t``'s address: a contiguous float32 CPU tensor of
    exactly that shape, or a ValueError (never an out-of-bounds access)."""
    if (t is None or t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous()
            or tuple(t.shape) != tuple(shape)):
        got = None if t is None else (tuple(t.shape), t.dtype, t.device.type, t.is_contiguous())
        raise ValueError(f"noise kernel: a contiguous float32 CPU tensor of shape {tuple(shape)} expected, got {got}")
