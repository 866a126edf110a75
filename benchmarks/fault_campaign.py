"""Faults per second of the fast campaign engine vs the naive one, on the same campaign (issue 5).

The naive engine is what hook-based injectors do: one full forward of the M
images per fault. The fast engine caches the fault-free prefix, computes each
faulty accumulator from an exact delta, requantises only accumulators that
left their fault-free requantisation cell, recomputes only the pool windows
that changed, hands the next layer a sparse input change, batches faults x
images in cache-sized chunks, and drops masked (fault, image) pairs at every
layer boundary (see docs/faults.md); where it can, it carries a fault's effect
from the faulty stage's outputs to the logits in C (lenetlab.faults.native).
Its time includes building its caches (a fresh Campaign per target), so small
campaigns understate it. Both engines first run a short untimed warm-up (a few
faults on 2 images), so one-time process costs (imports, loading the native
library) are not charged to whichever runs first. Both run the same
sampled fault list (every layer with weights x every bit, seed 0) on the same
images, in --repeats rounds that alternate fast and naive (a change in machine
load hits both); their per-fault outcomes are checked identical, then the ratio
of faults/s from the median times is printed per target and overall. Goal >= 30x on every target.

    python benchmarks/fault_campaign.py [--qrun QRUN | --run RUN_DIR] [--samples 4] [--images 100] [--repeats 3]
                                        [--json PATH]

Without --qrun/--run it quantises runs/demo (or trains a fast-preset run in a temp dir).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _record import Record, add_json_option
from lenetlab.faults.campaign import Campaign, sample_faults
from lenetlab.faults.models import TARGETS
from lenetlab.quant.engine import IntEngine, blas_threads
from lenetlab.quant.run import load_qrun, quantize_run, test_images


def qrun_dir(a: argparse.Namespace, tmp: Path) -> Path:
    if a.qrun:
        return Path(a.qrun)
    run = Path(a.run) if a.run else Path("runs/demo")
    if not (run / "model.safetensors").is_file():
        from lenetlab.train import fit
        from lenetlab.train.presets import resolve

        run = tmp / "run"
        fit(resolve("fast", "lenet5"), out=run, log=None, progress=False)
    quantize_run(run, tmp / "q", limit=1000)
    return tmp / "q"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qrun")
    p.add_argument("--run")
    p.add_argument("--samples", type=int, default=4, help="faults per layer and bit (default 4)")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per target, fast and naive alternating; "
                                                            "the medians are compared (default 3)")
    add_json_option(p)
    a = p.parse_args()
    rec = Record("fault_campaign")
    with tempfile.TemporaryDirectory() as tmp:
        fm, meta = load_qrun(qrun_dir(a, Path(tmp)))
    images, _ = test_images(meta, a.images)
    eng = IntEngine(fm)
    tot = {"fast": 0.0, "naive": 0.0, "faults": 0}
    rec_ratios: dict[str, float] = {}
    print(f"{a.images} images, {a.samples} faults per layer and bit, 1 BLAS thread, median of {a.repeats} "
          f"alternating rounds; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with blas_threads(1):
        # warm-up, not timed: one-time process costs (imports, loading the native library, NumPy's first calls)
        # are paid here by both engines, on 2 images and a few faults of every target
        for target in a.targets.split(","):
            few = sample_faults(eng, target, 1, np.random.default_rng(1))
            Campaign(eng, images[:2]).fast(few)
            Campaign(eng, images[:2]).naive(few)
        for target in a.targets.split(","):
            faults = sample_faults(eng, target, a.samples, np.random.default_rng(0))
            times: dict[str, list[float]] = {"fast": [], "naive": []}
            for _ in range(a.repeats):       # alternating, so a change in machine load hits both engines
                t0 = time.perf_counter()
                fast = Campaign(eng, images).fast(faults)      # cache building is part of the fast engine's cost
                t1 = time.perf_counter()
                naive = Campaign(eng, images).naive(faults)
                t2 = time.perf_counter()
                times["fast"].append(t1 - t0)
                times["naive"].append(t2 - t1)
            t_fast, t_naive = statistics.median(times["fast"]), statistics.median(times["naive"])
            same = bool(np.array_equal(fast, naive))
            rec.check(f"identical_outcomes_{target}", same)
            if not same:
                rec.note(f"{target}: fast and naive outcomes differ")
                rec.write(a.json)
                raise SystemExit(f"{target}: fast and naive outcomes differ")
            f_fast, f_naive = len(faults) / t_fast, len(faults) / t_naive
            tot["fast"] += t_fast
            tot["naive"] += t_naive
            tot["faults"] += len(faults)
            print(f"{target:13s} {len(faults):5d} faults  SDC {100 * fast.mean():6.3f}%  "
                  f"fast {f_fast:9.1f} faults/s  naive {f_naive:7.1f} faults/s  ratio {f_fast / f_naive:6.1f}x  "
                  f"(identical outcomes; median of {a.repeats})")
            rec.ratio(f"fast_vs_naive_{target}", f_fast / f_naive)
            rec_ratios[target] = f_fast / f_naive
            rec.goal(f"fast campaign >= 30x the naive one on {target} (faults/s)", f_fast / f_naive, 30.0)
            rec.value(target, {"faults": len(faults), "sdc_rate": float(fast.mean()), "fast_faults_per_s": f_fast,
                               "naive_faults_per_s": f_naive})
    n = tot["faults"]
    print("goal >= 30x on each target: " + ", ".join(f"{t} {r:.1f}x" for t, r in rec_ratios.items()) +
          (" [met]" if rec_ratios and min(rec_ratios.values()) >= 30 else " [NOT met]"))
    print(f"{'all':13s} {n:5d} faults  fast {n / tot['fast']:9.1f} faults/s  naive {n / tot['naive']:7.1f} "
          f"faults/s  ratio {tot['naive'] / tot['fast']:6.1f}x  (goal >= 10x)")
    rec.ratio("fast_vs_naive_all", tot["naive"] / tot["fast"])
    rec.goal("fast campaign >= 10x the naive one (faults/s, all targets)", tot["naive"] / tot["fast"], 10.0)
    rec.note("the fast engine's time includes building its caches (small campaigns understate it)")
    rec.value("all", {"faults": n, "images": a.images, "samples": a.samples, "fast_faults_per_s": n / tot["fast"],
                      "naive_faults_per_s": n / tot["naive"]})
    rec.write(a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
