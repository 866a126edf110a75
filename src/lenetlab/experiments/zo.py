"""``lenetlab reproduce zo``: ElasticZO (Sugiura, Matsutani 2025, PAPERS.md section 3).

Trains LeNet-5 for the same number of steps (same batches, same seed) with:

- ``bp``: ordinary backprop (Adam);
- ``zo``: vanilla SPSA zeroth-order on all 5 weight layers (cutoff C = 5);
- ``ezo-C``: ElasticZO, the first C layers by ZO and the rest by backprop
  (C = 4: only fc3 by BP, the paper's low-memory setting; C = 2: both convs
  by ZO, the FC layers by BP);
- ``int8-C``: ElasticZO-INT8 (:mod:`lenetlab.train.zo_int8`, integer-only
  training step, integer forward for evaluation) at the same cutoffs.

For each run: test accuracy (float runs: the float model; INT8 runs: the
integer engine), a learning curve (test accuracy every ``eval_every`` steps on
the evaluation subset), time per training step (evaluation excluded) and the
memory of one training step - measured peak bytes (:class:`lenetlab.train.memory.PeakTracker`,
the second step of the run) and the analytic breakdown
(:func:`lenetlab.train.memory.analytic_bytes`).

Claims checked from the data: ElasticZO minus vanilla ZO accuracy (paper: +5.2
to +9.5 points), ElasticZO's memory overhead over ZO (paper: 0.072-1.7%),
INT8 memory and time ratios over float ElasticZO (paper: 1.46-1.60x and
1.38-1.42x) and INT8 accuracy vs float ElasticZO ("without accuracy loss").

Hyper-parameters (one set for all runs, so "equal steps" is a fair race): batch
64, Adam lr 1e-3 for the BP part, plain SGD lr 5e-3 for every ZO part with the
projected gradient clipped to |g| <= 0.3 (not in the paper; unclipped, ZO lr
above ~1e-3 diverged and 2e-4 left vanilla ZO at chance after 1,500 steps -
see :mod:`lenetlab.train.zeroth_order`), Gaussian z, eps 1e-3, q 1; both
learning rates of the float runs decay to 0 on a cosine (the INT8 steps are
fixed shifts, no schedule). INT8: eps
1 LSB, ZO update shift 12 with |g| clamped to 2**12 (at most 1 LSB per step),
BP update 2**1 LSBs (:class:`lenetlab.train.zo_int8.Int8Config`).

Quick mode: MNIST, 20k training images, 5,000 steps (ZO needs thousands of
steps to leave chance), 1,000 test images, cutoffs {5, 4, 2} float and {4, 2}
INT8 (about 5 minutes on 2 cores).
``--full``: all 60k images, 20,000 steps, the 10k test set, cutoffs
{5, 4, 3, 2, 1} float and {5, 4, 3, 2} INT8, and Fashion-MNIST too when it is
available locally (never downloaded).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from lenetlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, ZOConfig
from lenetlab.experiments.base import Claim, Context, Experiment, Result
from lenetlab.registry import register
from lenetlab.train.plugins import TrainContext, TrainerPlugin

PAPER = {"acc_gain": (5.2, 9.5), "mem_overhead_pct": (0.072, 1.7), "int8_mem": (1.46, 1.60),
         "int8_time": (1.38, 1.42)}


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    common = {"batch": 64, "lr": 1e-3, "zo_lr": 5e-3, "zo_clip": 0.3, "cosine": True, "eps": 1e-3, "q": 1, "seed": 0,
              "float_cutoffs": [5, 4, 2], "int8_cutoffs": [4, 2]}
    if tiny:   # tests only: every code path, meaningless numbers
        return {**common, "datasets": ["mnist"], "train_subset": 500, "test_subset": 200, "steps": 20,
                "eval_every": 10, "float_cutoffs": [5, 4], "int8_cutoffs": [4], "batch": 32}
    if full:
        return {**common, "datasets": ["mnist", "fashion_mnist"], "train_subset": None, "test_subset": None,
                "steps": 20000, "eval_every": 1000, "float_cutoffs": [5, 4, 3, 2, 1], "int8_cutoffs": [5, 4, 3, 2]}
    return {**common, "datasets": ["mnist"], "train_subset": 20000, "test_subset": 1000, "steps": 5000,
            "eval_every": 500}


def _run_config(kind: str, cutoff: int, n: int, steps: int, batch: int, lr: float, seed: int,
                zo_lr: float | None = None, eps: float = 1e-3, q: int = 1, clip: float | None = None,
                cosine: bool = False) -> RunConfig:
    """The fit config of one run: whole epochs of ``fit``'s seeded batches, at least ``steps`` steps."""
    method = ("elasticzo-int8" if kind == "int8" else "bp" if cutoff == 0 else "zo" if cutoff == 5 else "elasticzo")
    epochs = max(1, math.ceil(steps / math.ceil(n / batch)))
    train = TrainConfig(epochs=epochs, batch_size=batch, optimizer="adam", lr=lr,
                        schedule="cosine" if cosine else "constant", loss="ce", seed=seed, channels_last=False,
                        eval_test_every_epoch=False, grad_norms=False,
                        zo=ZOConfig(method=method, layers=cutoff, eps=eps, q=q, lr=zo_lr, clip=clip))
    return RunConfig(model=ModelConfig("lenet5"), data=DataConfig(val_size=0), train=train)


