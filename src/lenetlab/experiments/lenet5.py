"""``lenetlab reproduce lenet5``: the 1998 LeNet-5 against its published 0.95% test error (docs/papers/lenet5.md).

LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 86(11), 1998: LeNet-5 (60,000 trainable parameters)
trained on the 60,000 MNIST training images without distortions makes 0.95%
errors on the 10,000 test images (0.8% with distorted training images).

The network is ``lenet5_classic`` (:mod:`lenetlab.models.classic`: C3
connection table, trainable subsampling, scaled tanh, RBF output with the
paper's loss). Each training seed follows the recipe of the ``paper`` preset
for this model (batch 64, Adam with a one-cycle schedule peaking at 2e-3, the
RBF loss) on all 60,000 training images - no validation split, as in the
paper - and is scored on all 10,000 test images. Known deviations (classic.py
and docs/papers/lenet5.md): Adam instead of stochastic diagonal
Levenberg-Marquardt, generated 7x12 RBF bitmaps, the RBF loss constant j = 1
reconstructed, S2/S4 coefficients initialised to a plain average.

Claims (rules from :mod:`lenetlab.experiments.stats`, stated in each row):

- ``parameter_count``: every layer's trainable parameters equal the paper's
  (exact count; no training involved);
- ``test_error_095``: the mean test error over seeds is at most the paper's
  0.95% plus :data:`MARGIN` (0.2 points, for the optimiser and bitmap
  deviations), judged on a 95% bootstrap interval over seeds and test images;
- ``distortions_08``: the 0.8% with distortions - not run (no distortion
  pipeline), inconclusive.

Quick mode trains 3 seeds for 3 of the recipe's 20 epochs (labelled as such in
the report; about 5 minutes on 2 busy cores) - expect errors above the paper's
then; ``--full`` trains 5 seeds for the full 20 epochs. Training runs on one
thread (small batches gain little from a second one and lose much when the
cores are shared).
"""

from __future__ import annotations

import statistics
from functools import partial
from typing import Any

import numpy as np

from lenetlab.determinism import pinned_threads
from lenetlab.errors import LenetlabError
from lenetlab.experiments import stats
from lenetlab.experiments.base import Claim, Context, Experiment, Result, Timings, timing
from lenetlab.registry import register

MODEL = "lenet5_classic"
PAPER_ERROR = 0.0095
MARGIN = 0.002          # allowance for the recipe's deviations (optimiser, bitmaps), in error-rate units
PAPER_EPOCHS = 20
PAPER_LAYERS = {"C1": 156, "S2": 12, "C3": 1516, "S4": 32, "C5": 48120, "F6": 10164}


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    """Seeds, epochs (the paper: 20), training images (None: all 60k) and test images (None: all 10k)."""
    if tiny:   # tests only: every code path in seconds; numbers meaningless
        return {"seeds": [0], "epochs": 1, "train_subset": 600, "test_subset": 500}
    if full:
        return {"seeds": [0, 1, 2, 3, 4], "epochs": PAPER_EPOCHS, "train_subset": None, "test_subset": None}
    return {"seeds": [0, 1, 2], "epochs": 3, "train_subset": None, "test_subset": None}



def run_config(seed: int, s: dict[str, Any]):
    """The 1998 recipe as lenetlab runs it: the ``paper`` preset for ``lenet5_classic``, all training images."""
    from lenetlab.train.presets import resolve

    data: dict[str, Any] = {"val_size": 0}
    if s["train_subset"]:
        data["train_subset"] = s["train_subset"]
    if s["test_subset"]:
        data["test_subset"] = s["test_subset"]
    return resolve("paper", MODEL, overrides={
        "data": data, "train": {"epochs": s["epochs"], "seed": seed, "eval_test_every_epoch": False}})


