"""``lenetlab reproduce abs``: the absolute-value activation study (Berngardt 2023, docs/papers/abs.md).

Grid: activations {tanh, relu, selu, abs} x LeNet-5 widths (1.0 = the standard
61,706-parameter network, and slimmer LeNet-like variants with every hidden
width scaled down) x seeds x schedules {lb-restart (Berngardt's modified Adam),
plain (Adam at a constant rate, same epoch budget)}. Every cell is one
training run, scored image by image on the MNIST test set.

**Same weight selection for both schedules.** Both schedules keep the weights
with the best validation lower bound LB = p - k sqrt(p(1-p)/N) (for p > 0.5 the
best validation accuracy): lb-restart does by construction, and plain runs the
same ``lb-restart`` trainer plugin with a patience longer than the run, so it
never restarts (constant lr, one Adam) but ends on the same kind of weights.
The first version scored plain on its last-epoch weights, which mixed weight
selection into "restarts help".

Gradient study: the deep LeNet-like family (``lenet_deep``, Glorot init, no
normalisation) at depths 4..20, per-layer gradient norms of the cross-entropy
loss at initialisation on real MNIST batches, for several initialisation seeds;
the attenuation is the ratio of the first layer's gradient norm to the last's.

Claims (:func:`claims`, from the cells; rules in docs/papers/abs.md):

- ``abs_beats_others``: width 1, lb-restart: abs minus the strongest other
  activation (chosen on validation accuracy), paired bootstrap over seeds and
  test images, above 0;
- ``slim_abs``: the best slimmer abs model (chosen on validation) minus the
  strongest standard-width non-abs model, above 0 (higher accuracy with fewer
  parameters);
- ``abs_gradients_stable``: per initialisation seed, the largest
  |log10(first/last gradient-norm ratio)| of abs over all depths; its t
  interval over seeds below 1 (within 10x at every depth);
- ``lb_restart_helps``: lb-restart minus plain (same weight selection),
  averaged over the activations and the widths where both ran, above 0.

Quick mode (default) trains on 6,000 images (2,000 validation images) for at most 5 epochs, 3 seeds, widths
1 and 0.5 (plain only at width 1); ``--full`` uses all 55k training images,
30 epochs, 5 seeds, four widths, both schedules everywhere.

Example::

    lenetlab reproduce abs --out runs/abs
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from lenetlab.config import DataConfig, LBConfig, ModelConfig, RunConfig, TrainConfig
from lenetlab.experiments import stats
from lenetlab.experiments.base import Claim, Context, Experiment, Result, Timings, timing
from lenetlab.fileio import save_figure
from lenetlab.registry import register

ACTIVATIONS = ("tanh", "relu", "selu", "abs")
SCHEDULES = ("lb-restart", "plain")
STANDARD_WIDTH = 1.0
LB = {"k": 2.0, "patience": 2, "lr_divisor": 3.0, "min_lr": 1e-5}
LR = 1e-3


@dataclass(frozen=True)
class Settings:
    """What one mode runs."""

    widths: list[float]            # LeNet-5 width multipliers (1.0 = the standard network)
    plain_widths: list[float]      # widths where the plain schedule also runs (lb_restart_helps)
    seeds: list[int]               # training seeds of every cell
    epochs: int                    # epoch budget (lb-restart may stop earlier)
    train_subset: int | None       # training images (None: all 55k left after the validation split)
    val_size: int                  # validation images (LB and every model choice)
    test_subset: int | None        # test images (None: all 10k)
    depths: list[int]              # lenet_deep depths of the gradient study
    grad_seeds: list[int]          # initialisation seeds of the gradient study
    grad_batch: int                # MNIST images per gradient measurement


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:   # contract tests only: every code path, seconds of work, meaningless numbers
        s = Settings([1.0, 0.5], [1.0], [0], 2, 500, 500, 500, [4, 6], [0, 1, 2], 16)
    elif full:
        s = Settings([1.0, 0.75, 0.5, 0.35], [1.0, 0.75, 0.5, 0.35], [0, 1, 2, 3, 4], 30, None, 5000, None,
                     [4, 8, 12, 16, 20], [0, 1, 2, 3, 4], 256)
    else:
        s = Settings([1.0, 0.5], [1.0], [0, 1, 2], 5, 6000, 2000, None, [4, 8, 12, 16, 20], [0, 1, 2, 3, 4], 128)
    return dataclasses.asdict(s)


def run_config(act: str, width: float, schedule: str, seed: int, s: Settings) -> RunConfig:
    """One cell's run. Both schedules run the ``lb-restart`` plugin, so both keep their best-LB weights; plain's
    patience outlasts the run, so it never restarts: constant lr, one Adam."""
    data = DataConfig(val_size=s.val_size, train_subset=s.train_subset, test_subset=s.test_subset)
    patience = LB["patience"] if schedule == "lb-restart" else s.epochs + 1
    train = TrainConfig(epochs=s.epochs, batch_size=128, optimizer="adam", lr=LR, seed=seed, schedule="lb-restart",
                        lb=LBConfig(k=LB["k"], patience=patience, lr_divisor=LB["lr_divisor"], min_lr=LB["min_lr"]),
                        eval_test_every_epoch=False, grad_norms=False)
    return RunConfig(model=ModelConfig("lenet5", {"activation": act, "width": width}), data=data, train=train)


@torch.no_grad()
def correct_per_image(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> list[int]:
    """1 where ``model`` classifies the image correctly, else 0 (eval mode)."""
    model.eval()
    hits = [model(x[i:i + batch]).argmax(1) == y[i:i + batch] for i in range(0, len(x), batch)]
    return torch.cat(hits).int().tolist()


def gradient_norms(act: str, depth: int, seed: int, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per-layer gradient norms (input to output) of a fresh ``lenet_deep`` on one batch."""
    from lenetlab.models import create_model
    from lenetlab.train.diagnostics import GradNorms

    torch.manual_seed(seed)
    model = create_model("lenet_deep", depth=depth, activation=act)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    gn = GradNorms(model)
    norms = dict(zip(gn.layers, gn.step_norms().tolist()))
    return [norms[name] for name in model.weight_layers()]