class _Probe(TrainerPlugin):
    """Instruments a run: time per training step (evaluation excluded) and a learning curve."""

    order = 90
    name = "zo-probe"

    def __init__(self, splits: Any, eval_every: int | None):
        self.splits, self.every = splits, eval_every
        self.curve: list[list[float]] = []
        self.spent, self.t0, self.last_loss = 0.0, 0.0, float("nan")

    def before_step(self, step: int, ctx: TrainContext) -> None:
        self.t0 = time.perf_counter()

    def after_step(self, step: int, ctx: TrainContext) -> None:
        self.spent += time.perf_counter() - self.t0
        if self.every and (step % self.every == 0 or step == ctx.total_steps):
            self.curve.append([step, self.accuracy(ctx)])

    def after_epoch(self, row: dict[str, Any], ctx: TrainContext) -> None:
        self.last_loss = row["train_loss"]

    def accuracy(self, ctx: TrainContext) -> float:
        zo = next((p for p in ctx.plugins if p.name == "zo"), None)
        stepper = getattr(zo, "stepper", None)
        if getattr(stepper, "net", None) is None:   # float runs: the float model
            from lenetlab.train import evaluate

            return evaluate(ctx.model, self.splits.test_x, self.splits.test_y)["accuracy"]
        from lenetlab.train.zo_int8 import quantize_input

        # int8 runs: the integer engine, on the run's input scale
        tq, x_exp = quantize_input(self.splits.test_x.contiguous(), stepper.x_exp)
        return stepper.net.accuracy(tq, x_exp, self.splits.test_y)


def _measure(kind: str, cutoff: int, splits: Any, cfg: RunConfig) -> dict[str, Any]:
    """Measured memory of one training step: the 2nd step of a fresh run (Adam's state exists by then)."""
    from lenetlab.models import create_model
    from lenetlab.train import make_loss
    from lenetlab.train.memory import measure_step, optimizer_tensors
    from lenetlab.train.optim import FusedAdam
    from lenetlab.train.zeroth_order import make_stepper

    torch.manual_seed(cfg.train.seed)
    model = create_model("lenet5")
    b = cfg.train.batch_size
    xb, yb = splits.train_x[:b], splits.train_y[:b]
    if kind == "int8":
        from lenetlab.train.zo_int8 import Int8Config, Int8ElasticZO, quantize_input

        net = Int8ElasticZO.from_float(model, cutoff, Int8Config(q=cfg.train.zo.q, seed=cfg.train.seed))
        xq, x_exp = quantize_input(xb)
        net.train_step(xq, x_exp, yb, 0)
        resident = [t for ly in net.layers for t in (ly.w, ly.b)] + [xq, yb]
        return measure_step(lambda: net.train_step(xq, x_exp, yb, 1), resident)
    opt = FusedAdam(model.parameters(), lr=cfg.train.lr)
    tc = cfg.train if cutoff else dataclasses.replace(cfg.train, zo=ZOConfig(method="elasticzo", layers=0))
    st = make_stepper(model, tc, make_loss(model, tc), opt)
    st.step(xb, yb, cfg.train.lr, 0)
    resident = list(model.parameters()) + optimizer_tensors(opt) + [xb, yb]
    return measure_step(lambda: st.step(xb, yb, cfg.train.lr, 1), resident)


