"""``lenetlab compress RUN_DIR --method tt|adtn --layers c5,f6 --out DIR``: a tensor-network compressed run.

The result is an ordinary run directory (model ``lenet5_tt`` / ``lenet5_adtn``),
so ``lenetlab eval DIR`` and ``lenetlab export DIR`` work on it; summary.json
adds the parameter counts before and after and the accuracies at each stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError


def add_commands(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compress", help="tensor-network compression: TT/MPO layers or deep ADTN (Qing et al. 2023)")
    c.add_argument("run_dir", help="a trained lenet5 run directory")
    c.add_argument("--method", required=True, choices=["tt", "adtn"])
    c.add_argument("--layers", default="c5,f6", help="layers to compress: c1,c3,c5,f6,f7 or conv1,conv2,fc1,fc2,fc3 "
                   "(default c5,f6)")
    c.add_argument("--out", required=True, help="output run directory")
    c.add_argument("--rank", type=int, default=8, help="tt: cap on every bond rank (default 8)")
    c.add_argument("--tol", type=float, help="tt: choose ranks by TT-SVD to this relative error instead of --rank")
    c.add_argument("--cores", type=int, default=3, help="tt: cores per layer (default 3)")
    c.add_argument("--depth", type=int, default=4, help="adtn: brick-wall layers M (default 4)")
    c.add_argument("--tn-activation", default="tanh", help="adtn: activation between layers (default tanh)")
    c.add_argument("--fit-steps", type=int, default=1000, help="adtn: least-squares fit steps (default 1000)")
    c.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs on the task, 0 = none (default 2)")
    c.add_argument("--lr", type=float, default=3e-3, help="fine-tuning peak learning rate (default 3e-3)")
    c.add_argument("--batch-size", type=int, help="fine-tuning batch size (default: the run's)")
    c.add_argument("--train-subset", type=int, metavar="N", help="fine-tune on the first N training images only")
    c.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_compress)


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
    if lr <= 0:
        raise LenetlabError(f"--lr must be positive, got {lr}")
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
    s.update({"compressed_from": str(run_dir), "compression": info, "weight_error_after_init": errors,
              "uncompressed_test_accuracy": base_acc, "test_accuracy_before_finetune": init_acc,
              "accuracy_change_points": round(100 * (s["test_accuracy"] - base_acc), 4),
              "compress_wall_seconds": round(time.perf_counter() - t0, 3)})
    rundir.write_summary(out, s)
    return s


def cmd_compress(a: argparse.Namespace) -> int:
    log = None if a.quiet else print
    if a.tol is not None and a.method != "tt":
        raise LenetlabError("--tol applies to --method tt only")
    s = compress_run(a.run_dir, a.out, a.method, a.layers, rank=a.rank, tol=a.tol, cores=a.cores, depth=a.depth,
                     tn_activation=a.tn_activation, fit_steps=a.fit_steps, epochs=a.epochs, lr=a.lr,
                     train_subset=a.train_subset, batch_size=a.batch_size, force=a.force, log=log,
                     progress=None if not a.quiet else False)
    c = s["compression"]
    print(f"{s['model']}  {', '.join(c['layers'])} {c['dense_layer_params']:,} -> {c['layer_params']:,} params "
          f"({c['layer_ratio']:.1f}x; model {c['dense_params']:,} -> {c['params']:,})  test accuracy "
          f"{100 * s['test_accuracy']:.2f}% (uncompressed {100 * s['uncompressed_test_accuracy']:.2f}%, "
          f"{s['accuracy_change_points']:+.2f} points)  -> {a.out}")
    return 0