def _train_cell(w: int, a: str, sch: str, seed: int, s: Settings) -> dict[str, Any]:
    """One model of the grid (a cell; module level, so a runner such as Ray can take it)."""
    from lenetlab.data import load_splits
    from lenetlab.train import evaluate, fit

    cfg = run_config(a, w, sch, seed, s)
    splits = load_splits(cfg.data)
    # fit scores its final weights on the test set, and again after restoring the best ones: give it one test
    # image and score every test image once here, image by image
    r = fit(cfg, splits=dataclasses.replace(splits, test_x=splits.test_x[:1], test_y=splits.test_y[:1]),
            log=None, progress=False)
    model = r["_model"]
    return {"correct": correct_per_image(model, splits.test_x, splits.test_y),
            "val_accuracy": evaluate(model, splits.val_x, splits.val_y)["accuracy"],
            "epochs": r["epochs"], "params": r["params"], "timings": {"seconds": r["wall_seconds"]}}


@register("experiment", "abs")
class AbsStudy(Experiment):
    """Berngardt 2023: |x| activation + lower-bound restarts on LeNet-5 and slimmer variants."""

    name = "abs"
    cost = 2   # scheduling hint for reproduce all --jobs (rough quick-mode CPU share)
    paper = "Berngardt 2023, absolute activation function (docs/papers/abs.md)"
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        from lenetlab.models import create_model, param_count

        s = Settings(**ctx.resolve_settings(settings(ctx.full, ctx.tiny)))
        cells = []
        grid = [(w, a, sch, seed) for w in s.widths for a in ACTIVATIONS for sch in SCHEDULES
                for seed in s.seeds if sch == "lb-restart" or w in s.plain_widths]
        jobs = [(f"train/{w}/{a}/{sch}/{seed}", partial(_train_cell, w, a, sch, seed, s)) for w, a, sch, seed in grid]
        ctx.cells.prefetch(jobs)       # side by side where there is a runner (Ray)
        for i, ((w, a, sch, seed), job) in enumerate(zip(grid, jobs)):
            row = ctx.cells.get_or_run(*job)
            cells.append({"width": w, "activation": a, "schedule": sch, "seed": seed, **row})
            ctx.log(f"[{i + 1}/{len(grid)}] width {w} {a:5s} {sch:10s} seed {seed}: "
                    f"{100 * statistics.fmean(row['correct']):.2f}% ({row['epochs']} epochs, "
                    f"{timing(row, 'seconds', 0.0):.1f}s)")

        table = []
        for w in s.widths:
            params = param_count(create_model("lenet5", width=w))
            for a in ACTIVATIONS:
                for sch in SCHEDULES:
                    mine = _group(cells, w, a, sch)
                    if not mine:
                        continue
                    est = stats.bootstrap_accuracy([c["correct"] for c in mine])
                    table.append({"width": w, "params": params, "activation": a, "schedule": sch,
                                  "test acc %": round(100 * est.value, 2),
                                  "95% CI": f"[{100 * est.lo:.2f}, {100 * est.hi:.2f}]",
                                  "val acc %": round(100 * statistics.fmean(c["val_accuracy"] for c in mine), 2),
                                  "seeds": len(mine),
                                  "epochs_mean": round(statistics.fmean(c["epochs"] for c in mine), 1)})

        # ---- gradient study on the deep family
        from lenetlab.data.datasets import load_raw
        from lenetlab.data.transforms import to_model_input

        train_x, train_y, _, _ = load_raw("mnist")
        images = to_model_input(torch.from_numpy(train_x[:s.grad_batch]), DataConfig())
        labels = torch.from_numpy(train_y[:s.grad_batch].astype("int64"))
        grads: dict[tuple[str, int, int], list[float]] = {}
        for a in ACTIVATIONS:
            for d in s.depths:
                for seed in s.grad_seeds:
                    grads[(a, d, seed)] = ctx.cells.get_or_run(
                        f"grad/{a}/{d}/{seed}", lambda a=a, d=d, seed=seed: {"norms": gradient_norms(
                            a, d, seed, images, labels)})["norms"]
        grad_rows = []
        for a in ACTIVATIONS:
            for d in s.depths:
                logs = [_log_ratio(grads[(a, d, seed)]) for seed in s.grad_seeds]
                grad_rows.append({"activation": a, "depth": d, "seeds": len(logs),
                                  "first/last (geometric mean)": float(f"{10 ** statistics.fmean(logs):.3g}"),
                                  "min": float(f"{10 ** min(logs):.3g}"), "max": float(f"{10 ** max(logs):.3g}")})
        figures = _plots(ctx, s, grads, cells)
        gap = _weight_selection_rows(cells, s)
        return Result(self.name, self.paper, ctx.mode, {"settings": dataclasses.asdict(s), "lr": LR,
                                                         **{f"lb_{k}": v for k, v in LB.items()}},
                      tables={f"test accuracy (MNIST, {len(cells[0]['correct'])} test images)": table,
                              "lb-restart vs plain, same weight selection (best validation LB for both)": gap,
                              "gradient norms at initialisation (lenet_deep, Glorot init)": grad_rows},
                      claims=claims(cells, grads, min_seeds=stats.min_seeds(ctx.full)), figures=figures,
                      notes=["Accuracy is the mean over seeds with a 95% percentile bootstrap interval over seeds and "
                             "test images; each seed changes the init and the batch order, not the data split.",
                             "Weight selection: both schedules end on the weights with the best validation lower "
                             "bound (LB), so 'lb-restart vs plain' compares restarts, not weight selection. Plain = "
                             f"Adam at a constant {LR:g} for the same epoch budget (no restarts); lb-restart may stop "
                             "earlier at its learning-rate floor.",
                             "Model choices inside the claims (the strongest competing activation, the best slim "
                             "width) are made on validation accuracy, never on the test images they are scored on."],
                      timings=Timings(tables={"training time per cell": [
                          {"width": c["width"], "activation": c["activation"], "schedule": c["schedule"],
                           "seed": c["seed"], "epochs": c["epochs"], "train seconds": _round(timing(c, "seconds"))}
                          for c in cells]}))


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _group(cells: list[dict[str, Any]], width: float, act: str, schedule: str) -> list[dict[str, Any]]:
    """The cells of one (width, activation, schedule), ordered by seed (so groups pair seed by seed)."""
    return sorted((c for c in cells if (c["width"], c["activation"], c["schedule"]) == (width, act, schedule)),
                  key=lambda c: c["seed"])


