"""``lenetlab reproduce noise``: hardening against noisy computation (Wang, Borras, Klein, Froening 2025,
docs/papers/noise.md).

Models, trained on MNIST and evaluated with absolute Gaussian noise after every
layer (input, conv, activation, pool, linear incl. logits) at a few evaluation
sigmas, several noise draws each (:func:`lenetlab.noise.noisy_accuracy_sweep`: one noise seed per training
seed for every sigma):

- ``float``: the plain baseline;
- ``qat{b}_s{s}``: constant-scale QAT (:mod:`lenetlab.noise.qat`) at b bits and
  activation scale s, evaluated with its fake-quant on. Every configuration of
  the grid is trained once (seed 0) and scored on a **validation split** held
  out of training; only the configuration with the best mean validation
  accuracy under noise is trained on the other seeds and scored on the test set;
- ``noisy``: noisy training with **sigma_train = sigma_eval** (as the paper):
  one model per evaluation sigma, trained with that noise on (ramped up over
  the first quarter of training) and scored at that sigma only.

Two architectures: ``lenet5`` (61,706 parameters) and ``lenet5`` with
``width=4`` (every hidden width x4: 24/64/480/336 channels and units, about
about 16x the MACs and the parameters: 972,554).

Claims, all by the one rule of :mod:`lenetlab.noise.claims` (shared with
``lenetlab reproduce matrix``): a paired bootstrap over the training seeds and
the test images of the accuracy difference under noise, each image scored by
its fraction of draws correct, averaged over the evaluation sigmas:

- ``qat_beats_float_<arch>``: the chosen QAT configuration beats float;
- ``noisy_beats_qat_<arch>``: noisy training beats the chosen QAT;
- ``noisy_gain_larger_net``: the noisy-over-QAT margin is larger on the larger
  architecture (a difference of paired differences).

Quick mode (default): 3 seeds, 10k training images x 3 epochs, 2,000
validation images, 1,000 test images, 4 draws, QAT 4 bits x scales {0.5, 2},
sigma_eval {0.3, 1}. ``--full``: 5 seeds, 55k training images x 10 epochs, 5,000
validation images, the 10k test set, 10 draws, bits {4, 8, 16} x scales
{0.25, 1, 4, 16, 64}, sigma_eval {0.1, 0.3, 1, 3}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np

from lenetlab.config import DataConfig, HardeningConfig, ModelConfig, RunConfig, TrainConfig
from lenetlab.experiments import stats
from lenetlab.experiments.base import Claim, Context, Experiment, Result, Timings, timing
from lenetlab.fileio import save_figure
from lenetlab.registry import register

LARGER_WIDTH = 4.0
ARCHS = {"lenet5": ("lenet5", {}), "lenet5_w4": ("lenet5", {"width": LARGER_WIDTH})}
METHODS = ("float", "qat", "noisy")
#: the journal tag of cells scored at several sigmas in one sweep with one noise seed (common random numbers);
#: cells journalled before (a seed per sigma) have other keys and are run again, not mixed in
SWEEP_TAG = "crn"


@dataclass
class Settings:
    """One mode's grid. ``sigmas``: the evaluation sigmas, each also a noisy-training sigma."""

    seeds: list[int]
    train_subset: int | None
    val_size: int
    test_subset: int | None
    epochs: int
    draws: int
    bits: list[int]
    scales: list[float]
    sigmas: list[float]
    ramp: float = 0.25
    batch_size: int = 128
    archs: list[str] = field(default_factory=lambda: list(ARCHS))


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:   # tests only: every code path, meaningless numbers
        s = Settings(seeds=[0], train_subset=300, val_size=200, test_subset=200, epochs=1, draws=2, bits=[4],
                     scales=[0.5, 2.0], sigmas=[0.5])
    elif full:
        s = Settings(seeds=[0, 1, 2, 3, 4], train_subset=55000, val_size=5000, test_subset=None, epochs=10,
                     draws=10, bits=[4, 8, 16], scales=[0.25, 1.0, 4.0, 16.0, 64.0], sigmas=[0.1, 0.3, 1.0, 3.0])
    else:
        s = Settings(seeds=[0, 1, 2], train_subset=10000, val_size=2000, test_subset=1000, epochs=3, draws=4,
                     bits=[4], scales=[0.5, 2.0], sigmas=[0.3, 1.0])
    return asdict(s)


