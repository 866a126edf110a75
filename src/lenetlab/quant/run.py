"""``lenetlab quantize RUN_DIR --out DIR``: a quantised run directory.

DIR gets ``model_int8.flat`` (the int8 flat file of ``docs/flat-format.md``,
the same bytes ``lenetlab export --int8`` writes) and ``quant.json``: where it
came from, the calibration set, and float vs int8 test accuracy measured by
the NumPy float runtime and by the integer engine.

Example::

    from lenetlab.quant.run import quantize_run, load_qrun
    info = quantize_run("runs/demo", "runs/demo_q")
    fm, meta = load_qrun("runs/demo_q")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lenetlab.deploy import flat
from lenetlab.errors import LenetlabError
from lenetlab.fileio import atomic_write_bytes, atomic_write_json

FLAT, META = "model_int8.flat", "quant.json"
MAX_LOSS_POINTS = 0.3   # issue 5: int8 may cost at most 0.3 accuracy points


def quantize_run(run_dir: str | Path, out: str | Path, calibration: int = 2000, limit: int | None = None
                 ) -> dict[str, Any]:
    """Quantise the trained run ``run_dir`` into ``out``; returns the ``quant.json`` content."""
    from lenetlab.data.datasets import load_raw
    from lenetlab.deploy.export import build_flat
    from lenetlab.deploy.graph import to_flat
    from lenetlab.deploy.quantize import quantize
    from lenetlab.deploy.runtime import run as run_flat
    from lenetlab.quant.engine import IntEngine, blas_threads
    from lenetlab.rundir import load_model, require_run

    if calibration < 1:
        raise LenetlabError(f"--calibration must be >= 1, got {calibration}")
    if limit is not None and limit < 1:
        raise LenetlabError(f"--limit must be positive, got {limit}")
    run = require_run(run_dir)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LenetlabError(f"{out} exists and is not a directory")
    model, cfg = load_model(run)
    model.eval()
    train_x, _, test_x, test_y = load_raw(cfg.data.dataset, cfg.data.data_dir)
    test_x, test_y = test_x[:limit], test_y[:limit]
    fm32 = build_flat(model, cfg, int8=False)
    fm8 = flat.decode(flat.encode(quantize(to_flat(model, cfg.data), np.ascontiguousarray(train_x[:calibration]))))
    with blas_threads(2):
        acc32 = float((np.argmax(run_flat(fm32, test_x), 1) == test_y).mean())
        acc8 = float((IntEngine(fm8).predict(test_x) == test_y).mean())
    data = flat.encode(fm8)
    info = {"run_dir": str(run), "model": cfg.model.name, "dataset": cfg.data.dataset, "data_dir": cfg.data.data_dir,
            "file": FLAT, "bytes": len(data),
            "calibration": f"first {calibration} {cfg.data.dataset} training images",
            "test_images": int(len(test_x)), "float_accuracy": acc32, "int8_accuracy": acc8,
            "loss_points": round(100 * (acc32 - acc8), 4),
            "within_budget": bool(100 * (acc32 - acc8) <= MAX_LOSS_POINTS)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / FLAT, data)
    atomic_write_json(out / META, info)
    return info


def load_qrun(path: str | Path) -> tuple[flat.FlatModel, dict[str, Any]]:
    """(int8 flat model, quant.json) of a quantised run directory (or an int8 ``.flat`` file)."""
    import json

    p = Path(path)
    if p.is_dir():
        f = p / FLAT
        if not f.is_file():
            raise LenetlabError(f"{p}: not a quantised run (no {FLAT}; make one with `lenetlab quantize`)")
        meta = {}
        if (p / META).is_file():
            try:
                meta = json.loads((p / META).read_text())
            except json.JSONDecodeError as e:
                raise LenetlabError(f"{p / META}: not valid JSON ({e})") from None
    elif p.is_file():
        f, meta = p, {}
    else:
        raise LenetlabError(f"{p}: no such quantised run directory or flat file")
    fm = flat.load(str(f))
    if fm.dtype != "int8":
        raise LenetlabError(f"{f}: a float32 flat model; fault campaigns need the int8 one (lenetlab quantize)")
    return fm, meta


def test_images(meta: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test images and labels of the run's dataset (MNIST when unknown)."""
    from lenetlab.data.datasets import load_raw

    if n < 1:
        raise LenetlabError(f"--images must be positive, got {n}")
    _, _, x, y = load_raw(meta.get("dataset", "mnist"), meta.get("data_dir"))
    return np.ascontiguousarray(x[:n]), y[:n]
