"""The ``lenetlab`` command. Subcommands are thin: parse, call the library, print.

Errors the user can fix (:class:`LenetlabError`) print one line and exit 2;
Ctrl-C exits 130 after the last complete epoch's checkpoint is safe on disk.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- train
def _train_overrides(a: argparse.Namespace) -> dict[str, Any]:
    from lenetlab.config import TrainConfig, apply_override, section_overrides

    o: dict[str, Any] = {}
    train = {k: v for k, v in (("epochs", a.epochs), ("seed", a.seed), ("batch_size", a.batch_size),
                               ("lr", a.lr), ("stop_at_accuracy", a.stop_at), ("precision", a.precision))
             if v is not None}
    train.update(section_overrides(a, TrainConfig))   # the training plugins' options (--zo-eps, --rule, ...)
    if train:
        o["train"] = train
    data = {k: v for k, v in (("dataset", a.dataset), ("data_dir", a.data_dir)) if v is not None}
    if data:
        o["data"] = data
    if a.activation is not None:
        o["model"] = {"activation": a.activation}
    for s in a.set or []:
        apply_override(o, s)
    return o


def cmd_train(a: argparse.Namespace) -> int:
    from lenetlab import devices
    from lenetlab.config import load_toml
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    out = Path(a.out)
    overrides = _train_overrides(a)
    if a.resume:
        if overrides or a.config or a.model or a.preset:
            raise LenetlabError("--resume continues the run as configured in its config.json; "
                                "do not pass config options with it")
        cfg = None
    else:
        file_data = load_toml(a.config) if a.config else {}
        cfg = resolve(a.preset, a.model, file_data, overrides)
    from lenetlab.config import RunConfig

    devices.resolve(a.device)   # a device that is not here: one line, before anything is written
    tracking = _loggers(a, out, run_name=out.resolve().name)
    con = _console()
    log = None if a.quiet else (lambda s: con.print(s))
    status = "FAILED"
    try:
        summary = fit(cfg or RunConfig(), out=out, resume=a.resume, force=a.force, log=log, callbacks=tracking,
                      device=a.device, progress=False if a.quiet else None)
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"\ninterrupted; the last finished epoch is saved. Continue with:\n"
              f"  lenetlab train --resume --out {out}", file=sys.stderr)
        return 130
    finally:
        for t in tracking:
            t.close(status)   # a finished run's loggers are closed already
    summary.pop("_model", None)
    con.print(f"[bold]{summary['model']}[/bold]  params {summary['params']:,}  epochs {summary['epochs']}  "
              f"test accuracy [bold]{100 * summary['test_accuracy']:.2f}%[/bold]  "
              f"({summary['wall_seconds']:.1f}s)  -> {out}")
    return 0


def _loggers(a: argparse.Namespace, root: Path, **kw: Any) -> list:
    """The ``--logger`` trackers writing under ``root``; their packages are checked before anything is written."""
    from lenetlab.train import loggers

    names = [n for group in (a.logger or []) for n in group]
    return loggers.make(names, root, **kw) if names else []


# ---------------------------------------------------------------- eval
def cmd_eval(a: argparse.Namespace) -> int:
    import dataclasses

    from lenetlab import devices
    from lenetlab.data import load_splits
    from lenetlab.rundir import load_model
    from lenetlab.train import evaluate, make_loss

    dev = devices.resolve(a.device)
    model, cfg = load_model(a.run_dir)
    model.to(dev)   # evaluate() moves each batch there
    # the full test set unless --limit: a run trained on a subset is still judged on all of it
    data = dataclasses.replace(cfg.data, val_size=0, train_subset=1, test_subset=a.limit,
                               dataset=a.dataset or cfg.data.dataset,
                               data_dir=a.data_dir or cfg.data.data_dir)
    splits = load_splits(data)
    r = evaluate(model, splits.test_x, splits.test_y, 2000, make_loss(model, cfg.train))
    r = {"run": str(a.run_dir), "model": cfg.model.name, "dataset": data.dataset,
         "test_images": len(splits.test_x), "test_accuracy": r["accuracy"], "test_loss": r["loss"]}
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} on {r['dataset']} test ({r['test_images']} images): "
              f"accuracy {100 * r['test_accuracy']:.2f}%  loss {r['test_loss']:.4f}")
    return 0


# ---------------------------------------------------------------- predict
def cmd_predict(a: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from lenetlab import devices
    from lenetlab.data import from_unit
    from lenetlab.data.images import load_gray, to_mnist
    from lenetlab.rundir import load_model

    dev = devices.resolve(a.device)
    model, cfg = load_model(a.run_dir)
    model.to(dev)
    from lenetlab.registry import get

    classes = get("dataset", cfg.data.dataset).classes
    digits = [to_mnist(load_gray(p)) for p in a.images]   # all read before any output
    x = from_unit(torch.from_numpy(np.stack(digits)).unsqueeze(1), cfg.data).to(dev)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1).cpu()
    for path, p in zip(a.images, probs):
        top = torch.topk(p, min(a.top, len(p)))
        alts = ", ".join(f"{classes[i]} {float(v):.3f}" for v, i in zip(top.values, top.indices))
        print(f"{path}: {classes[int(top.indices[0])]}  (top {len(top.values)}: {alts})")
    return 0


# ---------------------------------------------------------------- list / info
def cmd_list(a: argparse.Namespace) -> int:
    from rich.table import Table

    from lenetlab import registry

    plural = {f"{k}s": k for k in registry.kinds()}   # every kind something is registered under
    if a.what is not None and a.what not in plural:
        raise LenetlabError(f"nothing to list as {a.what!r}; choose from: {', '.join(sorted(plural))}")
    kinds = [a.what] if a.what else sorted(plural)
    con = _console()
    for kind in kinds:
        singular = plural[kind]
        table = Table(title=kind, title_justify="left", show_header=True)
        table.add_column("name")
        table.add_column("description")
        for name in registry.names(singular):
            table.add_row(name, _describe(singular, registry.get(singular, name)))
        con.print(table)
    return 0


def _describe(kind: str, obj: Any) -> str:
    if kind == "model":
        from lenetlab.models import create_model, param_count

        return f"{obj.description} [{param_count(create_model(obj.name)):,} params]"
    if kind == "dataset":
        return obj.license
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def cmd_info(a: argparse.Namespace) -> int:
    from rich.table import Table

    from lenetlab.models import create_model, param_count
    from lenetlab.registry import names

    con = _console()
    target = a.target
    if target in names("model") and not Path(target).exists():
        model, summary, cfg = create_model(target), None, None
        title = f"model {target}"
    else:
        from lenetlab.rundir import load_model, read_summary

        model, cfg = load_model(target)
        summary = read_summary(Path(target)) if (Path(target) / "summary.json").exists() else None
        title = f"run {target}"
    con.print(f"[bold]{title}[/bold]")
    if summary:
        for k in ("model", "params", "epochs", "test_accuracy", "wall_seconds", "preset", "dataset"):
            if k in summary:
                con.print(f"  {k:14s} {summary[k]}")
    if cfg:
        con.print(f"  options        {json.dumps(cfg.model.options)}")
        con.print(f"  train          {cfg.train.optimizer} lr {cfg.train.lr} {cfg.train.schedule} "
                  f"batch {cfg.train.batch_size} epochs {cfg.train.epochs} seed {cfg.train.seed}")
    table = Table(show_header=True)
    table.add_column("layer")
    table.add_column("shape")
    table.add_column("params", justify="right")
    for name, p in model.named_parameters():
        table.add_row(name, "x".join(map(str, p.shape)), f"{p.numel():,}")
    table.add_row("[bold]total[/bold]", "", f"[bold]{param_count(model):,}[/bold]")
    con.print(table)
    from lenetlab.models.macs import count_macs

    macs = count_macs(model)
    con.print(f"  MACs/image     {macs.total:,}  (conv/linear/RBF multiply-adds; bias, pooling and activations "
              f"not counted: {sum(macs.other_ops.values()):,} more ops)")
    return 0


# ---------------------------------------------------------------- export / serve
def cmd_export(a: argparse.Namespace) -> int:
    from lenetlab.deploy.export import export, parity
    from lenetlab.progress import progress_bar

    out = Path(a.out) if a.out else Path(a.run_dir) / "export"
    files = export(a.run_dir, a.format, int8=a.int8, out=out)
    for f in files:
        print(f"wrote {f} ({f.stat().st_size:,} bytes)")
    if not a.no_check:
        with progress_bar("parity check images", quiet=a.quiet) as bar:
            r = parity(a.run_dir, int8=a.int8, limit=a.check_images, progress=bar, on_total=bar.set_total)
        print(f"check on {r['images']} test images: NumPy runtime ({r['dtype']}) accuracy "
              f"{100 * r['runtime_accuracy']:.2f}%, PyTorch {100 * r['torch_accuracy']:.2f}%, "
              f"same top-1 on {r['same_top1']}/{r['images']}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from lenetlab.deploy.web import serve

    serve(a.run_dir, host=a.host, port=a.port, int8=a.int8)
    return 0


# ---------------------------------------------------------------- reproduce
def cmd_reproduce(a: argparse.Namespace) -> int:
    from rich.console import Console

    from lenetlab.experiments import reproduce
    from lenetlab.experiments.report import fmt
    from lenetlab.progress import progress_bar

    # wide tables stay readable when the output is piped to a file
    con = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    out = Path(a.out)
    if a.name == "all":
        return _reproduce_all(a, con)
    if a.only:
        raise LenetlabError("--only goes with `reproduce all`")
    if a.jobs is not None:
        raise LenetlabError("--jobs goes with `reproduce all` (one experiment's cells run side by side only on "
                            "--backend ray)")
    if a.address and a.backend != "ray":
        raise LenetlabError("an address goes with the ray backend")
    runner = None
    if a.backend == "ray":     # the experiment here, its cells as Ray tasks
        from lenetlab.experiments.base import RayCells

        runner = RayCells(a.address)
    try:
        with progress_bar(f"{a.name} cells", quiet=a.quiet) as bar:
            r = reproduce(a.name, out, full=a.full, force=a.force, log=None if a.quiet else con.print, tiny=a.tiny,
                          progress=bar, runner=runner)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished cells are kept in {out / 'cells.jsonl'}. Run the same command again "
              "to continue.", file=sys.stderr)
        return 130
    finally:
        if runner is not None:
            runner.close()
    con.print(f"[bold]{r.experiment}[/bold] ({r.mode}, {r.wall_seconds:.0f} s): {r.paper}")
    for name, rows in r.tables.items():
        if rows and len(rows) <= 40:
            from rich.table import Table

            t = Table(title=name, title_justify="left")
            cols = list(rows[0])
            for c in cols:
                t.add_column(c)
            for row in rows:
                t.add_row(*(fmt(row.get(c, "")) for c in cols))
            con.print(t)
    for c in r.claims:
        con.print(f"  claim {c.name}: {_VERDICT_MARKUP[c.supported]} - {c.measured}  (paper: {c.statement})")
    for c in r.timings.claims:
        con.print(f"  claim {c.name} (from clock readings): {_VERDICT_MARKUP[c.supported]} - {c.measured}  "
                  f"(paper: {c.statement})")
    con.print(f"report: {out / 'report.md'} (clock readings: {out / 'timings.md'})")
    return 0


_VERDICT_MARKUP = {True: "[green]supported[/green]", False: "[red]NOT supported[/red]",
                   None: "[yellow]inconclusive[/yellow]"}


def _flushed(con):
    """Print and flush: progress of long runs shows up at once in a log file or CI output."""

    def log(s: str) -> None:
        con.print(s)
        sys.stdout.flush()

    return log


def _cores() -> int:
    """The cores this process may run on (its affinity where the OS tells), 1 to 64."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(64, n))


