"""``lenetlab reproduce matrix``: one robustness matrix across every LeNet-5 variant lenetlab builds.

No single paper measures this; each of our source works checks one threat on
one kind of model. Here eight variants, each built with the library's own
tools, face the same four threats on the same MNIST test images:

============== ==============================================================
variant        how it is built
============== ==============================================================
float          ``lenet5``, fast preset (:func:`lenetlab.train.fit`)
qat_int8       the same, trained with 8-bit constant-scale QAT
               (:mod:`lenetlab.noise.qat`); evaluated with its fake-quant on
noisy          trained with the same relative noise model as the noise
               column (``train.train_noise``, ``noise_relative``,
               ``noise_sites = "conv,linear"``) at half its sigma
tt             ``float`` with fc1/fc2 as rank-r tensor trains, fine-tuned
               (:func:`lenetlab.compress.run.compress_run`)
adtn           ``float`` with fc1/fc2 as depth-M brick-wall networks, fine-tuned
snn_bp         ``lenet5_snn`` (LIF, T steps, surrogate-gradient BPTT)
abs            ``lenet5_abs`` (|x| activations)
hardened_int8  the int8 deployment of ``float`` with the top k% neurons by NVF
               protected (:mod:`lenetlab.faults.harden`, split by default)
============== ==============================================================

Columns, per variant:

- **clean**: test accuracy on the whole 10k test set;
- **PGD**: accuracy under white-box L-inf PGD at eps 0.1 (pixel units,
  :mod:`lenetlab.attacks`; the QAT model through its straight-through
  gradient, the SNN through its surrogate gradient). The hardened int8 model
  has no gradient: it gets the adversarial images of its float parent
  (transfer), rounded to uint8;
- **noise**: accuracy with relative Gaussian noise ``sigma * max|y|`` (per
  image) added to every conv/linear output, the analog multiply-accumulate
  (:class:`lenetlab.noise.NoiseInjector`, sites conv + linear, mean over
  draws). The hardened int8 model gets the same noise on its int32
  accumulators (in the real units the requantisation implies, every copy
  independently, :mod:`lenetlab.noise.int8`), then requantises;
- **int8**: accuracy of the variant's int8 deployment (``lenetlab export
  --int8``: post-training quantisation of its weights; the TT/ADTN models
  deploy their materialised dense weights);
- **SDC**: silent data corruption rate of that int8 deployment - the fraction
  of (image, draw) pairs whose top-1 changes when every int32 accumulator bit
  flips independently at one bit-error rate (as ``lenetlab reproduce faults``),
  with a 95% Wilson interval. The SNN has no integer deployment: n/a;
- **params**, **MACs** per image (:func:`lenetlab.models.macs.count_macs`;
  the SNN's T time steps included; TT/ADTN as deployed, i.e. dense; hardened:
  plus the protected copies).

Claims re-checked across variants (:func:`matrix_claims`, from the per-seed
cells; docs/claims.md): noisy training beats the float model under analog
noise and so does QAT (Wang et al. 2025) - by the one rule of
:mod:`lenetlab.noise.claims` that ``lenetlab reproduce noise`` uses too (paired
bootstrap over seeds and test images of the accuracy difference under noise,
supported when its 95% interval lies above 0) - and hardening lowers the SDC
rate of the int8 model (Ahmadilivani et al. 2023: paired bootstrap over seeds
of the SDC rate difference, each seed's (SDC, trials) count resampled).

Every variant is built from several training seeds (the table shows means
+- sd; the claims compare trained models, so one lucky seed cannot decide
them). Quick mode (default): 3 seeds, 15k training images x 2 epochs per
trained variant, PGD and noise on 1,000 test images (10 PGD steps, 5 noise
draws), SDC on 500 images x 8 draws per seed. ``--full``: 5 seeds, all 55k
training images (5k held out for validation) x 5 epochs, the 10k test set,
40 PGD steps, 10 draws, SDC on 2,000 images x 20 draws. Settings can be
overridden (``lenetlab sweep``, kind = "experiment").
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lenetlab.experiments import stats
from lenetlab.experiments.base import Claim, Context, Experiment, Result, Timings, timing
from lenetlab.fileio import save_figure
from lenetlab.registry import register

VARIANTS = ("float", "qat_int8", "noisy", "tt", "adtn", "snn_bp", "abs", "hardened_int8")
NOISE_SITES = ("conv", "linear")


@dataclass
class Settings:
    """One mode's budget (the first block: per mode) and the threats' fixed parameters."""

    seeds: list[int]
    train_subset: int | None
    epochs: int
    eval_images: int
    pgd_steps: int
    draws: int
    sdc_images: int
    sdc_draws: int
    nvf_images: int
    fit_steps: int
    finetune_epochs: int
    eps: float = 0.1
    sigma: float = 0.1
    ber: float = 2e-4
    qat_bits: int = 8
    qat_act_scale: float = 0.125
    train_sigma: float = 0.05
    tt_rank: int = 8
    adtn_depth: int = 4
    harden: str = "split"
    harden_k: int = 20
    snn_steps: int = 4
    test_images: int | None = None   # clean and int8 accuracy: the first N test images (None: all 10k)
    val_size: int = 5000             # training images held out for the per-epoch validation accuracy


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    if tiny:   # tests only: every code path, meaningless numbers
        s = Settings(seeds=[0], train_subset=500, epochs=1, eval_images=48, pgd_steps=2, draws=2, sdc_images=24,
                     sdc_draws=2, nvf_images=2, fit_steps=10, finetune_epochs=1, test_images=200,
                     val_size=200, adtn_depth=1)
    elif full:
        s = Settings(seeds=[0, 1, 2, 3, 4], train_subset=None, epochs=5, eval_images=10000, pgd_steps=40, draws=10,
                     sdc_images=2000, sdc_draws=20, nvf_images=64, fit_steps=1000, finetune_epochs=2)
    else:
        s = Settings(seeds=[0, 1, 2], train_subset=15000, epochs=2, eval_images=1000, pgd_steps=10, draws=5,
                     sdc_images=500, sdc_draws=8, nvf_images=16, fit_steps=500, finetune_epochs=1)
    return asdict(s)


def train_config(variant: str, s: Settings, seed: int = 0):
    """The run config of a trained variant (fast preset, the matrix's data budget)."""
    from lenetlab.train.presets import resolve

    model = {"snn_bp": "lenet5_snn", "abs": "lenet5_abs"}.get(variant, "lenet5")
    train: dict[str, Any] = {"epochs": s.epochs, "grad_norms": False, "eval_test_every_epoch": False, "seed": seed}
    if variant == "qat_int8":
        train["hardening"] = {"qat_bits": s.qat_bits, "act_scale": s.qat_act_scale}
    if variant == "noisy":
        train["hardening"] = {"sigma": s.train_sigma, "relative": True, "sites": ",".join(NOISE_SITES), "ramp": 0.25}
    overrides: Settings = {"data": {"train_subset": s.train_subset, "val_size": s.val_size,
                                    "test_subset": s.test_images}, "train": train}
    if variant == "snn_bp":
        overrides["model"] = {"steps": s.snn_steps}
    return resolve("fast", model, overrides=overrides)


def sdc_rate(engine, x0: np.ndarray, ber: float, draws: int, seed: int = 1) -> dict[str, Any]:
    """SDC under accumulator bit flips at ``ber`` (every bit, copies included), with a 95% Wilson interval."""
    from lenetlab.faults.resilience import sdc_counts

    counts = sdc_counts(engine, x0, ber, draws, seed)
    k, n = int(counts.sum()), int(draws * len(counts))
    est = stats.wilson(k, n)
    return {"sdc": k / n, "sdc_ci95": [est.lo, est.hi], "sdc_count": k, "trials": n}


def engine_params(engine) -> int:
    """Weights + biases over all stages (copies included)."""
    return int(sum(st.w.size + (st.rows if st.op != "rbf" else 0) for st in engine.stages))


def _splits_for(cfg) -> Any:
    """The training data of a build cell: one split per (train_subset, val_size, pad), as every variant with
    those shares it (each cell loads its own copy: 0.15 s once the raw arrays are in memory)."""
    from lenetlab.data import load_splits

    return load_splits(cfg.data)


def _test_data(s: Settings) -> tuple[Any, ...]:
    """The test images (uint8 and in [0, 1]), labels, and how many of them the PGD / noise and SDC
    evaluations use."""
    import torch

    from lenetlab.data.datasets import load_raw

    _, _, test_x, test_y = load_raw("mnist")
    test_x, test_y = test_x[: s.test_images], test_y[: s.test_images]
    n_eval, n_sdc = min(s.eval_images, len(test_x)), min(s.sdc_images, len(test_x))
    x01_all = torch.from_numpy(test_x).float().div_(255.0).unsqueeze(1)
    y_all = torch.from_numpy(test_y.astype(np.int64))
    return test_x, test_y, x01_all, y_all, n_eval, n_sdc


def _trained(s: Settings, runs: Path, v: str, seed: int) -> dict[str, Any]:
    """Build variant ``v`` by training (a cell with its own run directory; module level, for a runner)."""
    from lenetlab.train import fit

    cfg = train_config(v, s, seed)
    r = fit(cfg, out=runs / f"s{seed}" / v, force=True, splits=_splits_for(cfg), log=None, progress=False)
    return {"timings": {"seconds": r["wall_seconds"]}}


def _compressed(s: Settings, runs: Path, v: str, seed: int) -> dict[str, Any]:
    """Build variant ``v`` (tt / adtn) by compressing the float model of the seed (a cell)."""
    from lenetlab.compress.run import compress_run

    r = compress_run(runs / f"s{seed}" / "float", runs / f"s{seed}" / v, v, "c5,f6", rank=s.tt_rank,
                     depth=s.adtn_depth, fit_steps=s.fit_steps, epochs=s.finetune_epochs,
                     force=True, log=None, progress=False, splits=_splits_for(train_config("float", s)))
    return {"timings": {"seconds": r["compress_wall_seconds"]}}


def _torch_metrics(s: Settings, runs: Path, v: str, seed: int) -> dict[str, Any]:
    """Every metric of a PyTorch variant of one seed (a cell; module level, for a runner)."""
    from lenetlab.attacks import Target, make_attack, run_attack
    from lenetlab.data.transforms import from_unit
    from lenetlab.deploy.export import build_flat
    from lenetlab.models import param_count
    from lenetlab.models.macs import count_macs
    from lenetlab.noise.inject import noisy_accuracy
    from lenetlab.noise.training import apply_eval_qat
    from lenetlab.quant.engine import IntEngine
    from lenetlab.quant.int8 import blas_threads
    from lenetlab.rundir import load_model

    test_x, test_y, x01_all, y_all, n_eval, n_sdc = _test_data(s)
    t0 = time.perf_counter()
    model, cfg = load_model(runs / f"s{seed}" / v)
    model.eval()
    params = param_count(model)
    deployed = model.materialize() if hasattr(model, "materialize") else model
    macs = count_macs(deployed).total
    factored_macs = count_macs(model).total if deployed is not model else macs
    out: dict[str, Any] = {"params": params, "macs": macs, "factored_macs": factored_macs}
    if v != "snn_bp":
        with blas_threads(1):
            eng = IntEngine(build_flat(deployed, cfg, int8=True))
            out["int8_accuracy"] = float((eng.predict(test_x) == test_y).mean())
            out |= sdc_rate(eng, eng.input(np.ascontiguousarray(test_x[:n_sdc])), s.ber, s.sdc_draws)
    qat = apply_eval_qat(model, cfg.train)      # the QAT variant is evaluated as trained
    try:
        target = Target(model, cfg.data, name=v)
        out["clean_accuracy"] = float((target.predict(x01_all) == y_all).float().mean())
        attack = make_attack("pgd", target, s.eps, seed=0, steps=s.pgd_steps)
        res, _ = run_attack(attack, x01_all[:n_eval], y_all[:n_eval])
        out["pgd_accuracy"] = res.adv_accuracy
        noisy = noisy_accuracy(model, from_unit(x01_all[:n_eval], cfg.data), y_all[:n_eval], s.sigma,
                               draws=s.draws, relative=True, sites=NOISE_SITES, seed=seed)
        out["noise_accuracy"], out["noise_per_draw"] = noisy["mean"], noisy["per_draw"]
        out["noise_per_image"] = noisy["per_image"]
    finally:
        if qat is not None:
            qat.remove()
    out["timings"] = {"seconds": time.perf_counter() - t0}
    return out


def _hardened_metrics(s: Settings, runs: Path, seed: int) -> dict[str, Any]:
    """Every metric of the hardened int8 engine of one seed (a cell)."""
    from lenetlab.attacks import Target, make_attack
    from lenetlab.deploy.export import build_flat
    from lenetlab.faults.harden import harden, top_neurons
    from lenetlab.faults.nvf import nvf_report
    from lenetlab.noise.int8 import int8_noisy_accuracy
    from lenetlab.quant.engine import IntEngine
    from lenetlab.quant.int8 import blas_threads
    from lenetlab.rundir import load_model

    test_x, test_y, x01_all, y_all, n_eval, n_sdc = _test_data(s)
    t0 = time.perf_counter()
    model, cfg = load_model(runs / f"s{seed}" / "float")
    model.eval()
    with blas_threads(1):
        base = IntEngine(build_flat(model, cfg, int8=True))
        nvf = nvf_report(base, np.ascontiguousarray(test_x[: s.nvf_images]))
        ops = {j: st.op for j, st in enumerate(base.stages)}
        eng = harden(base, top_neurons(nvf["neurons"], s.harden_k, ops), s.harden)
        out: dict[str, Any] = {"int8_accuracy": float((eng.predict(test_x) == test_y).mean())}
        out["clean_accuracy"] = out["int8_accuracy"]
        # no gradient through integers: the float parent's PGD images, as uint8
        attack = make_attack("pgd", Target(model, cfg.data), s.eps, seed=0, steps=s.pgd_steps)
        x_adv = attack(x01_all[:n_eval], y_all[:n_eval])
        adv_u8 = (x_adv.squeeze(1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        out["pgd_accuracy"] = float((eng.predict(adv_u8) == test_y[:n_eval]).mean())
        noisy = int8_noisy_accuracy(eng, eng.input(np.ascontiguousarray(test_x[:n_eval])), test_y[:n_eval],
                                    s.sigma, s.draws, seed=seed)
        out["noise_accuracy"], out["noise_per_draw"] = noisy["mean"], noisy["per_draw"]
        out["noise_per_image"] = noisy["per_image"]
        out |= sdc_rate(eng, eng.input(np.ascontiguousarray(test_x[:n_sdc])), s.ber, s.sdc_draws)
        from lenetlab.models import param_count
        from lenetlab.models.macs import count_macs

        out["params"] = param_count(model) + engine_params(eng) - engine_params(base)
        out["macs"] = count_macs(model).total + eng.macs() - base.macs()
        out["factored_macs"] = out["macs"]
        out["protected"] = sum(len(st.groups) for st in eng.stages)
    out["timings"] = {"seconds": time.perf_counter() - t0}
    return out


BUILT = ("float", "qat_int8", "noisy", "snn_bp", "abs", "tt", "adtn")


@register("experiment", "matrix")
class RobustnessMatrix(Experiment):
    """Eight LeNet-5 variants x four threats (PGD, analog noise, bit flips, int8 deployment) + cost."""

    name = "matrix"
    cost = 6   # scheduling hint for reproduce all --jobs (rough quick-mode CPU share)
    paper = ("lenetlab robustness matrix (no single paper: re-checks Wang et al. 2025 and Ahmadilivani et al. 2023 "
             "across variants)")
    accepts_options = True
    order = 100     # after the paper experiments in ``reproduce all``

    def run(self, ctx: Context) -> Result:
        s = Settings(**ctx.resolve_settings(settings(ctx.full, ctx.tiny)))
        return self._run(ctx, s, ctx.out / "runs")

    def _run(self, ctx: Context, s: Settings, runs: Path) -> Result:
        # ---- build every variant (each a resumable cell with its own run directory): the float models and
        # the trained variants side by side where there is a runner (Ray), then the compressed ones (they
        # start from the float model)
        def build_job(v: str, seed: int):
            make = _compressed if v in ("tt", "adtn") else _trained
            return f"build/{v}/s{seed}", partial(make, s, runs, v, seed)

        ctx.cells.prefetch(build_job(v, seed) for seed in s.seeds for v in BUILT if v not in ("tt", "adtn"))
        built: dict[str, float] = {}
        for seed in s.seeds:
            for v in BUILT:
                if v == "tt":
                    ctx.cells.prefetch([build_job("tt", seed), build_job("adtn", seed)])
                key, make = build_job(v, seed)
                rec = ctx.cells.get_or_run(key, make)
                if not (runs / f"s{seed}" / v / "model.safetensors").exists():   # cells kept, run deleted: rebuild
                    rec = make()
                built[v] = built.get(v, 0.0) + timing(rec, "seconds", 0.0)
                ctx.log(f"seed {seed}: built {v} ({timing(rec, 'seconds', 0.0):.0f}s)")

        # ---- evaluate
        def eval_job(v: str, seed: int):
            fn = partial(_hardened_metrics, s, runs, seed) if v == "hardened_int8" else \
                partial(_torch_metrics, s, runs, v, seed)
            return f"metrics/{v}/s{seed}", fn

        ctx.cells.prefetch(eval_job(v, seed) for v in VARIANTS for seed in s.seeds)
        rows: list[dict[str, Any]] = []
        cells: dict[str, list[dict[str, Any]]] = {}
        for i, v in enumerate(VARIANTS):
            per_seed = [ctx.cells.get_or_run(*eval_job(v, seed)) for seed in s.seeds]
            cells[v] = per_seed
            m = aggregate(per_seed)
            rows.append({"variant": v, **m})
            sdc = f"{100 * m['sdc']:.2f}%" if "sdc" in m else "n/a"
            ctx.log(f"[{i + 1}/{len(VARIANTS)}] {v:13s} clean {100 * m['clean_accuracy']:.2f}%  "
                    f"PGD {100 * m['pgd_accuracy']:.1f}%  noise {100 * m['noise_accuracy']:.1f}%  SDC {sdc}  "
                    f"(mean of {len(per_seed)} seed(s); {m['seconds']:.0f}s)")

        table = [_table_row(r, s) for r in rows]
        figures = _heatmap(ctx, rows, s)
        metrics = {f"{r['variant']}.{k}": r[k] for r in rows for k in HEADLINE if k in r}
        return Result(self.name, self.paper, ctx.mode, {"settings": asdict(s), "variants": list(VARIANTS)},
                      tables={"robustness matrix": table},
                      claims=matrix_claims(cells, s, stats.min_seeds(ctx.full)), figures=figures,
                      notes=_notes(rows, s, *_test_data(s)[4:]), metrics=metrics,
                      timings=Timings(tables={"time per variant, all seeds (s)": [
                          {"variant": r["variant"], "build": round(built[r["variant"]]) if r["variant"] in built
                           else "-", "evaluate": round(r["seconds"])} for r in rows]}))


HEADLINE = ("clean_accuracy", "pgd_accuracy", "noise_accuracy", "int8_accuracy", "sdc", "params", "macs")
_MEAN = ("clean_accuracy", "pgd_accuracy", "noise_accuracy", "int8_accuracy", "params", "macs", "factored_macs",
         "protected")


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant over its seeds: means (and the per-seed values) of the accuracies and counts; the SDC
    pooled over every (image, draw) of every seed, with its Wilson interval."""
    # seconds: a clock reading (for timings.json), summed over the seeds
    out: dict[str, Any] = {"seeds": len(per_seed), "seconds": sum(timing(r, "seconds", 0.0) for r in per_seed)}
    for k in _MEAN:
        if k in per_seed[0]:
            vals = [float(r[k]) for r in per_seed]
            out[k] = float(np.mean(vals))
            out[f"{k}_per_seed"] = vals
    out["noise_per_draw"] = [a for r in per_seed for a in r["noise_per_draw"]]
    if "sdc" in per_seed[0]:
        k = sum(int(round(r["sdc"] * r["trials"])) for r in per_seed)
        n = sum(int(r["trials"]) for r in per_seed)
        est = stats.wilson(k, n)
        out["sdc"], out["sdc_ci95"], out["trials"] = k / n, [est.lo, est.hi], n
        out["sdc_per_seed"] = [r["sdc"] for r in per_seed]
    return out


def _pct(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(100 * v, digits)


def _mean_sd(r: dict[str, Any], key: str, digits: int) -> str | float | None:
    """Mean over seeds in %, "+- sd" when there are several."""
    if key not in r:
        return "n/a"
    vals = r.get(f"{key}_per_seed", [r[key]])
    if len(vals) < 2:
        return _pct(r[key], digits)
    return f"{100 * r[key]:.{digits}f} +- {100 * float(np.std(vals, ddof=1)):.{digits}f}"


def _table_row(r: dict[str, Any], s: Settings) -> dict[str, Any]:
    sdc = (f"{100 * r['sdc']:.2f} [{100 * r['sdc_ci95'][0]:.2f}, {100 * r['sdc_ci95'][1]:.2f}]"
           if "sdc" in r else "n/a (no int8 deployment)")
    return {"variant": r["variant"], "clean acc %": _mean_sd(r, "clean_accuracy", 2),
            f"PGD acc % (eps {s.eps:g})": _mean_sd(r, "pgd_accuracy", 1),
            f"noise acc % (sigma {s.sigma:g})": _mean_sd(r, "noise_accuracy", 1),
            "int8 acc %": _mean_sd(r, "int8_accuracy", 2),
            f"SDC % (BER {s.ber:g}) [95% CI]": sdc, "params": f"{r['params']:,.0f}", "MACs": f"{r['macs']:,.0f}"}


def matrix_claims(cells: dict[str, list[dict[str, Any]]], s: Settings, min_seeds: int = stats.QUICK_MIN_SEEDS
                  ) -> list[Claim]:
    """The three claims from the per-seed cells: ``cells[variant]`` = one dict per training seed with
    ``noise_per_image`` (each test image's fraction of noise draws correct) and, for the int8 variants,
    ``sdc_count`` / ``trials``. Feed it synthetic cells to check the rules (tests/test_claims_matrix.py)."""
    from lenetlab.noise.claims import beats_under_noise, qat_beats_float

    noise = f"relative noise sigma {s.sigma:g} x max|y| on every conv/linear output"
    flt = [c["noise_per_image"] for c in cells["float"]]
    claims = [
        beats_under_noise("noisy_training_beats_float_under_noise",
                          "Wang et al. 2025: training with noise makes a network more robust to noisy computation",
                          "noisy", "float", [c["noise_per_image"] for c in cells["noisy"]], flt, noise=noise,
                          min_seeds=min_seeds),
        qat_beats_float([c["noise_per_image"] for c in cells["qat_int8"]], flt, noise=noise,
                        name="qat_beats_float_under_noise", min_seeds=min_seeds)]
    unhardened = [stats.Counts(int(c["sdc_count"]), int(c["trials"])) for c in cells["float"]]
    hardened = [stats.Counts(int(c["sdc_count"]), int(c["trials"])) for c in cells["hardened_int8"]]
    est = stats.bootstrap_difference(unhardened, hardened, paired=True)
    rule = stats.Difference("unhardened", f"{s.harden} top {s.harden_k}%", 0.0,
                            metric=f"int8 SDC rate at accumulator BER {s.ber:g}", scale=100, unit=" points")
    claims.append(stats.make_claim(
        "hardening_lowers_sdc", "Ahmadilivani et al. 2023: protecting the most vulnerable neurons lowers the SDC rate",
        rule, est, min_seeds=min_seeds,
        measured=f"SDC {100 * np.mean([k / n for k, n in unhardened]):.2f}% unhardened vs "
                 f"{100 * np.mean([k / n for k, n in hardened]):.2f}% hardened (mean over seeds); difference "
                 f"{est.format(100, ' points')}"))
    return claims


def _span(xs: list[float]) -> str:
    return f"{100 * min(xs):.1f}-{100 * max(xs):.1f}%"


def _notes(rows: list[dict[str, Any]], s: Settings, n_eval: int, n_sdc: int) -> list[str]:
    by = {r["variant"]: r for r in rows}
    notes = [f"clean accuracy on the 10k test set; PGD ({s.pgd_steps} steps, random start, seed 0) and noise "
             f"({s.draws} draws) on the first {n_eval} test images; SDC on the first {n_sdc} x "
             f"{s.sdc_draws} draws. Every variant is built from {len(s.seeds)} training seed(s) "
             f"({', '.join(map(str, s.seeds))}): accuracies are means (+- sd over seeds), the SDC is pooled.",
             f"Trained variants: fast preset, {s.train_subset or 60000 - s.val_size} training images x {s.epochs} "
             f"epoch(s); QAT {s.qat_bits} bits, activation scale {s.qat_act_scale:g}; noisy training at "
             f"relative sigma {s.train_sigma:g} on conv/linear outputs (ramped over the first quarter; with the "
             "preset's peak lr 6e-3, training at relative sigma 0.1 ended at 97.0% clean and 0.2 did not learn, "
             "measured while choosing it); TT rank "
             f"{s.tt_rank} and ADTN depth {s.adtn_depth} on fc1/fc2, {s.finetune_epochs} fine-tuning "
             f"epoch(s); SNN T = {s.snn_steps}; hardened = {s.harden} on the top {s.harden_k}% neurons "
             f"by NVF ({by['hardened_int8'].get('protected', 0):.0f} protected on average, NVF on {s.nvf_images} "
             "images).",
             "hardened_int8 has no gradient: its PGD column is the float parent's adversarial images (a transfer "
             "attack, rounded to uint8), so it is an upper bound on its white-box robustness. Its fault-free "
             "function equals the float model's int8 deployment (clean = int8 column). Under analog noise each "
             "copy is noisy independently and the correction unit / voter sees the noisy copies.",
             "The int8 and SDC columns are of each variant's post-training int8 deployment (for qat_int8: of its "
             "QAT-trained weights, quantised by the deploy quantiser, not by its own fake-quant)."]
    for v in ("tt", "adtn"):
        if v in by and by[v]["factored_macs"] != by[v]["macs"]:
            notes.append(f"{v}: MACs as deployed (materialised dense weights); run in its factored PyTorch form it "
                         f"costs {by[v]['factored_macs']:,.0f} MACs per image (the weight is rebuilt per forward): "
                         "these networks compress parameters, not compute, at batch 1.")
    return notes


def _heatmap(ctx: Context, rows: list[dict[str, Any]], s: Settings) -> list[str]:
    """Variants x metrics, coloured by how good each value is within its column (annotated with the value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("clean %", "clean_accuracy", True, False), (f"PGD eps {s.eps:g} %", "pgd_accuracy", True, False),
            (f"noise sigma {s.sigma:g} %", "noise_accuracy", True, False),
            ("int8 %", "int8_accuracy", True, False), (f"SDC % @ BER {s.ber:g}", "sdc", False, False),
            ("params", "params", False, True), ("MACs", "macs", False, True)]
    vals = np.array([[float(r[key]) if key in r else np.nan for _, key, _, _ in cols] for r in rows])
    good = np.full(vals.shape, np.nan)
    for j, (_, _, higher, log) in enumerate(cols):
        col = np.log10(vals[:, j]) if log else vals[:, j].copy()
        ok = ~np.isnan(col)
        if ok.sum() == 0:
            continue
        lo, hi = np.nanmin(col), np.nanmax(col)
        g = np.ones_like(col) if hi == lo else (col - lo) / (hi - lo)
        good[ok, j] = g[ok] if higher else 1 - g[ok]
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.8))
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    ax.imshow(np.ma.masked_invalid(good), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(len(rows)):
        for j, (_, key, _, log) in enumerate(cols):
            v = vals[i, j]
            text = "n/a" if math.isnan(v) else (f"{v:,.0f}" if log else f"{100 * v:.1f}" if key != "sdc"
                                                 else f"{100 * v:.2f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(cols)), [c[0] for c in cols], rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), [r["variant"] for r in rows])
    ax.set_title(f"LeNet-5 robustness matrix, mean of {len(s.seeds)} seed(s)\n"
                 "(colour: best to worst within each column; grey: not applicable)")
    fig.tight_layout()
    save_figure(fig, ctx.out / "robustness_matrix.png", dpi=110)
    plt.close(fig)
    return ["robustness_matrix.png"]
