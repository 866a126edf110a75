"""Weights on disk: safetensors written byte-for-byte reproducibly, read with every tensor checked.

Two things the plain ``safetensors.torch`` calls do not give us:

- **Reproducible bytes.** safetensors keeps the metadata in a hash map, so the order of the
  ``__metadata__`` keys in the file header changes from one process to the next: two runs with
  identical tensors wrote files with different hashes. :func:`save` rewrites the header with the
  metadata keys sorted (same length, same offsets), so equal runs give equal files.
- **Refusing broken weights at the edge.** A model file whose tensors hold NaN or infinity would
  otherwise evaluate silently to chance accuracy with a NaN loss. :func:`load` names the first
  offending tensor in one clear error.

Example::

    from lenetlab.weights import save, load
    save({"w": torch.ones(2)}, "m.safetensors", {"model": "lenet5"})
    tensors, meta = load("m.safetensors")
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from lenetlab.errors import LenetlabError
from lenetlab.fileio import atomic_write_bytes


def to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors serialisation of ``tensors`` with the metadata keys in sorted order."""
    from safetensors.torch import save as st_save

    blob = st_save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    # only the order of keys changes, so the compact encoding has the same length as before; pad to it
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:   # cannot happen for a pure reordering; refuse rather than write a bad file
        raise RuntimeError("safetensors header grew while reordering its metadata")
    return blob[:8] + text.ljust(n, b" ") + blob[8 + n:]


def save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (+ string metadata) atomically, with reproducible bytes."""
    atomic_write_bytes(path, to_bytes(tensors, metadata))


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Fail naming the first floating-point tensor that holds NaN or infinity."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise LenetlabError(f"{where}: tensor {name!r} holds {bad} NaN/infinite value(s); "
                                "refusing to load broken weights")


def load(path: str | Path, check: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file (no pickle): ``(tensors, metadata)``; non-finite weights are refused."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise LenetlabError(f"{p}: no such weights file")
    try:
        with safe_open(str(p), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise LenetlabError(f"{p}: cannot read weights ({str(e).splitlines()[0] if str(e) else e})") from None
    if check:
        check_finite(tensors, str(p))
    return tensors, meta


__all__ = ["save", "load", "to_bytes", "check_finite"]
