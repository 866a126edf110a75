"""Machine-independent numbers: one fixed torch thread count while a reproduction runs.

The same quick reproduction gave different numbers on two 2-core machines, because 1 and 2 torch
threads split the reductions inside convolutions differently and so train slightly different models.
A reproduction's numbers must not depend on how many cores the machine has, so ``lenetlab
reproduce`` runs every experiment under :func:`pinned_threads` with :data:`REPRODUCE_THREADS` threads
(whatever the machine: a 1-core machine runs 2 threads, a 64-core machine still 2) and with torch's
deterministic algorithms switched on, and records both in ``run.json`` and the report. NumPy's BLAS
(OpenBLAS starts one thread per core, or ``OMP_NUM_THREADS``) is held to :data:`BLAS_THREADS` likewise:
with 1 vs 2 BLAS threads the tiny reproductions' PCA-LR models, the fused experiment's float differences
and the deploy experiment's NumPy-runtime logit differences came out different.

What this cannot remove: different CPU instruction sets (AVX-512 vs AVX2) may still pick different
kernels; the report records the machine so such differences can be traced.

Example::

    from lenetlab.determinism import pinned_threads
    with pinned_threads(2):
        ...   # train and evaluate
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

REPRODUCE_THREADS = 2
BLAS_THREADS = 1   # NumPy's BLAS: 1 is what every machine (and any OMP_NUM_THREADS) can give


@contextmanager
def pinned_threads(n: int = REPRODUCE_THREADS, deterministic: bool = True) -> Iterator[dict]:
    """Run the block with ``n`` intra-op torch threads (and deterministic algorithms) and
    :data:`BLAS_THREADS` NumPy BLAS threads; restore after.

    Yields the settings applied, for the record."""
    from threadpoolctl import threadpool_limits

    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    before = torch.get_num_threads()
    det_before = torch.are_deterministic_algorithms_enabled()
    warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(n)
    if deterministic:
        # warn_only: an op without a deterministic CPU kernel warns instead of failing a long run
        _set_deterministic(True, warn_only=True)
    try:
        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            yield {"torch_threads": n, "blas_threads": BLAS_THREADS, "deterministic_algorithms": deterministic}
    finally:
        torch.set_num_threads(before)
        _set_deterministic(det_before, warn_only=warn_before)


def _set_deterministic(mode: bool, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=...)`` without its import of ``torch._inductor``
    (about 3 s of CPU per process, paid by every ``lenetlab reproduce``) while nothing has loaded inductor:
    the same global switch of ATen's kernels; inductor's own copy of the flag only matters to torch.compile,
    which nothing inside a reproduction uses. Once inductor is loaded, torch's function sets both."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


def machine_info() -> dict:
    """The machine a run's numbers were computed on, as far as they can depend on it: the CPU model and the
    instruction sets oneDNN and ATen choose kernels by (a different set can change the rounding of training,
    so results from another CPU may differ in the last bits and, through training, more), the core count,
    Python and torch. Recorded beside the clock readings (timings.json), not in run.json: a run may resume on
    another machine."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
           if f in flags]
    return {"cpu": model, "cpu_flags": isa, "aten_cpu_capability": capability, "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}


__all__ = ["BLAS_THREADS", "REPRODUCE_THREADS", "machine_info", "pinned_threads"]
