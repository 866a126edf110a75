"""Compress a trained run into a new run directory: TT/MPO or deep ADTN layers, then fine-tuning (Qing et al.
2023, docs/papers/tn.md).

:func:`compress_run` is the library entry point behind ``lenetlab compress`` and the ``tn`` and ``matrix``
experiments. The result is an ordinary run directory (model ``lenet5_tt`` / ``lenet5_adtn``), so
``lenetlab eval`` and ``lenetlab export`` work on it; its summary.json adds the parameter counts before and
after and the accuracies at each stage.

Example::

    from lenetlab.compress.run import compress_run
    s = compress_run("runs/demo", "runs/demo_tt", "tt", "c5,f6", rank=8, epochs=1)
    s["test_accuracy"], s["compression"]["model_ratio"]
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError


def compress_run(run_dir: str | Path, out: str | Path, method: str, layers: str, rank: int = 8,
                 tol: float | None = None, cores: int = 3, depth: int = 4, tn_activation: str = "tanh",
                 fit_steps: int = 1000, epochs: int = 2, lr: float = 3e-3, train_subset: int | None = None,
                 batch_size: int | None = None, force: bool = False, log=print, progress: bool | None = None,
                 splits=None) -> dict[str, Any]:
    """Compress a trained run into ``out`` (a run directory); returns its summary."""
    from lenetlab import rundir
    from lenetlab.compress.base import compress_model, layer_error
    from lenetlab.config import ModelConfig
    from lenetlab.data import load_splits
    from lenetlab.models import param_count
    from lenetlab.train import evaluate, fit

    t0 = time.perf_counter()
    if epochs < 0:
        raise LenetlabError(f"--epochs must be >= 0, got {epochs}")
    if not (lr > 0 and math.isfinite(lr)):
        raise LenetlabError(f"--lr must be a finite number > 0, got {lr}")
    if batch_size is not None and batch_size < 1:
        raise LenetlabError(f"--batch-size must be positive, got {batch_size}")
    if train_subset is not None and train_subset < 1:
        raise LenetlabError(f"--train-subset must be positive, got {train_subset}")
    out = Path(out)
    rundir.prepare(out, resume=False, force=force)
    model, cfg = rundir.load_model(run_dir)
    if cfg.model.name != "lenet5":
        raise LenetlabError(f"{run_dir}: only lenet5 runs can be compressed (this one is {cfg.model.name!r})")
    small = compress_model(model, method, layers, rank=rank, cores=cores, tol=tol, depth=depth,
                           tn_activation=tn_activation, fit_steps=fit_steps, log=log)
    data = dataclasses.replace(cfg.data, train_subset=train_subset) if train_subset else cfg.data
    splits = splits or load_splits(data)
    base_acc = evaluate(model, splits.test_x, splits.test_y)["accuracy"]
    init_acc = evaluate(small, splits.test_x, splits.test_y)["accuracy"]
    errors = layer_error(small, model)
    info = small.compression()
    if log:
        log(f"{method}: {', '.join(info['layers'])}: {info['dense_layer_params']:,} -> {info['layer_params']:,} "
            f"params ({info['layer_ratio']:.1f}x), whole model {info['dense_params']:,} -> {info['params']:,} "
            f"({info['model_ratio']:.2f}x); weight error " + ", ".join(f"{k} {v:.3f}" for k, v in errors.items()))
        log(f"accuracy: uncompressed {100 * base_acc:.2f}%, compressed before fine-tuning {100 * init_acc:.2f}%")
    model_cfg = ModelConfig(f"lenet5_{method}", dataclasses.asdict(small.config))
    train_cfg = dataclasses.replace(cfg.train, epochs=max(1, epochs), lr=lr,
                                    batch_size=batch_size or cfg.train.batch_size)
    new_cfg = dataclasses.replace(cfg, data=data, model=model_cfg, train=train_cfg)
    if epochs > 0:
        s = fit(new_cfg, out=out, force=force, splits=splits, model=small, log=log, progress=progress)
        s.pop("_model")
        small.eval()
    else:
        if force:
            rundir.clear(out)
        out.mkdir(parents=True, exist_ok=True)
        new_cfg = dataclasses.replace(new_cfg, train=dataclasses.replace(new_cfg.train, epochs=0))
        rundir.save_config(out, new_cfg)
        rundir.save_model(out, small, new_cfg)
        s = {"model": new_cfg.model.name, "params": param_count(small), "epochs": 0, "test_accuracy": init_acc,
             "test_error_percent": round(100 * (1 - init_acc), 4), "test_images": len(splits.test_x)}
    # inside a reproduction (clock_apart) relative to this run's folder: both live in the reproduction's folder,
    # and two reproductions into two folders write the same bytes
    src = os.path.relpath(Path(run_dir).resolve(), out.resolve()) if rundir.clock_is_apart() else str(run_dir)
    s.update({"compressed_from": src, "compression": info, "weight_error_after_init": errors,
              "uncompressed_test_accuracy": base_acc, "test_accuracy_before_finetune": init_acc,
              "accuracy_change_points": round(100 * (s["test_accuracy"] - base_acc), 4),
              "compress_wall_seconds": round(time.perf_counter() - t0, 3)})
    rundir.write_summary(out, s)
    return s
