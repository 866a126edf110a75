"""``lenetlab plot RUN... [--out FILE]``: training curves of run directories, drawn to one PNG.

Each RUN is a run directory (``lenetlab train``, ``lenetlab.fit``): its
``metrics.jsonl`` gives, per epoch, the training loss (left panel; the test
and validation loss dashed where logged) and the train / validation / test
accuracy (right panel). Several runs are overlaid, one colour per run, with a
legend naming each run by its folder. The default ``--out`` is
``RUN/curves.png`` for one run and ``curves.png`` in the current folder for
several.

A ``lenetlab reproduce`` output directory (it has ``result.json``) is not
re-drawn: each experiment draws its figures from its own in-memory results,
and result.json holds their tables, not what the plots need. For such a
directory the command lists its figures (and says which are missing; re-run
``lenetlab reproduce`` to redraw them) and plots the curves of any run
directories inside it.

Drawn with matplotlib's Agg backend (no display needed). A path that does not
exist, or a directory that is neither a run (no metrics.jsonl) nor a
reproduction, is one error line and exit 2; nothing is written.

Example::

    lenetlab plot runs/a runs/b --out compare.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError

METRICS, RESULT = "metrics.jsonl", "result.json"
ACCURACIES = (("train_accuracy", "train", "-o"), ("val_accuracy", "val", "--s"), ("test_accuracy", "test", ":^"))
LOSSES = (("train_loss", "train", "-o"), ("val_loss", "val", "--s"), ("test_loss", "test", ":^"))
MAX_RUNS = 50


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw the training curves of runs to a PNG (or list a reproduction's figures)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (with metrics.jsonl), or a "
                                                          "`lenetlab reproduce` output directory")
    p.add_argument("--out", metavar="FILE", help="PNG to write (default RUN/curves.png for one run, else "
                                                 "./curves.png)")
    p.set_defaults(func=cmd_plot)


# ------------------------------------------------------------------ reading
def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The epoch rows of ``run/metrics.jsonl`` (a line cut short by a kill is skipped)."""
    path = run / METRICS
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LenetlabError(f"{path}: cannot read ({e})") from None
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
    if not rows:
        raise LenetlabError(f"{path}: no epoch has finished yet (no metrics to plot)")
    return rows


def find_runs(root: Path) -> list[Path]:
    """Run directories (with metrics.jsonl) at or below ``root``, sorted."""
    return sorted({p.parent for p in root.rglob(METRICS) if p.is_file()})


def _check(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """(run directories, reproduction directories) named on the command line; anything else is an error."""
    runs, reproductions = [], []
    for text in paths:
        p = Path(text)
        if not p.exists():
            raise LenetlabError(f"{p}: no such run directory")
        if not p.is_dir():
            raise LenetlabError(f"{p}: not a directory (give a run directory)")
        if (p / METRICS).is_file():
            runs.append(p)
        elif (p / RESULT).is_file():
            reproductions.append(p)
        else:
            raise LenetlabError(f"{p}: not a run directory (no {METRICS}) nor a reproduction (no {RESULT})")
    return runs, reproductions


# ------------------------------------------------------------------ drawing
def _label(run: Path, runs: list[Path]) -> str:
    """The run's folder name, or enough of its path to tell runs with the same name apart."""
    names = [r.name for r in runs]
    if names.count(run.name) == 1:
        return run.name
    return str(run)


def plot_curves(runs: list[Path], out: str | Path) -> Path:
    """Draw the loss and accuracy curves of ``runs`` into the PNG ``out``; returns its path."""
    if not runs:
        raise LenetlabError("no runs to plot")
    if len(runs) > MAX_RUNS:
        raise LenetlabError(f"{len(runs)} runs: plot at most {MAX_RUNS} at once")
    data = [(r, read_metrics(r)) for r in runs]    # every run read before anything is drawn or written
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise LenetlabError(f"{out}: --out must name a .png file")
    if not out.parent.is_dir():
        raise LenetlabError(f"{out.parent}: no such folder for --out")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lenetlab.fileio import atomic_write_bytes

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, rows) in enumerate(data):
        colour = colours[i % len(colours)]
        name = _label(run, runs)
        for ax, series in ((ax_loss, LOSSES), (ax_acc, ACCURACIES)):
            for key, what, style in series:
                pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ys = [100 * y for y in ys] if ax is ax_acc else ys
                ax.plot(xs, ys, style if len(xs) < 30 else style[:-1], color=colour, markersize=4,
                        label=f"{name} {what}")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    last = max(r["epoch"] for _, rows in data for r in rows)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last + 0.5)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


def figures_of(reproduction: Path) -> list[tuple[str, bool]]:
    """(figure path relative to the directory, whether it exists) for each figure in its result.json."""
    path = reproduction / RESULT
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LenetlabError(f"{path}: not valid JSON ({e})") from None
    figures = result.get("figures", []) if isinstance(result, dict) else None
    if not isinstance(figures, list) or not all(isinstance(f, str) for f in figures):
        raise LenetlabError(f"{path}: 'figures' must be a list of file names")
    try:   # plots of clock readings (a latency plot) are listed in timings.json
        clock = json.loads((reproduction / "timings.json").read_text()).get("figures", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        clock = []
    figures += [f for f in clock if isinstance(f, str) and f not in figures] if isinstance(clock, list) else []
    return [(f, (reproduction / f).is_file()) for f in figures]


def cmd_plot(a: argparse.Namespace) -> int:
    runs, reproductions = _check(a.runs)
    listings = [(r, figures_of(r)) for r in reproductions]
    for r in reproductions:
        runs += [p for p in find_runs(r) if p not in runs]
    for r, figures in listings:
        print(f"{r}: {len(figures)} figure(s) drawn by `lenetlab reproduce` (re-run it to redraw them)")
        for f, present in figures:
            print(f"  {r / f}" + ("" if present else "  (missing)"))
    if not runs:
        if reproductions:
            print("no run directories (metrics.jsonl) inside: no curves to draw")
        return 0
    if a.out:
        out = Path(a.out)
    elif len(runs) == 1 and not reproductions:
        out = runs[0] / "curves.png"
    elif len(reproductions) == 1 and not a.runs[1:]:
        out = reproductions[0] / "curves.png"
    else:
        out = Path("curves.png")
    path = plot_curves(runs, out)
    print(f"wrote {path} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
    return 0
