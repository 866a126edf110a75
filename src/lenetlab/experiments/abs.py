"""``lenetlab reproduce abs``: the absolute-value activation study (Berngardt 2023, PAPERS.md section 8).

Grid: activations {tanh, relu, selu, abs} x LeNet-5 widths (1.0 = the standard
61,706-parameter network, and slimmer LeNet-like variants with every hidden
width scaled down) x seeds x schedules {lb-restart (Berngardt's modified Adam),
plain (Adam at a constant rate, same epoch budget)}. Every cell is one
training run; test accuracy is measured on all 10k MNIST test images with the
weights each schedule ends with (best-LB weights for lb-restart).

Gradient study: the deep LeNet-like family (``lenet_deep``, Glorot init, no
normalisation) at depths 4..20, per-layer gradient norms of the cross-entropy
loss at initialisation on real MNIST batches; the attenuation is the ratio of
the first layer's gradient norm to the last layer's.

Claims are computed from the cells:

- ``abs_beats_others``: on LeNet-5 (width 1, lb-restart) abs has the highest
  mean test accuracy of the four activations.
- ``slim_abs``: some slimmer abs model (fewer parameters) matches or beats the
  best standard-width non-abs LeNet-5 (matching = mean within one standard
  deviation over seeds of the larger of the two spreads).
- ``abs_gradients_stable``: at the deepest depth, the first/last gradient-norm
  ratio of abs stays within [0.1, 10] (no vanishing or explosion).
- ``lb_restart_helps``: averaged over the grid, lb-restart beats the plain
  schedule (a check of the training method, not one of the paper's headline
  claims).

Quick mode (default) trains on 12k images for at most 8 epochs with 3 seeds
and two widths (about 5 minutes on 2 cores); ``--full`` uses all 55k training
images, 30 epochs, 5 seeds and four widths.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from lenetlab.config import DataConfig, LBConfig, ModelConfig, RunConfig, TrainConfig
from lenetlab.experiments.base import Claim, Context, Experiment, Result
from lenetlab.registry import register

ACTIVATIONS = ("tanh", "relu", "selu", "abs")
SCHEDULES = ("lb-restart", "plain")


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:   # contract tests only: every code path, seconds of work, meaningless numbers
        return {"widths": [1.0, 0.5], "seeds": [0], "epochs": 2, "train_subset": 500, "val_size": 500,
                "test_subset": 500, "depths": [4, 6], "grad_seeds": [0], "grad_batch": 16}
    if full:
        return {"widths": [1.0, 0.75, 0.5, 0.35], "seeds": [0, 1, 2, 3, 4], "epochs": 30, "train_subset": None,
                "depths": [4, 8, 12, 16, 20], "grad_seeds": [0, 1, 2], "grad_batch": 256}
    return {"widths": [1.0, 0.5], "seeds": [0, 1, 2], "epochs": 8, "train_subset": 12000,
            "depths": [4, 8, 12, 16, 20], "grad_seeds": [0, 1], "grad_batch": 128}


def run_config(act: str, width: float, schedule: str, seed: int, s: dict[str, Any]) -> RunConfig:
    data = DataConfig(val_size=s.get("val_size", 5000), train_subset=s["train_subset"],
                      test_subset=s.get("test_subset"))
    train = TrainConfig(epochs=s["epochs"], batch_size=128, optimizer="adam", lr=1e-3, seed=seed,
                        schedule="lb-restart" if schedule == "lb-restart" else "constant",
                        lb=LBConfig(k=2.0, patience=2, lr_divisor=3.0, min_lr=1e-5),
                        eval_test_every_epoch=False, grad_norms=False)
    return RunConfig(model=ModelConfig("lenet5", {"activation": act, "width": width}), data=data, train=train)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


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


@register("experiment", "abs")
class AbsStudy(Experiment):
    """Berngardt 2023: |x| activation + lower-bound restarts on LeNet-5 and slimmer variants."""

    name = "abs"
    paper = "Berngardt 2023, absolute activation function (PAPERS.md section 8)"
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        from lenetlab.data import load_splits
        from lenetlab.models import create_model, param_count
        from lenetlab.train import fit

        s = ctx.resolve_settings(settings(ctx.full, ctx.tiny))
        splits = None
        cells = []
        grid = [(w, a, sch, seed) for w in s["widths"] for a in ACTIVATIONS for sch in SCHEDULES
                for seed in s["seeds"]]
        for i, (w, a, sch, seed) in enumerate(grid):
            key = f"train/{w}/{a}/{sch}/{seed}"

            def train_cell(w=w, a=a, sch=sch, seed=seed) -> dict[str, Any]:
                nonlocal splits
                cfg = run_config(a, w, sch, seed, s)
                if splits is None:
                    splits = load_splits(cfg.data)
                r = fit(cfg, splits=splits, log=None, progress=False)
                return {"test_accuracy": r["test_accuracy"], "epochs": r["epochs"], "params": r["params"],
                        "seconds": r["wall_seconds"]}

            row = ctx.cells.get_or_run(key, train_cell)
            cells.append({"width": w, "activation": a, "schedule": sch, "seed": seed, **row})
            ctx.log(f"[{i + 1}/{len(grid)}] width {w} {a:5s} {sch:10s} seed {seed}: "
                    f"{100 * row['test_accuracy']:.2f}% ({row['epochs']} epochs, {row['seconds']:.1f}s)")

        table = []
        stats: dict[tuple[float, str, str], tuple[float, float, list[float]]] = {}
        for w in s["widths"]:
            params = param_count(create_model("lenet5", width=w))
            for a in ACTIVATIONS:
                for sch in SCHEDULES:
                    mine = [c for c in cells if (c["width"], c["activation"], c["schedule"]) == (w, a, sch)]
                    accs = [c["test_accuracy"] for c in mine]
                    eps = [c["epochs"] for c in mine]
                    m, sd = _mean_std(accs)
                    stats[(w, a, sch)] = (m, sd, accs)
                    table.append({"width": w, "params": params, "activation": a, "schedule": sch,
                                  "test_acc_mean_%": round(100 * m, 3), "std_%": round(100 * sd, 3),
                                  "seeds": len(accs), "epochs_mean": round(statistics.fmean(eps), 1)})

        # ---- gradient study on the deep family
        from lenetlab.data.datasets import load_raw
        from lenetlab.data.transforms import to_model_input

        train_x, train_y, _, _ = load_raw("mnist")
        batch = s["grad_batch"]
        images = to_model_input(torch.from_numpy(train_x[:batch]), DataConfig())
        labels = torch.from_numpy(train_y[:batch].astype("int64"))
        grads: dict[tuple[str, int], list[float]] = {}
        grad_rows = []
        for a in ACTIVATIONS:
            for d in s["depths"]:
                per_seed = [ctx.cells.get_or_run(f"grad/{a}/{d}/{seed}",
                                                 lambda a=a, d=d, seed=seed: {"norms": gradient_norms(
                                                     a, d, seed, images, labels)})["norms"]
                            for seed in s["grad_seeds"]]
                mean_norms = [statistics.fmean(col) for col in zip(*per_seed)]
                grads[(a, d)] = mean_norms
                ratio = mean_norms[0] / mean_norms[-1] if mean_norms[-1] > 0 else math.inf
                grad_rows.append({"activation": a, "depth": d, "first_layer_grad": mean_norms[0],
                                  "last_layer_grad": mean_norms[-1], "first/last": ratio})
        figures = _plots(ctx, s, grads, stats)

        claims = _claims(s, stats, grads)
        return Result(self.name, self.paper, ctx.mode, {"settings": s, "lr": 1e-3, "lb_k": 2.0, "lb_patience": 2,
                                                         "lb_lr_divisor": 3.0, "lb_min_lr": 1e-5},
                      tables={"test accuracy (MNIST, 10k test images)": table,
                              "gradient norms at initialisation (lenet_deep, Glorot init)": grad_rows},
                      claims=claims, figures=figures,
                      notes=["Accuracy is the mean +- sample std over seeds; each seed changes the init and "
                             "the batch order, not the data split.",
                             "Plain schedule = Adam at a constant 1e-3 for the same epoch budget as lb-restart's "
                             "upper bound; lb-restart may stop earlier at its learning-rate floor."])


def _claims(s, stats, grads) -> list[Claim]:
    std_w = 1.0
    lb = {a: stats[(std_w, a, "lb-restart")] for a in ACTIVATIONS}
    others = {a: v for a, v in lb.items() if a != "abs"}
    abs_m = lb["abs"][0]
    best_other = max(others, key=lambda a: others[a][0])
    c1 = Claim("abs_beats_others", "|x| beats tanh, ReLU and SELU on MNIST with LeNet-5",
               "LeNet-5, lb-restart: " + ", ".join(f"{a} {100 * m:.2f}+-{100 * sd:.2f}%"
                                                   for a, (m, sd, _) in lb.items()),
               all(abs_m > m for m, _, _ in others.values()))
    ref_m, ref_sd, _ = others[best_other]
    slim = [(w, stats[(w, "abs", "lb-restart")]) for w in s["widths"] if w < std_w]
    verdicts = [(w, m, sd, m >= ref_m - max(sd, ref_sd)) for w, (m, sd, _) in slim]
    c2 = Claim("slim_abs", "slimmer |x| networks (fewer parameters) reach higher accuracy",
               f"best standard non-abs: {best_other} {100 * ref_m:.2f}+-{100 * ref_sd:.2f}%; "
               + ", ".join(f"abs width {w}: {100 * m:.2f}+-{100 * sd:.2f}%" + (" (>=)" if m >= ref_m else "")
                           for w, m, sd, _ in verdicts),
               any(v for *_, v in verdicts) if verdicts else None)
    deepest = max(s["depths"])
    ratios = {a: grads[(a, deepest)][0] / grads[(a, deepest)][-1] for a in ACTIVATIONS}
    c3 = Claim("abs_gradients_stable", "|x| avoids vanishing and exploding gradients",
               f"first/last layer gradient-norm ratio at depth {deepest}: "
               + ", ".join(f"{a} {r:.3g}" for a, r in ratios.items()),
               0.1 <= ratios["abs"] <= 10)
    lb_all = statistics.fmean(m for (w, a, sch), (m, _, _) in stats.items() if sch == "lb-restart")
    plain_all = statistics.fmean(m for (w, a, sch), (m, _, _) in stats.items() if sch == "plain")
    c4 = Claim("lb_restart_helps", "restarts from the best lower-bound weights with a fresh Adam train better",
               f"grid mean: lb-restart {100 * lb_all:.2f}%, plain {100 * plain_all:.2f}%", lb_all > plain_all)
    return [c1, c2, c3, c4]


def _plots(ctx: Context, s, grads, stats) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for a in ACTIVATIONS:
        ratios = [grads[(a, d)][0] / grads[(a, d)][-1] for d in s["depths"]]
        axes[0].plot(s["depths"], ratios, marker="o", label=a)
        deepest = grads[(a, max(s["depths"]))]
        axes[1].plot(range(1, len(deepest) + 1), deepest, marker=".", label=a)
    axes[0].set(yscale="log", xlabel="depth (weight layers)", ylabel="grad norm: first layer / last layer",
                title="gradient attenuation vs depth (init)")
    axes[0].axhspan(0.1, 10, color="grey", alpha=0.15)
    axes[1].set(yscale="log", xlabel="layer (input -> output)", ylabel="gradient norm",
                title=f"per-layer gradient norm, depth {max(s['depths'])}")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(ctx.out / "gradient_norms.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for a in ACTIVATIONS:
        for sch, style in (("lb-restart", "-"), ("plain", ":")):
            ms = [100 * stats[(w, a, sch)][0] for w in s["widths"]]
            sds = [100 * stats[(w, a, sch)][1] for w in s["widths"]]
            ax.errorbar(s["widths"], ms, yerr=sds, linestyle=style, marker="o", capsize=3, label=f"{a} {sch}")
    ax.set(xlabel="width multiplier (1 = LeNet-5)", ylabel="test accuracy %", title="accuracy vs width")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(ctx.out / "accuracy_vs_width.png", dpi=110)
    plt.close(fig)
    return ["gradient_norms.png", "accuracy_vs_width.png"]
