"""``lenetlab reproduce tn``: deep vs shallow tensor-network compression of LeNet-5 (Qing, Zhou, Li, Ran 2023,
docs/papers/tn.md).

For each training seed one plain LeNet-5 is trained on MNIST; its C5 and F6
layers (fc1 400->120 and fc2 120->84, 58,284 of the 61,706 parameters with their
biases) are then compressed at several parameter budgets by

- ``tt``: tensor-train / MPO layers with 3 cores (Novikov et al. 2015), TT-SVD
  at bond rank R, the shallow-TN baseline;
- ``adtn``: the deep brick-wall TN with M layers of 4x4 gates and tanh between
  layers (:mod:`lenetlab.compress.adtn`), least-squares fitted to the trained
  weight,

and every compressed model is fine-tuned on the task with the same recipe
(the training preset's one-cycle Adam at a lower peak lr). **The dense baseline
gets the same extra epochs**: the trained dense model is fine-tuned with the
identical recipe, and the claims compare against that model (the first version
compared fine-tuned compressed models with a dense model that never got the
extra epochs; that reading is kept as a table row). Compressed-layer parameter
counts include the layers' (dense) biases.

Claims (:func:`claims`, from the cells; rules in docs/papers/tn.md), each a
paired bootstrap over seeds and the test images:

- ``adtn_vs_tt``: each TT budget is paired with the deepest ADTN that has at
  most as many compressed-layer parameters (a choice by size, not by accuracy);
  ADTN minus TT test accuracy, averaged over the pairs, above 0;
- ``accuracy_at_10x``: of the models with >= 10x fewer compressed-layer
  parameters, the one with the best validation accuracy, minus the dense
  baseline fine-tuned for the same extra epochs, above -0.5 points.

Quick mode (default): 3 seeds, the ``fast`` preset baseline (2 epochs on 5k
training images, 2k validation images held out), TT ranks 2, 4, 8, ADTN depths
1, 3, 4 (each TT rank has an ADTN partner of no more parameters), 300 fit steps,
2 fine-tuning epochs at batch 128, the 10k test set. ``--full``: 5 seeds, the
``paper`` preset baseline (10 epochs, all training images), ranks 1-32, depths
1-16, 1000 fit steps, 5 fine-tuning epochs.

Example::

    lenetlab reproduce tn --out runs/tn
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from lenetlab.experiments import stats
from lenetlab.experiments.base import Claim, Context, Experiment, Result, Timings, timing
from lenetlab.fileio import save_figure
from lenetlab.registry import register

LAYERS = "c5,f6"
KEEP_WITHIN = 0.005          # accuracy_at_10x: "kept" = at most 0.5 points below the dense baseline


@dataclass(frozen=True)
class Settings:
    """What one mode runs."""

    preset: str                  # training preset of the dense baseline
    base_epochs: int
    seeds: list[int]             # training seeds (dense baseline; its compressed models inherit it)
    train_subset: int | None     # training images (None: all left after the validation split)
    val_size: int                # validation images: the accuracy_at_10x model choice
    test_subset: int | None      # test images (None: all 10k)
    ranks: list[int]             # TT bond ranks
    depths: list[int]            # ADTN depths M
    fit_steps: int               # ADTN least-squares fit steps
    finetune_epochs: int         # extra epochs for every model, the dense baseline included
    finetune_batch: int
    lr: float                    # fine-tuning peak lr
    layers: str = LAYERS


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:   # tests only: every code path, meaningless numbers
        s = Settings("fast", 1, [0], 600, 200, 300, [2, 4], [1, 2], 10, 1, 128, 3e-3)
    elif full:
        s = Settings("paper", 10, [0, 1, 2, 3, 4], None, 5000, None, [1, 2, 4, 8, 16, 32], [1, 2, 4, 8, 16], 1000,
                     5, 128, 3e-3)
    else:
        s = Settings("fast", 2, [0, 1, 2], 5000, 2000, None, [2, 4, 8], [1, 3, 4], 300, 2, 128, 3e-3)
    return dataclasses.asdict(s)


@torch.no_grad()
def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> list[int]:
    """1 where ``model`` classifies the image correctly, else 0 (eval mode)."""
    model.eval()
    return torch.cat([model(x[i:i + batch]).argmax(1) == y[i:i + batch]
                      for i in range(0, len(x), batch)]).int().tolist()


def _label(method: str, budget: int) -> str:
    return f"{method}_r{budget}" if method == "tt" else f"{method}_m{budget}"


def _base_config(s: Settings, seed: int):
    from lenetlab.train.presets import resolve

    return resolve(s.preset, "lenet5", overrides={
        "data": {"train_subset": s.train_subset, "val_size": s.val_size, "test_subset": s.test_subset},
        "train": {"epochs": s.base_epochs, "seed": seed, "grad_norms": False, "eval_test_every_epoch": False}})


def _splits(s: Settings) -> tuple[Any, Any]:
    """The split (it does not depend on the training seed), and the one training and compress_run get: they
    score the test set at every stage, so they get one test image, and every test image is scored once per
    model here, image by image (the fine-tuning's own validation accuracy is kept)."""
    from lenetlab.data import load_splits

    splits = load_splits(_base_config(s, s.seeds[0]).data)
    return splits, dataclasses.replace(splits, test_x=splits.test_x[:1], test_y=splits.test_y[:1])


def _scored(model: torch.nn.Module, summary: dict[str, Any], splits: Any) -> dict[str, Any]:
    return {"correct": _correct(model, splits.test_x, splits.test_y),
            "val_accuracy": summary["val_accuracy"]}     # the final weights' (no selection)


def _base_cell(s: Settings, seed: int, base_dir) -> dict[str, Any]:
    """The dense baseline of one seed (a cell; module level, so a runner such as Ray can take it)."""
    from lenetlab.train import fit

    splits, fit_splits = _splits(s)
    r = fit(_base_config(s, seed), out=base_dir, force=True, splits=fit_splits, log=None, progress=False)
    return {**_scored(r["_model"], r, splits), "params": r["params"], "timings": {"seconds": r["wall_seconds"]}}


def _dense_ft_cell(s: Settings, base_dir) -> dict[str, Any]:
    """The compressed models' fine-tuning recipe (compress_run), applied to the trained dense model (a cell)."""
    from lenetlab.rundir import load_model
    from lenetlab.train import fit

    splits, fit_splits = _splits(s)
    model, base_cfg = load_model(base_dir)
    train = dataclasses.replace(base_cfg.train, epochs=s.finetune_epochs, lr=s.lr, batch_size=s.finetune_batch)
    r = fit(dataclasses.replace(base_cfg, train=train), splits=fit_splits, model=model, log=None, progress=False)
    return {**_scored(r["_model"], r, splits), "timings": {"seconds": r["wall_seconds"]}}


def _tn_cell(s: Settings, method: str, b: int, base_dir, out) -> dict[str, Any]:
    """One compressed model (TT rank b or ADTN depth b) of one seed's base, fine-tuned (a cell)."""
    from lenetlab.compress.run import compress_run
    from lenetlab.rundir import load_model

    splits, fit_splits = _splits(s)
    r = compress_run(base_dir, out, method, s.layers, rank=b if method == "tt" else 8,
                     depth=b if method == "adtn" else 4, fit_steps=s.fit_steps, epochs=s.finetune_epochs, lr=s.lr,
                     batch_size=s.finetune_batch, force=True, log=None, progress=False, splits=fit_splits)
    c = r["compression"]
    errs = r["weight_error_after_init"]
    return {**_scored(load_model(out)[0], r, splits), "layer_params": c["layer_params"],
            "layer_ratio": c["layer_ratio"], "params": c["params"], "model_ratio": c["model_ratio"],
            "weight_error": sum(errs.values()) / len(errs), "timings": {"seconds": r["compress_wall_seconds"]}}


@register("experiment", "tn")
class TensorNetworkStudy(Experiment):
    """Qing et al. 2023: deep brick-wall TN (ADTN) vs tensor-train layers, accuracy vs parameters on LeNet-5."""

    name = "tn"
    cost = 2   # scheduling hint for reproduce all --jobs (rough quick-mode CPU share)
    paper = ("Qing, Zhou, Li, Ran 2023, compressing neural networks by tensor networks with exponentially fewer "
             "variational parameters (docs/papers/tn.md)")
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        from lenetlab.rundir import load_model

        s = Settings(**ctx.resolve_settings(settings(ctx.full, ctx.tiny)))
        runs = ctx.out / "runs"
        grid = [("tt", r) for r in s.ranks] + [("adtn", m) for m in s.depths]
        # the cells are module-level functions of (settings, paths), so a runner (Ray) can take them; the bases
        # of every seed first, side by side, then every seed's fine-tuned dense model and compressed models
        base_dirs = {seed: runs / f"base_s{seed}" for seed in s.seeds}
        base_jobs = {seed: (f"base/{seed}", partial(_base_cell, s, seed, base_dirs[seed])) for seed in s.seeds}
        ctx.cells.prefetch(base_jobs.values())
        bases = {}
        for seed in s.seeds:
            bases[seed] = ctx.cells.get_or_run(*base_jobs[seed])
            if not (base_dirs[seed] / "model.safetensors").exists():   # cells.jsonl kept but the run deleted
                bases[seed] = _base_cell(s, seed, base_dirs[seed])
        later = {seed: [(f"dense_ft/{seed}", partial(_dense_ft_cell, s, base_dirs[seed]))] +
                 [(f"tn/{_label(m, b)}/{seed}",
                   partial(_tn_cell, s, m, b, base_dirs[seed], runs / f"{_label(m, b)}_s{seed}")) for m, b in grid]
                 for seed in s.seeds}
        ctx.cells.prefetch(j for js in later.values() for j in js)
        rows: list[dict[str, Any]] = []
        for seed in s.seeds:
            base = bases[seed]
            dense_model = load_model(base_dirs[seed])[0]
            layer_dense = sum(p.numel() for n in ("fc1", "fc2") for p in getattr(dense_model, n).parameters())
            dense = {"layer_params": layer_dense, "layer_ratio": 1.0, "params": base["params"], "model_ratio": 1.0}
            rows.append({"method": "dense", "budget": 0, "seed": seed, **dense, **base})
            ft = ctx.cells.get_or_run(*later[seed][0])
            rows.append({"method": "dense_ft", "budget": 0, "seed": seed, **dense, **ft})
            ctx.log(f"seed {seed}: dense lenet5 {100 * np.mean(base['correct']):.2f}%, after {s.finetune_epochs} "
                    f"more epoch(s) {100 * np.mean(ft['correct']):.2f}%")
            for i, ((method, b), job) in enumerate(zip(grid, later[seed][1:])):
                row = {"method": method, "budget": b, "seed": seed, **ctx.cells.get_or_run(*job)}
                rows.append(row)
                ctx.log(f"seed {seed} [{i + 1}/{len(grid)}] {_label(method, b):8s} {row['layer_params']:>6,} params "
                        f"in c5+f6 ({row['layer_ratio']:.1f}x)  acc {100 * np.mean(row['correct']):.2f}% "
                        f"({timing(row, 'seconds', 0.0):.0f}s)")

        n_test = len(rows[0]["correct"])
        return Result(self.name, self.paper, ctx.mode, {"settings": dataclasses.asdict(s)},
                      tables={"accuracy vs parameters (c5+f6 = fc1 400->120 and fc2 120->84, biases included)":
                              _table(rows), "ADTN vs TT at equal or fewer parameters": _pair_rows(rows)},
                      claims=claims(rows, min_seeds=stats.min_seeds(ctx.full)), figures=_plot(ctx, rows),
                      notes=[f"Test accuracy on {n_test} MNIST test images: mean over {len(s.seeds)} seed(s) with a "
                             "95% bootstrap interval over seeds and test images; differences are paired by seed "
                             f"and image. The baseline is the {s.preset} preset ({s.base_epochs} epochs); every "
                             f"compressed model is fine-tuned {s.finetune_epochs} epoch(s) at batch "
                             f"{s.finetune_batch}, peak lr {s.lr:g}, and so is 'dense + same fine-tuning', the "
                             "baseline the claims use. 'vs dense (no extra epochs)' is the first version's unequal "
                             "comparison, kept for reference. (The run directories under runs/ record test "
                             "numbers on one image: the experiment scores the test set itself, once per model.)",
                             "TT: 3 cores per layer, fc1 (4,5,6)x(5,8,10), fc2 (3,4,7)x(4,5,6), every bond capped "
                             "at the rank. ADTN: fc1 padded to 128x512 (Q=16), fc2 to 128x128 (Q=14), "
                             f"16(Q-1) parameters per layer of depth, tanh between layers, {s.fit_steps} "
                             "least-squares fit steps.",
                             "'init weight error' is the mean relative Frobenius error of the compressed weights "
                             "before fine-tuning; 'model params' counts the whole network (conv layers and the "
                             "output layer stay dense)."],
                      timings=Timings(tables={"time per model (s): training, or compression and fine-tuning": [
                          {"method": r["method"], "budget": r["budget"], "seed": r["seed"],
                           "seconds": round(timing(r, "seconds", 0.0), 1)} for r in rows]}))


def _group(rows: list[dict[str, Any]], method: str, budget: int = 0) -> list[dict[str, Any]]:
    """One model's rows, ordered by seed (so two groups pair seed by seed)."""
    return sorted((r for r in rows if r["method"] == method and r["budget"] == budget), key=lambda r: r["seed"])


def _models(rows: list[dict[str, Any]], method: str) -> list[int]:
    return sorted({r["budget"] for r in rows if r["method"] == method})


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(TT rank, ADTN depth): each TT budget with the ADTN of the most compressed-layer parameters not above it
    (chosen by size only, so no accuracy enters the pairing)."""
    size = {(r["method"], r["budget"]): r["layer_params"] for r in rows}
    out = []
    for rank in _models(rows, "tt"):
        fits = [m for m in _models(rows, "adtn") if size[("adtn", m)] <= size[("tt", rank)]]
        if fits:
            out.append((rank, max(fits, key=lambda m: size[("adtn", m)])))
    return out


def _diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> stats.Estimate:
    seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
    pick = lambda g: [next(r["correct"] for r in g if r["seed"] == s) for s in seeds]   # noqa: E731
    return stats.bootstrap_difference(pick(a), pick(b), paired=True)


def claims(rows: list[dict[str, Any]], min_seeds: int = stats.QUICK_MIN_SEEDS) -> list[Claim]:
    """The claims from the rows alone (so synthetic rows can drive them).

    ``rows``: one dict per (model, seed) with ``method`` ("dense", "dense_ft" - the dense model fine-tuned like
    the compressed ones -, "tt", "adtn"), ``budget`` (rank or depth; 0 for dense), ``seed``, ``layer_params``,
    ``layer_ratio``, ``correct`` (0/1 per test image, the same images in every row) and ``val_accuracy``."""
    pts = {"scale": 100, "unit": " points"}
    out = []
    pairs = _pairs(rows)
    statement = "the deep TN (ADTN) is more accurate than shallow TNs (TT/MPO) at equal or fewer parameters"
    if pairs:
        seeds = sorted(set.intersection(*({r["seed"] for r in _group(rows, m, b)}
                                          for t, a in pairs for m, b in (("tt", t), ("adtn", a)))))

        def mean_over_pairs(method: str, which: int) -> list[np.ndarray]:
            return [np.mean([next(r["correct"] for r in _group(rows, method, p[which]) if r["seed"] == seed)
                             for p in pairs], axis=0) for seed in seeds]

        est = stats.bootstrap_difference(mean_over_pairs("adtn", 1), mean_over_pairs("tt", 0), paired=True)
        rule = stats.Difference("ADTN", "TT", 0.0, metric=f"test accuracy, mean over {len(pairs)} budget pairs",
                                **pts)
        size = {(r["method"], r["budget"]): r["layer_params"] for r in rows}
        out.append(stats.make_claim(
            "adtn_vs_tt", statement, rule, est, min_seeds=min_seeds,
            measured=f"{rule.label}: {est.format(100, ' points')}; pairs: " + ", ".join(
                f"TT rank {t} ({size[('tt', t)]:,} params) vs ADTN depth {a} ({size[('adtn', a)]:,})"
                for t, a in pairs)))
    else:
        out.append(stats.untestable("adtn_vs_tt", statement,
                                    "no ADTN model has as few parameters as any TT model in this grid"))
    statement = ("accuracy is kept (within 0.5 points here) with >= 10x fewer parameters in the compressed layers, "
                 "against the dense model given the same extra epochs")
    big = [(r["method"], r["budget"]) for r in rows if r["method"] in ("tt", "adtn") and r["layer_ratio"] >= 10]
    dense_ft = _group(rows, "dense_ft")
    if big and dense_ft:
        method, b = max(sorted(set(big)), key=lambda k: statistics.fmean(r["val_accuracy"]
                                                                         for r in _group(rows, *k)))
        ratio = _group(rows, method, b)[0]["layer_ratio"]
        rule = stats.Difference(f"{_label(method, b)} ({ratio:.1f}x, best >= 10x on validation)",
                                "dense + same fine-tuning", -KEEP_WITHIN, metric="test accuracy", **pts)
        out.append(stats.make_claim("accuracy_at_10x", statement, rule, _diff(_group(rows, method, b), dense_ft),
                                    min_seeds=min_seeds))
    else:
        out.append(stats.untestable("accuracy_at_10x", statement,
                                    "no model in the grid reaches 10x, or no fine-tuned dense baseline"))
    out.append(stats.untestable(
        "vgg16_cifar10", "on VGG-16, ~10M parameters of three conv layers fit in 632 TN parameters and CIFAR-10 "
        "accuracy rises from 81.14% to 84.36%",
        "CIFAR-10 is not available offline and VGG-16 training is beyond the 2-core machine (docs/papers/tn.md)"))
    return out


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    dense, dense_ft = _group(rows, "dense"), _group(rows, "dense_ft")
    models = [("dense", 0), ("dense_ft", 0)] + [("tt", b) for b in _models(rows, "tt")] + \
        [("adtn", b) for b in _models(rows, "adtn")]
    table = []
    for method, b in models:
        g = _group(rows, method, b)
        acc = stats.bootstrap_accuracy([r["correct"] for r in g])
        r0 = g[0]
        name = {"dense": "dense", "dense_ft": "dense + same fine-tuning"}.get(method, method)
        table.append({"method": name, "budget": f"rank {b}" if method == "tt" else (f"depth {b}" if b else "-"),
                      "c5+f6 params": r0["layer_params"], "c5+f6 compression": round(r0["layer_ratio"], 1),
                      "model params": r0["params"], "model compression": round(r0.get("model_ratio", 1.0), 2),
                      "init weight error": round(statistics.fmean(r.get("weight_error", 0.0) for r in g), 3),
                      "seeds": len(g), "test acc %": acc.format(100),
                      "val acc %": round(100 * statistics.fmean(r["val_accuracy"] for r in g), 2),
                      "vs dense + same fine-tuning (points)": "-" if method == "dense_ft" else
                      _diff(g, dense_ft).format(100),
                      "vs dense, no extra epochs (points)": "-" if method == "dense" else _diff(g, dense).format(100)})
    return table


def _pair_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    size = {(r["method"], r["budget"]): r["layer_params"] for r in rows}
    return [{"TT rank": t, "TT params": size[("tt", t)], "ADTN depth": a, "ADTN params": size[("adtn", a)],
             "ADTN - TT (points)": _diff(_group(rows, "adtn", a), _group(rows, "tt", t)).format(100)}
            for t, a in _pairs(rows)]


def _plot(ctx: Context, rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    def mean_acc(g: list[dict[str, Any]]) -> float:
        return 100 * statistics.fmean(float(np.mean(r["correct"])) for r in g)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    dense, dense_ft = _group(rows, "dense"), _group(rows, "dense_ft")
    for ax, key, xlabel in ((axes[0], "layer_params", "parameters in c5 + f6"),
                            (axes[1], "params", "parameters in the whole model")):
        for method, color, marker in (("tt", "tab:blue", "o"), ("adtn", "tab:red", "s")):
            mine = sorted(((_group(rows, method, b)[0][key], mean_acc(_group(rows, method, b)), b)
                           for b in _models(rows, method)))
            ax.plot([m[0] for m in mine], [m[1] for m in mine], color=color, marker=marker,
                    label={"tt": "TT / MPO (shallow)", "adtn": "ADTN (deep brick wall)"}[method])
            for x, y, b in mine:
                ax.annotate(("R" if method == "tt" else "M") + str(b), (x, y), fontsize=7, xytext=(3, -10),
                            textcoords="offset points", color=color)
        ax.scatter([dense[0][key]], [mean_acc(dense)], color="grey", marker="*", s=90, zorder=3,
                   label="dense (no extra epochs)")
        ax.scatter([dense_ft[0][key]], [mean_acc(dense_ft)], color="black", marker="*", s=90, zorder=3,
                   label="dense + same fine-tuning")
        ax.axhline(mean_acc(dense_ft) - 100 * KEEP_WITHIN, color="grey", linestyle=":", linewidth=0.8,
                   label=f"dense + fine-tuning - {100 * KEEP_WITHIN:g} points")
        ax.set(xscale="log", xlabel=xlabel)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())   # no crowded 2x10^4, 3x10^4 labels
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("test accuracy % (mean over seeds)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("LeNet-5 / MNIST: tensor-network compression of c5 and f6, after fine-tuning")
    fig.tight_layout()
    save_figure(fig, ctx.out / "accuracy_vs_params.png", dpi=110)
    plt.close(fig)
    return ["accuracy_vs_params.png"]
