"""``lenetlab cascade RUN_DIR... --ladder 7,14,28 --threshold 0.9`` (Rohlfs 2022/23, docs/papers/cascade.md).

For each run: its accuracy at full resolution and in a resolution cascade over
the ladder (data used relative to 28x28). With two or more runs, also the model
cascade (cheapest MACs first) and the "most confident model" ensemble. Both
rules (true coarse-to-fine and the paper's) are shown unless ``--rule`` picks one.
Everything is measured on the test set of the runs' dataset.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from lenetlab.errors import LenetlabError


def add_commands(sub: argparse._SubParsersAction) -> None:
    from lenetlab import validate as V

    c = sub.add_parser("cascade", help="resolution and model cascades over trained runs (Rohlfs 2022/23)")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--ladder", default="7,14,28", help="resolutions read coarse to fine (default 7,14,28)")
    c.add_argument("--threshold", type=V.real("--threshold", lo=0.0), default=0.9,
                   help="read the next level while max softmax < this; 0 = first level only, >1 = all levels")
    c.add_argument("--rule", choices=("both", "coarse_to_fine", "paper"), default="both")
    c.add_argument("--dataset", help="test set to use (default: the runs' dataset)")
    c.add_argument("--data-dir", help="folder with dataset IDX files")
    c.add_argument("--limit", type=V.count("--limit"), metavar="N", help="only the first N test images")
    c.add_argument("--json", action="store_true", help="print the rows as JSON")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_cascade)


def cmd_cascade(a: argparse.Namespace) -> int:
    from lenetlab.cascade.core import check_threshold
    from lenetlab.cascade.resolution import parse_ladder
    from lenetlab.progress import progress_bar

    threshold = check_threshold(a.threshold)     # check every argument before any model is loaded
    ladder = parse_ladder(a.ladder)
    if a.limit is not None and a.limit <= 0:
        raise LenetlabError(f"--limit must be positive, got {a.limit}")
    with progress_bar("cascade passes over the test set", total=passes(len(a.run_dirs), ladder),
                      quiet=a.quiet) as bar:
        rows, notes = cascade_rows(a.run_dirs, ladder, threshold, a.rule, a.dataset, a.data_dir, a.limit,
                                   progress=bar)
    if a.json:
        print(json.dumps({"threshold": threshold, "ladder": list(ladder), "rows": rows, "notes": notes}))
        return 0
    _print(rows, notes, ladder, threshold)
    return 0


def passes(runs: int, ladder: tuple[int, ...]) -> int:
    """The passes over the test set :func:`cascade_rows` makes: each run at full resolution and at each level."""
    return runs * (1 + len(ladder))


def cascade_rows(run_dirs: list[str], ladder: tuple[int, ...], threshold: float, rule: str = "both",
                 dataset: str | None = None, data_dir: str | None = None, limit: int | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The table's rows and notes; ``progress(n)`` as n more passes of a model over the test set are done (the
    calls add up to :func:`passes`)."""
    import torch

    from lenetlab.cascade.core import RULES, run_cascade
    from lenetlab.cascade.model_cascade import member_from_run, member_probs, most_confident_ensemble, order_by_cost
    from lenetlab.cascade.resolution import data_costs, resolution_probs
    from lenetlab.data.datasets import load_raw
    from lenetlab.rundir import load_config, require_run

    cfgs = [load_config(require_run(d)) for d in run_dirs]     # every RUN_DIR checked before any work
    names = {c.data.dataset for c in cfgs}
    if dataset is None and len(names) > 1:
        raise LenetlabError(f"the runs were trained on different datasets ({', '.join(sorted(names))}); "
                            "pass --dataset")
    dataset = dataset or cfgs[0].data.dataset
    _, _, x, y = load_raw(dataset, data_dir or cfgs[0].data.data_dir)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if ladder[-1] > x.shape[-1]:
        raise LenetlabError(f"ladder size {ladder[-1]} exceeds the {x.shape[-1]}x{x.shape[-1]} images")
    labels = torch.from_numpy(y.astype("int64"))
    members = [member_from_run(d) for d in run_dirs]
    rules = RULES if rule == "both" else (rule,)
    costs = data_costs(ladder, x.shape[-1])
    rows: list[dict[str, Any]] = []
    notes = [f"{dataset} test set, {len(x)} images; data used is relative to one {x.shape[-1]}x{x.shape[-1]} "
             f"image (sum of s^2 over the levels read); MACs per image by lenetlab.models.macs"]
    full = member_probs(members, x)
    if progress:
        progress(len(members))
    for m, cfg, p in zip(members, cfgs, full):
        acc = float((p.argmax(1) == labels).double().mean())
        rows.append(_row(m.name, "full resolution", "-", acc, 1.0, m.macs, None))
        probs = resolution_probs(m.model, x, m.data, ladder)
        if progress:
            progress(len(ladder))
        for r in rules:
            out = run_cascade(probs, costs, threshold, r)
            levels_read = float((out.stop_level + 1).double().mean())
            rows.append(_row(m.name, "resolution " + ",".join(map(str, ladder)), r, out.accuracy(labels),
                             out.mean_cost(), levels_read * m.macs, out.level_fractions(len(ladder))))
        if cfg.train.label_smoothing > 0:
            notes.append(f"{m.name} was trained with label smoothing {cfg.train.label_smoothing}: its "
                         f"confidences stay below ~{1 - cfg.train.label_smoothing * 0.9:.2f}, so high thresholds "
                         "read every level")
    if len(members) > 1:
        order = order_by_cost(members)
        probs = torch.stack([full[members.index(m)] for m in order])
        chain = " -> ".join(m.name for m in order)
        for r in rules:
            out = run_cascade(probs, [m.macs for m in order], threshold, r)
            rows.append(_row(chain, "model cascade", r, out.accuracy(labels), 1.0, out.mean_cost(),
                             out.level_fractions(len(order))))
        pred, _ = most_confident_ensemble(order, x, probs=probs)
        rows.append(_row("all runs", "most confident model", "-", float((pred == labels).double().mean()), 1.0,
                         sum(m.macs for m in order), None))
    return rows, notes


def _row(name: str, method: str, rule: str, acc: float, data: float, macs: float,
         stops: list[float] | None) -> dict[str, Any]:
    return {"model": name, "method": method, "rule": rule, "accuracy": acc, "data_used": data,
            "macs_per_image": macs, "stop_fractions": stops}


def _print(rows: list[dict[str, Any]], notes: list[str], ladder: tuple[int, ...], threshold: float) -> None:
    head = ("model", "method", "rule", "accuracy", "data used", "MACs/image", "stopped at level")
    body = [(r["model"], r["method"], r["rule"], f"{100 * r['accuracy']:.2f}%", f"{100 * r['data_used']:.1f}%",
             f"{r['macs_per_image']:,.0f}",
             " / ".join(f"{100 * f:.1f}%" for f in r["stop_fractions"]) if r["stop_fractions"] else "")
            for r in rows]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    right = {3, 4, 5}

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))

    print(f"cascade: threshold {threshold:g}, ladder {','.join(map(str, ladder))}")
    print(fmt(head).rstrip())
    for line in body:
        print(fmt(line).rstrip())
    for n in notes:
        print(f"note: {n}")
