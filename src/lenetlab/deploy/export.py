"""``lenetlab export``: one base class, one registered exporter per format.

An :class:`Exporter` gets the trained model, its config, the flat model
(float32 or int8) and an output directory, and writes its files there. The
formats: ``flat`` (the 1-D file and its metadata), ``c`` (generated C99
runtime), ``web`` (static page with a JavaScript runtime), ``onnx``.

Example::

    from lenetlab.deploy.export import export
    export("runs/demo", "flat", int8=True, out="runs/demo/export")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from lenetlab.config import RunConfig
from lenetlab.deploy import flat
from lenetlab.errors import LenetlabError
from lenetlab.fileio import atomic_write_bytes, atomic_write_json
from lenetlab.registry import get, names, register

CALIBRATION_IMAGES = 2000   # first N training images calibrate int8 scales


@dataclass
class ExportContext:
    model: nn.Module
    cfg: RunConfig
    fm: flat.FlatModel          # what the runtimes execute (int8 if requested)
    int8: bool
    run_dir: Path


class Exporter:
    """Subclasses implement :meth:`write`; returns the paths written."""

    name = ""

    def write(self, ctx: ExportContext, out: Path) -> list[Path]:
        raise NotImplementedError


def flat_name(int8: bool) -> str:
    return "model_int8.flat" if int8 else "model.flat"


def write_flat(ctx: ExportContext, out: Path) -> Path:
    """Write the flat file (shared by every exporter that ships it)."""
    path = out / flat_name(ctx.int8)
    atomic_write_bytes(path, flat.encode(ctx.fm))
    return path


@register("exporter", "flat")
class FlatExporter(Exporter):
    """The flat 1-D file (docs/flat-format.md) plus a JSON note of where it came from."""

    def write(self, ctx: ExportContext, out: Path) -> list[Path]:
        path = write_flat(ctx, out)
        meta = out / "export.json"
        atomic_write_json(meta, {
            "format": "flat", "version": flat.VERSION, "dtype": ctx.fm.dtype, "file": path.name,
            "bytes": path.stat().st_size, "model": ctx.cfg.model.name, "run_dir": str(ctx.run_dir),
            "calibration": f"first {CALIBRATION_IMAGES} {ctx.cfg.data.dataset} training images" if ctx.int8 else None,
        })
        return [path, meta]


def formats() -> list[str]:
    """The registered export formats (each module is listed in :data:`lenetlab.catalogue.BUILTINS`)."""
    return names("exporter")


def build_flat(model: nn.Module, cfg: RunConfig, int8: bool) -> flat.FlatModel:
    """The flat model of a trained network; int8 calibrates on training images."""
    from lenetlab.deploy.graph import to_flat
    from lenetlab.deploy.quantize import quantize

    fm = to_flat(model, cfg.data)
    if int8:
        from lenetlab.data.datasets import load_raw

        train_x = load_raw(cfg.data.dataset, cfg.data.data_dir)[0]
        fm = quantize(fm, np.ascontiguousarray(train_x[:CALIBRATION_IMAGES]))
    return flat.decode(flat.encode(fm))


def export(run_dir: str | Path, fmt: str, int8: bool = False, out: str | Path | None = None) -> list[Path]:
    """Export a trained run; ``out`` defaults to RUN_DIR/export. Returns the files written."""
    from lenetlab.rundir import load_model, require_run

    run = require_run(run_dir)
    cls = get("exporter", fmt)
    model, cfg = load_model(run)
    model.eval()
    fm = build_flat(model, cfg, int8)
    out_dir = Path(out) if out is not None else run / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not out_dir.is_dir():
        raise LenetlabError(f"{out_dir} is not a directory")
    return cls().write(ExportContext(model, cfg, fm, int8, run), out_dir)


PARITY_BATCH = 1000   # images per NumPy-runtime call in :func:`parity` (run()'s own batch: the same logits)


def parity(run_dir: str | Path, int8: bool = False, limit: int | None = None,
           progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None) -> dict:
    """Accuracy of the NumPy runtime vs PyTorch on the test set, and top-1 agreement.

    ``on_total(n)`` once the n test images are known, then ``progress(k)`` as the NumPy runtime has run k more
    (the calls add up to n)."""
    import torch

    from lenetlab.data.datasets import load_raw
    from lenetlab.data.transforms import to_model_input
    from lenetlab.deploy.runtime import run
    from lenetlab.rundir import load_model

    model, cfg = load_model(run_dir)
    model.eval()
    _, _, test_x, test_y = load_raw(cfg.data.dataset, cfg.data.data_dir)
    test_x, test_y = test_x[:limit], test_y[:limit]
    if on_total:
        on_total(len(test_x))
    with torch.no_grad():
        ref = torch.cat([model(to_model_input(torch.from_numpy(test_x[i:i + 2000]), cfg.data))
                         for i in range(0, len(test_x), 2000)]).numpy()
    fm = build_flat(model, cfg, int8)
    parts = []
    for i in range(0, len(test_x), PARITY_BATCH):
        parts.append(run(fm, test_x[i:i + PARITY_BATCH], batch_size=PARITY_BATCH))
        if progress:
            progress(len(parts[-1]))
    got = np.concatenate(parts) if parts else run(fm, test_x)
    return {"images": len(test_x), "dtype": fm.dtype,
            "runtime_accuracy": float((got.argmax(1) == test_y).mean()),
            "torch_accuracy": float((ref.argmax(1) == test_y).mean()),
            "same_top1": int((got.argmax(1) == ref.argmax(1)).sum())}
