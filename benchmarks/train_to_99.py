"""Time to 99.0% MNIST test accuracy: lenetlab's fast preset vs a plain PyTorch loop.

The contenders run here, in this process tree, one after the other
(alternating over --repeats rounds), each as a fresh Python process: the
reference loop, ``lenetlab train --preset fast``, ``lenetlab train --preset
sprint`` (one epoch: Muon, the batch split over two threads) and, on a CPU
with native bf16, the fast preset with ``--precision bf16`` (the training
forward pass in bfloat16). Each is timed from the moment its process is launched (imports and
data loading included) to the wall-clock time at which its first evaluation on
the 10k test set reaching >= 99.0% finished. Prints the times and the ratios
reference/lenetlab.

    python benchmarks/train_to_99.py [--repeats 3] [--target 0.99] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import Record, add_json_option

HERE = Path(__file__).resolve().parent


def time_lenetlab(target: float, seed: int, precision: str = "fp32", preset: str = "fast"
                  ) -> tuple[float | None, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "lenetlab", "train", "--preset", preset, "--seed", str(seed),
                        "--precision", precision, "--stop-at", str(target), "--out", str(out), "-q"], check=True,
                       stdout=subprocess.DEVNULL)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return _first_hit(rows, target, t0)


def time_reference(target: float, seed: int) -> tuple[float | None, int, float]:
    from lenetlab.data.datasets import bundled_dir

    t0 = time.time()
    r = subprocess.run([sys.executable, str(HERE / "reference_lenet5.py"), str(bundled_dir()), "3", str(seed)],
                       check=True, capture_output=True, text=True)
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    return _first_hit(rows, target, t0)


def _first_hit(rows: list[dict], target: float, t0: float) -> tuple[float | None, int, float]:
    for r in rows:
        if r["test_accuracy"] >= target:
            return r["unix_time"] - t0, r["epoch"], r["test_accuracy"]
    return None, rows[-1]["epoch"], rows[-1]["test_accuracy"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.99)
    add_json_option(ap)
    a = ap.parse_args()
    rec = Record("train_to_99")
    import torch

    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; target test accuracy {a.target:.3f}")
    contenders = {"reference": time_reference, "lenetlab": time_lenetlab,
                  "lenetlab-sprint": lambda target, seed: time_lenetlab(target, seed, preset="sprint")}
    # the fast preset with its training forward in bfloat16 (train.precision=bf16), where the CPU has native bf16
    # (on others autocast emulates it, slower than fp32: not a contender there)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        contenders["lenetlab-bf16"] = lambda target, seed: time_lenetlab(target, seed, "bf16")
    else:
        print("this CPU has no native bf16: lenetlab-bf16 is not timed")
        rec.note("lenetlab-bf16 not timed: no native bf16 on this CPU")
    res: dict[str, list[float]] = {k: [] for k in contenders}
    rounds: list[dict] = []
    rec.value("rounds", rounds)
    for i in range(a.repeats):
        for name, fn in contenders.items():
            t, ep, acc = fn(a.target, i)
            shown = f"{t:6.2f}s" if t is not None else "  never"
            print(f"round {i + 1} {name:9s} seed {i}: {shown} (epoch {ep}, test accuracy {100 * acc:.2f}%)",
                  flush=True)
            if t is not None:
                res[name].append(t)
            rounds.append({"round": i + 1, "contender": name, "seed": i, "seconds": t, "epoch": ep,
                           "test_accuracy": acc})
    rec.value("target", a.target)
    rec.value("repeats", a.repeats)
    rec.value("reached", {k: len(v) for k, v in res.items()})
    if not res["reference"] or not res["lenetlab"]:
        print("a contender never reached the target; no ratio")
        rec.note("a contender never reached the target; no ratio")
        rec.write(a.json)
        return 1
    med = {k: statistics.median(v) for k, v in res.items() if v}
    ref = med["reference"]
    ups = {k: ref / v for k, v in med.items() if k != "reference"}
    rec.ratio("speed_up", ups["lenetlab"])
    if "lenetlab-sprint" in ups:
        rec.ratio("speed_up_sprint", ups["lenetlab-sprint"])
    if "lenetlab-bf16" in ups:
        rec.ratio("speed_up_bf16", ups["lenetlab-bf16"])
    best = max(ups, key=ups.get)
    rec.goal("time to the target >= 4x faster than the reference (median over rounds, the faster lenetlab "
             "variant)", ups[best], 4.0)
    rec.value("faster_variant", best)
    rec.value("median_seconds", med)
    rec.note(f"speed_up: median time to {100 * a.target:.1f}% test accuracy, reference / lenetlab (fast preset, "
             "fp32), over the rounds that reached it; speed_up_sprint: the same for the sprint preset; "
             "speed_up_bf16: the fast preset with --precision bf16")
    print(f"median time to {100 * a.target:.1f}%: " + "  ".join(f"{k} {v:.2f}s" for k, v in med.items()))
    print("speed-up over the reference: " + "  ".join(
        f"{k} {v:.2f}x ({len(res[k])}/{a.repeats} reached)" for k, v in ups.items())
          + f"  (reference reached {len(res['reference'])}/{a.repeats})")
    rec.write(a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
