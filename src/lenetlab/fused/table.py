"""One row per schedule: simulate, check against the unfused model, count (USEFUSE, docs/papers/fused.md).

Shared by ``lenetlab fused`` and ``lenetlab reproduce fused``. The first row
is the layer-by-layer baseline (each stage on its own, whole maps, the maps
between stages off-chip); then one row per (tile size, stride policy). Every
row's simulated output is compared with the unfused model's on the given
images: bit for bit on int8 models, within :data:`FLOAT_TOL` on float32.

Example::

    from lenetlab.fused.table import schedule_rows, parse_tiles
    rows = schedule_rows(fm, "conv1,pool1,conv2,pool2", parse_tiles("1..5"), ("uniform", "ragged"), images)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from lenetlab.deploy.flat import FlatModel
from lenetlab.errors import LenetlabError
from lenetlab.fused.counting import Counts, count_fused, count_layer_by_layer
from lenetlab.fused.schedule import POLICIES, Schedule
from lenetlab.fused.simulate import group_io, max_abs_diff, run_schedule
from lenetlab.fused.stages import Stage, select

FLOAT_TOL = 1e-5   # float32 fused vs unfused: both round sums of the same products to float32


def parse_tiles(spec: str) -> list[int]:
    """``"3"``, ``"1..5"`` or ``"1,2,4"`` -> sorted positive tile sizes."""
    text = str(spec).strip()
    bad = LenetlabError(f"--tile takes N, A..B or a comma list of positive integers, got {spec!r}")
    longest = max((len(d) for d in re.findall(r"\d+", text)), default=0)
    if longest > len(str(MAX_TILE)):    # no int() of a thousand-digit number
        raise LenetlabError(f"--tile sizes must be at most {MAX_TILE} (the feature maps are far smaller), got {spec!r}")
    m = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if a < 1 or b < a:
            raise bad
        _check_max(b)      # before the range is built: "1..10**9" is refused, not expanded
        return list(range(a, b + 1))
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise bad
    tiles = sorted({int(p) for p in parts})
    if tiles[0] < 1:
        raise bad
    _check_max(tiles[-1])
    return tiles


MAX_TILE = 1024   # far above any feature map of a 28x28 (or padded 32x32) input


def _check_max(tile: int) -> None:
    if tile > MAX_TILE:
        raise LenetlabError(f"--tile sizes must be at most {MAX_TILE} (the feature maps are far smaller), got {tile}")


def parse_policies(spec: str | Sequence[str]) -> tuple[str, ...]:
    names = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    if "both" in names:
        names = list(POLICIES)
    for p in names:
        if p not in POLICIES:
            raise LenetlabError(f"unknown tile-stride policy {p!r}; choose from: {', '.join(POLICIES)}, both")
    return tuple(dict.fromkeys(names))


def _row(c: Counts, base: Counts | None, diff: float, exact: bool) -> dict[str, Any]:
    return {
        "schedule": c.label, "tiles": c.tiles, "pyramid": c.pyramid,
        "buffer_B": c.buffer_bytes, "in_B": c.in_bytes, "weights_B": c.weight_bytes, "mid_B": c.mid_bytes,
        "out_B": c.out_bytes, "offchip_B": c.offchip_bytes, "MACs": c.macs,
        "recompute": round(c.macs / c.useful_macs, 4) if c.useful_macs else 1.0,
        "OI": round(c.oi, 3), "OI_useful": round(c.oi_useful, 3),
        "OI_gain": round(c.oi / base.oi, 3) if base else 1.0,
        "max_abs_diff": diff, "exact": bool(exact),
    }


def _layer_by_layer(fm: FlatModel, stages: Sequence[Stage], x: np.ndarray) -> np.ndarray:
    for s in stages:   # each stage alone, one whole-map tile
        x = run_schedule(fm, Schedule((s,), min(s.out_shape[1:]), "ragged"), x)
    return x


def schedule_rows(fm: FlatModel, layers: str | Sequence[str] | Sequence[Stage], tiles: Sequence[int],
                  policies: Sequence[str], images: np.ndarray) -> list[dict[str, Any]]:
    """Layer-by-layer row, then a row per (tile, policy), each simulated on ``images`` and checked."""
    stages = tuple(layers) if layers and isinstance(layers[0], Stage) else tuple(select(fm, layers))
    schedules = [Schedule(stages, t, p) for t in tiles for p in policies]   # validates every tile first
    x_in, ref = group_io(fm, stages, images)
    tol = 0.0 if fm.dtype == "int8" else FLOAT_TOL
    base = count_layer_by_layer(stages, fm)
    d = max_abs_diff(_layer_by_layer(fm, stages, x_in), ref)
    rows = [_row(base, None, d, d <= tol)]
    for s in schedules:
        d = max_abs_diff(run_schedule(fm, s, x_in), ref)
        rows.append(_row(count_fused(s, fm), base, d, d <= tol))
    return rows
