"""fit / evaluate: the one training loop every capability reuses.

Design choices, each measured (benchmarks/train_to_99.py):
- the whole dataset lives in memory as one float tensor; batches are index
  gathers of a seeded permutation - no DataLoader, no worker processes;
- channels-last memory format, which mkldnn's CPU convolutions prefer;
- learning rate set from a pure schedule function of the global step, and
  shuffling seeded by (seed, epoch), so ``--resume`` from the per-epoch
  checkpoint reproduces an uninterrupted run bit for bit.

Example::

    from lenetlab.train import fit
    from lenetlab.train.presets import resolve
    result = fit(resolve("fast"), out="runs/demo")
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lenetlab import rundir
from lenetlab.config import RunConfig, TrainConfig
from lenetlab.data import Splits, load_splits
from lenetlab.errors import LenetlabError
from lenetlab.models import create_model, param_count
from lenetlab.registry import get
from lenetlab.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from lenetlab.train.diagnostics import GradNorms

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(model: nn.Module, cfg: TrainConfig) -> LossFn:
    kind = model.default_loss if cfg.loss == "auto" else cfg.loss
    if kind == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if kind == "rbf":
        from lenetlab.models.classic import rbf_loss

        j = getattr(model, "rbf_j", 1.0)
        return lambda logits, y: rbf_loss(logits, y, j)
    raise LenetlabError(f"unknown loss {cfg.loss!r}; choose from: auto, ce, rbf")


def _fmt(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000,
             loss_fn: LossFn | None = None, channels_last: bool = False) -> dict[str, float]:
    """Accuracy (and mean loss if ``loss_fn``) of ``model`` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(_fmt(x[i:i + batch_size], channels_last))
        yb = y[i:i + batch_size]
        correct += int((logits.argmax(1) == yb).sum())
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, yb)) * len(yb)
    model.train(was_training)
    n = max(1, len(x))
    out = {"accuracy": correct / n}
    if loss_fn is not None:
        out["loss"] = loss_sum / n
    return out


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                    disable=not enabled, transient=True)


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def fit(cfg: RunConfig, out: str | Path | None = None, resume: bool = False, force: bool = False,
        splits: Splits | None = None, log: Callable[[str], None] | None = print,
        progress: bool | None = None, model: nn.Module | None = None) -> dict[str, Any]:
    """Train per ``cfg``; write a run directory to ``out`` (if given); return the summary.

    Everything that can fail on bad input (config, data, run dir) is checked
    before anything is written.
    """
    t0 = time.perf_counter()
    tc = cfg.train
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        rundir.prepare(out_dir, resume, force)
        if resume:
            cfg = rundir.load_config(out_dir)
            tc = cfg.train
    if tc.epochs < 1 or tc.batch_size < 1:
        raise LenetlabError("train.epochs and train.batch_size must be >= 1")
    schedule_factory = get("schedule", tc.schedule)
    opt_factory = get("optimizer", tc.optimizer)
    splits = splits or load_splits(cfg.data)
    if len(splits.train_x) == 0:
        raise LenetlabError("no training images (check data.train_subset / data.val_size)")

    torch.manual_seed(tc.seed)
    if model is None:
        model = create_model(cfg.model.name, **cfg.model.options)
    if not resume and hasattr(model, "prepare_from_data"):
        # models with a data-fitted part (pca_logreg's PCA) fit it before gradient training
        model.prepare_from_data(splits.train_x)
    loss_fn = make_loss(model, tc)
    cl = tc.channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)
    n = len(splits.train_x)
    per_epoch = math.ceil(n / tc.batch_size)
    total = per_epoch * tc.epochs
    from lenetlab.noise.training import harden

    hardening = harden(model, tc, total)   # QAT fake-quant and/or training noise; removed before saving
    rule = None
    if tc.rule != "bp":
        # FA / DFA / LE: the backward pathway is replaced, the forward is the model's own (lenetlab.rules);
        # the handle may bring extra trainable parameters (LE's local classifiers)
        from lenetlab.rules import attach_rule

        rule = attach_rule(model, tc)
    params = list(model.parameters()) + (list(rule.parameters()) if rule is not None else [])
    opt = opt_factory(params, tc)
    stepper = None
    if tc.method != "bp":
        # zeroth-order / ElasticZO: the step itself is different (lenetlab.train.zeroth_order)
        from lenetlab.train.zeroth_order import make_stepper

        stepper = make_stepper(model, tc, loss_fn, opt)
    sched = schedule_factory(tc, total, per_epoch)

    lb = None
    best_state: dict[str, torch.Tensor] | None = None
    if tc.schedule == "lb-restart":
        from lenetlab.train.lb_restart import LBRestart

        if len(splits.val_x) == 0:
            raise LenetlabError("train.schedule 'lb-restart' needs a validation set (data.val_size > 0)")
        lb = LBRestart(tc.lb_k, tc.lb_patience, tc.lr, tc.lb_lr_divisor, tc.lb_min_lr)
        sched = lambda step: lb.lr  # noqa: E731  (the phase lr, changed by restarts)

    start_epoch, step = 0, 0
    if out_dir is not None:
        if resume and not (out_dir / CHECKPOINT).exists():
            # killed before its first epoch finished: nothing to keep, start over
            rundir.truncate_metrics(out_dir, 0)
            if log:
                log(f"resuming {out_dir}: no finished epoch yet, starting from epoch 1")
        elif resume:
            state = load_checkpoint(out_dir / CHECKPOINT, model, opt)
            start_epoch, step = state["epoch"], state["step"]
            if lb is not None:
                lb.load(state["lb"])
                best_state = {k: v.clone() for k, v in state["extra"].items()} or None
            rundir.truncate_metrics(out_dir, start_epoch)
            if log:
                log(f"resuming {out_dir} after epoch {start_epoch}/{tc.epochs}")
        else:
            if force:
                rundir.clear(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            rundir.save_config(out_dir, cfg)

    show = sys.stderr.isatty() if progress is None else progress
    history: list[dict[str, Any]] = []
    last_eval: dict[str, float] = {}
    stopped_early = False
    grad_norms = GradNorms(model) if tc.grad_norms else None
    model.train()
    with _progress(show) as bar:
        for epoch in range(start_epoch, tc.epochs):
            task = bar.add_task(f"epoch {epoch + 1}/{tc.epochs}", total=per_epoch, info="")
            te = time.perf_counter()
            loss_sum = torch.zeros(())
            correct = torch.zeros((), dtype=torch.long)
            for idx in _batches(n, tc.batch_size, tc.seed, epoch):
                xb = _fmt(splits.train_x[idx], cl)
                yb = splits.train_y[idx]
                lr = sched(step)
                for group in opt.param_groups:
                    group["lr"] = lr
                if hardening is not None:
                    hardening.step(step)
                if stepper is not None:
                    logits, loss = stepper.step(xb, yb, lr, step)
                else:
                    logits = model(xb)
                    loss = loss_fn(logits, yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_norms is not None:
                        grad_norms.accumulate()
                    opt.step()
                step += 1
                with torch.no_grad():
                    loss_sum += loss.detach() * len(idx)
                    correct += (logits.argmax(1) == yb).sum()
                if show:
                    bar.update(task, advance=1, info=f"loss {float(loss):.4f}")
            bar.remove_task(task)
            row: dict[str, Any] = {
                "epoch": epoch + 1, "step": step, "lr": lr,
                "train_loss": float(loss_sum) / n, "train_accuracy": int(correct) / n,
                "epoch_seconds": time.perf_counter() - te,
            }
            if grad_norms is not None:
                row["grad_norms"] = grad_norms.epoch_means()
                grad_norms.reset()
            if not all(math.isfinite(row[k]) for k in ("train_loss",)):
                raise LenetlabError(f"training diverged at epoch {epoch + 1} (loss is {row['train_loss']})")
            if len(splits.val_x):
                v = evaluate(model, splits.val_x, splits.val_y, tc.eval_batch_size, loss_fn, cl)
                row["val_accuracy"], row["val_loss"] = v["accuracy"], v["loss"]
            if tc.eval_test_every_epoch or epoch + 1 == tc.epochs:
                t = evaluate(model, splits.test_x, splits.test_y, tc.eval_batch_size, loss_fn, cl)
                row["test_accuracy"], row["test_loss"] = t["accuracy"], t["loss"]
                last_eval = t
            stop_lb = False
            if lb is not None:
                d = lb.after_epoch(row["val_accuracy"], len(splits.val_x))
                row["val_lower_bound"] = d.lb
                if d.improved:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if d.restart or d.stop:
                    # restore the best-LB weights; a restart also gets a fresh optimiser (new moments)
                    model.load_state_dict(best_state)
                    row["restored_best"] = True
                if d.restart:
                    opt = opt_factory(params, tc)
                    row["restart"], row["next_lr"] = True, d.lr
                stop_lb = d.stop
            row["wall_seconds"] = time.perf_counter() - t0
            row["unix_time"] = time.time()
            history.append(row)
            if out_dir is not None:
                # checkpoint first: a metrics line always has its checkpoint on disk
                save_checkpoint(out_dir / CHECKPOINT, model, opt,
                                {"epoch": epoch + 1, "step": step, "lb": lb.state() if lb else None},
                                extra=best_state)
                rundir.append_metrics(out_dir, row)
            if log:
                log(_epoch_line(row, tc.epochs))
            if tc.stop_at_accuracy is not None and row.get("test_accuracy", 0.0) >= tc.stop_at_accuracy:
                stopped_early = epoch + 1 < tc.epochs
                break
            if stop_lb:
                stopped_early = True
                break

    if lb is not None and best_state is not None:
        # the LB schedule's result is its best-LB weights, whatever the last epoch did
        model.load_state_dict(best_state)
        last_eval = evaluate(model, splits.test_x, splits.test_y, tc.eval_batch_size, loss_fn, cl)

    if not last_eval:  # resumed a run whose last epoch was already done
        last_eval = evaluate(model, splits.test_x, splits.test_y, tc.eval_batch_size, loss_fn, cl)
    if hardening is not None:
        hardening.remove()   # plain names and float weights: the run loads into the plain model
    if rule is not None:
        rule.remove()
    model = model.to(memory_format=torch.contiguous_format)
    epochs_done = history[-1]["epoch"] if history else start_epoch
    summary = {
        "model": cfg.model.name,
        "params": param_count(model),
        "epochs": epochs_done,
        "test_accuracy": last_eval["accuracy"],
        "test_error_percent": round(100 * (1 - last_eval["accuracy"]), 4),
        "val_accuracy": history[-1].get("val_accuracy") if history else None,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "stopped_early": stopped_early,
        "preset": cfg.preset,
        "dataset": cfg.data.dataset,
        "train_images": n,
        "test_images": len(splits.test_x),
        "seed": tc.seed,
        "resumed_from_epoch": start_epoch if resume else None,
        "environment": environment(),
    }
    if stepper is not None and hasattr(stepper, "finish"):
        # elasticzo-int8: the integer engine's own test accuracy, and model_int8.safetensors beside the float twin
        stepper.finish(out_dir, splits, summary)
    if out_dir is not None:
        rundir.save_model(out_dir, model, cfg)
        rundir.write_summary(out_dir, summary)
    summary["_model"] = model
    return summary


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>2}/{epochs}", f"loss {row['train_loss']:.4f}",
             f"train {100 * row['train_accuracy']:.2f}%"]
    if "val_accuracy" in row:
        parts.append(f"val {100 * row['val_accuracy']:.2f}%")
    if "test_accuracy" in row:
        parts.append(f"test {100 * row['test_accuracy']:.2f}%")
    parts.append(f"{row['epoch_seconds']:.1f}s")
    if "val_lower_bound" in row:
        parts.append(f"LB {100 * row['val_lower_bound']:.2f}%")
    if row.get("restart"):
        parts.append(f"-> restart from best, lr {row['next_lr']:.2e}")
    return "  ".join(parts)


def environment() -> dict[str, Any]:
    from lenetlab import __version__

    return {"lenetlab": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads()}




__all__ = ["fit", "evaluate", "make_loss"]
