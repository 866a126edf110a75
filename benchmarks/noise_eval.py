"""Accuracy under analog noise: the reference (hook) evaluation vs the fast path, on MNIST test images.

The workload of ``lenetlab reproduce noise`` / ``lenetlab noise eval``: a briefly trained LeNet-5, 1,000
test images, 5 draws, 17 absolute sigmas after every layer; plus the matrix's relative noise (sigma x max|y|
on conv + linear) at 5 sigmas. Both paths run in the same process, alternating sigma by sigma (so a change
in machine load hits both), under the reproduce thread setting (lenetlab.determinism.pinned_threads).
Prints image-draws per second (images x draws / seconds) for each path and their ratios, each path timed
in every one of --rounds rounds (its median round counts; the default sweep's first call, which also pays
one-time costs, is printed too). The per-call fast
path and the exact sweep (``exact=True``) must return exactly the reference's result dicts (same generator,
same stream, same float operations). The default sweep (what ``lenetlab noise eval`` runs) folds the first
layer and adds the noise in one rounding: the same normals, numbers equal up to float rounding, so it is
compared with the reference by how many (sigma, image) scores differ and by how far the means move. The
reference runs on a copy of the model with torch's nn.MaxPool2d, LeNet-5's pool when the reference was the
implementation.

    .venv/bin/python benchmarks/noise_eval.py [--images 1000] [--draws 5] [--sigmas 17] [--rounds 3] [--json PATH]

Goal: noise evaluation >= 10x the reference (the default sigma sweep in one call; also reported: the exact
sweep and the per-call path).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import numpy as np
import torch

from _record import Record, add_json_option
from lenetlab.config import DataConfig
from lenetlab.data.datasets import load_raw
from lenetlab.data.transforms import to_model_input
from lenetlab.determinism import pinned_threads
from lenetlab.noise.inject import noisy_accuracy, noisy_accuracy_sweep
from lenetlab.train import fit
from lenetlab.train.presets import resolve

SEED = 0    # one seed for every sigma, as `lenetlab noise eval` uses


def trained_lenet5() -> torch.nn.Module:
    """LeNet-5 after one epoch on 3,000 training images (seconds): realistic activations, not a tuned model."""
    cfg = resolve("fast", "lenet5", overrides={"data": {"train_subset": 3000, "test_subset": 200, "val_size": 200},
                                               "train": {"epochs": 1, "seed": 0}})
    return fit(cfg, log=None, progress=False)["_model"].eval()


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--sigmas", type=int, default=17, help="absolute sigmas (geometric, 0.01 .. 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every path; each path's median round counts")
    add_json_option(ap)
    a = ap.parse_args()
    rec = Record("noise_eval")

    model = trained_lenet5()
    # the reference is the implementation as it was, LeNet-5's pool included: torch's nn.MaxPool2d (lenetlab's
    # MaxPool2x2, which skips the argmax bookkeeping without a gradient, came later; the same values and noise
    # sites, so the same numbers)
    ref_model = copy.deepcopy(model)
    ref_model.pool = torch.nn.MaxPool2d(2)
    _, _, test_x, test_y = load_raw("mnist")
    x = to_model_input(torch.from_numpy(test_x[: a.images]), DataConfig())
    y = torch.from_numpy(test_y[: a.images]).long()
    workloads = {
        "absolute, all sites": [dict(sigma=float(s)) for s in np.geomspace(0.01, 3.0, a.sigmas)],
        "relative, conv+linear": [dict(sigma=s, relative=True, sites=("conv", "linear"))
                                  for s in (0.02, 0.05, 0.1, 0.2, 0.5)],
    }
    print(f"LeNet-5 (1 epoch on 3k images), {a.images} MNIST test images x {a.draws} draws; torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs; start: {load()}")
    totals = {"reference": 0.0, "fast": 0.0, "exact sweep": 0.0, "sweep": 0.0}
    n_total, all_equal, sweep_equal = 0, True, True
    differing, compared, max_moved = 0, 0, 0.0
    with pinned_threads():
        for name, calls in workloads.items():
            rounds: dict[str, list[float]] = {"reference": [], "fast": [], "exact sweep": [], "sweep": []}
            for r in range(a.rounds):
                t = {"reference": 0.0, "fast": 0.0}
                accs, refs = [], []
                for kw in calls:
                    out = {}
                    for path in ("reference", "fast"):
                        t0 = time.perf_counter()
                        out[path] = noisy_accuracy(ref_model if path == "reference" else model, x, y,
                                                   draws=a.draws, seed=SEED, reference=path == "reference", **kw)
                        t[path] += time.perf_counter() - t0
                    refs.append(out["reference"])
                    all_equal &= out["reference"] == out["fast"]
                    accs.append(f"{kw['sigma']:g}:{100 * out['fast']['mean']:.1f}")
                # the sweeps: every sigma of the workload in one call, exact and as `lenetlab noise eval` runs it
                common = {k: v for k, v in calls[0].items() if k != "sigma"}
                for path, exact in (("exact sweep", True), ("sweep", False)):
                    t0 = time.perf_counter()
                    swept = noisy_accuracy_sweep(model, x, y, [kw["sigma"] for kw in calls], draws=a.draws,
                                                 seed=SEED, exact=exact, **common)
                    t[path] = time.perf_counter() - t0
                    if exact:
                        sweep_equal &= swept == refs
                for got, ref in zip(swept, refs):
                    differing += sum(g != r for g, r in zip(got["per_image"], ref["per_image"]))
                    compared += len(ref["per_image"])
                    max_moved = max(max_moved, abs(got["mean"] - ref["mean"]))
                for path in rounds:
                    rounds[path].append(t[path])
            first_sweep = rounds["sweep"][0]
            t = {path: statistics.median(v) for path, v in rounds.items()}     # each path's median round
            n = len(calls) * a.images * a.draws
            n_total += n
            for path in t:
                totals[path] += t[path]
            print(f"\n{name}: {len(calls)} sigmas x {a.draws} draws x {a.images} images = {n} image-draws")
            print(f"  accuracy % by sigma: {' '.join(accs)}")
            print(f"  reference (old) : {n / t['reference']:9.0f} image-draws/s  ({t['reference']:.2f} s)")
            print(f"  fast (new)      : {n / t['fast']:9.0f} image-draws/s  ({t['fast']:.2f} s)")
            print(f"  exact sweep     : {n / t['exact sweep']:9.0f} image-draws/s  ({t['exact sweep']:.2f} s)")
            print(f"  sweep (1 call)  : {n / t['sweep']:9.0f} image-draws/s  ({t['sweep']:.2f} s)")
            print(f"  ratio fast/old  : {t['reference'] / t['fast']:9.2f}x   exact sweep/old: "
                  f"{t['reference'] / t['exact sweep']:.2f}x   sweep/old: {t['reference'] / t['sweep']:.2f}x")
            print(f"  (median of {a.rounds} rounds; the sweep's first call: {n / first_sweep:.0f} image-draws/s, "
                  f"{t['reference'] / first_sweep:.2f}x)")
            key = "absolute" if name.startswith("absolute") else "relative"
            rec.ratio(f"fast_vs_reference_{key}", t["reference"] / t["fast"])
            rec.ratio(f"sweep_vs_reference_{key}", t["reference"] / t["sweep"])
            rec.ratio(f"exact_sweep_vs_reference_{key}", t["reference"] / t["exact sweep"])
            rec.value(key, {"workload": name, "calls": len(calls), "image_draws": n,
                            "reference_per_s": n / t["reference"], "fast_per_s": n / t["fast"],
                            "exact_sweep_per_s": n / t["exact sweep"], "sweep_per_s": n / t["sweep"],
                            "reference_s": t["reference"], "fast_s": t["fast"],
                            "exact_sweep_s": t["exact sweep"], "sweep_s": t["sweep"]})
    print(f"\nall: reference {n_total / totals['reference']:.0f}/s, fast {n_total / totals['fast']:.0f}/s, "
          f"exact sweep {n_total / totals['exact sweep']:.0f}/s, sweep {n_total / totals['sweep']:.0f}/s; "
          f"fast/old {totals['reference'] / totals['fast']:.2f}x, "
          f"exact sweep/old {totals['reference'] / totals['exact sweep']:.2f}x, "
          f"sweep/old {totals['reference'] / totals['sweep']:.2f}x")
    print(f"results identical (mean, std, per_draw, per_image) for every call: {all_equal}; "
          f"the exact sweep's list equals the reference's calls: {sweep_equal}")
    print(f"the sweep against the reference: {differing} of {compared} (sigma, image) scores differ; "
          f"largest change of a mean accuracy {100 * max_moved:.3f} points")
    print(f"end: {load()}")
    ratio = totals["reference"] / totals["fast"]
    rec.ratio("fast_vs_reference_all", ratio)
    rec.ratio("sweep_vs_reference_all", totals["reference"] / totals["sweep"])
    rec.goal("noise evaluation >= 10x the reference (sigma sweep, image-draws/s, all workloads)",
             totals["reference"] / totals["sweep"], 10.0)
    rec.ratio("exact_sweep_vs_reference_all", totals["reference"] / totals["exact sweep"])
    rec.value("sweep_scores_differing", {"differing": differing, "compared": compared,
                                         "max_mean_change": max_moved})
    # the default sweep's numbers move by float rounding only: a tenth of a point would be a bug, not rounding
    rec.check("sweep_agrees_with_reference", max_moved <= 0.001)
    rec.goal("noisy_accuracy per call >= 10x the reference (image-draws/s, all calls)", ratio, 10.0)
    rec.check("results_identical", all_equal)
    rec.check("sweep_identical", sweep_equal)
    all_equal &= sweep_equal
    rec.value("images", a.images)
    rec.value("rounds", a.rounds)
    rec.value("draws", a.draws)
    if not all_equal:
        rec.note("the per-call path's or the exact sweep's results differ from the reference's (exit status 1)")
    if max_moved > 0.001:
        rec.note("the default sweep's means moved by more than rounding can explain (exit status 1)")
        all_equal = False
    rec.write(a.json)
    return 0 if all_equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
