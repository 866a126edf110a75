"""Exact fused-layer simulator (USEFUSE, Ibrahim, Usman, Lee 2024/25; docs/papers/fused.md).

:func:`run_schedule` executes a :class:`~lenetlab.fused.schedule.Schedule`
the way a fused accelerator would: for each pyramid it fetches one input
tile, runs every stage of the group on chip (intermediate tiles never leave
it), and writes the output tile into the stitched output map. The tile loop
is sequential, as in hardware; each tile is processed for the whole batch of
images at once.

The oracle is the unfused model: the flat runtime's output at the group's
last layer (:func:`group_io`), which must match bit for bit on int8 models
and to float32 rounding (<= 1e-5) on float32 ones.

Example::

    from lenetlab.fused.simulate import group_io, run_schedule
    x_in, ref = group_io(fm, group, images_u8)
    y = run_schedule(fm, Schedule(tuple(group), 2, "uniform"), x_in)
    assert (y == ref).all()          # int8
"""

from __future__ import annotations

import numpy as np

from lenetlab.deploy import runtime
from lenetlab.deploy.flat import FlatModel
from lenetlab.fused.kernels import apply_layer, single_thread
from lenetlab.fused.schedule import Schedule, Tile, plan
from lenetlab.fused.stages import Stage


def _maps(flat: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    return flat.reshape(len(flat), *shape)


def group_io(fm: FlatModel, stages: list[Stage] | tuple[Stage, ...], images: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """(group input maps, unfused reference output maps) for uint8 images, both (N, C, H, W)."""
    outs = runtime.run(fm, images, collect=True)
    first, last = stages[0], stages[-1]
    x = runtime.prepare_input(fm, images) if first.first == 0 else outs[first.first - 1]
    return _maps(x, first.in_shape), _maps(outs[last.last], last.out_shape)


def run_stage(fm: FlatModel, stage: Stage, x: np.ndarray) -> np.ndarray:
    """One stage (its spatial op, then its activations) on already-padded tiles."""
    integer = fm.dtype == "int8"
    for i in range(stage.first, stage.last + 1):
        x = apply_layer(fm.layers[i], x, integer)
    return x


def _pad(x: np.ndarray, held_r, need_r, held_c, need_c) -> np.ndarray:
    widths = ((0, 0), (0, 0), (held_r[0] - need_r[0], need_r[1] - held_r[1]),
              (held_c[0] - need_c[0], need_c[1] - held_c[1]))
    if not any(a or b for a, b in widths):
        return x
    return np.pad(x, widths)   # conv zero padding: 0 in float and in int8 (zero point 0)


def run_schedule(fm: FlatModel, schedule: Schedule, x_in: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The group's output maps (N, C, H, W), computed pyramid by pyramid and stitched."""
    stages = schedule.stages
    tiles = plan(schedule)
    integer = fm.dtype == "int8"
    out = np.zeros((len(x_in), *stages[-1].out_shape), np.int64 if integer else np.float32)
    with single_thread():
        for b0 in range(0, len(x_in), batch_size):
            _run_batch(fm, stages, tiles, x_in[b0: b0 + batch_size], out[b0: b0 + batch_size])
    return out


def _run_batch(fm: FlatModel, stages: tuple[Stage, ...], tiles: list[Tile], xb: np.ndarray, out: np.ndarray) -> None:
    """The sequential tile loop for one batch of images; writes into ``out`` (a view of the stitched map)."""
    for tile in tiles:
        r, c = tile.rows, tile.cols
        t = xb[:, :, r.held[0][0]: r.held[0][1], c.held[0][0]: c.held[0][1]]   # the off-chip fetch
        for lvl, stage in enumerate(stages):
            t = _pad(t, r.held[lvl], r.need[lvl], c.held[lvl], c.need[lvl])
            t = run_stage(fm, stage, t)
        (r0, r1), (c0, c1) = r.held[-1], c.held[-1]
        assert t.shape[2:] == (r1 - r0, c1 - c0), (t.shape, r.held, c.held)
        # a uniform-stride tile shifted back rewrites outputs its neighbour made: the values are identical
        out[:, :, r0:r1, c0:c1] = t


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest elementwise difference (exact for int64 maps)."""
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
