"""``lenetlab reproduce snn-attacks``: adversarial robustness of locally trained (spiking) LeNet-5
(Lin & Sengupta 2025; method note docs/papers/snn-attacks.md).

Trains LeNet-5 with the four learning rules - BP, FA, DFA, LE
(:mod:`lenetlab.rules`) - in two domains, each from several seeds: the
spiking ``lenet5_snn`` (LIF, direct encoding, T = 4, fast-sigmoid surrogate,
mean-membrane readout) and the non-spiking ``lenet5`` (ReLU). One more BP
model per domain, trained with another seed, is the substitute for the
transfer attacks. Every target is attacked over an L-inf epsilon grid (pixel
units) by (:mod:`lenetlab.attacks`):

- ``fgsm`` / ``pgd``: white-box, gradient from the true autograd graph
  (surrogate gradients through time for the SNN);
- ``fgsm-rule`` / ``pgd-rule``: white-box through the model's own learning
  pathway (FA's B, DFA's B_l, LE's first local classifier) - local rules only;
- ``bb-fgsm`` / ``bb-pgd``: crafted on the BP substitute, transferred;
- ``hybrid`` / ``hybrid-rule``: PGD on the substitute, then PGD on the target
  along its own gradient (autograd / its learning pathway) plus the
  substitute's (reconstructed, see :mod:`lenetlab.attacks.transfer`).

Every iterative attack gets the same budget of input-gradient evaluations
(:mod:`lenetlab.attacks.budget`): PGD and bb-PGD take ``budget`` steps, the
hybrid splits the same number between its transfer steps and its target steps
(each of which costs two). The robustness figure of an image is its
correctness averaged over the epsilon grid; a model's is the mean over
images. Claims (per domain, each over >= 3 seeds with 95% bootstrap
intervals over seeds and the shared test images; ``claims`` takes the cells):

- ``local_rules_look_robust_{snn,ann}`` (the paper's reading): each local
  rule (FA, DFA, LE) attacked through its own learning pathway keeps higher
  accuracy than BP, under FGSM and under PGD;
- ``..._autograd``: the same with the true autograd gradient - if this fails
  while the first holds, the apparent robustness is gradient masking;
- ``hybrid_beats_others_{snn,ann}`` (the paper's reading): against each local
  rule, the hybrid through the learning pathway leaves lower accuracy than
  FGSM and PGD through that pathway, black-box FGSM and black-box PGD;
- ``..._autograd`` (the true-gradient reading): the autograd hybrid against
  autograd FGSM and PGD and the black-box attacks.

A claim made of several comparisons holds only if each does: it is decided
by its weakest comparison (docs/papers/snn-attacks.md).

Training: the ``fast`` preset plus each rule's recommended settings
(``Rule.recommended``: FA and DFA take smaller batches and a lower peak lr).
Quick mode (default): 3 seeds, 10k training images x 2 epochs, 1000 test
images, eps {0.1, 0.2}, 6 gradient evaluations per attack. ``--full``: 5 seeds,
60k x 3 epochs, 1000 test images, eps 0.05..0.3, 20 gradient evaluations.

Trained models are kept as run directories under ``OUT/runs/`` (so
``lenetlab attack OUT/runs/snn_dfa_s0 ...`` works on them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lenetlab.experiments import stats
from lenetlab.experiments.base import Claim, Context, Experiment, Result, Timings, timing
from lenetlab.fileio import save_figure
from lenetlab.registry import register

RULES = ("bp", "fa", "dfa", "le")
LOCAL = ("fa", "dfa", "le")
DOMAINS = {"snn": "lenet5_snn", "ann": "lenet5"}
# label -> (registered attack, gradient source of the target); "" = crafted on the substitute alone
ATTACKS = {"fgsm": ("fgsm", "autograd"), "pgd": ("pgd", "autograd"),
           "fgsm-rule": ("fgsm", "rule"), "pgd-rule": ("pgd", "rule"),
           "bb-fgsm": ("bb-fgsm", ""), "bb-pgd": ("bb-pgd", ""),
           "hybrid": ("hybrid", "autograd"), "hybrid-rule": ("hybrid", "rule")}
BP_ATTACKS = ("fgsm", "pgd", "bb-fgsm", "bb-pgd", "hybrid")   # BP's learning pathway is autograd
# the two readings of "the hybrid beats the existing attacks": (suffix, hybrid label, baselines)
READINGS = (("", "hybrid-rule", ("fgsm-rule", "pgd-rule", "bb-fgsm", "bb-pgd")),
            ("_autograd", "hybrid", ("fgsm", "pgd", "bb-fgsm", "bb-pgd")))


@dataclass(frozen=True)
class Settings:
    """What one mode runs."""

    seeds: list[int]              # training seeds of every target model
    train_subset: int | None      # training images (None: all 60k less the validation split)
    epochs: int
    steps: int                    # SNN time steps T
    test_subset: int              # attacked test images (the first N)
    eps: list[float]              # L-inf radii in [0, 1] pixel units
    budget: int                   # input-gradient evaluations of every iterative attack
    substitute_seed: int = 100    # the BP substitute's training seed (not among the targets')
    val_size: int = 5000          # training images held out for the per-epoch validation accuracy


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:   # tests only: every code path, meaningless numbers
        s = Settings([0], 256, 1, 2, 16, [0.1, 0.3], 3, val_size=200)
    elif full:
        s = Settings([0, 1, 2, 3, 4], None, 3, 4, 1000, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3], 20)
    else:
        s = Settings([0, 1, 2], 10000, 2, 4, 1000, [0.1, 0.2], 6)   # 10k: its share of a 45-min reproduce all
    return dataclasses.asdict(s)


def run_config(domain: str, rule: str, s: Settings, seed: int = 0):
    from lenetlab.rules import recommended_train
    from lenetlab.train.presets import resolve

    model = DOMAINS[domain]
    over: dict[str, Any] = {"data": {"train_subset": s.train_subset, "test_subset": s.test_subset,
                                     "val_size": s.val_size},
                            "train": {**recommended_train(rule, model),    # FA/DFA: smaller batch, lower lr
                                      "epochs": s.epochs, "rule": rule, "seed": seed,
                                      "eval_test_every_epoch": False, "grad_norms": False}}
    if domain == "snn":
        over["model"] = {"steps": s.steps}
    return resolve("fast", model, overrides=over)


def attacks_of(rule: str) -> tuple[str, ...]:
    return BP_ATTACKS if rule == "bp" else tuple(ATTACKS)


@register("experiment", "snn-attacks")
class SNNAttacks(Experiment):
    """Lin & Sengupta 2025: BP/FA/DFA/LE spiking and non-spiking LeNet-5 under FGSM, PGD, black-box, hybrid."""

    name = "snn-attacks"
    cost = 7   # scheduling hint for reproduce all --jobs (rough quick-mode CPU share)
    paper = ("Lin, Sengupta 2025, on the adversarial robustness of spiking neural networks trained by local "
             "learning")
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        s = Settings(**ctx.resolve_settings(settings(ctx.full, ctx.tiny)))
        runs = ctx.out / "runs"
        n = s.test_subset
        # every cell is a module-level function of (settings, paths), so a runner (Ray) can take it: the
        # models side by side, then the attacks side by side
        models = [(d, "bp", None) for d in DOMAINS] + [(d, r, sd) for d in DOMAINS for r in RULES for sd in s.seeds]
        train_jobs = {m: (f"train/{_key(*m)}", partial(_train, run_config(m[0], m[1], s, _seed(m[2], s)),
                                                        runs / _key(*m))) for m in models}
        ctx.cells.prefetch(train_jobs.values())
        trained: dict[tuple[str, str, int | None], dict[str, Any]] = {}
        for i, m in enumerate(models):
            trained[m] = row = ctx.cells.get_or_run(*train_jobs[m])
            ctx.log(f"[train {i + 1}/{len(models)}] {_key(*m):18s} test {100 * row['test_accuracy']:.2f}% "
                    f"({timing(row, 'wall_seconds', 0.0):.0f}s)")
        targets = [(d, r, sd) for d in DOMAINS for r in RULES for sd in s.seeds]
        attack_jobs = {t: (f"attack/{_key(*t)}", partial(_attack_cell, runs, *t, s)) for t in targets}
        ctx.cells.prefetch(attack_jobs.values())
        cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
        try:
            for d, r, sd in targets:
                cell = ctx.cells.get_or_run(*attack_jobs[(d, r, sd)])
                cells.setdefault((d, r), []).append(cell)
                ctx.log(f"[attack] {_key(d, r, sd)}: clean {100 * _unpack(cell['clean'], n).mean():.1f}%  "
                        + "  ".join(f"{a} {100 * _score(cell, a, n).mean():.1f}%" for a in cell["curves"]))
        finally:
            _TRANSFERRED.clear()
        scores = {(d, r, a): [_score(c, a, n) for c in cs] for (d, r), cs in cells.items() for a in attacks_of(r)}
        claim_list, comparisons = claims(scores, min_seeds=stats.min_seeds(ctx.full))
        rows = _table(cells, s, n)
        train_table = [{"domain": d, "rule": r, "seed": s.substitute_seed if sd is None else sd,
                        "role": "substitute" if sd is None else "target",
                        "test_acc_%": round(100 * v["test_accuracy"], 2)}
                       for (d, r, sd), v in trained.items()]
        train_times = [{"domain": d, "rule": r, "seed": s.substitute_seed if sd is None else sd,
                        "train_s": round(timing(v, "wall_seconds", 0.0), 1)} for (d, r, sd), v in trained.items()]
        figures = _plot(ctx.out, s, rows)
        calls = cells[("snn", "fa")][0]["gradient_calls"]
        return Result(self.name, self.paper, ctx.mode,
                      {"settings": dataclasses.asdict(s), "domains": DOMAINS, "rules": list(RULES),
                       "attacks": list(ATTACKS)},
                      tables={"trained models (test accuracy on the test subset)": train_table,
                              "adversarial accuracy % vs eps (L-inf, [0,1] pixel units), mean over seeds": [
                                  {k: v for k, v in r.items() if k != "accs"} for r in rows],
                              "claim comparisons (each claim holds only if all its comparisons do)": comparisons},
                      claims=claim_list, figures=figures,
                      metrics={f"{r['domain']}_{r['rule']}_{r['attack']}_acc": r["mean_%"] / 100 for r in rows},
                      notes=[f"Attacks on the first {n} MNIST test images; eps in [0,1] pixel units; "
                             f"{len(s.seeds)} training seeds per target ({s.seeds}); the BP substitute of each "
                             f"domain is trained with seed {s.substitute_seed}.",
                             f"Equal gradient budget: every iterative attack spends {s.budget} input-gradient "
                             "evaluations per image batch (" + ", ".join(f"{a} {c}" for a, c in calls.items())
                             + "). PGD: step 2.5 eps / steps, random start, best iterate kept. The hybrid "
                             "takes transfer_steps + 2 x steps evaluations (target and substitute per step).",
                             "fgsm / pgd / hybrid use the autograd (surrogate) gradient; the -rule variants the "
                             "model's own learning pathway (local rules only; BP's pathway is autograd).",
                             "Two readings of 'the hybrid beats the existing attacks': the paper's (gradients "
                             "through the learning pathway) and the true-gradient one (autograd PGD among the "
                             "baselines); bb-PGD is a baseline in both.",
                             "The hybrid attack is our reconstruction: PGD on the BP substitute, then PGD on the "
                             "target along normalised target + substitute gradients, best iterate kept."],
                      timings=Timings(tables={"training time per model": train_times}))


def _seed(sd: int | None, s: Settings) -> int:
    return s.substitute_seed if sd is None else sd


def _test_subset(n: int) -> tuple[Any, Any]:
    """The first ``n`` MNIST test images in [0, 1] (N, 1, 28, 28) and their labels."""
    import torch

    from lenetlab.data.datasets import load_raw

    _, _, xs, ys = load_raw("mnist")
    return (torch.from_numpy(xs[:n].copy()).float().div_(255.0).unsqueeze(1),
            torch.from_numpy(ys[:n].astype("int64")))


# a memo, per process, of each substitute's black-box examples (they do not depend on the target): keyed by the
# substitute's weights file as it is on disk (path, size, mtime) and the settings, so a retrained substitute is
# never served stale examples; two domains' worth, cleared when the experiment ends
_TRANSFERRED: dict[tuple, dict[str, list]] = {}


def _attack_cell(runs: Path, d: str, r: str, sd: int, s: Settings) -> dict[str, Any]:
    """Every attack on one target model (a cell; module level, so a runner such as Ray can take it). The
    black-box examples of a domain are crafted on its substitute once per process and reused."""
    from lenetlab.attacks import Target

    x01, y = _test_subset(s.test_subset)
    sub_run = runs / _key(d, "bp", None)
    sub = Target.from_run(sub_run)
    st = (sub_run / "model.safetensors").stat()
    key = (str(sub_run.resolve()), st.st_size, st.st_mtime_ns, repr(s))
    if key not in _TRANSFERRED:
        if len(_TRANSFERRED) >= len(DOMAINS):
            _TRANSFERRED.clear()
        _TRANSFERRED[key] = _transfer(sub, x01, y, s)
    return _attack_target(runs / _key(d, r, sd), sub, r, x01, y, s, _TRANSFERRED[key])


def _key(domain: str, rule: str, seed: int | None) -> str:
    return f"{domain}_{rule}_substitute" if seed is None else f"{domain}_{rule}_s{seed}"


def _pack(ok: np.ndarray) -> str:
    """Per-image 0/1 correctness as hex of packed bits (a cell stays small: 1000 images -> 250 characters)."""
    return np.packbits(np.asarray(ok, dtype=bool)).tobytes().hex()


def _unpack(h: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8))[:n].astype(np.float64)


def _score(cell: dict[str, Any], attack: str, n: int) -> np.ndarray:
    """Per-image correctness under ``attack`` averaged over the eps grid (a score in [0, 1] per image)."""
    return np.mean([_unpack(h, n) for h in cell["curves"][attack]], axis=0)


def _train(cfg, out: Path) -> dict[str, Any]:
    from lenetlab.train import fit

    r = fit(cfg, out=out, force=True, log=None, progress=False)
    return {"test_accuracy": r["test_accuracy"], "timings": {"wall_seconds": r["wall_seconds"]}}


def _craft(attack, x01, y, batch_size: int = 500):
    import torch

    return torch.cat([attack(x01[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x01), batch_size)])


def _transfer(sub, x01, y, s: Settings) -> dict[str, list]:
    """The black-box examples of a domain, crafted on its substitute once per eps (they do not depend on the
    target: a transfer attack never looks at it)."""
    from lenetlab.attacks.budget import make_budgeted

    return {label: [_craft(make_budgeted(ATTACKS[label][0], sub, e, s.budget, seed=j, substitute=sub), x01, y)
                    for j, e in enumerate(s.eps)] for label in ("bb-fgsm", "bb-pgd")}


def _attack_target(run: Path, sub, rule: str, x01, y, s: Settings, transferred: dict[str, list]) -> dict[str, Any]:
    from lenetlab.attacks import Target
    from lenetlab.attacks.budget import make_budgeted

    targets = {src: Target.from_run(run, src) for src in ("autograd", "rule")}
    clean = targets["autograd"].predict(x01) == y
    curves: dict[str, list[str]] = {}
    calls: dict[str, int] = {}
    for label in attacks_of(rule):
        name, src = ATTACKS[label]
        packed = []
        for j, e in enumerate(s.eps):
            if not src:
                x_adv = transferred[label][j]
                calls[label] = make_budgeted(name, sub, e, s.budget, substitute=sub).gradient_calls()
            else:
                atk = make_budgeted(name, targets[src], e, s.budget, seed=j, substitute=sub)
                calls[label] = atk.gradient_calls()
                x_adv = _craft(atk, x01, y)
            packed.append(_pack((targets["autograd"].predict(x_adv) == y).numpy()))
        curves[label] = packed
    return {"clean": _pack(clean.numpy()), "curves": curves, "gradient_calls": calls}


# ------------------------------------------------------------------ claims
def _all_of(name: str, statement: str, parts: list[tuple[str, stats.Rule, stats.Estimate]],
            min_seeds: int) -> tuple[Claim, list[dict[str, Any]]]:
    """One claim that holds only if every comparison in ``parts`` does: decided by its weakest comparison
    (one not supported, else an inconclusive one, else the supported one nearest its threshold), with every
    comparison listed in ``measured`` and returned as table rows."""
    rank = {stats.NOT_SUPPORTED: 0, stats.INCONCLUSIVE: 1, stats.SUPPORTED: 2}
    decided = [(rule.decide(est), label, rule, est) for label, rule, est in parts]
    verdict, label, rule, est = min(decided, key=lambda t: (rank[t[0]], t[3].lo))
    text = (f"weakest: {label} {est.format(rule.scale, rule.unit)}; all: "
            + "; ".join(f"{lb} {e.format(r.scale, r.unit, 1)} {v}" for v, lb, r, e in decided))
    claim = stats.make_claim(name, statement, rule, est, measured=text, min_seeds=min_seeds)
    claim = dataclasses.replace(claim, rule=f"each of {len(parts)} comparisons (this row: the weakest, {label}): "
                                + claim.rule)
    rows = [{"claim": name, "comparison": lb, "estimate_points": round(100 * e.value, 2),
             "ci95_points": f"[{100 * e.lo:.2f}, {100 * e.hi:.2f}]", "verdict": v} for v, lb, r, e in decided]
    return claim, rows


def claims(scores: dict[tuple[str, str, str], list[np.ndarray]], min_seeds: int = stats.QUICK_MIN_SEEDS
           ) -> tuple[list[Claim], list[dict[str, Any]]]:
    """The claims from the cells: ``scores[(domain, rule, attack)]`` is one per-image score vector per
    training seed (correctness averaged over eps), every vector over the same test images. Returns the
    claims and one table row per comparison behind them."""
    out: list[Claim] = []
    rows: list[dict[str, Any]] = []
    pts = {"scale": 100, "unit": " points"}
    for d in DOMAINS:
        for source, suffix in (("-rule", ""), ("", "_autograd")):
            parts = []
            for r in LOCAL:
                for a in ("fgsm", "pgd"):
                    # different models (BP vs rule): seeds not paired; the same images: images paired
                    est = stats.bootstrap_difference(scores[(d, r, a + source)], scores[(d, "bp", a)])
                    via = "its pathway" if source else "autograd"
                    rule = stats.Difference(f"{r.upper()} via {via}", "BP", 0.0,
                                            metric=f"{a.upper()} accuracy (mean over eps)", **pts)
                    parts.append((f"{r.upper()} vs BP, {a}{source}", rule, est))
            how = ("with the input gradient taken through each model's own learning pathway (the paper's reading)"
                   if source else "with the true autograd (surrogate) gradient - real robustness; if this fails "
                   "while the pathway reading holds, the robustness is gradient masking")
            c, rs = _all_of(f"local_rules_look_robust_{d}{suffix}",
                            f"gradient attacks (FGSM, PGD) are less effective against locally trained (FA, DFA, "
                            f"LE) {d.upper()}s than against BP, {how}; accuracy averaged over eps", parts, min_seeds)
            out.append(c)
            rows += rs
        for suffix, hybrid, baselines in READINGS:
            parts = []
            for r in LOCAL:
                for b in baselines:
                    # the same target models attacked both ways: paired by seed and by image
                    est = stats.bootstrap_difference(scores[(d, r, b)], scores[(d, r, hybrid)], paired=True)
                    rule = stats.Difference(b, hybrid, 0.0, metric=f"accuracy left on {r.upper()}", **pts)
                    parts.append((f"{r.upper()}: {b} - {hybrid}", rule, est))
            reading = ("the paper's reading: target gradients through the learning pathway; baselines FGSM and PGD "
                       "through it, black-box FGSM and PGD" if not suffix else
                       "the true-gradient reading: the autograd hybrid against autograd FGSM and PGD, black-box "
                       "FGSM and PGD")
            c, rs = _all_of(f"hybrid_beats_others_{d}{suffix}",
                            f"the hybrid attack leaves lower accuracy than every existing attack against locally "
                            f"trained {d.upper()}s, at the same gradient budget ({reading})", parts, min_seeds)
            out.append(c)
            rows += rs
    return out, rows


# ------------------------------------------------------------------ table and figure
def _table(cells: dict[tuple[str, str], list[dict[str, Any]]], s: Settings, n: int) -> list[dict[str, Any]]:
    rows = []
    for (d, r), cs in cells.items():
        clean = float(np.mean([_unpack(c["clean"], n).mean() for c in cs]))
        for a in attacks_of(r):
            accs = [float(np.mean([_unpack(c["curves"][a][j], n).mean() for c in cs])) for j in range(len(s.eps))]
            est = stats.bootstrap_accuracy([_score(c, a, n) for c in cs])
            rows.append({"domain": d, "rule": r, "attack": a, "gradient_calls": cs[0]["gradient_calls"][a],
                         "clean_%": round(100 * clean, 1), "accs": accs,
                         **{f"eps {e:g}": round(100 * v, 1) for e, v in zip(s.eps, accs)},
                         "mean_%": round(100 * est.value, 1),
                         "mean_ci95_%": f"[{100 * est.lo:.1f}, {100 * est.hi:.1f}]"})
    return rows


def _plot(out: Path, s: Settings, rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"fgsm": ("tab:blue", "-"), "pgd": ("tab:orange", "-"), "fgsm-rule": ("tab:blue", ":"),
              "pgd-rule": ("tab:orange", ":"), "bb-fgsm": ("tab:green", "--"), "bb-pgd": ("tab:olive", "--"),
              "hybrid": ("tab:red", "-"), "hybrid-rule": ("tab:red", ":")}
    fig, axes = plt.subplots(len(DOMAINS), len(RULES), figsize=(15, 7), sharex=True, sharey=True, squeeze=False)
    for i, d in enumerate(DOMAINS):
        for j, r in enumerate(RULES):
            ax = axes[i, j]
            for row in rows:
                if (row["domain"], row["rule"]) != (d, r):
                    continue
                c, ls = styles[row["attack"]]
                ax.plot(s.eps, [100 * a for a in row["accs"]], color=c, linestyle=ls, marker=".",
                        label=row["attack"])
            ax.set_title(f"{d.upper()} trained by {r.upper()} ({len(s.seeds)} seeds)")
            ax.grid(alpha=0.3)
            ax.set_ylim(0, 100)
            if i == len(DOMAINS) - 1:
                ax.set_xlabel("eps (L-inf, [0,1] pixels)")
            if j == 0:
                ax.set_ylabel("accuracy under attack %")
    # one legend for all panels, above them (inside a panel it hid curves)
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, out / "accuracy_vs_eps.png", dpi=100)
    plt.close(fig)
    return ["accuracy_vs_eps.png"]
