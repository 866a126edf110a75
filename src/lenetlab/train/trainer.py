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

import contextlib
import copy
import dataclasses
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lenetlab import devices, rundir
from lenetlab.config import RunConfig, TrainConfig, to_dict
from lenetlab.data import Splits, load_splits
from lenetlab.errors import LenetlabError
from lenetlab.models import convblocks, create_model, param_count
from lenetlab.progress import progress_bar
from lenetlab.registry import get
from lenetlab.rundir import CLOCK_KEYS, clock_apart, off_clock
from lenetlab.train import shards
from lenetlab.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from lenetlab.train.diagnostics import GradNorms
from lenetlab.train.plugins import TrainContext, TrainerPlugin, active_plugins

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


PRECISIONS = ("fp32", "bf16")


def _check_precision(tc: TrainConfig, plugins: Sequence[Any]) -> bool:
    """Whether the training forward pass runs under bf16 autocast (``train.precision``); refuses bad values and
    plugins that replace the training step (their own arithmetic: ZO, local rules, the INT8 engine)."""
    if tc.precision not in PRECISIONS:
        raise LenetlabError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {tc.precision!r}")
    if tc.precision == "fp32":
        return False
    stepping = [p.name for p in plugins if p.overrides_step()]
    if stepping:
        raise LenetlabError(f"train.precision=bf16 autocasts the backprop step; {', '.join(stepping)} replaces "
                            "that step, so use precision fp32 with it")
    return True