def train_float(splits: Any, cutoff: int, steps: int, batch: int, lr: float, zo_lr: float, eps: float, q: int,
                seed: int, eval_every: int | None = None, measure_memory: bool = False, clip: float | None = None,
                cosine: bool = False) -> dict[str, Any]:
    """Train lenet5 with ElasticZO at ``cutoff`` (0 = BP, 5 = vanilla ZO) through ``fit``; accuracy, curve, timing.

    Whole epochs of ``fit``'s batches, at least ``steps`` steps (the same for every run of a study).
    ``clip``: the ZO update uses clamp(g, -clip, clip) (``ElasticZOStepper``'s clip; None: the paper's g).
    ``cosine``: both learning rates decay from ``lr`` / ``zo_lr`` to 0 over the run (cosine); else constant.
    """
    from lenetlab.train import fit
    from lenetlab.train.memory import analytic_bytes

    cfg = _run_config("float", cutoff, len(splits.train_x), steps, batch, lr, seed, zo_lr, eps, q, clip, cosine)
    probe = _Probe(splits, eval_every)
    s = fit(cfg, splits=splits, log=None, progress=False, plugins=[probe])
    done = cfg.train.epochs * math.ceil(len(splits.train_x) / batch)
    model = s.pop("_model")
    return {"test_accuracy": s["test_accuracy"], "final_loss": probe.last_loss, "curve": probe.curve,
            "steps": done, "ms_per_step": 1000 * probe.spent / done,
            "memory": _measure("float", cutoff, splits, cfg) if measure_memory else None,
            "analytic": analytic_bytes(model, "bp" if cutoff == 0 else "elasticzo", cutoff, batch)}


def train_int8(splits: Any, cutoff: int, steps: int, batch: int, seed: int, q: int = 1,
               eval_every: int | None = None, measure_memory: bool = False) -> dict[str, Any]:
    """Train with ElasticZO-INT8 at ``cutoff`` (2..5) through ``fit``; accuracy from the integer engine."""
    from lenetlab.train import fit
    from lenetlab.train.memory import analytic_bytes

    cfg = _run_config("int8", cutoff, len(splits.train_x), steps, batch, 1e-3, seed, q=q)
    probe = _Probe(splits, eval_every)
    s = fit(cfg, splits=splits, log=None, progress=False, plugins=[probe])
    done = cfg.train.epochs * math.ceil(len(splits.train_x) / batch)
    model = s.pop("_model")
    return {"test_accuracy": s["int8_test_accuracy"], "final_loss": probe.last_loss, "curve": probe.curve,
            "steps": done, "ms_per_step": 1000 * probe.spent / done,
            "memory": _measure("int8", cutoff, splits, cfg) if measure_memory else None,
            "analytic": analytic_bytes(model, "elasticzo-int8", cutoff, batch), "exponents": s["int8_exponents"]}


def runs(s: dict[str, Any]) -> list[dict[str, Any]]:
    out = [{"label": "bp", "kind": "float", "cutoff": 0}]
    out += [{"label": "zo" if c == 5 else f"ezo-{c}", "kind": "float", "cutoff": c} for c in s["float_cutoffs"]]
    out += [{"label": f"int8-{c}", "kind": "int8", "cutoff": c} for c in s["int8_cutoffs"]]
    return out


