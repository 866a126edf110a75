"""``lenetlab noise eval RUN_DIR --sigma ...``: test accuracy under additive Gaussian noise (mean/std over draws)."""

from __future__ import annotations

import argparse
import json

from lenetlab.errors import LenetlabError
from lenetlab.noise.inject import SITES, check_sigma, check_sites


def add_commands(sub: argparse._SubParsersAction) -> None:
    from lenetlab import validate as V

    n = sub.add_parser("noise", help="noisy analog computation: accuracy under noise (Wang et al. 2025)")
    nsub = n.add_subparsers(dest="noise_cmd", required=True, metavar="ACTION")
    e = nsub.add_parser("eval", help="test accuracy of a run with noise after every layer")
    e.add_argument("run_dir")
    e.add_argument("--sigma", type=V.real("--sigma", lo=0.0, hi=V.MAX_SIGMA), nargs="+", required=True,
                   help="noise sigma(s), >= 0")
    e.add_argument("--draws", type=V.count("--draws", hi=10_000), default=5, help="noise draws per sigma (default 5)")
    e.add_argument("--relative", action="store_true", help="sigma times max|y| of each site (per sample)")
    e.add_argument("--sites", default=",".join(SITES), help=f"comma-separated sites (default {','.join(SITES)})")
    e.add_argument("--weight-sigma", type=V.real("--weight-sigma", lo=0.0, hi=V.MAX_SIGMA), default=0.0,
                   help="absolute noise on conv/linear weights")
    e.add_argument("--seed", type=V.seed(), default=0)
    e.add_argument("--exact", action="store_true",
                   help="several sigmas: exactly the numbers of one evaluation per sigma, bit for bit (slower; "
                        "by default the first layer is folded and the noise added in one rounding)")
    e.add_argument("--limit", type=V.count("--limit"), metavar="N", help="only the first N test images")
    e.add_argument("--json", action="store_true", help="print the rows as JSON")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    from lenetlab.devices import add_flag

    add_flag(e, "where the model runs (the noise is drawn on the CPU)")
    e.set_defaults(func=cmd_noise_eval)


def cmd_noise_eval(a: argparse.Namespace) -> int:
    import dataclasses

    from lenetlab.data import load_splits
    from lenetlab.noise.inject import noisy_accuracy, noisy_accuracy_sweep
    from lenetlab.noise.training import apply_eval_qat
    from lenetlab.progress import progress_bar
    from lenetlab.rundir import load_model

    # every argument is checked before the model and the data are loaded
    sigmas = [check_sigma(s) for s in a.sigma]
    check_sigma(a.weight_sigma, "--weight-sigma")
    sites = check_sites([s.strip() for s in a.sites.split(",") if s.strip()])
    if a.draws < 1:
        raise LenetlabError(f"--draws must be >= 1, got {a.draws}")
    if a.limit is not None and a.limit <= 0:
        raise LenetlabError(f"--limit must be positive, got {a.limit}")
    from lenetlab import devices

    dev = devices.resolve(a.device)
    model, cfg = load_model(a.run_dir)
    model.to(dev)
    qat = apply_eval_qat(model, cfg.train)   # a QAT run is judged with its fake-quant on
    data = dataclasses.replace(cfg.data, val_size=0, train_subset=1, test_subset=a.limit)
    splits = load_splits(data)
    x, y = splits.test_x.to(dev), splits.test_y.to(dev)
    rows = []
    if a.weight_sigma == 0 and len(sigmas) > 1:
        # one seed for every sigma: the numbers of a call per sigma (bit for bit with --exact, else up to float
        # rounding), each batch's normals drawn once
        results = noisy_accuracy_sweep(model, x, y, sigmas, a.draws, a.relative, sites, a.seed, exact=a.exact)
    else:
        results = None
    with progress_bar("noise sigmas", total=len(sigmas), quiet=a.quiet) as bar:
        for j, s in enumerate(sigmas):
            r = results[j] if results is not None else \
                noisy_accuracy(model, x, y, s, a.draws, a.relative, sites, a.weight_sigma, a.seed)
            rows.append({"sigma": s, "accuracy_mean": r["mean"], "accuracy_std": r["std"], "draws": a.draws})
            bar()
    if qat is not None:
        qat.remove()
    if a.json:
        print(json.dumps({"run": str(a.run_dir), "relative": a.relative, "sites": list(sites),
                          "test_images": len(splits.test_x), "rows": rows}))
        return 0
    mode = "relative" if a.relative else "absolute"
    h = cfg.train.hardening
    print(f"{cfg.model.name} ({'QAT %d-bit, s=%g' % (h.qat_bits, h.act_scale) if qat else 'float'})"
          f", {mode} noise at {','.join(sites)}, {len(splits.test_x)} test images, {a.draws} draws")
    for r in rows:
        print(f"  sigma {r['sigma']:<10g} accuracy {100 * r['accuracy_mean']:6.2f}% +- {100 * r['accuracy_std']:.2f}")
    return 0
