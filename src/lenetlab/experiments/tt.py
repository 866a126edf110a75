"""``lenetlab reproduce tn``: deep vs shallow tensor-network compression of LeNet-5 (Qing, Zhou, Li, Ran 2023,
PAPERS.md section 7).

One plain LeNet-5 is trained on MNIST; its C5 and F6 layers (fc1 400->120 and
fc2 120->84, 58,284 of the 61,706 parameters with their biases) are then
compressed at several parameter budgets by

- ``tt``: tensor-train / MPO layers with 3 cores (Novikov et al. 2015), TT-SVD
  at bond rank R, the shallow-TN baseline;
- ``adtn``: the deep brick-wall TN with M layers of 4x4 gates and tanh between
  layers (:mod:`lenetlab.compress.adtn`), least-squares fitted to the trained
  weight,

and every compressed model is fine-tuned on the task with the same recipe
(the training preset's one-cycle Adam at a lower peak lr). Compressed-layer
parameter counts include the layers' (dense) biases. The other layers stay
dense and are fine-tuned too.

Claims, computed from the table:

- ``adtn_vs_tt``: for each TT budget, the best ADTN model with at most as
  many compressed-layer parameters is at least as accurate (the paper: ADTN
  beats shallow TNs);
- ``accuracy_at_10x``: some model with >= 10x fewer parameters in its
  compressed layers is within 0.5 points of the uncompressed accuracy (the
  paper: accuracy kept or improved at exponentially fewer parameters).

Quick mode (default): the ``fast`` preset baseline (2 epochs, 60k images), TT
ranks 2, 4, 8, 16, ADTN depths 1, 2, 3, 4, 500 fit steps, 2 fine-tuning
epochs on 60k images at batch 128, the 10k test set: 4 min 4 s on the 2-core
machine (one torch thread, load ~3 from other jobs). ADTN cells cost more than
TT cells (every step regenerates the weights through M (Q-1) gates). ``--full``: the
``paper`` preset baseline (10 epochs), ranks 1-32, depths 1-16, 1000 fit steps, 5 fine-tuning epochs.
"""

from __future__ import annotations

from typing import Any

from lenetlab.experiments.base import Claim, Context, Experiment, Result
from lenetlab.registry import register

LAYERS = "c5,f6"


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:   # tests only: every code path, meaningless numbers
        return {"preset": "fast", "base_epochs": 1, "train_subset": 600, "test_subset": 300, "ranks": [2, 4],
                "depths": [1, 2], "fit_steps": 10, "finetune_epochs": 1, "finetune_batch": 128, "lr": 3e-3,
                "layers": LAYERS}
    if full:
        return {"preset": "paper", "base_epochs": 10, "train_subset": None, "test_subset": None,
                "ranks": [1, 2, 4, 8, 16, 32], "depths": [1, 2, 4, 8, 16], "fit_steps": 1000, "finetune_epochs": 5,
                "finetune_batch": 128,
                "lr": 3e-3, "layers": LAYERS}
    return {"preset": "fast", "base_epochs": 2, "train_subset": None, "test_subset": None, "ranks": [2, 4, 8, 16],
            "depths": [1, 2, 3, 4], "fit_steps": 500, "finetune_epochs": 2, "finetune_batch": 128, "lr": 3e-3,
            "layers": LAYERS}