def qat_label(bits: int, scale: float) -> str:
    return f"qat{bits}_s{scale:g}"


def run_config(arch: str, s: Settings, seed: int, qat: tuple[int, float] | None = None,
               sigma: float = 0.0) -> RunConfig:
    """The run config of one model: float, QAT (``qat=(bits, scale)``) or noisy (``sigma`` > 0)."""
    name, options = ARCHS[arch]
    data = DataConfig(val_size=s.val_size, train_subset=s.train_subset, test_subset=s.test_subset)
    hard = HardeningConfig(qat_bits=qat[0] if qat else None, act_scale=qat[1] if qat else 1.0, sigma=sigma,
                           ramp=s.ramp if sigma > 0 else 0.0)
    tc = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, seed=seed, eval_test_every_epoch=False,
                     grad_norms=False, hardening=hard)
    return RunConfig(model=ModelConfig(name, dict(options)), data=data, train=tc)


def _train_and_score(cfg: RunConfig, sigmas: list[float], draws: int, val: bool) -> dict[str, Any]:
    """Train, then score under noise at each sigma: per-image test scores, and (``val``) validation means.
    One cell (module level, so it can run in a Ray task)."""
    from lenetlab.data import load_splits
    from lenetlab.models import param_count
    from lenetlab.noise.inject import noisy_accuracy_sweep
    from lenetlab.noise.training import apply_eval_qat
    from lenetlab.train import fit

    splits = load_splits(cfg.data)     # each cell its own copy (0.15 s once the raw arrays are in memory)
    r = fit(cfg, splits=splits, log=None, progress=False)
    model = r["_model"]
    qat = apply_eval_qat(model, cfg.train)
    out: dict[str, Any] = {"clean": r["test_accuracy"], "params": param_count(model),
                           "timings": {"train_seconds": r["wall_seconds"]}, "test": {}, "val": {}}
    try:
        # every sigma with one noise seed per training seed (common random numbers: at a given sigma, every
        # method's models of a training seed see the same normals), all sigmas in one sweep
        seed = 1000 * cfg.train.seed
        test = noisy_accuracy_sweep(model, splits.test_x, splits.test_y, sigmas, draws, seed=seed)
        for sg, t in zip(sigmas, test):
            out["test"][f"{sg:g}"] = [round(v, 6) for v in t["per_image"]]
        if val:
            for sg, v in zip(sigmas, noisy_accuracy_sweep(model, splits.val_x, splits.val_y, sigmas, draws,
                                                          seed=seed + 500)):
                out["val"][f"{sg:g}"] = v["mean"]
    finally:
        if qat is not None:
            qat.remove()
    return out