def _train(seed: int, s: dict[str, Any]) -> dict[str, Any]:
    """One seed: train, then every test image's verdict (the indices of the misclassified ones)."""
    import torch

    from lenetlab.data import load_splits
    from lenetlab.train import fit

    cfg = run_config(seed, s)
    splits = load_splits(cfg.data)
    with pinned_threads(1):
        r = fit(cfg, splits=splits, log=None, progress=False)
        model = r["_model"].eval()
        with torch.no_grad():
            pred = torch.cat([model(splits.test_x[i:i + 2000]).argmax(1) for i in range(0, len(splits.test_x), 2000)])
    wrong = np.flatnonzero((pred != splits.test_y).numpy()).tolist()
    return {"test_images": len(splits.test_y), "wrong": wrong, "test_accuracy": r["test_accuracy"],
            "epochs": r["epochs"], "train_images": r["train_images"],
            "timings": {"seconds": round(r["wall_seconds"], 1)}}


def layer_counts() -> dict[str, int]:
    """Trainable parameters per layer of a fresh ``lenet5_classic`` (the RBF centres are fixed buffers)."""
    from lenetlab.models import create_model

    m = create_model(MODEL)
    layers = {"C1": m.c1, "S2": m.s2, "C3": m.c3, "S4": m.s4, "C5": m.c5, "F6": m.f6}
    return {name: sum(p.numel() for p in layer.parameters() if p.requires_grad) for name, layer in layers.items()}


@register("experiment", "lenet5")
class LeNet5Study(Experiment):
    """LeCun et al. 1998: LeNet-5 as published, trained with its recipe on several seeds, against 0.95%."""

    name = "lenet5"
    cost = 2.5   # scheduling hint for reproduce all --jobs (rough quick-mode CPU share)
    paper = "LeCun, Bottou, Bengio, Haffner 1998, Gradient-based learning applied to document recognition"
    description = "the 1998 LeNet-5 (C3 table, subsampling, RBF output) against its 0.95% MNIST test error"
    accepts_options = True
    order = -10

    def run(self, ctx: Context) -> Result:
        s = ctx.resolve_settings(settings(ctx.full, ctx.tiny))
        if not s["seeds"]:
            raise LenetlabError("lenet5: settings.seeds is empty")
        cells: dict[int, dict[str, Any]] = {}
        todo = {seed: (f"train/{seed}/{s['epochs']}", partial(_train, seed, s)) for seed in s["seeds"]}
        ctx.cells.prefetch(todo.values())      # the seeds side by side where there is a runner (Ray)
        for i, seed in enumerate(s["seeds"]):
            ctx.log(f"[{i + 1}/{len(s['seeds'])}] training {MODEL}, seed {seed}, {s['epochs']} epoch(s) ...")
            cells[seed] = ctx.cells.get_or_run(*todo[seed])
            c = cells[seed]
            ctx.log(f"  test error {100 * len(c['wrong']) / c['test_images']:.2f}% ({timing(c, 'seconds')} s)")
        counts = layer_counts()
        claims = lenet5_claims(cells, counts, s["epochs"], ctx.full)
        rows = [{"seed": sd, "epochs": c["epochs"], "train images": c["train_images"], "test images": c["test_images"],
                 "errors": len(c["wrong"]), "test error %": round(100 * len(c["wrong"]) / c["test_images"], 2)}
                for sd, c in cells.items()]
        errors = [len(c["wrong"]) / c["test_images"] for c in cells.values()]
        metrics = {"test_error_percent": 100 * statistics.fmean(errors),
                   "test_error_percent_best": 100 * min(errors), "seeds": float(len(errors))}
        return Result(self.name, self.paper, ctx.mode,
                      {"settings": s, "model": MODEL, "paper_error": PAPER_ERROR, "margin": MARGIN,
                       "paper_epochs": PAPER_EPOCHS, "recipe": _recipe(s)},
                      tables={"test error per seed": rows,
                              "trainable parameters per layer": [{"layer": k, "paper": PAPER_LAYERS[k],
                                                                  "lenetlab": counts.get(k)} for k in PAPER_LAYERS]},
                      claims=claims, metrics=metrics, notes=_notes(s),
                      timings=Timings(tables={"training time per seed": [
                          {"seed": sd, "train seconds": timing(c, "seconds")} for sd, c in cells.items()]}))


