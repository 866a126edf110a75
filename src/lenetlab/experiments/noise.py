"""``lenetlab reproduce noise``: hardening against noisy computation (Wang, Borras, Klein, Froening 2025,
PAPERS.md section 2).

Models, each trained on MNIST and then evaluated with absolute Gaussian noise
after every layer (input, conv, activation, pool, linear incl. logits) on the
17-point grid sigma = 10^(-2 + k/4), k = 0..16, with several noise draws per
point (:func:`lenetlab.noise.noisy_accuracy`, vectorised over draws):

- ``float``: the plain baseline;
- ``qat{b}_s{s}``: constant-scale QAT (:mod:`lenetlab.noise.qat`) at b bits and
  activation scale s, evaluated with its fake-quant on;
- ``noisy{sigma}``: noisy training (the same noise on while training, sigma
  ramped up linearly over the first quarter of training).

Two architectures: ``lenet5`` (61,706 parameters) and the larger
``lenet5`` with ``width=2`` (every hidden width doubled, ~4x the MACs).

Robustness figures per model: ``sigma90`` = the largest grid sigma up to which
mean accuracy stays >= 90% (absolute accuracy, every smaller grid point too),
and ``auc`` = the area under accuracy vs log10(sigma) divided by the width of
the grid (4 decades), i.e. the mean accuracy over the log-sigma range (1 = perfect).

Claims, from the AUCs:

- ``qat_beats_float``: the best constant-scale QAT model beats the float
  baseline on both architectures;
- ``noisy_beats_qat``: the best noisy-trained model beats the best QAT model on
  both architectures;
- ``noisy_gain_larger_net``: the noisy-training margin over QAT is larger on
  the larger architecture.

Quick mode (default): 12k training images, 3 epochs, 1000 test images, 5
draws, bits {4, 8} x scales {0.5, 2, 8}, sigma_train {0.1, 0.3, 1.0}, one seed
(about 5 minutes on 2 cores). ``--full``: 55k images, 10 epochs, the 10k test
set, 10 draws, bits {4, 8, 16} x scales {0.25, 1, 4, 16, 64}, sigma_train
{0.03, 0.1, 0.3, 1.0}.
"""

from __future__ import annotations

import math
from typing import Any

from lenetlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from lenetlab.experiments.base import Claim, Context, Experiment, Result
from lenetlab.registry import register

ARCHS = {"lenet5": ("lenet5", {}), "lenet5_w2": ("lenet5", {"width": 2.0})}
SIGMA_GRID = [10 ** (-2 + k / 4) for k in range(17)]


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:   # tests only: every code path, meaningless numbers
        return {"train_subset": 500, "test_subset": 200, "epochs": 1, "draws": 2, "bits": [4], "scales": [1.0],
                "train_sigmas": [0.3], "sigmas": [0.01, 0.1, 1.0], "ramp": 0.25}
    if full:
        return {"train_subset": None, "test_subset": None, "epochs": 10, "draws": 10, "bits": [4, 8, 16],
                "scales": [0.25, 1.0, 4.0, 16.0, 64.0], "train_sigmas": [0.03, 0.1, 0.3, 1.0],
                "sigmas": SIGMA_GRID, "ramp": 0.25}
    return {"train_subset": 12000, "test_subset": 1000, "epochs": 3, "draws": 5, "bits": [4, 8],
            "scales": [0.5, 2.0, 8.0], "train_sigmas": [0.1, 0.3, 1.0], "sigmas": SIGMA_GRID, "ramp": 0.25}


def variants(s: dict[str, Any]) -> list[dict[str, Any]]:
    """(label, method, train-config overrides) for every model of the grid."""
    out = [{"label": "float", "method": "float", "train": {}}]
    out += [{"label": f"qat{b}_s{sc:g}", "method": "qat", "train": {"qat_bits": b, "act_scale": sc}}
            for b in s["bits"] for sc in s["scales"]]
    out += [{"label": f"noisy{sg:g}", "method": "noisy",
             "train": {"train_noise": sg, "train_noise_ramp": s["ramp"]}} for sg in s["train_sigmas"]]
    return out


