"""Peak memory of one training step: BP vs vanilla ZO vs ElasticZO vs ElasticZO-INT8 (LeNet-5, batch 64).

Measured with lenetlab.train.memory.PeakTracker (every ATen result's storage, freed
when its C++ storage dies) on the second step of each method (Adam state exists),
beside the analytic account. Prints KiB and the ratios the ElasticZO paper quotes; with --json, the
paper's ranges are recorded as goals (ElasticZO's overhead over ZO <= 1.7%, float/INT8 peak >= 1.46x).

    .venv/bin/python benchmarks/zo_memory.py [--batch 64] [--json PATH]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _record import Record, add_json_option
from lenetlab.models import create_model
from lenetlab.train.memory import analytic_bytes, measure_step, optimizer_tensors
from lenetlab.train.optim import FusedAdam
from lenetlab.train.zeroth_order import ElasticZOStepper
from lenetlab.train.zo_int8 import Int8ElasticZO, quantize_input


def float_peak(cutoff: int, batch: int) -> dict[str, int]:
    torch.manual_seed(0)
    m = create_model("lenet5")
    opt = FusedAdam(m.parameters(), lr=1e-3)
    st = ElasticZOStepper(m, cutoff, F.cross_entropy, opt, 1e-3, 1, 0)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    st.step(x, y, 1e-3, 0)
    return measure_step(lambda: st.step(x, y, 1e-3, 1), list(m.parameters()) + optimizer_tensors(opt) + [x, y])


def int8_peak(cutoff: int, batch: int) -> dict[str, int]:
    torch.manual_seed(0)
    net = Int8ElasticZO.from_float(create_model("lenet5"), cutoff)
    xq, e = quantize_input(torch.randn(batch, 1, 28, 28))
    y = torch.randint(0, 10, (batch,))
    net.train_step(xq, e, y, 0)
    return measure_step(lambda: net.train_step(xq, e, y, 1), [t for ly in net.layers for t in (ly.w, ly.b)] + [xq, y])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    add_json_option(ap)
    a = ap.parse_args()
    rec = Record("zo_memory")
    torch.set_num_threads(1)
    model = create_model("lenet5")
    rows = {"bp": (float_peak(0, a.batch), analytic_bytes(model, "bp", 0, a.batch))}
    for c in (5, 4, 3, 2):
        rows["zo" if c == 5 else f"ezo-{c}"] = (float_peak(c, a.batch), analytic_bytes(model, "elasticzo", c, a.batch))
    for c in (5, 4, 2):
        rows[f"int8-{c}"] = (int8_peak(c, a.batch), analytic_bytes(model, "elasticzo-int8", c, a.batch))
    print(f"batch {a.batch}; KiB (measured peak = resident + transient peak; analytic total)")
    print(f"{'method':8s} {'measured':>9s} {'resident':>9s} {'analytic':>9s}")
    for k, (m, an) in rows.items():
        print(f"{k:8s} {m['peak_bytes'] / 1024:9.1f} {m['resident_bytes'] / 1024:9.1f} {an['total'] / 1024:9.1f}")
    zo = rows["zo"][0]["peak_bytes"]
    for c in (4, 3, 2):
        print(f"ElasticZO C={c} overhead over ZO: {100 * (rows[f'ezo-{c}'][0]['peak_bytes'] / zo - 1):+.2f}% "
              "(paper: 0.072-1.7%)")
        rec.ratio(f"ezo_c{c}_over_zo_peak", rows[f"ezo-{c}"][0]["peak_bytes"] / zo)
        rec.goal(f"ElasticZO C={c} peak overhead over ZO <= 1.7% (paper: 0.072-1.7%)",
                 100 * (rows[f"ezo-{c}"][0]["peak_bytes"] / zo - 1), 1.7, "<=")
    for c in (5, 4, 2):
        f = rows["zo" if c == 5 else f"ezo-{c}"][0]["peak_bytes"]
        print(f"float/INT8 peak at C={c}: {f / rows[f'int8-{c}'][0]['peak_bytes']:.2f}x (paper: 1.46-1.60x)")
        rec.ratio(f"float_over_int8_c{c}_peak", f / rows[f"int8-{c}"][0]["peak_bytes"])
        rec.goal(f"float/INT8 peak at C={c} >= 1.46x (paper: 1.46-1.60x)", f / rows[f"int8-{c}"][0]["peak_bytes"],
                 1.46)
    rec.note("goal values: overhead in percent, float/INT8 as x times")
    rec.value("batch", a.batch)
    rec.value("bytes", {k: {"peak": m["peak_bytes"], "resident": m["resident_bytes"], "analytic": an["total"]}
                        for k, (m, an) in rows.items()})
    rec.write(a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