@register("experiment", "zo")
class ZOStudy(Experiment):
    """ElasticZO: ZO / BP hybrid training of LeNet-5, float and integer-only, with memory accounting."""

    name = "zo"
    paper = "Sugiura, Matsutani 2025, ElasticZO: memory-efficient on-device learning (PAPERS.md section 3)"
    accepts_options = True

    def run(self, ctx: Context) -> Result:

        s = settings(ctx.full, ctx.tiny)
        if hasattr(ctx, "resolve_settings"):
            s = ctx.resolve_settings(s)
        # one thread for every run: a fair single-core race (an on-device core), and immune to the
        # OpenMP spin-waits that made 2-thread steps 100x slower on a loaded 2-core machine
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(ctx, s)
        finally:
            torch.set_num_threads(threads)

    def _run(self, ctx: Context, s: dict[str, Any]) -> Result:
        from lenetlab.data import load_splits
        from lenetlab.errors import LenetlabError

        rows: list[dict[str, Any]] = []
        notes: list[str] = []
        for ds in s["datasets"]:
            data = DataConfig(dataset=ds, val_size=0, train_subset=s["train_subset"], test_subset=s["test_subset"])
            splits = None
            if ds != "mnist":
                from lenetlab.data.datasets import load_raw

                try:
                    load_raw(ds, data.data_dir, download=False)
                except LenetlabError:
                    notes.append(f"{ds}: not available locally - skipped (it is never downloaded here)")
                    ctx.log(notes[-1])
                    continue
            for r in runs(s):

                def cell(r=r, data=data) -> dict[str, Any]:
                    nonlocal splits
                    if splits is None:
                        splits = load_splits(data)
                    if r["kind"] == "int8":
                        return train_int8(splits, r["cutoff"], s["steps"], s["batch"], s["seed"], s["q"],
                                          s["eval_every"], measure_memory=True)
                    return train_float(splits, r["cutoff"], s["steps"], s["batch"], s["lr"], s["zo_lr"], s["eps"],
                                       s["q"], s["seed"], s["eval_every"], measure_memory=True,
                                       clip=s.get("zo_clip"), cosine=s.get("cosine", False))

                row = ctx.cells.get_or_run(f"{ds}/{r['label']}", cell)
                rows.append({"dataset": ds, **r, **row})
                mem = row["memory"]["peak_bytes"] if row["memory"] else 0
                ctx.log(f"{ds:13s} {r['label']:7s} acc {100 * row['test_accuracy']:6.2f}%  "
                        f"peak {mem / 1024:8.1f} KiB  {row['ms_per_step']:.2f} ms/step")
        table = [{"dataset": r["dataset"], "run": r["label"], "zo_layers": r["cutoff"],
                  "test_acc_%": round(100 * r["test_accuracy"], 2),
                  "peak_KiB": round(r["memory"]["peak_bytes"] / 1024, 1) if r["memory"] else None,
                  "resident_KiB": round(r["memory"]["resident_bytes"] / 1024, 1) if r["memory"] else None,
                  "ms_per_step": round(r["ms_per_step"], 2)} for r in rows]
        analytic = [{"dataset": r["dataset"], "run": r["label"],
                     **{k + "_KiB": round(v / 1024, 1) for k, v in r["analytic"].items()}} for r in rows
                    if r["dataset"] == rows[0]["dataset"]]
        figures = _plot(ctx, s, rows)
        done = rows[0].get("steps", s["steps"]) if rows else s["steps"]
        notes += [f"{done} steps of batch {s['batch']} for every run (same batches: whole epochs of the trainer's "
                  f"seeded shuffles, the first ones that reach {s['steps']} steps); "
                  f"{s['train_subset'] or 'all'} training images, {s['test_subset'] or 10000} test images.",
                  f"BP part: Adam lr {s['lr']:g}; ZO part: SGD lr {s['zo_lr']:g} on the projected gradient clipped to "
                  f"|g| <= {s.get('zo_clip')} (a stabiliser, not in the paper), Gaussian z, eps {s['eps']:g}, "
                  f"q {s['q']}; float runs: both lrs cosine-decayed to 0 over the run ({s.get('cosine')}); "
                  "INT8: eps 1 LSB, ZO shift 12 with |g| clamped to 2**12, BP step 2**1 LSBs "
                  "(lenetlab.train.zo_int8.Int8Config).",
                  "Peak memory: measured by a TorchDispatchMode tracking every ATen result's storage (the 2nd "
                  "training step; resident = params + optimiser state + batch). Kernel-internal scratch "
                  "(mkldnn conv workspaces) is invisible to it; see lenetlab.train.memory.",
                  "Timing: one torch thread per run, on a shared 2-core machine (other jobs running): absolute "
                  "ms/step are pessimistic; ratios between runs made back to back are more meaningful.",
                  "INT8 convolutions run as torch._int_mm (int8 x int8 -> int32) on an int8 im2col buffer, 8 "
                  "samples at a time with the max-pool applied per slice; float runs use mkldnn's convolution on "
                  "the whole batch. Part of the INT8 memory ratio therefore comes from that tiling, not from the "
                  "narrower types alone (the analytic table separates params / activations / working set).",
                  "INT8 BP gradients are int64 (int8-2's gradient column): the memory the INT8 run spends there is "
                  "an implementation choice, an int32 version would halve it."]
        return Result(self.name, self.paper, ctx.mode, {"settings": s},
                      tables={"accuracy, peak memory and time per step": table,
                              "analytic memory of one step (KiB)": analytic},
                      claims=_claims(rows), figures=figures, notes=notes)