def _log_ratio(norms: list[float]) -> float:
    """log10 of the first layer's gradient norm over the last layer's (+-inf when one vanishes)."""
    first, last = norms[0], norms[-1]
    if first <= 0 or last <= 0:
        return -math.inf if first <= 0 else math.inf
    return math.log10(first / last)


def _val(group: list[dict[str, Any]]) -> float:
    return statistics.fmean(c["val_accuracy"] for c in group)


def _paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[list, list]:
    """The correctness vectors of the seeds both groups have, in the same seed order."""
    common = sorted({c["seed"] for c in a} & {c["seed"] for c in b})
    pick = lambda g: [next(c["correct"] for c in g if c["seed"] == s) for s in common]   # noqa: E731
    return pick(a), pick(b)


def _grid_means(cells: list[dict[str, Any]]) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Per seed, each image's correctness averaged over the (width, activation) cells where both schedules ran:
    (lb-restart scores, plain scores, cells per seed)."""
    both = sorted({(c["width"], c["activation"]) for c in cells if c["schedule"] == "plain"}
                  & {(c["width"], c["activation"]) for c in cells if c["schedule"] == "lb-restart"})
    seeds = sorted({c["seed"] for c in cells})
    out: dict[str, list[np.ndarray]] = {}
    for sch in SCHEDULES:
        by = {(c["width"], c["activation"], c["seed"]): c["correct"] for c in cells if c["schedule"] == sch}
        out[sch] = [np.mean([by[(w, a, seed)] for w, a in both], axis=0) for seed in seeds
                    if all((w, a, seed) in by for w, a in both)]
    return out["lb-restart"], out["plain"], len(both)


def claims(cells: list[dict[str, Any]], grads: dict[tuple[str, int, int], list[float]],
           min_seeds: int = stats.QUICK_MIN_SEEDS) -> list[Claim]:
    """The four claims from the cells alone (so synthetic cells can drive them).

    ``cells``: one dict per training run with ``width``, ``activation``, ``schedule``, ``seed``, ``correct`` (0/1
    per test image, the same images in every cell) and ``val_accuracy``; ``grads``: ``(activation, depth,
    seed) -> per-layer gradient norms``, input to output."""
    pts = {"scale": 100, "unit": " points"}
    std = {a: _group(cells, STANDARD_WIDTH, a, "lb-restart") for a in ACTIVATIONS}
    others = [a for a in ACTIVATIONS if a != "abs" and std[a]]
    out = []
    if std["abs"] and others:
        rival = max(others, key=lambda a: _val(std[a]))
        est = stats.bootstrap_difference(*_paired(std["abs"], std[rival]), paired=True)
        out.append(stats.make_claim(
            "abs_beats_others", "|x| beats tanh, ReLU and SELU on MNIST with LeNet-5",
            stats.Difference("abs", f"{rival} (the strongest other activation on validation)", 0.0,
                             metric="test accuracy", **pts), est, min_seeds=min_seeds))
    else:
        out.append(stats.untestable("abs_beats_others", "|x| beats tanh, ReLU and SELU on MNIST with LeNet-5",
                                    "no standard-width lb-restart cells for abs and another activation"))
    slim_widths = sorted({c["width"] for c in cells if c["width"] < STANDARD_WIDTH})
    slim = {w: _group(cells, w, "abs", "lb-restart") for w in slim_widths}
    slim = {w: g for w, g in slim.items() if g}
    statement = "slimmer |x| networks (fewer parameters) reach higher accuracy than standard-width networks"
    if slim and others:
        w = max(slim, key=lambda w: _val(slim[w]))
        ref = max(others, key=lambda a: _val(std[a]))
        est = stats.bootstrap_difference(*_paired(slim[w], std[ref]), paired=True)
        out.append(stats.make_claim(
            "slim_abs", statement,
            stats.Difference(f"abs width {w}", f"{ref} width {STANDARD_WIDTH:g}", 0.0, metric="test accuracy",
                             **pts), est, min_seeds=min_seeds))
    else:
        out.append(stats.untestable("slim_abs", statement, "no slimmer abs cells (or no standard-width reference)"))
    grad_seeds = sorted({seed for a, _, seed in grads if a == "abs"})
    depths = sorted({d for a, d, _ in grads if a == "abs"})
    statement = "|x| avoids vanishing and exploding gradients in deep networks"
    if grad_seeds:
        worst = [max(abs(_log_ratio(grads[("abs", d, seed)])) for d in depths) for seed in grad_seeds]
        est = stats.mean_interval(worst)
        out.append(stats.make_claim(
            "abs_gradients_stable", statement,
            stats.LessThan(1.0, quantity=f"the largest |log10(first/last layer gradient norm)| of abs over depths "
                           f"{depths[0]}-{depths[-1]} (per initialisation seed)"), est,
            measured=(f"abs keeps first/last layer gradient norms within {10 ** est.value:.3g}x on average over "
                      f"{len(grad_seeds)} init seeds at every depth {depths[0]}-{depths[-1]} (95% CI of the "
                      f"worst factor: {10 ** est.lo:.3g}x to {10 ** est.hi:.3g}x; supported below 10x)"),
            min_seeds=min_seeds))
    else:
        out.append(stats.untestable("abs_gradients_stable", statement, "no gradient measurements"))
    lb, plain, n_cells = _grid_means(cells)
    statement = ("restarts from the best lower-bound weights with a fresh Adam train better than plain Adam "
                 "(both keep their best-LB weights)")
    if lb and plain and all(np.array_equal(a, b) for a, b in zip(lb, plain)):
        # same seed, same batches: without a restart lb-restart *is* plain, so the run says nothing about restarts
        out.append(stats.untestable("lb_restart_helps", statement,
                                    "no lb-restart run restarted within the epoch budget, so both schedules trained "
                                    "identically (difference exactly 0); --full's 30 epochs let restarts happen"))
    elif lb and plain:
        est = stats.bootstrap_difference(lb, plain, paired=True)
        out.append(stats.make_claim(
            "lb_restart_helps", statement,
            stats.Difference("lb-restart", "plain", 0.0, metric=f"test accuracy (mean of {n_cells} cells per seed)",
                             **pts), est, min_seeds=min_seeds))
    else:
        out.append(stats.untestable("lb_restart_helps", statement, "no cell ran both schedules"))
    out.append(stats.untestable("abs_other_problems", "|x| also helps on the paper's more complex problems",
                                "only MNIST with LeNet-like networks is run here (docs/papers/abs.md)"))
    return out


def _weight_selection_rows(cells: list[dict[str, Any]], s: Settings) -> list[dict[str, Any]]:
    """Per (width, activation) where both schedules ran: the paired difference with its interval."""
    rows = []
    for w in s.plain_widths:
        for a in ACTIVATIONS:
            lb, plain = _group(cells, w, a, "lb-restart"), _group(cells, w, a, "plain")
            if not lb or not plain:
                continue
            est = stats.bootstrap_difference(*_paired(lb, plain), paired=True)
            acc = {k: round(100 * statistics.fmean(statistics.fmean(c["correct"]) for c in g), 2)
                   for k, g in (("lb", lb), ("plain", plain))}
            rows.append({"width": w, "activation": a, "lb-restart %": acc["lb"], "plain %": acc["plain"],
                         "lb-restart - plain (points)": est.format(100),
                         "mean epochs (lb-restart / plain)": f"{statistics.fmean(c['epochs'] for c in lb):.1f} / "
                                                             f"{statistics.fmean(c['epochs'] for c in plain):.1f}"})
    return rows


def _plots(ctx: Context, s: Settings, grads, cells) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    deepest = max(s.depths)
    for a in ACTIVATIONS:
        ratios = [10 ** statistics.fmean(_log_ratio(grads[(a, d, seed)]) for seed in s.grad_seeds) for d in s.depths]
        axes[0].plot(s.depths, ratios, marker="o", label=a)
        per_layer = np.mean([grads[(a, deepest, seed)] for seed in s.grad_seeds], axis=0)
        axes[1].plot(range(1, len(per_layer) + 1), per_layer, marker=".", label=a)
    axes[0].set(yscale="log", xlabel="depth (weight layers)", ylabel="grad norm: first layer / last layer",
                title=f"gradient attenuation vs depth (init, {len(s.grad_seeds)} seeds)")
    axes[0].axhspan(0.1, 10, color="grey", alpha=0.15)
    axes[1].set(yscale="log", xlabel="layer (input -> output)", ylabel="gradient norm",
                title=f"per-layer gradient norm, depth {deepest}")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, ctx.out / "gradient_norms.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for a in ACTIVATIONS:
        for sch, style in (("lb-restart", "-"), ("plain", ":")):
            ws = [w for w in s.widths if _group(cells, w, a, sch)]
            if not ws:
                continue
            accs = [[statistics.fmean(c["correct"]) for c in _group(cells, w, a, sch)] for w in ws]
            ax.errorbar(ws, [100 * statistics.fmean(x) for x in accs],
                        yerr=[100 * (statistics.stdev(x) if len(x) > 1 else 0.0) for x in accs],
                        linestyle=style, marker="o", capsize=3, label=f"{a} {sch}")
    ax.set(xlabel="width multiplier (1 = LeNet-5)", ylabel="test accuracy % (+- std over seeds)",
           title="accuracy vs width")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, ctx.out / "accuracy_vs_width.png", dpi=110)
    plt.close(fig)
    return ["gradient_norms.png", "accuracy_vs_width.png"]
