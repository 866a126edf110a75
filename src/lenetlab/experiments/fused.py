"""``lenetlab reproduce fused``: fused-layer LeNet-5 with uniform stride and END (USEFUSE, docs/papers/fused.md).

Ibrahim, Usman, Lee, "USEFUSE: Uniform stride for enhanced performance in
fused layer architecture of deep neural networks" (arXiv 2412.13724, J. Syst.
Archit. 2025). The study trains ``lenet5`` (ReLU, max-pool) and
``lenet5_classic`` (scaled tanh, trainable subsampling), fuses their
conv1-pool1-conv2-pool2 stacks, and for every output tile size 1..5 and both
tile-stride policies (uniform, ragged) simulates the schedule on real MNIST
test images in float32 and in integer-only int8, checks it against the
unfused model, and counts off-chip traffic, on-chip buffer, MACs (with
recomputed overlap) and operational intensity (:mod:`lenetlab.fused.counting`
states the byte conventions). END is measured on the int8 accumulators of each
conv layer with an MSDF digit-serial model (:mod:`lenetlab.fused.end`).
AlexNet's and VGG-16's conv stacks are counted from their layer shapes only
(:mod:`lenetlab.fused.networks`: no weights, no training).

Claims (:func:`fused_claims`, from this run's cells; every one is a count or
a deterministic check, so seeds are ``n/a (exact)`` and the interval is the
point - docs/claims.md):

- ``oi_gain`` (headline): the best fused ``lenet5`` int8 schedule's OI over
  layer-by-layer with each output's MACs counted once (useful MACs), against
  the paper's 8.2x: supported inside [0.75, 1.25] x 8.2;
- ``oi_gain_executed``: the same on executed MACs (the paper's definition, in
  which recomputing overlapping pyramids raises OI);
- ``oi_gain_alexnet`` / ``oi_gain_vgg16`` (and ``_executed``): the same on the
  AlexNet (17.8x) and VGG-16 (279.4x) conv stacks, pure counting;
- ``exact``: no fused schedule's output differs from the unfused model's (int8
  bit for bit, float32 within 1e-5);
- ``end_no_loss``: END changes no output (exact count over every image and
  conv output of the int8 models);
- ``uniform_oi`` (useful MACs) / ``uniform_oi_executed``: the uniform stride's
  OI is at least the ragged stride's at every tile size where they differ;
- ``energy``: 46.8-48.5% energy saving - not modelled here (inconclusive).

Quick mode trains on 12k images (lenet5 1 epoch, lenet5_classic 3) and checks
1,000 test images; ``--full`` trains with the ``fast`` presets on all 60k
images and checks all 10k test images. The traffic and MAC counts do not depend
on the training; END's statistics do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lenetlab.errors import LenetlabError
from lenetlab.experiments import stats
from lenetlab.experiments.base import Claim, Context, Experiment, Result, Timings, timing
from lenetlab.fileio import save_figure
from lenetlab.registry import register

MODELS = ("lenet5", "lenet5_classic")
DTYPES = ("int8", "float32")
LAYERS = "conv1,pool1,conv2,pool2"
TILES = (1, 2, 3, 4, 5)
POLICIES = ("uniform", "ragged")
PAPER_OI_GAIN = 8.2
PAPER_STACK_GAINS = {"alexnet": 17.8, "vgg16": 279.4}     # the abstract's conv-stack OI gains
TOLERANCE = 0.25       # relative: a gain within 8.2 * (1 +- 0.25) counts as reproduced


@dataclass
class Settings:
    """Training budget per model (``None``: the ``fast`` preset's own) and test images to check."""

    train_subset: int | None
    epochs: dict[str, int | None]
    images: int


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:   # tests only: every code path in seconds; numbers meaningless
        s = Settings(1000, {"lenet5": 1, "lenet5_classic": 1}, 64)
    elif full:
        s = Settings(None, {"lenet5": None, "lenet5_classic": None}, 10000)
    else:   # classic's RBF loss learns slower: 3 short epochs bring it to a usable accuracy
        s = Settings(12000, {"lenet5": 1, "lenet5_classic": 3}, 1000)
    return asdict(s)


def _train(ctx: Context, model: str, s: Settings) -> tuple[Path, dict[str, Any]]:
    from lenetlab.rundir import require_run
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    run_dir = ctx.out / "runs" / model
    overrides: dict[str, Any] = {"data": {"val_size": 0}}
    if s.train_subset:
        overrides["data"]["train_subset"] = s.train_subset
    if s.epochs[model]:
        overrides["train"] = {"epochs": s.epochs[model]}

    def train() -> dict[str, Any]:
        r = fit(resolve("fast", model, overrides=overrides), out=run_dir, force=True, log=None, progress=False)
        return {"test_accuracy": r["test_accuracy"], "epochs": r["epochs"],
                "timings": {"seconds": round(r["wall_seconds"], 1)}}

    key = f"train/{model}"
    info = ctx.cells.get_or_run(key, train)
    try:
        require_run(run_dir)
    except LenetlabError:   # the cell survived but the run directory did not: train again
        info = train()
    return run_dir, info


def _evaluate(run_dir: Path, dtype: str, n_images: int) -> dict[str, Any]:
    from dataclasses import asdict

    from lenetlab.data.datasets import load_raw
    from lenetlab.deploy.export import build_flat
    from lenetlab.fused.end import end_analysis
    from lenetlab.fused.stages import select
    from lenetlab.fused.table import schedule_rows
    from lenetlab.rundir import load_model

    model, cfg = load_model(run_dir)
    model.eval()
    fm = build_flat(model, cfg, dtype == "int8")
    stages = select(fm, LAYERS)
    images = load_raw(cfg.data.dataset, cfg.data.data_dir)[2][:n_images]
    rows = schedule_rows(fm, stages, TILES, POLICIES, images)
    ends = [asdict(e) for e in end_analysis(fm, stages, images)] if dtype == "int8" else []
    return {"rows": rows, "end": ends, "images": len(images)}


@register("experiment", "fused")
class FusedStudy(Experiment):
    """USEFUSE: fused conv/pool pyramids on LeNet-5 - exactness, traffic, operational intensity, END."""

    name = "fused"
    paper = "Ibrahim, Usman, Lee 2024/25, USEFUSE: uniform stride for fused layers (docs/papers/fused.md)"
    description = "fused-layer tiling of LeNet-5's conv stack: exact simulation, traffic, OI, uniform stride, END"
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        from lenetlab.fused.networks import stack_rows

        s = Settings(**ctx.resolve_settings(settings(ctx.full, ctx.tiny)))
        trained = {}
        for m in MODELS:
            ctx.log(f"training {m} ...")
            trained[m] = _train(ctx, m, s)
            ctx.log(f"  {m}: test accuracy {100 * trained[m][1]['test_accuracy']:.2f}%")
        data: dict[tuple[str, str], dict[str, Any]] = {}
        for m in MODELS:
            for dt in DTYPES:
                ctx.log(f"simulating {m} {dt}: tiles {TILES[0]}..{TILES[-1]} x {'/'.join(POLICIES)} ...")
                data[(m, dt)] = ctx.cells.get_or_run(f"fused/{m}/{dt}/{s.images}",
                                                     lambda m=m, dt=dt: _evaluate(trained[m][0], dt, s.images))
        tables: dict[str, list[dict[str, Any]]] = {
            "training": [{"model": m, "test_accuracy": trained[m][1]["test_accuracy"],
                          "epochs": trained[m][1]["epochs"], "train_images": s.train_subset or 60000}
                         for m in MODELS]}
        for (m, dt), d in data.items():
            tables[f"{m} {dt}: {LAYERS} per image"] = d["rows"]
        tables["END (int8, MSDF digit-serial, 8 digits per activation)"] = _end_rows(data)
        stacks = {n: stack_rows(n) for n in PAPER_STACK_GAINS}      # pure counting, no training
        for n, rows in stacks.items():
            tables[f"{n} conv stack (shapes only, int8 counting): whole stack fused"] = rows
        tables["OI gains: useful MACs (headline) and executed MACs"] = _gain_rows(data, stacks)
        claims = fused_claims(data, stacks)
        figures = _plots(ctx, data)
        return Result(self.name, self.paper, ctx.mode,
                      {"settings": asdict(s), "layers": LAYERS, "tiles": list(TILES), "policies": list(POLICIES),
                       "paper_oi_gain": PAPER_OI_GAIN, "paper_stack_gains": PAPER_STACK_GAINS,
                       "tolerance": TOLERANCE},
                      tables=tables, claims=claims, figures=figures, notes=_notes(data, stacks),
                      timings=Timings(tables={"training time": [
                          {"model": m, "train seconds": timing(trained[m][1], "seconds")} for m in MODELS]}))


def _end_rows(data) -> list[dict[str, Any]]:
    rows = []
    for m in MODELS:
        for e in data[(m, "int8")]["end"]:
            row: dict[str, Any] = {"model": m, "layer": e["layer"], "applies": e["applies"]}
            if e["applies"]:
                row.update({"outputs": e["outputs"], "negative_%": round(100 * e["negative"], 2),
                            "stopped_early_%": round(100 * e["terminated"], 2),
                            "mean_digits_stopped": round(e["mean_digits"], 2),
                            "skipped_digit_cycles_%": round(100 * e["skipped"], 2), "outputs_changed": e["changed"]})
            rows.append(row)
    return rows


def _best(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The fused row (not the layer-by-layer first row) with the largest ``key``; None if there is none."""
    return max(rows[1:], key=lambda r: r[key]) if len(rows) > 1 else None


def best_gains(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best OI gain over layer-by-layer on useful MACs and on executed MACs, with the schedules behind them."""
    bu, be = _best(rows, "OI_useful"), _best(rows, "OI")
    if bu is None or be is None:
        return None
    base = rows[0]
    return {"useful": bu["OI_useful"] / base["OI_useful"], "useful_schedule": bu["schedule"],
            "executed": be["OI"] / base["OI"], "executed_schedule": be["schedule"],
            "recompute": be["recompute"]}


def _gain_claims(name: str, what: str, paper: float, gains: dict[str, Any] | None) -> list[Claim]:
    """The headline (useful MACs) and second (executed MACs) rows of one OI-gain claim."""
    rule = {k: stats.WithinRange(paper * (1 - TOLERANCE), paper * (1 + TOLERANCE), unit="x",
                                 quantity=f"the best fused schedule's OI gain over layer-by-layer ({k} MACs)")
            for k in ("useful", "executed")}
    statement = f"fusing {what} raises operational intensity {paper}x over layer-by-layer"
    if gains is None:
        why = "no fused schedule in this run (layer-by-layer only): nothing to compare"
        return [stats.untestable(name, statement, why),
                stats.untestable(f"{name}_executed", statement + " (executed MACs)", why)]
    useful = stats.make_claim(
        name, statement + " (each output's MACs counted once)", rule["useful"], stats.exact(gains["useful"]),
        seeds=stats.EXACT, measured=f"{gains['useful']:.2f}x ({gains['useful_schedule']}; each useful MAC once)")
    executed = stats.make_claim(
        f"{name}_executed", statement + " (executed MACs, recomputed overlap included: the paper's definition)",
        rule["executed"], stats.exact(gains["executed"]), seeds=stats.EXACT,
        measured=f"{gains['executed']:.2f}x ({gains['executed_schedule']}; {gains['recompute']:.2f}x of its MACs "
                 "are recomputed overlap)")
    return [useful, executed]


def _uniform_claims(rows8: list[dict[str, Any]]) -> list[Claim]:
    statement = "the uniform stride improves operational intensity"
    pairs = []
    for t in sorted({r["schedule"].split()[0] for r in rows8[1:]}):
        u = next((r for r in rows8 if r["schedule"] == f"{t} uniform"), None)
        g = next((r for r in rows8 if r["schedule"] == f"{t} ragged"), None)
        if u and g and (u["MACs"] != g["MACs"] or u["offchip_B"] != g["offchip_B"]):
            pairs.append((t, u, g))
    out = []
    for key, suffix, what in (("OI_useful", "", "useful"), ("OI", "_executed", "executed")):
        name = f"uniform_oi{suffix}"
        if not pairs:
            out.append(stats.untestable(name, f"{statement} ({what} MACs)",
                                        "uniform and ragged tiles coincide at every tile size tried"))
            continue
        ratios = [(t, u[key] / g[key]) for t, u, g in pairs]
        worst = min(r for _, r in ratios)
        rule = stats.AtLeastFactor(1.0, quantity=f"the smallest uniform / ragged OI ratio ({what} MACs) over the "
                                   "tile sizes where the two differ")
        out.append(stats.make_claim(name, f"{statement} ({what} MACs)", rule, stats.exact(worst), seeds=stats.EXACT,
                                    measured="lenet5 int8, uniform / ragged OI: "
                                    + ", ".join(f"{t} {r:.3f}x" for t, r in ratios)))
    return out


def fused_claims(data: dict[tuple[str, str], dict[str, Any]], stacks: dict[str, list[dict[str, Any]]]
                 ) -> list[Claim]:
    """Every claim from the cells: ``data[(model, dtype)]`` = {"rows", "end", "images"} as ``_evaluate``
    returns it, ``stacks[network]`` = :func:`lenetlab.fused.networks.stack_rows`. Feed it synthetic cells to
    check the rules (tests/test_claims_fused.py)."""
    rows8 = data[("lenet5", "int8")]["rows"]
    claims = _gain_claims("oi_gain", "LeNet-5's conv1..pool2", PAPER_OI_GAIN, best_gains(rows8))
    for n, paper in PAPER_STACK_GAINS.items():
        name = {"alexnet": "AlexNet's", "vgg16": "VGG-16's"}[n]
        claims += _gain_claims(f"oi_gain_{n}", f"{name} conv stack", paper, best_gains(stacks.get(n, [])))

    all_rows = [(m, dt, r) for (m, dt), d in data.items() for r in d["rows"]]
    statement = "fused tile-by-tile execution computes the unfused network's outputs"
    if not all_rows:
        claims.append(stats.untestable("exact", statement, "no schedule was simulated"))
    else:
        bad = [(m, dt, r["schedule"]) for m, dt, r in all_rows if not r["exact"]]
        diffs = {dt: max((r["max_abs_diff"] for m, d, r in all_rows if d == dt), default=0.0) for dt in DTYPES}
        n_img = data[("lenet5", "int8")]["images"]
        rule = stats.LessThan(1, quantity="the number of schedules whose outputs differ from the unfused model's "
                              "(int8: any bit; float32: by more than 1e-5)")
        claims.append(stats.make_claim(
            "exact", statement, rule, stats.exact(len(bad)), seeds=stats.EXACT, test_images=n_img,
            measured=f"{len(bad)} of {len(all_rows)} schedules (incl. layer-by-layer) differ on {n_img} MNIST test "
                     f"images, lenet5 and lenet5_classic: int8 max |diff| {diffs['int8']:g}, float32 max |diff| "
                     f"{diffs['float32']:.2g}" + (f"; NOT exact: {bad}" if bad else "")))

    ends = [(m, e) for m in MODELS for e in data[(m, "int8")]["end"] if e["applies"]]
    statement = "END skips ineffectual (negative) convolutions with no accuracy loss"
    if not ends:
        claims.append(stats.untestable("end_no_loss", statement, "no conv layer is followed by ReLU in these models"))
    else:
        changed = sum(e["changed"] for _, e in ends)
        total = sum(e["outputs"] for _, e in ends)
        rule = stats.LessThan(1, quantity="the number of conv outputs END changes")
        claims.append(stats.make_claim(
            "end_no_loss", statement, rule, stats.exact(changed), seeds=stats.EXACT,
            test_images=data[("lenet5", "int8")]["images"],
            measured=f"outputs changed: {changed} of {total:,}; "
                     + "; ".join(f"{m} {e['layer']}: {100 * e['skipped']:.1f}% of MAC digit-cycles skipped, "
                                 f"{100 * e['terminated']:.1f}% of outputs stopped early" for m, e in ends)))
    claims += _uniform_claims(rows8)
    claims.append(stats.untestable("energy", "46.8-48.5% energy savings", "not modelled: this simulator has no "
                                   "energy model (the traffic and MAC counts above are its inputs)"))
    return claims


def _gain_rows(data, stacks) -> list[dict[str, Any]]:
    rows = []
    nets = [("lenet5 int8 conv1..pool2", PAPER_OI_GAIN, data[("lenet5", "int8")]["rows"])]
    nets += [(f"{n} (shapes only)", p, stacks[n]) for n, p in PAPER_STACK_GAINS.items()]
    for what, paper, r in nets:
        g = best_gains(r)
        if g is None:
            continue
        rows.append({"network": what, "paper": f"{paper}x", "useful-MAC gain (headline)": round(g["useful"], 2),
                     "best (useful)": g["useful_schedule"], "executed-MAC gain": round(g["executed"], 2),
                     "best (executed)": g["executed_schedule"], "recompute at that schedule": g["recompute"]})
    return rows


def _notes(data, stacks) -> list[str]:
    from lenetlab.fused.counting import CONVENTIONS

    notes = [f"Counting conventions: {CONVENTIONS}. Layer-by-layer writes and reads back every map between the "
             "fused layers (mid_B); fused schedules keep them on chip.",
             "Uniform stride: every tile is T x T and the last tile along an axis is shifted back to end at the "
             "map edge, overlapping its neighbour (O=5, T=2: starts 0, 2, 3); ragged: the last tile is cut "
             "(extents 2, 2, 1). OI counts executed MACs, so recomputed overlap raises it; OI_useful counts "
             "each output's MACs once."]
    for (m, dt), d in data.items():
        rows = d["rows"]
        base = rows[0]
        quoted = "; ".join(f"{r['schedule']}: {r['offchip_B']} B, OI {r['OI']:.1f} ({r['OI_gain']:.2f}x), "
                           f"recompute {r['recompute']:.2f}x" for r in rows[1:])
        w_free = [(r["MACs"] / max(1, r["offchip_B"] - r["weights_B"])) /
                  (base["MACs"] / max(1, base["offchip_B"] - base["weights_B"])) for r in rows[1:]]
        notes.append(f"{m} {dt}: layer-by-layer {base['offchip_B']} B off-chip per image, OI {base['OI']:.1f} "
                     f"MAC/B, buffer {base['buffer_B']} B; {quoted}. Leaving parameters out of the traffic "
                     f"(kept on chip across images) the best gain would be {max(w_free):.2f}x.")
    for n, rows in stacks.items():
        base = rows[0]
        w_free = max((r["useful_MACs"] / max(1, r["offchip_B"] - r["weights_B"])) /
                     (base["useful_MACs"] / max(1, base["offchip_B"] - base["weights_B"])) for r in rows[1:])
        notes.append(f"{n}: counted from its layer shapes (lenetlab.fused.networks states them: single-tower "
                     "AlexNet on 227x227x3, VGG-16 configuration D on 224x224x3), int8 (1-byte activations and "
                     "weights), the whole conv stack fused into one group, square tiles of 1 .. the output size, "
                     f"both policies; layer-by-layer {base['offchip_B']:,} B per image ({base['weights_B']:,} B of it "
                     f"parameters). Leaving parameters out of the traffic, the best useful-MAC gain would be "
                     f"{w_free:.2f}x.")
    for m in MODELS:
        for e in data[(m, "int8")]["end"]:
            notes.append(f"END {m} {e['layer']}: " + (f"outputs compared at {e['checked_at']}" if e["applies"]
                                                        else f"does not apply - {e['reason']}"))
    notes.append("END model: activations stream as 8 radix-2 signed digits, most significant first; an output "
                 "stops once its partial sum plus the largest change the unseen digits could make is below 0. "
                 "The online-arithmetic delay of a real MSDF unit is not modelled, so the skipped fraction is an "
                 "upper bound for such hardware.")
    return notes


def _plots(ctx: Context, data) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for dt, colour in (("int8", "tab:blue"), ("float32", "tab:orange")):
        rows = data[("lenet5", dt)]["rows"]
        for pol, style in (("uniform", "-o"), ("ragged", "--s")):
            mine = [r for r in rows[1:] if r["schedule"].endswith(pol)]
            tiles = [int(r["schedule"].split()[0][2:]) for r in mine]
            axes[0].plot(tiles, [r["offchip_B"] for r in mine], style, color=colour, label=f"{dt} fused {pol}")
            axes[1].plot(tiles, [r["OI"] for r in mine], style, color=colour, label=f"{dt} fused {pol}")
        axes[0].axhline(rows[0]["offchip_B"], color=colour, linestyle=":", label=f"{dt} layer-by-layer")
        axes[1].axhline(rows[0]["OI"], color=colour, linestyle=":", label=f"{dt} layer-by-layer")
        fused = [r for r in rows[1:] if r["schedule"].endswith("uniform")]
        axes[1].plot([int(r["schedule"].split()[0][2:]) for r in fused], [r["OI_useful"] for r in fused], "x-",
                     color=colour, alpha=0.35, lw=1, label=f"{dt} uniform, useful MACs only")
    axes[0].set(yscale="log", xlabel="output tile size T (pool2 pixels)", ylabel="off-chip bytes per image",
                title="lenet5 conv1..pool2: off-chip traffic")
    axes[1].set(yscale="log", xlabel="output tile size T (pool2 pixels)", ylabel="MACs per off-chip byte",
                title="operational intensity (executed MACs)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xticks(list(TILES))
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    save_figure(fig, ctx.out / "traffic_oi.png", dpi=110)
    plt.close(fig)

    ends = [e for e in data[("lenet5", "int8")]["end"] if e["applies"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [e["layer"] for e in ends]
    bars = (("negative", "outputs negative"), ("terminated", "outputs stopped early"),
            ("skipped", "MAC digit-cycles skipped"))
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        axes[0].bar([j + i * width for j in range(len(ends))], [100 * e[key] for e in ends], width, label=label)
    axes[0].set_xticks([j + width for j in range(len(ends))], names)
    axes[0].set(ylabel="%", title="END per conv layer (lenet5 int8)")
    axes[0].legend(fontsize=8)
    for e in ends:
        total = max(1, sum(e["digits_histogram"]))
        axes[1].plot(range(len(e["digits_histogram"])), [100 * h / total for h in e["digits_histogram"]], "-o",
                     label=e["layer"])
    axes[1].set(xlabel="digit cycles needed before the sign is certain (of 8)", ylabel="% of stopped outputs",
                title="when END stops an output")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, ctx.out / "end.png", dpi=110)
    plt.close(fig)
    return ["traffic_oi.png", "end.png"]
