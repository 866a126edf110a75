"""``lenetlab quantize RUN_DIR --out DIR``: int8 post-training quantisation into a quantised run directory."""

from __future__ import annotations

import argparse
import json


def add_commands(sub: argparse._SubParsersAction) -> None:
    from lenetlab import validate as V

    q = sub.add_parser("quantize", help="int8 post-training quantisation of a run (integer-only engine)")
    q.add_argument("run_dir")
    q.add_argument("--out", required=True, help="quantised run directory to write (model_int8.flat, quant.json)")
    q.add_argument("--calibration", type=V.count("--calibration"), default=2000, metavar="N",
                   help="calibrate on the first N training images (default 2000)")
    q.add_argument("--limit", type=V.count("--limit"), metavar="N",
                   help="measure accuracy on the first N test images only")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quantize)


def cmd_quantize(a: argparse.Namespace) -> int:
    from lenetlab.quant.run import MAX_LOSS_POINTS, quantize_run

    info = quantize_run(a.run_dir, a.out, a.calibration, a.limit)
    if a.json:
        print(json.dumps(info))
        return 0
    print(f"{info['model']}: float {100 * info['float_accuracy']:.2f}%  int8 {100 * info['int8_accuracy']:.2f}%  "
          f"(loss {info['loss_points']:+.2f} points, budget {MAX_LOSS_POINTS}; {info['test_images']} test images)")
    print(f"wrote {a.out}/{info['file']} ({info['bytes']} bytes) and quant.json")
    return 0