def _fmt(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000,
             loss_fn: LossFn | None = None, channels_last: bool = False) -> dict[str, float]:
    """Accuracy (and mean loss if ``loss_fn``) of ``model`` on (x, y), in eval mode; each batch is moved to
    the model's device."""
    was_training = model.training
    model.eval()
    dev = devices.of(model)
    correct, loss_sum = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(_fmt(x[i:i + batch_size].to(dev), channels_last))
        yb = y[i:i + batch_size].to(dev)
        correct += int((logits.argmax(1) == yb).sum())
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, yb)) * len(yb)
    model.train(was_training)
    n = max(1, len(x))
    out = {"accuracy": correct / n}
    if loss_fn is not None:
        out["loss"] = loss_sum / n
    return out


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def fit(cfg: RunConfig, out: str | Path | None = None, resume: bool = False, force: bool = False,
        splits: Splits | None = None, log: Callable[[str], None] | None = print,
        progress: bool | None = None, model: nn.Module | None = None,
        plugins: Sequence[TrainerPlugin] = (), callbacks: Sequence[Any] = (),
        device: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Train per ``cfg``; write a run directory to ``out`` (if given); return the summary.

    ``device``: ``cpu`` (the default here; ``lenetlab train`` and :func:`lenetlab.fit` default to ``auto``),
    ``auto``, ``cuda[:N]``, ``mps`` or a ``torch.device`` (:mod:`lenetlab.devices`). The model and the data
    go there; shuffling and initialisation are drawn on the CPU as before, so CPU runs do not change. A
    plugin that runs on the CPU only (ElasticZO-INT8's integer engine) makes ``auto`` the CPU and refuses
    any other device. The returned ``_model`` stays on the device.

    Everything that can fail on bad input (config, data, run dir) is checked
    before anything is written. What a capability adds to training (hooks, a
    different step, restarts) comes from the trainer plugins
    (:mod:`lenetlab.train.plugins`) the config activates, plus ``plugins``:
    instances a caller adds (e.g. an experiment's learning-curve probe; their
    state is not in the config, so a resumed run needs them passed again).

    ``callbacks`` only watch: each is a callable ``cb(metrics)`` or an object
    with ``on_epoch_end(metrics)`` (and optionally ``on_train_begin(info)``,
    called once the run directory is set up, with ``info`` = ``{"config": the
    resolved config as a dict, "out", "start_epoch", "resume"}``, and
    ``on_train_end(summary)``); ``metrics`` is a copy of the epoch's
    metrics.jsonl row. They never change training and are not saved in
    checkpoints (:func:`check_callbacks`). The experiment trackers in
    :mod:`lenetlab.train.loggers` are such callbacks.
    """
    t0 = time.perf_counter()
    callbacks = check_callbacks(callbacks)
    dev = devices.resolve(device, what="device")
    tc = cfg.train
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        rundir.prepare(out_dir, resume, force)
        if resume:
            cfg = rundir.load_config(out_dir)
            tc = cfg.train
    if not (resume and out_dir is not None):
        # own data (npz:/folder:): the model's channels, input size and classes and the normalisation come
        # from the data, and are saved in config.json (a resumed run has them already); the registered
        # datasets are left as configured
        from lenetlab.data.own import adapt_config

        cfg = adapt_config(cfg)
    if tc.epochs < 1 or tc.batch_size < 1:
        raise LenetlabError("train.epochs and train.batch_size must be >= 1")
    schedule_factory = get("schedule", tc.schedule)
    opt_factory = get("optimizer", tc.optimizer)
    plugins = active_plugins(tc, extra=plugins)
    bf16 = _check_precision(tc, plugins)
    cpu_only = [p.cpu_only() for p in plugins if p.cpu_only()]
    if dev.type != "cpu" and cpu_only:
        if device not in (None, "auto"):
            raise LenetlabError(f"{'; '.join(cpu_only)} runs on the CPU only; use device cpu or auto, not {device}")
        dev = torch.device("cpu")
    splits = splits or load_splits(cfg.data)
    if len(splits.train_x) == 0:
        raise LenetlabError("no training images (check data.train_subset / data.val_size)")

    torch.manual_seed(tc.seed)
    if model is None:
        model = create_model(cfg.model.name, **cfg.model.options)
    if not resume and hasattr(model, "prepare_from_data"):
        # models with a data-fitted part (pca_logreg's PCA) fit it before gradient training
        model.prepare_from_data(splits.train_x, seed=tc.seed)
    if dev.type != "cpu":   # everything was made on the CPU (same draws as a CPU run); now it moves
        model = model.to(dev)
        splits = dataclasses.replace(splits, **{k: getattr(splits, k).to(dev) for k in
                                                ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")})
    loss_fn = make_loss(model, tc)
    shards.check(tc.shards, model, [p.name for p in plugins], dev)
    cl = tc.channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)
    n = len(splits.train_x)
    per_epoch = math.ceil(n / tc.batch_size)
    total = per_epoch * tc.epochs
    ctx = TrainContext(cfg, model, loss_fn, splits, total, per_epoch, schedule_factory(tc, total, per_epoch),
                       opt_factory)
    ctx.plugins = plugins
    extra: list[torch.Tensor] = []
    for p in plugins:
        extra += list(p.setup(ctx) or [])   # e.g. hooks on the model; may bring extra trainable parameters
    ctx.params = list(model.parameters()) + extra
    ctx.new_optimizer()
    stepper = next((p for p in plugins if p.overrides_step()), None)
    if tc.native_convs:
        convblocks.check(model, [p.name for p in plugins], dev)
        model.native_convs = True

    start_epoch, step, last_row = 0, 0, None
    if out_dir is not None:
        if resume and not (out_dir / CHECKPOINT).exists():
            # killed before its first epoch finished: nothing to keep, start over
            rundir.truncate_metrics(out_dir, 0)
            if log:
                log(f"resuming {out_dir}: no finished epoch yet, starting from epoch 1")
        elif resume:
            state = load_checkpoint(out_dir / CHECKPOINT, model, ctx.opt)
            start_epoch, step, last_row = state["epoch"], state["step"], state.get("metrics")
            for p in plugins:
                p.load_state_dict(state["plugins"].get(p.name, {}))
            rundir.truncate_metrics(out_dir, start_epoch, last_row)
            if log:
                log(f"resuming {out_dir} after epoch {start_epoch}/{tc.epochs}")
        else:
            if force:
                rundir.clear(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            rundir.save_config(out_dir, cfg)

    begin = {"config": to_dict(cfg), "out": None if out_dir is None else str(out_dir), "start_epoch": start_epoch,
             "resume": bool(resume)}
    for cb in callbacks:
        if callable(getattr(cb, "on_train_begin", None)):
            cb.on_train_begin(copy.deepcopy(begin))

    history: list[dict[str, Any]] = [last_row] if last_row else []   # resumed after the last epoch: its line
    last_eval: dict[str, float] = {}
    stopped_early = False
    grad_norms = GradNorms(model) if tc.grad_norms else None
    sharded = shards.ShardedStep(tc.shards, ctx.params) if tc.shards > 1 else None
    model.train()
    # the batch bar: on stderr, only when it is a terminal (lenetlab.progress); progress=False: never
    with progress_bar("training", quiet=progress is False) as bar, sharded or contextlib.nullcontext():
        if sharded is not None:
            sharded.lend(ctx.opt)
        for epoch in range(start_epoch, tc.epochs):
            bar.start(f"epoch {epoch + 1}/{tc.epochs}", total=per_epoch)
            te = time.perf_counter()
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), dtype=torch.long, device=dev)
            for idx in _batches(n, tc.batch_size, tc.seed, epoch):
                idx = idx.to(dev)   # the permutation is drawn on the CPU whatever the device
                xb = _fmt(splits.train_x[idx], cl)
                yb = splits.train_y[idx]
                lr = ctx.schedule(step)
                for group in ctx.opt.param_groups:
                    group["lr"] = lr
                for p in plugins:
                    p.before_step(step, ctx)
                if stepper is not None:
                    logits, loss = stepper.step(xb, yb, lr, step, ctx)
                elif sharded is not None:
                    logits, loss = sharded(model, xb, yb, loss_fn, bf16)
                    if grad_norms is not None:
                        grad_norms.accumulate()
                    ctx.opt.step()
                else:
                    opt = ctx.opt
                    if bf16:
                        with torch.autocast(dev.type, dtype=torch.bfloat16):
                            logits = model(xb)
                        logits = logits.float()
                    else:
                        logits = model(xb)
                    loss = loss_fn(logits, yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_norms is not None:
                        grad_norms.accumulate()
                    opt.step()
                step += 1
                for p in plugins:
                    p.after_step(step, ctx)
                with torch.no_grad():
                    loss_sum += loss.detach() * len(idx)
                    correct += (logits.argmax(1) == yb).sum()
                if bar.enabled:   # float(loss) waits for the device: only for the bar
                    bar.info(f"loss {float(loss.detach()):.4f}")
                    bar()
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
            # evaluation with the machine's torch threads (the shards' threads run one each)
            with sharded.released() if sharded is not None else contextlib.nullcontext():
                if len(splits.val_x):
                    v = evaluate(model, splits.val_x, splits.val_y, tc.eval_batch_size, loss_fn, cl)
                    row["val_accuracy"], row["val_loss"] = v["accuracy"], v["loss"]
                if tc.eval_test_every_epoch or epoch + 1 == tc.epochs:
                    t = evaluate(model, splits.test_x, splits.test_y, tc.eval_batch_size, loss_fn, cl)
                    row["test_accuracy"], row["test_loss"] = t["accuracy"], t["loss"]
                    last_eval = t
            stop = _after_epoch(plugins, row, ctx)
            row["wall_seconds"] = time.perf_counter() - t0
            row["unix_time"] = time.time()
            history.append(row)
            if out_dir is not None:
                # checkpoint first: a metrics line always has its checkpoint on disk; the checkpoint carries
                # its line, put back on resume if a kill lost it
                kept, clock = off_clock(row)
                save_checkpoint(out_dir / CHECKPOINT, model, ctx.opt, {"epoch": epoch + 1, "step": step,
                                                                       "metrics": kept},
                                {p.name: p.state_dict() for p in plugins})
                rundir.append_metrics(out_dir, kept)
                if clock:
                    rundir.append_timings(out_dir, {"epoch": row["epoch"], **clock})
            if log:
                log(_epoch_line(row, tc.epochs, [p.epoch_note(row) for p in plugins]))
            for cb in callbacks:
                _epoch_end(cb, copy.deepcopy(row))
            if tc.stop_at_accuracy is not None and row.get("test_accuracy", 0.0) >= tc.stop_at_accuracy:
                stopped_early = epoch + 1 < tc.epochs
                break
            if stop:
                stopped_early = True
                break

    if any([p.end(ctx) for p in plugins]):   # a plugin chose the final weights (e.g. the best ones kept)
        last_eval = evaluate(model, splits.test_x, splits.test_y, tc.eval_batch_size, loss_fn, cl)
    if not last_eval:  # resumed a run whose last epoch was already done
        last_eval = evaluate(model, splits.test_x, splits.test_y, tc.eval_batch_size, loss_fn, cl)
    if tc.native_convs:
        model.native_convs = False    # torch's layers again for whoever trains this model next
    for p in reversed(plugins):
        p.teardown(ctx)   # hooks off: plain names and float weights, the run loads into the plain model
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
        "environment": environment(dev),
    }
    for p in plugins:
        p.finish(ctx, out_dir, summary)
    if out_dir is not None:
        rundir.save_model(out_dir, model, cfg)
        rundir.write_summary(out_dir, summary)
    summary["_model"] = model
    for cb in callbacks:
        if callable(getattr(cb, "on_train_end", None)):
            cb.on_train_end(dict(summary))
    return summary


def check_callbacks(callbacks: Sequence[Any]) -> list[Any]:
    """The ``fit`` callbacks as a list; anything that is neither callable nor has ``on_epoch_end`` is refused."""
    if callable(callbacks) or hasattr(callbacks, "on_epoch_end"):
        callbacks = [callbacks]     # one callback passed on its own
    try:
        out = list(callbacks or ())
    except TypeError:
        raise LenetlabError(f"callbacks must be a list of callbacks, got {type(callbacks).__name__}") from None
    for cb in out:
        if not (callable(getattr(cb, "on_epoch_end", None)) or callable(cb)):
            raise LenetlabError(f"a fit callback must be callable or have an on_epoch_end(metrics) method, "
                                f"got {type(cb).__name__}")
    return out


def _epoch_end(cb: Any, row: dict[str, Any]) -> None:
    hook = getattr(cb, "on_epoch_end", None)
    (hook if callable(hook) else cb)(row)


def _after_epoch(plugins: list[TrainerPlugin], row: dict[str, Any], ctx: TrainContext) -> bool:
    """Run every plugin's after_epoch and carry out what they ask; True to stop training."""
    stop = False
    for p in plugins:
        action = p.after_epoch(row, ctx)
        if action is None:
            continue
        if action.restore is not None:
            ctx.model.load_state_dict(action.restore)
            for q in plugins:
                q.weights_changed(ctx)
        if action.new_optimizer:
            ctx.new_optimizer()
        stop = stop or action.stop
    return stop


def _epoch_line(row: dict[str, Any], epochs: int, notes: list[str] = ()) -> str:
    parts = [f"epoch {row['epoch']:>2}/{epochs}", f"loss {row['train_loss']:.4f}",
             f"train {100 * row['train_accuracy']:.2f}%"]
    if "val_accuracy" in row:
        parts.append(f"val {100 * row['val_accuracy']:.2f}%")
    if "test_accuracy" in row:
        parts.append(f"test {100 * row['test_accuracy']:.2f}%")
    if "epoch_seconds" in row:
        parts.append(f"{row['epoch_seconds']:.1f}s")
    parts += [n for n in notes if n]
    return "  ".join(parts)


def environment(device: torch.device | None = None) -> dict[str, Any]:
    from lenetlab import __version__

    env = {"lenetlab": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
           "device": str(device or "cpu")}
    if device is not None and device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env




__all__ = ["CLOCK_KEYS", "clock_apart", "fit", "evaluate", "make_loss"]