def _reproduce_all(a: argparse.Namespace, con) -> int:
    from lenetlab.experiments.suite import reproduce_all
    from lenetlab.progress import progress_bar

    out = Path(a.out)
    only = [n.strip() for n in a.only.split(",") if n.strip()] if a.only else None
    jobs = a.jobs or _cores()
    try:
        with progress_bar("cells" if jobs == 1 else "experiments", quiet=a.quiet) as bar:
            outcomes = reproduce_all(out, full=a.full, force=a.force, only=only, tiny=a.tiny,
                                     log=(lambda s: None) if a.quiet else _flushed(con), progress=bar,
                                     jobs=jobs, quiet_workers=a.quiet, backend=a.backend, address=a.address)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished experiments and cells are kept in {out}. Run the same command again "
              "to continue.", file=sys.stderr)
        return 130
    for o in outcomes:
        if o.result is None:
            con.print(f"[bold]{o.name}[/bold]: [red]FAILED[/red] - {o.error}")
            continue
        for c in o.result.claims:
            con.print(f"  {o.name} {c.name}: {_VERDICT_MARKUP[c.supported]} - {c.measured}")
        for c in o.result.timings.claims:
            con.print(f"  {o.name} {c.name} (from clock readings): {_VERDICT_MARKUP[c.supported]} - {c.measured}")
    failed = [o.name for o in outcomes if o.status == "failed"]
    con.print(f"report: {out / 'report.html'} (and report.md; clock readings: timings.html, timings.md)")
    if failed:
        con.print(f"[red]{len(failed)} of {len(outcomes)} experiments failed: {', '.join(failed)}[/red]")
        return 1
    return 0


