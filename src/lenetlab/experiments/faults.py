"""``lenetlab reproduce faults``: fault resilience of an int8 LeNet-5 by selective neuron splitting
(Ahmadilivani et al. 2023; method note docs/papers/faults.md).

Pipeline, for each of several training seeds: train a LeNet-5 (fast
preset), quantise it to int8 (:mod:`lenetlab.quant`), compute every neuron's
NVF analytically (:mod:`lenetlab.faults.nvf`) and validate it against an
accumulator campaign (Spearman rank correlation), then harden the top-k%
neurons by NVF (k in 5, 10, 20, 50) by neuron splitting or by selective TMR
(:mod:`lenetlab.faults.harden`) and measure, for none / split / TMR at each k:

- overhead: extra MACs, correction-unit / voter operations
  (``checker_ops``) and extra parameter bytes per inference;
- resilience: per test image, how many of ``draws`` fault draws at a fixed
  bit-error rate in every int32 accumulator (copies included) changed its
  top-1 (:mod:`lenetlab.faults.resilience`), and test accuracy over a BER
  sweep.

Claims (``claims`` takes the cells; docs/papers/faults.md has the rules):

- ``split_matches_tmr_at_half_cost``: holds only if all three legs do -
  resilience (over the k values, split keeps more than 80% of TMR's SDC
  reduction: the 95% bootstrap interval over models and images of
  ``0.2 none + 0.8 TMR - split`` lies above 0), operations (split's extra
  MACs + LCU operations over TMR's extra MACs + voter operations, t interval
  over models, inside [0.4, 0.6]) and bytes (the same for extra parameter
  bytes);
- ``nvf_ranks_neurons``: Spearman rho, t interval over models, above 0.7;
- ``split_needs_no_redesign``: a hardware-design statement, not testable here.

Quick mode (default): 3 seeds, 30k training images (fast preset, 2 epochs),
NVF on 16 images, validation with 2 positions per neuron and bit, resilience
on 500 images x 16 fault draws. ``--full``: 5 seeds, all 60k images, 64 NVF
images, 4 positions, 1000 images x 40 draws.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from lenetlab.experiments import stats
from lenetlab.experiments.base import Claim, Context, Experiment, Result, Timings, timing
from lenetlab.faults.resilience import acc_ber_predictions  # noqa: F401  (re-exported: experiments/matrix uses it)
from lenetlab.fileio import save_figure
from lenetlab.registry import register

FIXED_BER = 2e-4
BER_SWEEP = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
KEEP = 0.8            # "similar resilience": split keeps more than this share of TMR's SDC reduction
HALF = (0.4, 0.6)     # "about half the overhead": split / TMR inside this range


@dataclass(frozen=True)
class Settings:
    """What one mode runs."""

    seeds: list[int]                   # training seeds: one trained and quantised model each
    train: dict[str, Any]              # overrides of the fast preset (config sections)
    nvf_images: int
    validate: int                      # campaign positions per neuron and bit for the NVF check
    images: int                        # test images of the resilience measurement
    draws: int                         # fault draws per image at FIXED_BER (the sweep uses half)
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    sweep: list[float] = field(default_factory=lambda: list(BER_SWEEP))


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:
        s = Settings([0], {"data": {"train_subset": 1000, "test_subset": 200}, "train": {"epochs": 1}},
                     2, 1, 32, 2, [10, 50], [1e-4, 1e-3])
    elif full:
        s = Settings([0, 1, 2, 3, 4], {}, 64, 4, 1000, 40)
    else:
        s = Settings([0, 1, 2], {"data": {"train_subset": 30000}}, 16, 2, 500, 16)
    return dataclasses.asdict(s)


@register("experiment", "faults")
class FaultStudy(Experiment):
    """Ahmadilivani et al. 2023: int8 LeNet-5 under bit flips, NVF, neuron splitting vs selective TMR."""

    name = "faults"
    cost = 4   # scheduling hint for reproduce all --jobs (rough quick-mode CPU share)
    paper = "Ahmadilivani et al. 2023, fault resilience of QNNs by selective neuron splitting"
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        from lenetlab.data.datasets import load_raw
        from lenetlab.quant.engine import blas_threads

        s = Settings(**ctx.resolve_settings(settings(ctx.full, ctx.tiny)))
        _, _, test_x, test_y = load_raw("mnist")
        runs = []
        # every seed's training side by side where there is a runner (Ray); each seed's hardening cells too
        ctx.cells.prefetch((f"train/s{seed}", partial(_train_cell, s, seed, ctx.out / f"run_s{seed}"))
                           for seed in s.seeds)
        with blas_threads(1):
            for seed in s.seeds:
                runs.append(_one_model(ctx, s, seed, test_x, test_y))
        configs = [("none", 0)] + [(m, k) for k in s.ks for m in ("split", "tmr")]
        table = _table(runs, configs, s)
        claim_list, legs = claims(runs, s.ks, min_seeds=stats.min_seeds(ctx.full))
        models = [{"seed": sd, "float_acc_%": round(100 * r["test_accuracy"], 2),
                   "int8_acc_%": round(100 * r["int8_accuracy"], 2), "nvf_spearman": _round(r["spearman"])}
                  for sd, r in zip(s.seeds, runs)]
        layer_table = [{"seed": sd, **{k: _round(v) if isinstance(v, float) else v for k, v in la.items()}}
                       for sd, r in zip(s.seeds, runs) for la in r["nvf_layers"]]
        figures = _plot(ctx, table, s)
        return Result(self.name, self.paper, ctx.mode,
                      {"settings": dataclasses.asdict(s), "fixed_ber": FIXED_BER,
                       "fault_site": "int32 accumulators (all layers)"},
                      tables={"overhead vs resilience (accumulator bit flips), over the trained models": table,
                              "claim legs (each k, and over all k)": legs,
                              "trained models": models,
                              "NVF per layer (analytic) vs measured SDC per neuron": layer_table},
                      claims=claim_list, figures=figures,
                      metrics={f"sdc_{m}_{k}": row["SDC_%"] / 100 for (m, k), row in zip(configs, table)},
                      notes=[f"{len(s.seeds)} models (seeds {s.seeds}), each trained, quantised to int8 and hardened "
                             "on its own NVF ranking; accuracies on the 10k test set.",
                             f"SDC at BER {FIXED_BER:g} on {s.images} test images x {s.draws} draws per model; "
                             "'SDC_ci95' is the Wilson interval of the pooled trials (images x draws x models, "
                             "read as independent), 'SDC_boot95' the bootstrap over models and images the claims "
                             "use. The sweep uses half the draws.",
                             "Overhead: extra operations = extra MACs + correction-unit / voter operations per "
                             "inference (LCU: 1 min per protected output value; TMR voter: 3 AND + 2 OR), each "
                             "counted as one operation; extra bytes = int8 weights + int32 bias of the copies. "
                             "Split's extra MACs and bytes are exactly half of TMR's (one copy against two), so "
                             "the overhead legs mostly confirm the construction; the resilience leg is the test.",
                             "Splitting is realised in integers as two identical half-scale copies and a 2 x min "
                             "correction unit (reconstructed from the paper's description); TMR as three copies and "
                             "a bitwise majority voter, both merged on the int32 accumulators.",
                             "Neurons are conv output channels and dense units; the top-k% is over all of them."],
                      timings=Timings(tables={"time per cell (s): NVF ranking, SDC + BER sweep per configuration": [
                          {"seed": sd, **{k: None if v is None else round(v, 2) for k, v in r["seconds"].items()}}
                          for sd, r in zip(s.seeds, runs)]}))


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, 5)


def _train_cell(s: Settings, seed: int, run_dir) -> dict[str, Any]:
    """Train the model of one seed (a cell; module level, so a runner such as Ray can take it)."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    over = {**s.train, "train": {**s.train.get("train", {}), "seed": seed}}
    r = fit(resolve("fast", "lenet5", overrides=over), out=run_dir, force=True, log=None, progress=False)
    return {"test_accuracy": r["test_accuracy"]}


