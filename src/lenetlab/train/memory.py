"""Memory accounting for one training step: measured peak bytes and an analytic breakdown.

Measurement (:class:`PeakTracker`): a ``TorchDispatchMode`` sees the result of
every ATen op run inside it - forward, autograd's backward (the engine carries
the mode to the backward ops) and the optimiser. Each result's storage is
tracked through a storage weak reference (``StorageWeakRef``, the C++ storage's
lifetime, so tensors autograd keeps alive for backward stay counted after the
Python object is gone). After every op the tracker sums the bytes of the
tracked storages still alive; the step's *transient peak* is the maximum of
that sum. Storages that existed before the step (parameters, optimiser state,
the input batch) are the *resident* bytes, counted once. What it cannot see:
scratch memory allocated inside a kernel (mkldnn convolution workspaces, fused
Adam temporaries) and Python objects - so it measures what the algorithm
keeps, not what the process RSS is. ``tracemalloc`` was rejected because
torch's CPU allocator bypasses Python's allocator entirely.

Analytic account (:func:`analytic_bytes`): parameters, gradients, optimiser
state, activations kept for backward, the ZO perturbation (one parameter
tensor's worth of z at a time) and the forward working set (the largest
layer input + output pair), for bp / zo / elasticzo / elasticzo-int8.

Example::

    with PeakTracker(exclude=list(model.parameters()) + [xb]) as t:
        stepper.step(xb, yb, lr, 0)
    t.peak_bytes
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakTracker(TorchDispatchMode):
    """Peak of live bytes of the tensors created inside the ``with`` block (see the module docstring)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude if isinstance(t, torch.Tensor)}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak_bytes = 0
        self.ops = 0
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
                st = t.untyped_storage()
                key = st.data_ptr()
                if key in self.excluded or st.nbytes() == 0:
                    continue
                old = self.live.get(key)
                if old is None or old[0].expired():
                    self.live[key] = (StorageWeakRef(st), st.nbytes())
        total = 0
        for key in list(self.live):
            ref, nbytes = self.live[key]
            if ref.expired():
                del self.live[key]
            else:
                total += nbytes
        self.peak_bytes = max(self.peak_bytes, total)
        return out


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages among ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def optimizer_tensors(opt: Any) -> list[torch.Tensor]:
    state = getattr(opt, "state", {}) or {}
    return [v for s in state.values() if isinstance(s, dict) for v in s.values() if isinstance(v, torch.Tensor)]


def measure_step(step: Any, resident: Iterable[torch.Tensor]) -> dict[str, int]:
    """Run ``step()`` under a :class:`PeakTracker`; resident = tensors alive before (params, state, batch)."""
    resident = list(resident)
    with PeakTracker(exclude=resident) as t:
        step()
    res = tensor_bytes(resident)
    return {"resident_bytes": res, "transient_peak_bytes": t.peak_bytes, "peak_bytes": res + t.peak_bytes}


def _layer_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per weight layer: params, input / output / post-activation(-pool) element counts per sample."""
    from lenetlab.train.zeroth_order import weight_layers

    layers = weight_layers(model)
    rec: dict[nn.Module, dict[str, Any]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: rec.__setitem__(m, {"in": i[0][0].numel(), "out": o[0].numel()}))
             for m in layers]
    with torch.no_grad():
        model(torch.zeros((1, *input_shape)))
    for h in hooks:
        h.remove()
    return [{"kind": "conv" if isinstance(m, nn.Conv2d) else "linear",
             "params": sum(p.numel() for p in m.parameters(recurse=False)),
             "largest": max(p.numel() for p in m.parameters(recurse=False)),
             # int8 im2col bytes per sample (conv): output positions x (in_channels x kernel area)
             "cols": rec[m]["out"] // m.out_channels * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
             if isinstance(m, nn.Conv2d) else 0, **rec[m]} for m in layers]


def analytic_bytes(model: nn.Module, method: str, cutoff: int, batch: int, optimizer: str = "adam",
                   input_shape: tuple[int, ...] = (1, 28, 28)) -> dict[str, int]:
    """Analytic memory of one step (bytes) by category; ``cutoff`` = ZO layers (0: BP, all: vanilla ZO).

    Float methods use 4-byte values; elasticzo-int8 keeps int8 weights/activations, int32 accumulators and
    int64 BP gradients (what :mod:`lenetlab.train.zo_int8` implements). Activations kept for backward:
    each BP layer's input (weight gradient) and, for all BP layers but the last, its activation output
    (ReLU backward); a BP convolution also keeps its pre-pool output and int64 max-pool indices.
    """
    ls = _layer_shapes(model, input_shape)
    if method == "bp":
        cutoff = 0
    int8 = method == "elasticzo-int8"
    val = 1 if int8 else 4
    zo, bp = ls[:cutoff], ls[cutoff:]
    params = sum(ly["params"] for ly in ls) * val
    grads = sum(ly["params"] for ly in bp) * (8 if int8 else 4)
    opt_state = 0 if int8 else sum(ly["params"] for ly in bp) * (8 if optimizer.startswith("adam") else 0)
    kept = 0
    for i, ly in enumerate(bp):
        kept += ly["in"] * batch * val
        if i < len(bp) - 1 or ly["kind"] == "conv":
            kept += ly["out"] * batch * val
        if ly["kind"] == "conv":
            kept += ly["out"] // 4 * batch * 8          # max-pool indices (int64)
    if bp:
        kept += ls[-1]["out"] * batch * (8 if int8 else 4)   # softmax / its error
    # ZO: z is drawn CHUNK values at a time (float32; INT8: int8 z + int16 noise, step and widened weights)
    from lenetlab.train.zeroth_order import CHUNK

    perturb = min(CHUNK, max((ly["largest"] for ly in zo), default=0)) * (7 if int8 else 4)
    if int8:   # int8 input + int32 pooled output + int16 rounding noise; conv: an 8-sample slice at full size
        working = max(ly["in"] + (ly["out"] // 4 if ly["kind"] == "conv" else ly["out"]) * 6 for ly in ls) * batch
        working += max(ly["out"] * 4 + ly["cols"] for ly in ls if ly["kind"] == "conv") * min(batch, 8)
    else:      # float input + output of the largest layer (conv: before pooling)
        working = max(ly["in"] * 4 + ly["out"] * 4 for ly in ls) * batch
    total = params + grads + opt_state + kept + perturb + working
    return {"params": params, "gradients": grads, "optimizer_state": opt_state, "kept_activations": kept,
            "perturbation": perturb, "forward_working_set": working, "total": total}


__all__ = ["PeakTracker", "measure_step", "analytic_bytes", "tensor_bytes", "optimizer_tensors"]