def _claims(rows: list[dict[str, Any]]) -> list[Claim]:
    by = {(r["dataset"], r["label"]): r for r in rows}
    dss = sorted({r["dataset"] for r in rows}, key=lambda d: d != "mnist")
    claims = []
    for ds in dss:
        zo = by.get((ds, "zo"))
        ezos = [r for r in rows if r["dataset"] == ds and r["label"].startswith("ezo-")]
        if zo and ezos:
            gains = {r["label"]: 100 * (r["test_accuracy"] - zo["test_accuracy"]) for r in ezos}
            txt = (f"{ds}: ZO {100 * zo['test_accuracy']:.2f}%; " +
                   ", ".join(f"{r['label']} {100 * r['test_accuracy']:.2f}% ({gains[r['label']]:+.1f} pts)"
                             for r in ezos))
            claims.append(Claim(f"{ds}_elasticzo_beats_zo", "ElasticZO is more accurate than vanilla ZO at equal "
                                "steps", txt, all(g > 0 for g in gains.values())))
            lo, hi = PAPER["acc_gain"]
            claims.append(Claim(f"{ds}_gain_in_paper_range", f"ElasticZO gains +{lo} to +{hi} points over ZO",
                                txt, any(lo <= g <= hi for g in gains.values())))
        if zo and zo["memory"] and ezos:
            ov = {r["label"]: 100 * (r["memory"]["peak_bytes"] / zo["memory"]["peak_bytes"] - 1) for r in ezos}
            lo, hi = PAPER["mem_overhead_pct"]
            claims.append(Claim(f"{ds}_memory_overhead", f"ElasticZO's memory overhead over ZO is {lo}-{hi}%",
                                "measured peak overhead: " + ", ".join(f"{k} {v:+.2f}%" for k, v in ov.items()),
                                any(v <= hi for v in ov.values())))
        pairs = [(by[(ds, f"ezo-{c}" if c < 5 else "zo")], by[(ds, f"int8-{c}")])
                 for c in range(2, 6) if (ds, f"int8-{c}") in by and (ds, f"ezo-{c}" if c < 5 else "zo") in by]
        if pairs and all(f["memory"] and i["memory"] for f, i in pairs):
            mem = {i["label"]: f["memory"]["peak_bytes"] / i["memory"]["peak_bytes"] for f, i in pairs}
            lo, hi = PAPER["int8_mem"]
            claims.append(Claim(f"{ds}_int8_memory", f"ElasticZO-INT8 reduces memory {lo}-{hi}x vs float",
                                "float/int8 peak: " + ", ".join(f"{k} {v:.2f}x" for k, v in mem.items()),
                                all(v >= lo for v in mem.values())))
            tm = {i["label"]: f["ms_per_step"] / i["ms_per_step"] for f, i in pairs}
            lo, hi = PAPER["int8_time"]
            claims.append(Claim(f"{ds}_int8_time", f"ElasticZO-INT8 reduces training time {lo}-{hi}x",
                                "float/int8 time per step: " + ", ".join(f"{k} {v:.2f}x" for k, v in tm.items()) +
                                " (1 thread, shared machine)", all(v >= lo for v in tm.values())))
            acc = {i["label"]: 100 * (i["test_accuracy"] - f["test_accuracy"]) for f, i in pairs}
            claims.append(Claim(f"{ds}_int8_accuracy", "ElasticZO-INT8 trains without accuracy loss vs float "
                                "(here: within 2 points at the same cutoff)",
                                ", ".join(f"{i['label']} {100 * i['test_accuracy']:.2f}% vs {f['label']} "
                                          f"{100 * f['test_accuracy']:.2f}% ({acc[i['label']]:+.1f})"
                                          for f, i in pairs),
                                all(v >= -2.0 for v in acc.values())))
    return claims


def _plot(ctx: Context, s: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dss = sorted({r["dataset"] for r in rows}, key=lambda d: d != "mnist")
    fig, axes = plt.subplots(1, len(dss), figsize=(7 * len(dss), 5), squeeze=False)
    for ax, ds in zip(axes[0], dss):
        for r in rows:
            if r["dataset"] != ds or not r["curve"]:
                continue
            xs, ys = zip(*r["curve"])
            style = "--" if r["kind"] == "int8" else "-"
            ax.plot(xs, [100 * y for y in ys], style, marker=".", label=f"{r['label']} ({100 * ys[-1]:.1f}%)")
        ax.set(xlabel="training step", ylabel="test accuracy %", ylim=(0, 100),
               title=f"{ds}: learning curves (batch {s['batch']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.out / "learning_curves.png", dpi=110)
    plt.close(fig)
    return ["learning_curves.png"]