@register("experiment", "noise")
class NoiseStudy(Experiment):
    """Wang et al. 2025: noise injection, constant-scale QAT and noisy training on LeNet-5 and a 4x wider LeNet."""

    name = "noise"
    cost = 4   # scheduling hint for reproduce all --jobs (rough quick-mode CPU share)
    paper = "Wang, Borras, Klein, Froening 2025, hardening DNNs against noisy computations (docs/papers/noise.md)"
    accepts_options = True

    def run(self, ctx: Context) -> Result:

        s = Settings(**ctx.resolve_settings(settings(ctx.full, ctx.tiny)))
        train_s: dict[str, float | None] = {}

        def job(key: str, cfg: RunConfig, sigmas: list[float], val: bool = False):
            return key, partial(_train_and_score, cfg, sigmas, s.draws, val)

        def cell(key: str, fn) -> dict[str, Any]:
            rec = ctx.cells.get_or_run(key, fn)
            train_s[key] = timing(rec, "train_seconds")
            ctx.log(f"{key}: clean {100 * rec['clean']:.2f}% ({timing(rec, 'train_seconds', 0.0):.1f}s training)")
            return rec

        configs = [(b, sc) for b in s.bits for sc in s.scales]
        cells: dict[str, Any] = {}
        for arch in s.archs:
            # 1. QAT configuration choice: seed 0 of every configuration, on the validation split only (the
            # independent cells are prefetched: side by side where there is a runner, Ray)
            cand_jobs = {qat_label(*q): job(f"{arch}/{qat_label(*q)}/s{s.seeds[0]}/{SWEEP_TAG}",
                                            run_config(arch, s, s.seeds[0], q), s.sigmas, val=True) for q in configs}
            float_jobs = [job(f"{arch}/float/s{sd}/{SWEEP_TAG}", run_config(arch, s, sd), s.sigmas)
                          for sd in s.seeds]
            noisy_jobs = {f"{sg:g}": [job(f"{arch}/noisy{sg:g}/s{sd}", run_config(arch, s, sd, sigma=sg), [sg])
                                      for sd in s.seeds] for sg in s.sigmas}
            ctx.cells.prefetch([*cand_jobs.values(), *float_jobs, *(j for js in noisy_jobs.values() for j in js)])
            cands = {k: cell(*j) for k, j in cand_jobs.items()}
            chosen = choose_config({k: v["val"] for k, v in cands.items()})
            q = next(c for c in configs if qat_label(*c) == chosen)
            ctx.log(f"{arch}: QAT configuration chosen on the validation split: {chosen} (mean accuracy under "
                    f"noise {100 * np.mean(list(cands[chosen]['val'].values())):.2f}%, seed {s.seeds[0]}, "
                    f"{len(cands)} configurations)")
            qat_jobs = [job(f"{arch}/{chosen}/s{sd}/{SWEEP_TAG}", run_config(arch, s, sd, q), s.sigmas)
                        for sd in s.seeds[1:]]
            ctx.cells.prefetch(qat_jobs)
            qat_cells = [cands[chosen]] + [cell(*j) for j in qat_jobs]
            # 2. float on every seed; noisy with sigma_train = sigma_eval, scored at its own sigma
            float_cells = [cell(*j) for j in float_jobs]
            noisy_cells = {sg: [cell(*j) for j in js] for sg, js in noisy_jobs.items()}
            cells[arch] = {"chosen": chosen, "validation": {k: v["val"] for k, v in cands.items()},
                           "float": float_cells, "qat": qat_cells, "noisy": noisy_cells}

        scores = {arch: method_scores(c, s.sigmas) for arch, c in cells.items()}
        claims = noise_claims(scores, s.sigmas, stats.min_seeds(ctx.full))
        tables = {"validation: QAT configuration choice (mean accuracy % under noise on the validation split, "
                  "seed 0)": _validation_rows(cells),
                  "accuracy % vs sigma (test set; mean over seeds and draws; noisy: trained at that sigma)":
                      _curve_rows(cells, s.sigmas),
                  "models": _model_rows(cells, s)}
        figures = _plot(ctx, s, cells)
        return Result(self.name, self.paper, ctx.mode,
                      {"settings": asdict(s), "archs": {k: {"model": n, "options": o} for k, (n, o) in ARCHS.items()},
                       "noise": "absolute, after input/conv/act/pool/linear (logits included)"},
                      tables=tables, claims=claims, figures=figures, notes=_notes(s, cells),
                      timings=Timings(tables={"training time per cell": [
                          {"cell": k, "train seconds": None if v is None else round(v, 1)}
                          for k, v in train_s.items()]}))


def choose_config(val: dict[str, dict[str, float]]) -> str:
    """The QAT configuration with the best mean validation accuracy over the evaluation sigmas (ties: first)."""
    return max(val, key=lambda k: float(np.mean(list(val[k].values()))))


def _mean_over_sigmas(per_sigma: list[list[float]]) -> list[float]:
    return np.mean(np.asarray(per_sigma, dtype=np.float64), axis=0).tolist()