def _recipe(s: dict[str, Any]) -> dict[str, Any]:
    cfg = run_config(0, s)
    t = cfg.train
    return {"optimizer": t.optimizer, "lr": t.lr, "schedule": t.schedule, "batch_size": t.batch_size,
            "epochs": t.epochs, "val_size": cfg.data.val_size}


def lenet5_claims(cells: dict[int, dict[str, Any]], counts: dict[str, int], epochs: int,
                  full: bool = False) -> list[Claim]:
    """The claims from per-seed cells (``wrong``: misclassified test-image indices, ``test_images``) and the
    per-layer parameter counts."""
    seeds = sorted(cells)
    bad = {k: (counts.get(k), v) for k, v in PAPER_LAYERS.items() if counts.get(k) != v}
    c1 = stats.make_claim(
        "parameter_count", "LeNet-5 has 60,000 trainable parameters: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, "
        "F6 10,164", stats.LessThan(0.5, quantity="layers whose trainable parameter count differs from the paper's"),
        stats.exact(len(bad), "counted on a fresh model"), seeds=stats.EXACT,
        measured=(f"{sum(counts.values()):,} trainable parameters; " +
                  (", ".join(f"{k} {counts[k]:,}" for k in PAPER_LAYERS) if not bad else
                   "differ: " + ", ".join(f"{k} {got} vs {want}" for k, (got, want) in bad.items()))))

    err = []
    for sd in seeds:
        v = np.zeros(cells[sd]["test_images"], np.int8)
        v[cells[sd]["wrong"]] = 1
        err.append(v)
    est = stats.bootstrap_accuracy(err)     # the mean of 0/1 error vectors: the mean test error
    label = "" if epochs >= PAPER_EPOCHS else f" [{epochs} of the paper's {PAPER_EPOCHS} epochs: a shortened run]"
    per_seed = ", ".join(f"{100 * e.mean():.2f}%" for e in err)
    c2 = stats.make_claim(
        "test_error_095", f"trained without distortions, LeNet-5 makes {100 * PAPER_ERROR:.2f}% test errors on "
        "MNIST", stats.LessThan(PAPER_ERROR + MARGIN, quantity=f"mean test error (paper {100 * PAPER_ERROR:.2f}% "
                                f"+ {100 * MARGIN:g} points margin)", scale=100, unit="%"),
        est, seeds=seeds, min_seeds=stats.min_seeds(full),
        measured=f"mean test error {est.format(100, '%')} over {len(seeds)} seeds (per seed: {per_seed}){label}")
    c3 = stats.untestable("distortions_08", "trained with distorted images, LeNet-5 makes 0.8% test errors",
                          "not run: lenetlab has no training-time distortion (affine/elastic) pipeline")
    return [c1, c2, c3]


def _notes(s: dict[str, Any]) -> list[str]:
    r = _recipe(s)
    notes = [f"Recipe: {r['optimizer']} (lr {r['lr']:g}, {r['schedule']} schedule), batch {r['batch_size']}, "
             f"{r['epochs']} epoch(s), RBF loss, {s['train_subset'] or 60000} training images, "
             f"{s['test_subset'] or 10000} test images.",
             "Deviations from 1998: Adam instead of stochastic diagonal Levenberg-Marquardt; generated 7x12 RBF "
             "bitmaps (the originals are not available); the RBF loss constant j = 1 reconstructed; S2/S4 "
             "coefficients start as a plain average."]
    if s["epochs"] < PAPER_EPOCHS:
        notes.append(f"Shortened run: {s['epochs']} of the paper's {PAPER_EPOCHS} epochs (quick mode); the test "
                     "error claim is judged as it stands - run with --full for the 20-epoch recipe.")
    return notes