def run_config(arch: str, train: dict[str, Any], s: dict[str, Any]) -> RunConfig:
    name, options = ARCHS[arch]
    data = DataConfig(val_size=0, train_subset=s["train_subset"], test_subset=s["test_subset"])
    tc = TrainConfig(epochs=s["epochs"], batch_size=128, seed=0, eval_test_every_epoch=False, grad_norms=False,
                     **train)
    return RunConfig(model=ModelConfig(name, dict(options)), data=data, train=tc)


def robustness(sigmas: list[float], accs: list[float]) -> tuple[float | None, float]:
    """(sigma90, normalised AUC over log10 sigma) of one accuracy-vs-sigma curve."""
    sigma90 = None
    for sg, a in zip(sigmas, accs):
        if a < 0.9:
            break
        sigma90 = sg
    xs = [math.log10(sg) for sg in sigmas]
    area = sum((xs[i + 1] - xs[i]) * (accs[i] + accs[i + 1]) / 2 for i in range(len(xs) - 1))
    width = xs[-1] - xs[0]
    return sigma90, (area / width if width > 0 else accs[0])


@register("experiment", "noise")
class NoiseStudy(Experiment):
    """Wang et al. 2025: noise injection, constant-scale QAT and noisy training on LeNet-5 and a wider LeNet."""

    name = "noise"
    paper = "Wang, Borras, Klein, Froening 2025, hardening DNNs against noisy computations (PAPERS.md section 2)"
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        from lenetlab.data import load_splits
        from lenetlab.models import param_count
        from lenetlab.noise.inject import noisy_accuracy
        from lenetlab.noise.training import apply_eval_qat
        from lenetlab.train import fit

        s = ctx.resolve_settings(settings(ctx.full, ctx.tiny))
        splits = None
        rows: list[dict[str, Any]] = []
        grid = [(arch, v) for arch in ARCHS for v in variants(s)]
        for i, (arch, v) in enumerate(grid):

            def cell(arch=arch, v=v) -> dict[str, Any]:
                nonlocal splits
                cfg = run_config(arch, v["train"], s)
                if splits is None:
                    splits = load_splits(cfg.data)
                r = fit(cfg, splits=splits, log=None, progress=False)
                model = r["_model"]
                qat = apply_eval_qat(model, cfg.train)
                curve = []
                for j, sg in enumerate(s["sigmas"]):
                    a = noisy_accuracy(model, splits.test_x, splits.test_y, sg, s["draws"], seed=1000 + j)
                    curve.append({"sigma": sg, "mean": a["mean"], "std": a["std"]})
                if qat is not None:
                    qat.remove()
                return {"clean": r["test_accuracy"], "params": param_count(model), "train_seconds": r["wall_seconds"],
                        "curve": curve}

            row = ctx.cells.get_or_run(f"model/{arch}/{v['label']}", cell)
            accs = [c["mean"] for c in row["curve"]]
            sigma90, auc = robustness(s["sigmas"], accs)
            rows.append({"arch": arch, "label": v["label"], "method": v["method"], **row,
                         "sigma90": sigma90, "auc": auc})
            ctx.log(f"[{i + 1}/{len(grid)}] {arch:9s} {v['label']:12s} clean {100 * row['clean']:.2f}%  "
                    f"sigma90 {sigma90 if sigma90 is None else round(sigma90, 4)}  auc {auc:.3f}  "
                    f"({row['train_seconds']:.1f}s training)")

        robust_table = [{"arch": r["arch"], "model": r["label"], "params": r["params"],
                         "clean_acc_%": round(100 * r["clean"], 2),
                         "sigma90": "< %g" % s["sigmas"][0] if r["sigma90"] is None else round(r["sigma90"], 4),
                         "auc": round(r["auc"], 4)} for r in rows]
        curve_table = [{"arch": r["arch"], "model": r["label"],
                        **{f"{c['sigma']:.3g}": round(100 * c["mean"], 1) for c in r["curve"]}} for r in rows]
        figures = _plot(ctx, s, rows)
        return Result(self.name, self.paper, ctx.mode,
                      {"settings": s, "archs": {k: {"model": n, "options": o} for k, (n, o) in ARCHS.items()},
                       "noise": "absolute, after input/conv/act/pool/linear (logits included)"},
                      tables={"robustness (sigma90: largest sigma with >= 90% accuracy; auc: mean accuracy over "
                              "log10 sigma)": robust_table,
                              "accuracy % vs sigma (mean over draws)": curve_table},
                      claims=_claims(rows), figures=figures,
                      notes=[f"Accuracy on {s['test_subset'] or 10000} test images, {s['draws']} noise draws per "
                             "sigma; QAT models are evaluated with their fake-quant on.",
                             "Larger architecture: lenet5 with width=2 (hidden widths 12, 32, 240, 168).",
                             f"Noisy training ramps sigma linearly from 0 over the first {s['ramp']:.0%} of steps."])