def method_scores(c: dict[str, Any], sigmas: list[float]) -> dict[str, list[list[float]]]:
    """Per method, one per-image score vector per seed: the fraction of draws correct, averaged over the
    evaluation sigmas (noisy: the model trained at each sigma, scored at it)."""
    keys = [f"{sg:g}" for sg in sigmas]
    out = {m: [_mean_over_sigmas([r["test"][k] for k in keys]) for r in c[m]] for m in ("float", "qat")}
    n_seeds = len(c["float"])
    out["noisy"] = [_mean_over_sigmas([c["noisy"][k][i]["test"][k] for k in keys]) for i in range(n_seeds)]
    return out


def noise_claims(scores: dict[str, dict[str, list]], sigmas: list[float], min_seeds: int) -> list[Claim]:
    """The three claims from per-arch, per-method, per-seed per-image scores (the first arch is the small one,
    the last the larger). Takes only the scores, so tests can feed synthetic ones."""
    from lenetlab.noise.claims import beats_under_noise, contrast, qat_beats_float

    noise = f"absolute noise after every layer (mean over sigma {', '.join(f'{x:g}' for x in sigmas)})"
    claims = []
    for arch, sc in scores.items():
        claims.append(qat_beats_float(sc["qat"], sc["float"], noise=noise, name=f"qat_beats_float_{arch}",
                                      statement=f"constant-scale QAT improves noise tolerance over float ({arch})",
                                      min_seeds=min_seeds))
    for arch, sc in scores.items():
        claims.append(beats_under_noise(f"noisy_beats_qat_{arch}", "noisy training (sigma_train = sigma_eval) "
                                        f"improves noise tolerance more than QAT ({arch})", "noisy", "QAT",
                                        sc["noisy"], sc["qat"], noise=noise, min_seeds=min_seeds))
    small, large = list(scores)[0], list(scores)[-1]
    if small == large:
        claims.append(stats.untestable("noisy_gain_larger_net", LARGER_STATEMENT,
                                       "one architecture in this run: no larger network to compare"))
        return claims
    groups = {"nL": scores[large]["noisy"], "qL": scores[large]["qat"], "nS": scores[small]["noisy"],
              "qS": scores[small]["qat"]}
    est = contrast(groups, {"nL": 1.0, "qL": -1.0, "nS": -1.0, "qS": 1.0})
    rule = stats.GreaterThan(0.0, quantity=f"(noisy - QAT on {large}) - (noisy - QAT on {small}) accuracy under "
                             f"{noise}", scale=100, unit=" points")
    claims.append(stats.make_claim("noisy_gain_larger_net", LARGER_STATEMENT, rule, est, min_seeds=min_seeds))
    return claims


LARGER_STATEMENT = "the advantage of noisy training over QAT is larger for larger architectures"


def _validation_rows(cells) -> list[dict[str, Any]]:
    return [{"arch": arch, "config": k, **{f"sigma {sg}": round(100 * v, 2) for sg, v in val.items()},
             "chosen": "yes" if k == c["chosen"] else ""} for arch, c in cells.items()
            for k, val in c["validation"].items()]


def _curve_rows(cells, sigmas: list[float]) -> list[dict[str, Any]]:
    rows = []
    for arch, c in cells.items():
        for m in METHODS:
            label = {"float": "float", "qat": c["chosen"], "noisy": "noisy (sigma_train = sigma)"}[m]
            row: dict[str, Any] = {"arch": arch, "model": label}
            for sg in sigmas:
                k = f"{sg:g}"
                recs = c["noisy"][k] if m == "noisy" else c[m]
                row[k] = round(100 * float(np.mean([np.mean(r["test"][k]) for r in recs])), 2)
            rows.append(row)
    return rows


