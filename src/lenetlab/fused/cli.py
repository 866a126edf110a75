"""``lenetlab fused``: fused-layer schedules of a trained run, simulated and counted (USEFUSE, docs/papers/fused.md).

Example::

    lenetlab fused runs/demo --layers conv1,pool1,conv2,pool2 --tile 1..5 --int8
"""

from __future__ import annotations

import argparse
import json

from lenetlab.errors import LenetlabError
from lenetlab.fused.counting import CONVENTIONS

__all__ = ["CONVENTIONS", "add_commands", "cmd_fused", "text_table"]


def cmd_fused(a: argparse.Namespace) -> int:
    from lenetlab.fused.table import parse_policies, parse_tiles

    tiles = parse_tiles(a.tile) if a.tile is not None else None
    policies = parse_policies(a.policy)
    if a.images < 1:
        raise LenetlabError(f"--images must be at least 1, got {a.images}")

    from lenetlab.data.datasets import load_raw
    from lenetlab.deploy.export import build_flat
    from lenetlab.fused.end import end_analysis
    from lenetlab.fused.stages import select
    from lenetlab.fused.table import schedule_rows
    from lenetlab.rundir import load_model, require_run

    run = require_run(a.run_dir)
    model, cfg = load_model(run)
    model.eval()
    fm = build_flat(model, cfg, a.int8)
    stages = select(fm, a.layers)
    if tiles is None:
        tiles = list(range(1, min(stages[-1].out_shape[1:]) + 1))
    images = load_raw(cfg.data.dataset, cfg.data.data_dir)[2][: a.images]
    rows = schedule_rows(fm, stages, tiles, policies, images)
    ends = end_analysis(fm, stages, images) if a.int8 else []
    ok = all(r["exact"] for r in rows) and all(e.changed == 0 for e in ends)
    if a.json:
        print(json.dumps({"run": str(run), "dtype": fm.dtype, "layers": [s.name for s in stages],
                          "images": len(images), "rows": rows, "end": [vars(e) for e in ends]}))
        return 0 if ok else 1
    _print(a, fm.dtype, stages, rows, ends, len(images))
    return 0 if ok else 1


COLUMNS = ("schedule", "tiles", "pyramid", "buffer_B", "in_B", "weights_B", "mid_B", "out_B", "offchip_B", "MACs",
           "recompute", "OI", "OI_gain")


def _exact(r: dict, dtype: str) -> str:
    if not r["exact"]:
        return f"NO ({r['max_abs_diff']:.3g})"
    return "bit-exact" if dtype == "int8" else f"{r['max_abs_diff']:.1e}"


def text_table(rows: list[dict], dtype: str) -> str:
    """Plain aligned text (no terminal-width truncation, pipes cleanly)."""
    head = [*COLUMNS, "exact"]
    body = [[f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in COLUMNS] + [_exact(r, dtype)]
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if k in ("schedule", "pyramid") else c.rjust(w)
                         for k, c, w in zip(head, cells, widths))

    return "\n".join(line(cells) for cells in [head, *body])


def _print(a, dtype, stages, rows, ends, n_images) -> None:
    shapes = " > ".join(f"{s.name} {'x'.join(map(str, s.out_shape))}" for s in stages)
    print(f"{a.run_dir} ({dtype}): {shapes}")
    print(f"counts {CONVENTIONS}; outputs checked on {n_images} test images")
    print(text_table(rows, dtype))
    if dtype != "int8":
        print("END (early negative detection) runs on int8 accumulators: add --int8")
    for e in ends:
        if not e.applies:
            print(f"END {e.layer}: does not apply - {e.reason}")
            continue
        print(f"END {e.layer}: {100 * e.negative:.1f}% of outputs negative, {100 * e.terminated:.1f}% stopped "
              f"early (mean {e.mean_digits:.2f} of 8 digits), {100 * e.skipped:.1f}% of MAC digit-cycles "
              f"skipped; outputs changed: {e.changed}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    from lenetlab import validate as V

    p = sub.add_parser("fused", help="fused-layer tiling of the conv stack: traffic, OI, exactness, END (USEFUSE)")
    p.add_argument("run_dir")
    p.add_argument("--layers", default="conv1,pool1,conv2,pool2",
                   help="consecutive conv/pool layers to fuse (default conv1,pool1,conv2,pool2)")
    p.add_argument("--tile", default=None, metavar="N|A..B|A,B,..",
                   help="output tile sizes of the last fused layer (default: 1 .. its output size)")
    p.add_argument("--policy", default="both", help="tile-stride policy: uniform | ragged | both (default)")
    p.add_argument("--int8", action="store_true", help="the integer-only int8 model (bit-exact check, END)")
    p.add_argument("--images", type=V.count("--images"), default=1000, metavar="N",
                   help="test images to check outputs on")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_fused)