def _harden_cell(s: Settings, qpath, neurons: list[dict[str, Any]], mode: str, k: int) -> dict[str, Any]:
    """The SDC counts and BER sweep of the int8 model at ``qpath``, hardened by ``mode`` on its top ``k``% NVF
    neurons (``none``: as it is) - a cell; module level, so a runner such as Ray can take it."""
    from lenetlab.data.datasets import load_raw
    from lenetlab.deploy import flat
    from lenetlab.faults.harden import harden, overhead, top_neurons
    from lenetlab.faults.resilience import ber_sweep, sdc_counts
    from lenetlab.quant.engine import IntEngine, blas_threads

    _, _, test_x, test_y = load_raw("mnist")
    with blas_threads(1):
        engine = IntEngine(flat.load(str(qpath)))
        x0 = engine.input(np.ascontiguousarray(test_x[: s.images]))
        labels = test_y[: s.images]
        clean = np.argmax(engine.forward(x0), axis=1)
        ops = {j: st.op for j, st in enumerate(engine.stages)}
        eng = engine if mode == "none" else harden(engine, top_neurons(neurons, k, ops), mode)
        t0 = time.perf_counter()
        counts = sdc_counts(eng, x0, FIXED_BER, s.draws, seed=1, clean=clean)
        sweep = ber_sweep(eng, x0, labels, clean, s.sweep, max(2, s.draws // 2))
        return {**overhead(engine, eng), "sdc_counts": counts.tolist(), "draws": s.draws, "sweep": sweep,
                "timings": {"seconds": time.perf_counter() - t0}}


def _one_model(ctx: Context, s: Settings, seed: int, test_x: np.ndarray, test_y: np.ndarray) -> dict[str, Any]:
    """Train, quantise, rank and harden the model of one seed; every step a cell."""
    from lenetlab.deploy import flat
    from lenetlab.deploy.export import build_flat
    from lenetlab.faults.nvf import nvf_report
    from lenetlab.quant.engine import IntEngine

    run_dir = ctx.out / f"run_s{seed}"
    trained = ctx.cells.get_or_run(f"train/s{seed}", partial(_train_cell, s, seed, run_dir))
    qpath = ctx.out / f"model_int8_s{seed}.flat"
    if not qpath.is_file():
        from lenetlab.fileio import atomic_write_bytes
        from lenetlab.rundir import load_model

        model, cfg = load_model(run_dir)
        model.eval()
        atomic_write_bytes(qpath, flat.encode(build_flat(model, cfg, int8=True)))
    engine = IntEngine(flat.load(str(qpath)))
    int8_acc = ctx.cells.get_or_run(f"int8_accuracy/s{seed}", lambda: {
        "accuracy": float((engine.predict(test_x) == test_y).mean())})["accuracy"]

    def nvf_cell() -> dict[str, Any]:
        t0 = time.perf_counter()
        rep = nvf_report(engine, np.ascontiguousarray(test_x[: s.nvf_images]), validate=s.validate)
        rep["timings"] = {"seconds": time.perf_counter() - t0}
        return rep

    nvf = ctx.cells.get_or_run(f"nvf/s{seed}", nvf_cell)
    ctx.log(f"[seed {seed}] float {100 * trained['test_accuracy']:.2f}%, int8 {100 * int8_acc:.2f}%; NVF of "
            f"{len(nvf['neurons'])} neurons: Spearman vs campaign {nvf.get('spearman', float('nan')):.3f} "
            f"({timing(nvf, 'seconds', 0.0):.0f}s)")
    grid = [("none", 0)] + [(m, k) for k in s.ks for m in ("split", "tmr")]
    jobs = {(mode, k): (f"harden/s{seed}/{mode}/{k}", partial(_harden_cell, s, qpath, nvf["neurons"], mode, k))
            for mode, k in grid}
    ctx.cells.prefetch(jobs.values())
    configs: dict[str, dict[str, Any]] = {}
    for mode, k in grid:
        r = ctx.cells.get_or_run(*jobs[(mode, k)])
        configs[f"{mode}/{k}"] = r
        ctx.log(f"[seed {seed}] {mode:5s} k={k:2d}%  +ops {r['extra_ops_%']:6.2f}%  +bytes "
                f"{r['extra_param_bytes_%']:6.2f}%  SDC@BER {100 * sum(r['sdc_counts']) / (s.draws * s.images):.2f}%"
                f"  ({timing(r, 'seconds', 0.0):.0f}s)")
    return {"test_accuracy": trained["test_accuracy"], "int8_accuracy": int8_acc, "configs": configs,
            "spearman": nvf.get("spearman", float("nan")), "nvf_layers": nvf["layers"],
            "seconds": {"nvf": timing(nvf, "seconds"), **{c: timing(r, "seconds") for c, r in configs.items()}}}


# ------------------------------------------------------------------ claims
def _rate(cell: dict[str, Any]) -> np.ndarray:
    """Per-image SDC rate (share of the draws that corrupted the image), a score in [0, 1]."""
    return np.asarray(cell["sdc_counts"], dtype=np.float64) / cell["draws"]


def _all_of(name: str, statement: str, parts: list[tuple[str, stats.Rule, stats.Estimate]],
            min_seeds: int) -> Claim:
    """One claim that holds only if every leg in ``parts`` does, decided by its weakest leg (one not
    supported, else an inconclusive one, else the first), every leg listed in ``measured``."""
    rank = {stats.NOT_SUPPORTED: 0, stats.INCONCLUSIVE: 1, stats.SUPPORTED: 2}
    decided = [(rule.decide(est), label, rule, est) for label, rule, est in parts]
    verdict, label, rule, est = min(decided, key=lambda t: rank[t[0]])
    text = "; ".join(f"{lb}: {e.format(r.scale, r.unit)} {v}" for v, lb, r, e in decided)
    claim = stats.make_claim(name, statement, rule, est, measured=text, min_seeds=min_seeds)
    return dataclasses.replace(claim, rule=f"each of {len(parts)} legs (this row: the weakest, {label}): "
                               + claim.rule)


def claims(runs: list[dict[str, Any]], ks: list[int], min_seeds: int = stats.QUICK_MIN_SEEDS
           ) -> tuple[list[Claim], list[dict[str, Any]]]:
    """The claims from the cells: one entry of ``runs`` per trained model, with ``configs["none/0"]``,
    ``configs["split/K"]``, ``configs["tmr/K"]`` (each: ``sdc_counts`` per image out of ``draws``,
    ``extra_ops``, ``extra_param_bytes``) and its NVF ``spearman``. Every model's resilience is measured on
    the same test images. Returns the claims and the table of their legs (each k, and over all k)."""
    def combo(r: dict[str, Any], kk: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(0.2 none + 0.8 TMR, split) per image, averaged over ``kk``: split keeps more than 80% of TMR's SDC
        reduction exactly when the first exceeds the second."""
        none = _rate(r["configs"]["none/0"])
        bound = np.mean([(1 - KEEP) * none + KEEP * _rate(r["configs"][f"tmr/{k}"]) for k in kk], axis=0)
        return bound, np.mean([_rate(r["configs"][f"split/{k}"]) for k in kk], axis=0)

    def ratio(r: dict[str, Any], kk: list[int], key: str) -> float:
        tmr = sum(r["configs"][f"tmr/{k}"][key] for k in kk)
        return sum(r["configs"][f"split/{k}"][key] for k in kk) / tmr if tmr else math.inf

    resil_rule = stats.Difference(f"{1 - KEEP:g} none + {KEEP:g} TMR", "split", 0.0, metric="SDC rate", scale=100,
                                  unit=" points")
    ops_rule = stats.WithinRange(*HALF, quantity="split / TMR extra operations (MACs + LCU / voter)")
    bytes_rule = stats.WithinRange(*HALF, quantity="split / TMR extra parameter bytes")
    legs: list[dict[str, Any]] = []
    parts = []
    for i, kk in enumerate([[k] for k in ks] + [list(ks)]):
        pooled = i == len(ks)      # the last entry: every k together (the one the claim judges)
        pairs = [combo(r, kk) for r in runs]
        resil = stats.bootstrap_difference([p[0] for p in pairs], [p[1] for p in pairs], paired=True)
        o = stats.mean_interval([ratio(r, kk, "extra_ops") for r in runs])
        b = stats.mean_interval([ratio(r, kk, "extra_param_bytes") for r in runs])
        none = np.mean([_rate(r["configs"]["none/0"]).mean() for r in runs])
        red = {m: none - np.mean([np.mean([_rate(r["configs"][f"{m}/{k}"]).mean() for k in kk]) for r in runs])
               for m in ("split", "tmr")}
        kept = float(round(100 * red["split"] / red["tmr"], 1)) if red["tmr"] > 0 else None
        legs.append({"k_%": ",".join(map(str, kk)) if pooled else kk[0], "split_keeps_%_of_TMR_reduction": kept,
                     "resilience_margin_points": resil.format(100, ""), "resilience": resil_rule.decide(resil),
                     "ops_ratio": o.format(1, "", 3), "ops": ops_rule.decide(o),
                     "bytes_ratio": b.format(1, "", 3), "bytes": bytes_rule.decide(b)})
        if pooled:
            parts = [("resilience over all k", resil_rule, resil), ("operations", ops_rule, o),
                     ("bytes", bytes_rule, b)]
    c1 = _all_of("split_matches_tmr_at_half_cost",
                 "splitting reaches resilience similar to selective TMR (keeps > 80% of its SDC reduction, over the k "
                 "values) at about half the overhead (extra operations incl. LCU / voter, and extra bytes, in "
                 "[0.4, 0.6] of TMR's)", parts, min_seeds)
    rhos = [r["spearman"] for r in runs if r.get("spearman") is not None and math.isfinite(r["spearman"])]
    statement = "the analytic NVF ranks neurons by criticality like a fault-injection campaign (rho > 0.7)"
    if rhos:
        c2 = stats.make_claim("nvf_ranks_neurons", statement,
                              stats.GreaterThan(0.7, quantity="Spearman rho (analytic NVF vs campaign SDC per neuron)"),
                              stats.mean_interval(rhos), min_seeds=min_seeds)
    else:
        c2 = stats.untestable("nvf_ranks_neurons", statement, "no model has a defined rank correlation (no campaign)")
    c3 = stats.untestable("split_needs_no_redesign", "splitting adds a correction unit without redesigning the "
                          "accelerator's compute part", "a hardware-design statement: we have a software integer "
                          "engine, no accelerator RTL")
    return [c1, c2, c3], legs


# ------------------------------------------------------------------ table and figure
def _table(runs: list[dict[str, Any]], configs: list[tuple[str, int]], s: Settings) -> list[dict[str, Any]]:
    rows = []
    for mode, k in configs:
        cells = [r["configs"][f"{mode}/{k}"] for r in runs]
        hits = sum(int(np.sum(c["sdc_counts"])) for c in cells)
        trials = sum(len(c["sdc_counts"]) * c["draws"] for c in cells)
        pooled = stats.wilson(hits, trials)
        boot = stats.bootstrap_accuracy([_rate(c) for c in cells])
        mean = {key: float(np.mean([c[key] for c in cells])) for key in
                ("protected", "extra_macs", "checker_ops", "extra_ops", "extra_ops_%", "extra_param_bytes",
                 "extra_param_bytes_%")}
        rows.append({"method": mode, "k_%": k, "protected": round(mean["protected"], 1),
                     "extra_MACs": round(mean["extra_macs"]), "checker_ops": round(mean["checker_ops"]),
                     "extra_ops_%": round(mean["extra_ops_%"], 2), "extra_bytes": round(mean["extra_param_bytes"]),
                     "extra_bytes_%": round(mean["extra_param_bytes_%"], 2),
                     "SDC_%": round(100 * pooled.value, 3),
                     "SDC_ci95": f"[{100 * pooled.lo:.2f}, {100 * pooled.hi:.2f}]",
                     "SDC_boot95": f"[{100 * boot.lo:.2f}, {100 * boot.hi:.2f}]",
                     "sweep": [float(np.mean([c["sweep"][i]["accuracy"] for c in cells])) for i in range(len(s.sweep))],
                     "wilson": [pooled.lo, pooled.hi]})
    for row in rows:
        row.update({f"acc@{b:g}": round(100 * a, 2) for b, a in zip(s.sweep, row["sweep"])})
    return rows


def _plot(ctx: Context, table: list[dict[str, Any]], s: Settings) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    none = next(r for r in table if r["method"] == "none")
    ax = axes[0]
    for mode, color in (("split", "tab:blue"), ("tmr", "tab:red")):
        mine = [r for r in table if r["method"] == mode]
        xs = [r["extra_ops_%"] for r in mine]
        ys = [r["SDC_%"] for r in mine]
        err = [[y - 100 * r["wilson"][0] for r, y in zip(mine, ys)],
               [100 * r["wilson"][1] - y for r, y in zip(mine, ys)]]
        ax.errorbar(xs, ys, yerr=err, color=color, marker="o", capsize=3, label=mode)
        for r, x, y in zip(mine, xs, ys):
            ax.annotate(f"k={r['k_%']}%", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(none["SDC_%"], color="black", linestyle="--", label="unhardened")
    ax.set(xlabel="extra operations % (MACs + LCU / voter)", ylabel=f"SDC rate % at accumulator BER {FIXED_BER:g}",
           title=f"overhead vs resilience ({len(s.seeds)} models pooled)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1]
    for r in table:
        if r["method"] != "none" and r["k_%"] not in (max(s.ks), min(s.ks)):
            continue
        style = "-" if r["method"] == "split" else ("--" if r["method"] == "tmr" else ":")
        ax.plot(s.sweep, [100 * a for a in r["sweep"]], style, marker=".",
                label=f"{r['method']} k={r['k_%']}%" if r["method"] != "none" else "unhardened")
    ax.set(xscale="log", xlabel="accumulator bit-error rate", ylabel="test accuracy %", title="accuracy vs BER")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, ctx.out / "overhead_vs_resilience.png", dpi=110)
    plt.close(fig)
    for r in table:   # plotting helpers, not table columns
        r.pop("sweep"), r.pop("wilson")
    return ["overhead_vs_resilience.png"]