@register("experiment", "tn")
class TensorNetworkStudy(Experiment):
    """Qing et al. 2023: deep brick-wall TN (ADTN) vs tensor-train layers, accuracy vs parameters on LeNet-5."""

    name = "tn"
    paper = ("Qing, Zhou, Li, Ran 2023, compressing neural networks by tensor networks with exponentially fewer "
             "variational parameters (PAPERS.md section 7)")
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        from lenetlab.compress.run import compress_run
        from lenetlab.data import load_splits
        from lenetlab.rundir import load_model
        from lenetlab.train import fit
        from lenetlab.train.presets import resolve

        s = settings(ctx.full, ctx.tiny)
        if hasattr(ctx, "resolve_settings"):
            s = ctx.resolve_settings(s)
        runs = ctx.out / "runs"
        base_dir = runs / "base"
        cfg = resolve(s["preset"], "lenet5", overrides={
            "data": {"train_subset": s["train_subset"], "test_subset": s["test_subset"]},
            "train": {"epochs": s["base_epochs"], "grad_norms": False, "eval_test_every_epoch": False}})
        splits = load_splits(cfg.data)

        def base_cell() -> dict[str, Any]:
            r = fit(cfg, out=base_dir, force=True, splits=splits, log=None, progress=False)
            return {"test_accuracy": r["test_accuracy"], "params": r["params"], "seconds": r["wall_seconds"]}

        base = ctx.cells.get_or_run("base", base_cell)
        if not (base_dir / "model.safetensors").exists():   # cells.jsonl kept but the run deleted: retrain
            base = base_cell()
        ctx.log(f"uncompressed lenet5: {100 * base['test_accuracy']:.2f}% ({base['params']:,} params, "
                f"{base['seconds']:.1f}s)")
        dense_model = load_model(base_dir)[0]
        layer_dense = sum(sum(p.numel() for p in getattr(dense_model, n).parameters()) for n in ("fc1", "fc2"))

        grid = [("tt", r) for r in s["ranks"]] + [("adtn", m) for m in s["depths"]]
        rows = []
        for i, (method, b) in enumerate(grid):
            label = f"{method}_r{b}" if method == "tt" else f"{method}_m{b}"

            def cell(method=method, b=b, label=label) -> dict[str, Any]:
                r = compress_run(base_dir, runs / label, method, s["layers"], rank=b if method == "tt" else 8,
                                 depth=b if method == "adtn" else 4, fit_steps=s["fit_steps"],
                                 epochs=s["finetune_epochs"], lr=s["lr"], batch_size=s["finetune_batch"], force=True,
                                 log=None, progress=False, splits=splits)
                c = r["compression"]
                errs = r["weight_error_after_init"]
                return {"layer_params": c["layer_params"], "layer_ratio": c["layer_ratio"], "params": c["params"],
                        "model_ratio": c["model_ratio"], "weight_error": sum(errs.values()) / len(errs),
                        "acc_init": r["test_accuracy_before_finetune"], "acc": r["test_accuracy"],
                        "seconds": r["compress_wall_seconds"]}

            row = {"method": method, "budget": b, "label": label, **ctx.cells.get_or_run(f"tn/{label}", cell)}
            rows.append(row)
            ctx.log(f"[{i + 1}/{len(grid)}] {label:8s} {row['layer_params']:>6,} params in c5+f6 "
                    f"({row['layer_ratio']:.1f}x)  acc {100 * row['acc']:.2f}%  "
                    f"({100 * (row['acc'] - base['test_accuracy']):+.2f} points; {row['seconds']:.0f}s)")

        table = [{"method": "dense", "budget": "-", "c5+f6 params": layer_dense, "c5+f6 compression": 1.0,
                  "model params": base["params"], "model compression": 1.0, "init weight error": 0.0,
                  "acc before fine-tune %": round(100 * base["test_accuracy"], 2),
                  "test acc %": round(100 * base["test_accuracy"], 2), "change (points)": 0.0}]
        for r in rows:
            table.append({"method": r["method"], "budget": f"rank {r['budget']}" if r["method"] == "tt"
                          else f"depth {r['budget']}", "c5+f6 params": r["layer_params"],
                          "c5+f6 compression": round(r["layer_ratio"], 1), "model params": r["params"],
                          "model compression": round(r["model_ratio"], 2),
                          "init weight error": round(r["weight_error"], 3),
                          "acc before fine-tune %": round(100 * r["acc_init"], 2),
                          "test acc %": round(100 * r["acc"], 2),
                          "change (points)": round(100 * (r["acc"] - base["test_accuracy"]), 2)})
        figures = _plot(ctx, base, layer_dense, rows)
        n_test = len(splits.test_x)
        return Result(self.name, self.paper, ctx.mode, {"settings": s},
                      tables={"accuracy vs parameters (c5+f6 = fc1 400->120 and fc2 120->84, biases included)":
                              table},
                      claims=_claims(rows, base["test_accuracy"]), figures=figures,
                      notes=[f"Test accuracy on {n_test} MNIST test images, one seed; the baseline is the "
                             f"{s['preset']} preset ({s['base_epochs']} epochs); every compressed model is "
                             f"fine-tuned {s['finetune_epochs']} epoch(s) at batch {s['finetune_batch']}, "
                             f"peak lr {s['lr']:g}.",
                             "TT: 3 cores per layer, fc1 (4,5,6)x(5,8,10), fc2 (3,4,7)x(4,5,6), every bond capped "
                             "at the rank. ADTN: fc1 padded to 128x512 (Q=16), fc2 to 128x128 (Q=14), "
                             f"16(Q-1) parameters per layer of depth, tanh between layers, {s['fit_steps']} "
                             "least-squares fit steps.",
                             "'init weight error' is the mean relative Frobenius error of the compressed weights "
                             "before fine-tuning; 'model params' counts the whole network (conv layers and the "
                             "output layer stay dense)."])


