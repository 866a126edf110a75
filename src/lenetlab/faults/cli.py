"""``lenetlab faults campaign|nvf QRUN``: bit-flip campaigns and neuron vulnerability (docs/papers/faults.md)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lenetlab.errors import LenetlabError
from lenetlab.faults.models import TARGETS


def add_commands(sub: argparse._SubParsersAction) -> None:
    from lenetlab import validate as V

    f = sub.add_parser("faults", help="hardware faults in the int8 model: campaigns, NVF (Ahmadilivani et al.)")
    fsub = f.add_subparsers(dest="faults_cmd", required=True, metavar="ACTION")
    c = fsub.add_parser("campaign", help="SDC rate per layer and bit position (95%% Wilson intervals)")
    c.add_argument("qrun", help="quantised run directory (lenetlab quantize) or an int8 .flat file")
    c.add_argument("--target", required=True, choices=TARGETS)
    c.add_argument("--bits", default="all", help="all | comma list | ranges like 24-31 (default all)")
    c.add_argument("--samples", type=V.count("--samples", hi=1_000_000), default=50,
                   help="faults per layer and bit (sampled mode, default 50)")
    c.add_argument("--images", type=V.count("--images"), default=100, help="first M test images (default 100)")
    c.add_argument("--layer", type=V.count("--layer", lo=0, hi=10_000), action="append",
                   help="only this layer with weights (0-based; repeatable)")
    c.add_argument("--exhaustive", action="store_true", help="every site of the chosen layer(s) at every bit")
    c.add_argument("--fault-model", default="bitflip", help="bitflip | stuck_at_0 | stuck_at_1 "
                                                            "(lenetlab list fault_models)")
    c.add_argument("--engine", default="fast", choices=("fast", "naive"),
                   help="fast: cached prefix + exact deltas, carried on in C where the model allows "
                        "(LENETLAB_NATIVE=0: NumPy only); naive: one full forward per fault (the oracle)")
    c.add_argument("--seed", type=V.seed(), default=0)
    c.add_argument("--out", help="output directory (default QRUN/faults)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_campaign)

    n = fsub.add_parser("nvf", help="analytic neuron vulnerability factor of every neuron (DeepVigor-style)")
    n.add_argument("qrun")
    n.add_argument("--images", type=V.count("--images"), default=32, help="first M test images (default 32)")
    n.add_argument("--validate", type=V.count("--validate", lo=0, hi=100_000), default=0, metavar="N",
                   help="also measure each neuron's SDC rate "
                   "with N sampled accumulator positions per bit and report the Spearman rank correlation")
    n.add_argument("--seed", type=V.seed(), default=0)
    n.add_argument("--out", help="output directory (default QRUN/faults)")
    n.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    n.set_defaults(func=cmd_nvf)


def _out(a: argparse.Namespace) -> Path:
    out = Path(a.out) if a.out else (Path(a.qrun) / "faults" if Path(a.qrun).is_dir() else Path(a.qrun).parent)
    if out.exists() and not out.is_dir():
        raise LenetlabError(f"{out} exists and is not a directory")
    return out


def cmd_campaign(a: argparse.Namespace) -> int:
    from lenetlab.faults.campaign import parse_bits, run_campaign
    from lenetlab.faults.models import fault_model
    from lenetlab.faults.report import heatmap
    from lenetlab.fileio import atomic_write_json
    from lenetlab.progress import progress_bar
    from lenetlab.quant.engine import IntEngine, blas_threads
    from lenetlab.quant.run import load_qrun, test_images

    bits = parse_bits(a.bits, a.target)
    fault_model(a.fault_model)
    if a.samples < 1:
        raise LenetlabError(f"--samples must be >= 1, got {a.samples}")
    if a.exhaustive and not a.layer:
        raise LenetlabError("--exhaustive needs --layer L (exhaustive mode is per layer)")
    fm, meta = load_qrun(a.qrun)
    images, _ = test_images(meta, a.images)
    out = _out(a)
    engine = IntEngine(fm)
    t0 = time.perf_counter()
    with blas_threads(1), progress_bar(f"{a.target} faults", quiet=a.quiet) as bar:
        faults, sdc, summary = run_campaign(
            engine, images, a.target, bits, a.samples, a.layer, a.exhaustive, a.fault_model, a.seed, a.engine,
            progress=bar, on_total=bar.set_total)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
    summary["faults_per_second"] = round(len(faults) / max(summary["wall_seconds"], 1e-9), 1)
    summary["qrun"] = str(a.qrun)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"campaign_{a.target}"
    atomic_write_json(out / f"{stem}.json", summary)
    heatmap(summary, out / f"{stem}.png")
    if a.json:
        print(json.dumps(summary))
        return 0
    kind = f"{a.engine} engine" + (", C propagation" if summary.get("native") else "")
    print(f"{a.target} faults ({a.fault_model}, {summary['mode']}, {kind}): {len(faults)} faults x "
          f"{len(images)} images in {summary['wall_seconds']:.1f}s ({summary['faults_per_second']:.0f} faults/s)")
    for la in summary["layers"]:
        worst = max(la["bits"], key=lambda b: b["rate"])
        print(f"  {la['name']:8s} SDC {100 * la['rate']:6.3f}%  [{100 * la['ci95'][0]:.3f}, {100 * la['ci95'][1]:.3f}]"
              f"  worst bit {worst['bit']:2d}: {100 * worst['rate']:.2f}%")
    print(f"  overall  SDC {100 * summary['rate']:6.3f}%  [{100 * summary['ci95'][0]:.3f}, "
          f"{100 * summary['ci95'][1]:.3f}]")
    print(f"wrote {out / (stem + '.json')} and {stem}.png")
    return 0


def cmd_nvf(a: argparse.Namespace) -> int:
    from lenetlab.faults.nvf import nvf_report
    from lenetlab.fileio import atomic_write_json
    from lenetlab.progress import progress_bar
    from lenetlab.quant.engine import IntEngine, blas_threads
    from lenetlab.quant.run import load_qrun, test_images

    if a.validate < 0:
        raise LenetlabError(f"--validate must be >= 0, got {a.validate}")
    fm, meta = load_qrun(a.qrun)
    images, _ = test_images(meta, a.images)
    out = _out(a)
    t0 = time.perf_counter()
    label = "NVF analysis" + (" + validation" if a.validate else "")
    with blas_threads(1), progress_bar(label, quiet=a.quiet) as bar:
        rep = nvf_report(IntEngine(fm), images, validate=a.validate, seed=a.seed, progress=bar,
                         on_total=bar.set_total)
    rep["wall_seconds"] = round(time.perf_counter() - t0, 2)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "nvf.json", rep)
    print(f"NVF of {len(rep['neurons'])} neurons on {len(images)} images in {rep['wall_seconds']:.1f}s "
          f"(int32 accumulator bit flips, all 32 bits)")
    for la in rep["layers"]:
        print(f"  {la['name']:8s} {la['neurons']:4d} neurons  mean NVF {100 * la['mean_nvf']:.3f}%  "
              f"max {100 * la['max_nvf']:.3f}%" + (f"  measured {100 * la['mean_measured']:.3f}%  rho "
                                                   f"{la['spearman']:.2f}" if a.validate else ""))
    if a.validate:
        print(f"  vs campaign ({a.validate} faults per neuron and bit): Spearman rho = {rep['spearman']:.3f} "
              f"over {len(rep['neurons'])} neurons")
    print(f"wrote {out / 'nvf.json'}")
    return 0