def _best(rows: list[dict[str, Any]], arch: str, method: str) -> dict[str, Any]:
    return max((r for r in rows if r["arch"] == arch and r["method"] == method), key=lambda r: r["auc"])


def _claims(rows: list[dict[str, Any]]) -> list[Claim]:
    archs = list(ARCHS)
    best = {(a, m): _best(rows, a, m) for a in archs for m in ("float", "qat", "noisy")}

    def desc(a: str, m: str) -> str:
        r = best[(a, m)]
        return f"{r['label']} auc {r['auc']:.3f}"

    c1 = Claim("qat_beats_float", "QAT with constant scaling improves noise tolerance over the float baseline",
               "; ".join(f"{a}: best QAT {desc(a, 'qat')} vs {desc(a, 'float')}" for a in archs),
               all(best[(a, "qat")]["auc"] > best[(a, "float")]["auc"] for a in archs))
    c2 = Claim("noisy_beats_qat", "noisy training improves noise tolerance more than QAT (the best approach)",
               "; ".join(f"{a}: best noisy {desc(a, 'noisy')} vs best QAT {desc(a, 'qat')}" for a in archs),
               all(best[(a, "noisy")]["auc"] > best[(a, "qat")]["auc"] for a in archs))
    margin = {a: best[(a, "noisy")]["auc"] - best[(a, "qat")]["auc"] for a in archs}
    c3 = Claim("noisy_gain_larger_net", "the advantage of noisy training is larger for larger architectures",
               "auc margin noisy - QAT: " + ", ".join(f"{a} {m:+.3f}" for a, m in margin.items()),
               margin[archs[1]] > margin[archs[0]])
    return [c1, c2, c3]


def _plot(ctx: Context, s: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(ARCHS)
    fig, axes = plt.subplots(1, len(archs), figsize=(13, 5), sharey=True)
    cmaps = {"qat": plt.get_cmap("Blues"), "noisy": plt.get_cmap("Reds")}
    for ax, arch in zip(axes, archs):
        mine = [r for r in rows if r["arch"] == arch]
        counts = {m: sum(r["method"] == m for r in mine) for m in ("qat", "noisy")}
        seen = {"qat": 0, "noisy": 0}
        for r in mine:
            xs = [c["sigma"] for c in r["curve"]]
            ms = [100 * c["mean"] for c in r["curve"]]
            sds = [100 * c["std"] for c in r["curve"]]
            if r["method"] == "float":
                color, style, lw = "black", "-", 2.2
            else:
                seen[r["method"]] += 1
                color = cmaps[r["method"]](0.35 + 0.6 * seen[r["method"]] / counts[r["method"]])
                style, lw = ("--", 1.3) if r["method"] == "qat" else ("-", 1.6)
            ax.errorbar(xs, ms, yerr=sds, color=color, linestyle=style, linewidth=lw, marker=".", capsize=2,
                        label=f"{r['label']} (auc {r['auc']:.2f})")
        ax.axhline(90, color="grey", linewidth=0.8, linestyle=":")
        ax.set(xscale="log", xlabel="noise sigma (absolute, after every layer)", ylim=(0, 100),
               title=f"{arch}: accuracy vs noise ({s['draws']} draws, mean +- std)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("test accuracy %")
    fig.tight_layout()
    fig.savefig(ctx.out / "accuracy_vs_sigma.png", dpi=110)
    plt.close(fig)
    return ["accuracy_vs_sigma.png"]