def _claims(rows: list[dict[str, Any]], base_acc: float) -> list[Claim]:
    tt = [r for r in rows if r["method"] == "tt"]
    adtn = [r for r in rows if r["method"] == "adtn"]
    pairs = []
    for t in tt:
        cands = [a for a in adtn if a["layer_params"] <= t["layer_params"]]
        if cands:
            best = max(cands, key=lambda a: a["acc"])
            pairs.append((t, best))
    if pairs:
        wins = sum(a["acc"] >= t["acc"] for t, a in pairs)
        measured = "; ".join(f"TT rank {t['budget']} ({t['layer_params']:,} params) {100 * t['acc']:.2f}% vs "
                             f"ADTN depth {a['budget']} ({a['layer_params']:,}) {100 * a['acc']:.2f}%"
                             for t, a in pairs) + f"; ADTN at least as accurate in {wins}/{len(pairs)}"
        c1 = Claim("adtn_vs_tt", "the deep TN (ADTN) is more accurate than shallow TNs (TT/MPO) at equal or fewer "
                   "parameters", measured, wins == len(pairs))
    else:
        c1 = Claim("adtn_vs_tt", "the deep TN (ADTN) is more accurate than shallow TNs at equal or fewer parameters",
                   "no ADTN model has as few parameters as any TT model in this grid", None)
    big = [r for r in rows if r["layer_ratio"] >= 10]
    if big:
        best = max(big, key=lambda r: r["acc"])
        change = 100 * (best["acc"] - base_acc)
        per = ", ".join(f"{m}: {max(100 * (r['acc'] - base_acc) for r in big if r['method'] == m):+.2f}"
                        for m in ("tt", "adtn") if any(r["method"] == m for r in big))
        c2 = Claim("accuracy_at_10x", "accuracy is kept (within 0.5 points here) with >= 10x fewer parameters in the "
                   "compressed layers",
                   f"best at >= 10x: {best['label']} ({best['layer_ratio']:.1f}x, {best['layer_params']:,} params) "
                   f"{100 * best['acc']:.2f}% vs uncompressed {100 * base_acc:.2f}% ({change:+.2f} points); "
                   f"best change per method: {per}", change >= -0.5)
    else:
        c2 = Claim("accuracy_at_10x", "accuracy is kept with >= 10x fewer parameters in the compressed layers",
                   "no model in the grid reaches 10x", None)
    return [c1, c2]


def _plot(ctx: Context, base: dict[str, Any], layer_dense: int, rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, key, dense, xlabel in ((axes[0], "layer_params", layer_dense, "parameters in c5 + f6"),
                                   (axes[1], "params", base["params"], "parameters in the whole model")):
        for method, color, marker in (("tt", "tab:blue", "o"), ("adtn", "tab:red", "s")):
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r[key])
            ax.plot([r[key] for r in mine], [100 * r["acc"] for r in mine], color=color, marker=marker,
                    label={"tt": "TT / MPO (shallow)", "adtn": "ADTN (deep brick wall)"}[method])
            for r in mine:
                ax.annotate(("R" if method == "tt" else "M") + str(r["budget"]), (r[key], 100 * r["acc"]),
                            fontsize=7, xytext=(3, -10), textcoords="offset points", color=color)
        ax.scatter([dense], [100 * base["test_accuracy"]], color="black", marker="*", s=90, zorder=3,
                   label="uncompressed")
        ax.axhline(100 * base["test_accuracy"] - 0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set(xscale="log", xlabel=xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("test accuracy % (dotted: uncompressed - 0.5)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("LeNet-5 / MNIST: tensor-network compression of c5 and f6, after fine-tuning")
    fig.tight_layout()
    fig.savefig(ctx.out / "accuracy_vs_params.png", dpi=110)
    plt.close(fig)
    return ["accuracy_vs_params.png"]