# ---------------------------------------------------------------- sweep
def cmd_sweep(a: argparse.Namespace) -> int:
    import signal

    from lenetlab import devices
    from lenetlab.sweep import load, run_sweep

    sweep = load(a.file)
    out = Path(a.out) if a.out else Path("runs") / "sweeps" / Path(a.file).stem
    devices.resolve(a.device)
    con = _console()

    def terminated(signum, frame):   # SIGTERM (a scheduler, `kill`): stop like Ctrl-C, keep what finished
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        r = run_sweep(sweep, out, backend=a.backend, workers=a.workers, address=a.address,
                      log=None if a.quiet else _flushed(con), loggers=[n for g in (a.logger or []) for n in g],
                      device=a.device)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished trials are in {out / 'trials.jsonl'}. Run the same command again "
              "to continue.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    best = r["best"]
    con.print(f"{r['total']} trials: {r['ran']} ran, {r['skipped']} were already done, {r['failed']} failed "
              f"-> {r['path']}")
    if best is not None:
        con.print(f"best {sweep.metric}: {fmt_metric(best['metrics'][sweep.metric])}  trial {best['trial']}  "
                  + " ".join(f"{k}={v}" for k, v in best["params"].items()))
    return 1 if r["failed"] else 0


def fmt_metric(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- parser
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; ``command``: a command defined here (train, eval, ...) whose parser is all that is
    needed, so the other modules' commands (and what they import) are left out - ``lenetlab train`` starts
    about 0.1 s sooner."""
    from lenetlab import validate as V  # numeric flags are checked while parsing: one error line, exit 2
    from lenetlab.devices import add_flag as add_device_flag

    p = argparse.ArgumentParser(prog="lenetlab", description="LeNet-5, instrumented.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model into a run directory")
    t.add_argument("--config", help="TOML config file")
    t.add_argument("--model", help="registered model name (lenetlab list models)")
    t.add_argument("--preset", help="recipe: fast | sprint | paper (lenetlab list presets)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=V.seed())
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--activation", help="model activation (lenetlab list activations)")
    t.add_argument("--dataset", help="mnist | fashion_mnist | kmnist")
    t.add_argument("--data-dir", help="folder with dataset IDX files (else $LENETLAB_DATA)")
    t.add_argument("--stop-at", type=float, metavar="ACC", help="stop once test accuracy >= ACC (0..1)")
    t.add_argument("--precision", choices=("fp32", "bf16"),
                   help="bf16: the training forward pass in bfloat16 (autocast; fast on CPUs with native bf16), "
                        "weights and evaluation fp32")
    from lenetlab.config import TrainConfig, add_section_flags

    add_section_flags(t, TrainConfig)   # --<section>-<option> of every training plugin's config section
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. train.lr=0.01")
    t.add_argument("--out", required=True, help="run directory to write")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    _logger_flag(t, "RUN_DIR/tensorboard, RUN_DIR/mlruns")
    add_device_flag(t)
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run's model on the test set")
    e.add_argument("run_dir")
    e.add_argument("--dataset")
    e.add_argument("--data-dir")
    e.add_argument("--limit", type=V.count("--limit"), metavar="N", help="only the first N test images")
    e.add_argument("--json", action="store_true")
    add_device_flag(e)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="classify image files (PNG/PGM/NPY, any size)")
    pr.add_argument("run_dir")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top", type=V.count("--top"), default=3)
    add_device_flag(pr)
    pr.set_defaults(func=cmd_predict)

    li = sub.add_parser("list", help="list registered components")
    li.add_argument("what", nargs="?", help="one kind (models, attacks, exporters, ...); default: all")
    li.set_defaults(func=cmd_list)

    i = sub.add_parser("info", help="describe a run directory or a registered model")
    i.add_argument("target", help="RUN_DIR or model name")
    i.set_defaults(func=cmd_info)

    x = sub.add_parser("export", help="export a run: flat 1-D file, C runtime, web page or ONNX")
    x.add_argument("run_dir")
    x.add_argument("--format", default="flat", help="flat | c | web | onnx")
    x.add_argument("--int8", action="store_true", help="integer-only int8 model (post-training quantisation)")
    x.add_argument("--out", help="output directory (default RUN_DIR/export)")
    x.add_argument("--no-check", action="store_true", help="skip the NumPy-runtime parity check")
    x.add_argument("--check-images", type=V.count("--check-images"), default=None, metavar="N",
                   help="check on the first N test images")
    x.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="serve the in-browser demo page for a run")
    sv.add_argument("run_dir")
    sv.add_argument("--port", type=V.port(), default=8000, help="TCP port (default 8000; 0: any free port)")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sv.add_argument("--int8", action="store_true", help="serve the int8 model")
    sv.set_defaults(func=cmd_serve)

    rp = sub.add_parser("reproduce", help="reproduce a paper's experiment (lenetlab list experiments), or all")
    rp.add_argument("name", help="experiment name, or `all`: every experiment into OUT/<name>/ plus one "
                                 "report.html with a claims table")
    rp.add_argument("--out", required=True, help="output directory (report.md, result.json, figures)")
    rp.add_argument("--full", action="store_true", help="the faithful, long version (default: quick mode)")
    rp.add_argument("--force", action="store_true", help="discard finished cells (and, for all, finished "
                                                         "experiments) and start over")
    rp.add_argument("--only", metavar="A,B", help="with `all`: just these experiments")
    rp.add_argument("--jobs", type=V.count("--jobs", hi=64), default=None, metavar="N",
                    help="with `all`: run N experiments at once, each in its own process (default: the "
                         "machine's cores; 1 runs them in turn); the result files are the same whatever N")
    rp.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local (default) or ray: each experiment's independent cells (seeds x settings) "
                         "run as Ray tasks side by side (with `all`, every experiment is a Ray task too); "
                         "the result files are the same")
    rp.add_argument("--address", help="with --backend ray: the cluster's address (auto, HOST:6379, "
                                      "ray://HEAD:10001; default: a local Ray instance with --jobs CPUs, or all "
                                      "cores for one experiment); "
                                      "--out must then be on a filesystem every node shares")
    rp.add_argument("--tiny", action="store_true", help="tests only: the smallest grid that runs every code "
                                                        "path (meaningless numbers)")
    rp.add_argument("-q", "--quiet", action="store_true")
    rp.set_defaults(func=cmd_reproduce)

    sw = sub.add_parser("sweep", help="grid/random sweep of training runs, resumable, on a process pool or Ray")
    sw.add_argument("file", help="sweep file (TOML; format: python -m pydoc lenetlab.sweep)")
    sw.add_argument("--backend", default="local", help="local (process pool, default) | ray")
    sw.add_argument("--address", help="ray: cluster address (auto, HOST:6379, ray://HEAD:10001); "
                                      "default: a local Ray instance")
    sw.add_argument("--workers", type=V.count("--workers", hi=4096), metavar="N",
                    help="parallel trials (default: CPU count)")
    sw.add_argument("--out", help="output directory (default runs/sweeps/<file name>); holds trials.jsonl")
    _logger_flag(sw, "OUT/tensorboard/<trial>, OUT/mlruns: one run per trial")
    add_device_flag(sw, "training trials' device")
    sw.add_argument("-q", "--quiet", action="store_true")
    sw.set_defaults(func=cmd_sweep)

    # capability packages that own their subcommands: each module defines add_commands(sub)
    import importlib

    if command in sub.choices:
        return p
    from lenetlab.catalogue import COMMANDS

    for mod in COMMANDS:
        importlib.import_module(mod).add_commands(sub)
    return p


def _logger_names(text: str) -> list[str]:
    from lenetlab.train.loggers import parse_names  # lenetlab.train loads torch: only when the flag is given

    return parse_names(text)


def _logger_flag(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument("--logger", action="append", type=_logger_names, metavar="NAME[,NAME]",
                   help=f"experiment tracking: tensorboard | mlflow (repeatable or a comma list; into {where})")


def _version() -> str:
    from lenetlab import __version__

    return f"lenetlab {__version__}"


_FROZE: list[bool] = []


def _prefetch_data(argv: list[str]) -> None:
    """``lenetlab train`` on the bundled MNIST (no other dataset, folder, config file, resume or LENETLAB_DATA
    named): read the files on a thread while torch is imported (:mod:`lenetlab.prefetch`)."""
    if not argv or argv[0] != "train" or os.environ.get("LENETLAB_DATA"):
        return
    if any(a.split("=")[0] in ("--dataset", "--data-dir", "--config", "--resume", "--set") for a in argv[1:]):
        return
    datasets = sys.modules.get("lenetlab.data.datasets")
    if datasets is not None and datasets._ARRAYS:   # this process has read it already (tests, notebooks)
        return
    from lenetlab import prefetch

    prefetch.start(prefetch.bundled_mnist())


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """build_parser() for the command in ``argv``, the first time in a process with the garbage collector off:
    building it imports torch and the components the command needs, hundreds of thousands of long-lived
    objects, over which Python's collections cost about 0.15 s of a command (``lenetlab train``: 415
    collections, 166 ms; 23 and 3 ms with this) while finding nothing to free. They are frozen afterwards
    (never scanned again). Later calls in the same process (tests, notebooks) leave the collector alone."""
    command = argv[0] if argv else None
    if _FROZE or not gc.isenabled():
        return build_parser(command)
    gc.disable()
    try:
        return build_parser(command)
    finally:
        _FROZE.append(True)
        gc.freeze()
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    _prefetch_data(given)
    try:
        # inside: building the parser loads the registry, and a broken outside plugin is one error line
        args = _parser(given).parse_args(given)
        return int(args.func(args) or 0)
    except LenetlabError as e:
        print(f"lenetlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:   # a full disk is one line, not a traceback; atomic writes kept the files before
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {e.filename}" if e.filename else ""
        print(f"lenetlab: error: {(e.strerror or 'no space left on device').lower()}{where}", file=sys.stderr)
        return 1