def _model_groups(c: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """One architecture's trained models by label (float, the chosen QAT configuration, noisy<sigma>), each a
    list of per-seed cells."""
    return {"float": c["float"], c["chosen"]: c["qat"], **{f"noisy{k}": v for k, v in c["noisy"].items()}}


def _model_rows(cells, s: Settings) -> list[dict[str, Any]]:
    rows = []
    for arch, c in cells.items():
        for label, rs in _model_groups(c).items():
            clean = [r["clean"] for r in rs]
            rows.append({"arch": arch, "model": label, "params": rs[0]["params"], "seeds": len(rs),
                         "clean_acc_%": round(100 * float(np.mean(clean)), 2),
                         "clean_sd": round(100 * float(np.std(clean, ddof=1)), 2) if len(rs) > 1 else 0.0})
    return rows


#: a trained model whose clean test accuracy is below this did not learn (chance is 10%): the report names it
FAILED_BELOW = 0.5


def failed_models(cells, seeds: list[int]) -> list[str]:
    """"arch model seed N (clean %)" for every trained model of the report below :data:`FAILED_BELOW`."""
    out = []
    for arch, c in cells.items():
        for label, rs in _model_groups(c).items():
            for i, r in enumerate(rs):
                if r["clean"] < FAILED_BELOW:
                    out.append(f"{arch} {label} seed {seeds[i]} ({100 * r['clean']:.2f}%)")
    return out


def _notes(s: Settings, cells) -> list[str]:
    chosen = ", ".join(f"{arch}: {c['chosen']}" for arch, c in cells.items())
    failed = failed_models(cells, s.seeds)
    failed_note = [f"Trained to a clean test accuracy below {FAILED_BELOW:.0%} (did not learn): {'; '.join(failed)}. "
                   "Such models stay in every table and claim: a configuration that fails on some seeds is part of "
                   "what the claims measure, and the seed intervals show it."] if failed else []
    return [f"Test accuracy on {s.test_subset or 10000} test images, {s.draws} noise draws per sigma; training on "
            f"{s.train_subset or 60000 - s.val_size} images x {s.epochs} epochs, {len(s.seeds)} seeds "
            f"({', '.join(map(str, s.seeds))}); QAT models are evaluated with their fake-quant on.",
            f"QAT configuration chosen on the {s.val_size}-image validation split (held out of training; seed 0 of "
            f"each of bits {s.bits} x scales {s.scales}; mean accuracy under noise over the evaluation sigmas): "
            f"{chosen}. The test set scores only the chosen configuration.",
            "Noise draws: the models of training seed k are scored with noise seed 1000k at every sigma (common "
            "random numbers: at one sigma, float, QAT and noisy models of a seed see the same normals), float and "
            "QAT at all sigmas in one sweep whose first layer is folded (the numbers of a call per sigma up to "
            "float rounding; lenetlab.noise.noisy_accuracy_sweep).",
            "Noisy training uses sigma_train = sigma_eval (one model per evaluation sigma and seed), with the "
            f"noise ramped linearly from 0 over the first {s.ramp:.0%} of steps.",
            f"Larger architecture: lenet5 with width={LARGER_WIDTH:g} (hidden widths 24, 64, 480, 336).",
            "Every claim uses the rule of lenetlab.noise.claims (shared with the matrix): paired bootstrap over "
            "seeds and test images; each image's score is its fraction of draws correct, averaged over sigmas.",
            *failed_note]


def _plot(ctx: Context, s: Settings, cells) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 4.5), sharey=True, squeeze=False)
    colours = {"float": "black", "qat": "tab:blue", "noisy": "tab:red"}
    for ax, (arch, c) in zip(axes[0], cells.items()):
        for m in METHODS:
            means, sds = [], []
            for sg in s.sigmas:
                k = f"{sg:g}"
                per_seed = [100 * float(np.mean(r["test"][k])) for r in (c["noisy"][k] if m == "noisy" else c[m])]
                means.append(float(np.mean(per_seed)))
                sds.append(float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0)
            label = {"float": "float", "qat": f"QAT {c['chosen']} (chosen on validation)",
                     "noisy": "noisy, sigma_train = sigma_eval"}[m]
            ax.errorbar(s.sigmas, means, yerr=sds, color=colours[m], marker="o", capsize=3, label=label)
        ax.set(xscale="log", xlabel="noise sigma (absolute, after every layer)", ylim=(0, 100),
               title=f"{arch}: test accuracy, mean +- sd over {len(s.seeds)} seed(s)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower left")
    axes[0][0].set_ylabel("test accuracy %")
    fig.tight_layout()
    save_figure(fig, ctx.out / "accuracy_vs_sigma.png", dpi=110)
    plt.close(fig)
    return ["accuracy_vs_sigma.png"]
