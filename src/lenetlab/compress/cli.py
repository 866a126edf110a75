"""``lenetlab compress RUN_DIR --method tt|adtn --layers c5,f6 --out DIR``: a tensor-network compressed run.

The result is an ordinary run directory (model ``lenet5_tt`` / ``lenet5_adtn``),
so ``lenetlab eval DIR`` and ``lenetlab export DIR`` work on it; summary.json
adds the parameter counts before and after and the accuracies at each stage.
"""

from __future__ import annotations

import argparse

from lenetlab.compress.run import compress_run
from lenetlab.errors import LenetlabError

__all__ = ["add_commands", "cmd_compress", "compress_run"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    from lenetlab import validate as V

    c = sub.add_parser("compress", help="tensor-network compression: TT/MPO layers or deep ADTN (Qing et al. 2023)")
    c.add_argument("run_dir", help="a trained lenet5 run directory")
    c.add_argument("--method", required=True, choices=["tt", "adtn"])
    c.add_argument("--layers", default="c5,f6", help="layers to compress: c1,c3,c5,f6,f7 or conv1,conv2,fc1,fc2,fc3 "
                   "(default c5,f6)")
    c.add_argument("--out", required=True, help="output run directory")
    c.add_argument("--rank", type=V.count("--rank", hi=4096), default=8, help="tt: cap on every bond rank (default 8)")
    c.add_argument("--tol", type=V.real("--tol", lo=0.0, hi=1.0, lo_open=True, hi_open=True),
                   help="tt: choose ranks by TT-SVD to this relative error instead of --rank")
    c.add_argument("--cores", type=V.count("--cores", lo=2, hi=16), default=3, help="tt: cores per layer (default 3)")
    c.add_argument("--depth", type=V.count("--depth", hi=256), default=4, help="adtn: brick-wall layers M (default 4)")
    c.add_argument("--tn-activation", default="tanh", help="adtn: activation between layers (default tanh)")
    c.add_argument("--fit-steps", type=V.count("--fit-steps", lo=0, hi=V.MAX_STEPS), default=1000,
                   help="adtn: least-squares fit steps (default 1000)")
    c.add_argument("--epochs", type=V.count("--epochs", lo=0, hi=100_000), default=2,
                   help="fine-tuning epochs on the task, 0 = none (default 2)")
    c.add_argument("--lr", type=V.real("--lr", lo=0.0, lo_open=True), default=3e-3,
                   help="fine-tuning peak learning rate (default 3e-3)")
    c.add_argument("--batch-size", type=V.count("--batch-size"), help="fine-tuning batch size (default: the run's)")
    c.add_argument("--train-subset", type=V.count("--train-subset"), metavar="N",
                   help="fine-tune on the first N training images only")
    c.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_compress)


def cmd_compress(a: argparse.Namespace) -> int:
    log = None if a.quiet else print
    if a.tol is not None and a.method != "tt":
        raise LenetlabError("--tol applies to --method tt only")
    s = compress_run(a.run_dir, a.out, a.method, a.layers, rank=a.rank, tol=a.tol, cores=a.cores, depth=a.depth,
                     tn_activation=a.tn_activation, fit_steps=a.fit_steps, epochs=a.epochs, lr=a.lr,
                     train_subset=a.train_subset, batch_size=a.batch_size, force=a.force, log=log,
                     progress=None if not a.quiet else False)
    c = s["compression"]
    print(f"{s['model']}  {', '.join(c['layers'])} {c['dense_layer_params']:,} -> {c['layer_params']:,} params "
          f"({c['layer_ratio']:.1f}x; model {c['dense_params']:,} -> {c['params']:,})  test accuracy "
          f"{100 * s['test_accuracy']:.2f}% (uncompressed {100 * s['uncompressed_test_accuracy']:.2f}%, "
          f"{s['accuracy_change_points']:+.2f} points)  -> {a.out}")
    return 0
