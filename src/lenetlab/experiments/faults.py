"""``lenetlab reproduce faults``: fault resilience of an int8 LeNet-5 by selective neuron splitting
(Ahmadilivani et al. 2023, PAPERS.md section 6).

Pipeline: train a LeNet-5 (fast preset), quantise it to int8
(:mod:`lenetlab.quant`), compute every neuron's NVF analytically
(:mod:`lenetlab.faults.nvf`) and validate it against an accumulator campaign
(Spearman rank correlation), then harden the top-k% neurons by NVF (k in 5,
10, 20, 50) by neuron splitting or by selective TMR
(:mod:`lenetlab.faults.harden`) and measure, for none / split / TMR at each k:

- overhead: extra MACs and extra parameter bytes per inference;
- resilience: SDC rate (top-1 change vs fault-free) under a fixed bit-error
  rate in every int32 accumulator (copies included: a hardened model also has
  more bits that can fail), with a 95% Wilson interval, and test accuracy over
  a BER sweep.

Claim checked from the data: "splitting reaches similar resilience to selective
TMR at about half the overhead" - at each k, split's SDC reduction (vs none)
is at least 80% of TMR's and its extra MACs are 40-60% of TMR's; supported when
that holds for at least 3 of the 4 k values.

Quick mode (default): full-MNIST fast-preset training (2 epochs), NVF on 16
images, validation with 2 positions per neuron and bit, resilience on 500
images x 16 fault draws per BER point: 1 min 42 s on the 2-core machine (one torch thread, load ~3 from
other jobs).
``--full``: 64 NVF images, 4 positions, 1000 images x 40 draws.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lenetlab.experiments.base import Claim, Context, Experiment, Result
from lenetlab.registry import register

FIXED_BER = 2e-4
BER_SWEEP = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:
        return {"train": {"data": {"train_subset": 1000, "test_subset": 200}, "train": {"epochs": 1}},
                "nvf_images": 2, "validate": 1, "images": 32, "draws": 2, "ks": [10, 50], "sweep": [1e-4, 1e-3]}
    if full:
        return {"train": {}, "nvf_images": 64, "validate": 4, "images": 1000, "draws": 40, "ks": [5, 10, 20, 50],
                "sweep": BER_SWEEP}
    return {"train": {}, "nvf_images": 16, "validate": 2, "images": 500, "draws": 16, "ks": [5, 10, 20, 50],
            "sweep": BER_SWEEP}


def acc_ber_predictions(engine, x0: np.ndarray, ber: float, draws: int, seed: int) -> np.ndarray:
    """Top-1 (draws, M) with every accumulator bit (copies included) flipped independently at rate ``ber``."""
    from lenetlab.faults.models import ber_flip

    rng = np.random.default_rng(seed)
    hooks = {j: (lambda a: ber_flip(a, 32, ber, rng)) for j in range(len(engine.stages))}
    out = []
    for _ in range(draws):
        out.append(np.argmax(engine.forward(x0, acc_hooks=hooks), axis=1))
    return np.stack(out)


def resilience(engine, x0: np.ndarray, labels: np.ndarray, clean_pred: np.ndarray, s: dict[str, Any]
               ) -> dict[str, Any]:
    from lenetlab.faults.campaign import wilson

    pred = acc_ber_predictions(engine, x0, FIXED_BER, s["draws"], seed=1)
    k, n = int((pred != clean_pred[None]).sum()), pred.size
    lo, hi = wilson(k, n)
    sweep = []
    for i, ber in enumerate(s["sweep"]):
        p = acc_ber_predictions(engine, x0, ber, max(2, s["draws"] // 2), seed=100 + i)
        sweep.append({"ber": ber, "accuracy": float((p == labels[None]).mean()),
                      "sdc": float((p != clean_pred[None]).mean())})
    return {"sdc": k / n, "sdc_ci95": [lo, hi], "trials": n, "sweep": sweep}


@register("experiment", "faults")
class FaultStudy(Experiment):
    """Ahmadilivani et al. 2023: int8 LeNet-5 under bit flips, NVF, neuron splitting vs selective TMR."""

    name = "faults"
    paper = "Ahmadilivani et al. 2023, fault resilience of QNNs by selective neuron splitting (PAPERS.md section 6)"
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        from lenetlab.data.datasets import load_raw
        from lenetlab.deploy import flat
        from lenetlab.deploy.export import build_flat
        from lenetlab.faults.harden import harden, overhead, top_neurons
        from lenetlab.faults.nvf import nvf_report
        from lenetlab.quant.engine import IntEngine, blas_threads
        from lenetlab.train import fit
        from lenetlab.train.presets import resolve

        s = ctx.resolve_settings(settings(ctx.full, ctx.tiny))
        run_dir = ctx.out / "run"

        def train() -> dict[str, Any]:
            r = fit(resolve("fast", "lenet5", overrides=s["train"] or None), out=run_dir, force=True, log=None,
                    progress=False)
            return {"test_accuracy": r["test_accuracy"]}

        trained = ctx.cells.get_or_run("train", train)
        qpath = ctx.out / "model_int8.flat"
        if not qpath.is_file():
            from lenetlab.fileio import atomic_write_bytes
            from lenetlab.rundir import load_model

            model, cfg = load_model(run_dir)
            model.eval()
            atomic_write_bytes(qpath, flat.encode(build_flat(model, cfg, int8=True)))
        fm = flat.load(str(qpath))
        engine = IntEngine(fm)
        _, _, test_x, test_y = load_raw("mnist")
        x_res, y_res = np.ascontiguousarray(test_x[: s["images"]]), test_y[: s["images"]]
        with blas_threads(1):
            int8_acc = ctx.cells.get_or_run("int8_accuracy", lambda: {
                "accuracy": float((engine.predict(test_x) == test_y).mean())})["accuracy"]

            def nvf_cell() -> dict[str, Any]:
                t0 = time.perf_counter()
                rep = nvf_report(engine, np.ascontiguousarray(test_x[: s["nvf_images"]]), validate=s["validate"])
                rep["seconds"] = time.perf_counter() - t0
                return rep

            nvf = ctx.cells.get_or_run("nvf", nvf_cell)
            ctx.log(f"NVF of {len(nvf['neurons'])} neurons: Spearman vs campaign {nvf['spearman']:.3f} "
                    f"({nvf['seconds']:.0f}s)")
            x0 = engine.input(x_res)
            clean = np.argmax(engine.forward(x0), axis=1)
            ops = {j: st.op for j, st in enumerate(engine.stages)}
            rows = []
            configs = [("none", 0)] + [(m, k) for k in s["ks"] for m in ("split", "tmr")]
            for mode, k in configs:
                def cell(mode=mode, k=k) -> dict[str, Any]:
                    eng = engine if mode == "none" else harden(engine, top_neurons(nvf["neurons"], k, ops), mode)
                    t0 = time.perf_counter()
                    r = resilience(eng, x0, y_res, clean, s)
                    return {**overhead(engine, eng), **r, "seconds": time.perf_counter() - t0}

                r = ctx.cells.get_or_run(f"harden/{mode}/{k}", cell)
                rows.append({"method": mode, "k": k, **r})
                ctx.log(f"{mode:5s} k={k:2d}%  +MACs {r['extra_macs_%']:6.2f}%  "
                        f"+bytes {r['extra_param_bytes_%']:6.2f}%  SDC@BER {100 * r['sdc']:.2f}%  "
                        f"({r['seconds']:.0f}s)")
        figures = _plot(ctx, rows, s)
        table = [{"method": r["method"], "k_%": r["k"], "protected": r["protected"],
                  "extra_MACs": r["extra_macs"], "extra_MACs_%": round(r["extra_macs_%"], 2),
                  "extra_bytes": r["extra_param_bytes"], "extra_bytes_%": round(r["extra_param_bytes_%"], 2),
                  f"SDC_%@BER{FIXED_BER:g}": round(100 * r["sdc"], 3),
                  "SDC_ci95_%": f"[{100 * r['sdc_ci95'][0]:.2f}, {100 * r['sdc_ci95'][1]:.2f}]",
                  **{f"acc@{p['ber']:g}": round(100 * p["accuracy"], 2) for p in r["sweep"]}} for r in rows]
        layer_table = [{k: (None if v != v else round(v, 5)) if isinstance(v, float) else v for k, v in la.items()}
                       for la in nvf["layers"]]   # NaN (a constant layer has no rank correlation) -> None
        return Result(self.name, self.paper, ctx.mode,
                      {"settings": s, "fixed_ber": FIXED_BER, "fault_site": "int32 accumulators (all layers)"},
                      tables={"overhead vs resilience (accumulator bit flips)": table,
                              "NVF per layer (analytic) vs measured SDC per neuron": layer_table},
                      claims=_claims(rows, nvf, s), figures=figures,
                      notes=[f"float test accuracy {100 * trained['test_accuracy']:.2f}%, int8 {100 * int8_acc:.2f}% "
                             "(both on the 10k test set)",
                             f"SDC at BER {FIXED_BER:g} on {s['images']} test images x {s['draws']} draws; the "
                             "sweep uses half the draws.",
                             "Splitting is realised in integers as two identical half-scale copies and a 2 x min "
                             "correction unit (reconstructed from the paper's description); TMR as three copies and "
                             "a bitwise majority voter, both merged on the int32 accumulators.",
                             "Neurons are conv output channels and dense units; the top-k% is over all of them."])


def _claims(rows: list[dict[str, Any]], nvf: dict[str, Any], s: dict[str, Any]) -> list[Claim]:
    none = next(r for r in rows if r["method"] == "none")
    verdicts, parts = [], []
    for k in s["ks"]:
        sp = next(r for r in rows if r["method"] == "split" and r["k"] == k)
        tm = next(r for r in rows if r["method"] == "tmr" and r["k"] == k)
        red_s, red_t = none["sdc"] - sp["sdc"], none["sdc"] - tm["sdc"]
        ratio_o = sp["extra_macs"] / tm["extra_macs"] if tm["extra_macs"] else float("nan")
        similar = red_t > 0 and red_s >= 0.8 * red_t
        half = 0.4 <= ratio_o <= 0.6
        verdicts.append(similar and half)
        parts.append(f"k={k}%: SDC none {100 * none['sdc']:.2f}% split {100 * sp['sdc']:.2f}% tmr "
                     f"{100 * tm['sdc']:.2f}% (split keeps {100 * red_s / red_t if red_t > 0 else float('nan'):.0f}% "
                     f"of TMR's reduction), extra MACs split/TMR {ratio_o:.2f}")
    c1 = Claim("split_matches_tmr_at_half_cost",
               "splitting reaches resilience similar to selective TMR at about half the overhead",
               "; ".join(parts) + f" -> holds at {sum(verdicts)}/{len(verdicts)} k values",
               sum(verdicts) >= (3 if len(verdicts) >= 4 else len(verdicts)))
    rho = nvf.get("spearman", float("nan"))
    per_layer = ", ".join(f"{la['name']} {la.get('spearman', float('nan')):.2f}" for la in nvf["layers"])
    c2 = Claim("nvf_ranks_neurons",
               "the analytic NVF ranks neurons by criticality like a fault-injection campaign (rho >= 0.7)",
               f"Spearman rho {rho:.3f} over {len(nvf['neurons'])} neurons (within layers: {per_layer})",
               None if rho != rho else bool(rho >= 0.7))
    return [c1, c2]


def _plot(ctx: Context, rows: list[dict[str, Any]], s: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    none = next(r for r in rows if r["method"] == "none")
    ax = axes[0]
    for mode, color in (("split", "tab:blue"), ("tmr", "tab:red")):
        mine = [r for r in rows if r["method"] == mode]
        xs = [r["extra_macs_%"] for r in mine]
        ys = [100 * r["sdc"] for r in mine]
        err = [[100 * (r["sdc"] - r["sdc_ci95"][0]) for r in mine], [100 * (r["sdc_ci95"][1] - r["sdc"]) for r in mine]]
        ax.errorbar(xs, ys, yerr=err, color=color, marker="o", capsize=3, label=mode)
        for r, x, y in zip(mine, xs, ys):
            ax.annotate(f"k={r['k']}%", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(100 * none["sdc"], color="black", linestyle="--", label="unhardened")
    ax.set(xlabel="extra MACs %", ylabel=f"SDC rate % at accumulator BER {FIXED_BER:g}",
           title="overhead vs resilience")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1]
    for r in rows:
        if r["method"] != "none" and r["k"] not in (max(s["ks"]), min(s["ks"])):
            continue
        style = "-" if r["method"] == "split" else ("--" if r["method"] == "tmr" else ":")
        ax.plot([p["ber"] for p in r["sweep"]], [100 * p["accuracy"] for p in r["sweep"]], style, marker=".",
                label=f"{r['method']} k={r['k']}%" if r["method"] != "none" else "unhardened")
    ax.set(xscale="log", xlabel="accumulator bit-error rate", ylabel="test accuracy %", title="accuracy vs BER")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.out / "overhead_vs_resilience.png", dpi=110)
    plt.close(fig)
    return ["overhead_vs_resilience.png"]
