"""Fused-layer schedules and their tile pyramids (USEFUSE, Ibrahim, Usman, Lee 2024/25; docs/papers/fused.md).

A :class:`Schedule` is a group of consecutive stages, an output tile size
``T`` (in pixels of the *last* stage's output map, square tiles) and a
tile-stride policy. Each output tile is computed from a pyramid of tiles
below it; walking down one stage, an output range of extent ``e`` needs an
input range of extent ``(e - 1) * s + k`` (conv: s = 1; 2x2 pool: s = 2), so
LeNet-5's conv1..pool2 pyramid for T = 1 is 16 > 12 > 6 > 2 > 1.

Stride policies along each axis of an output map of size ``O``:

- ``ragged``: tiles start at 0, T, 2T, ...; the last one is cut to what is
  left (O = 5, T = 2: extents 2, 2, 1), so edge pyramids have other shapes.
- ``uniform`` (USEFUSE's uniform stride): every tile has the full T x T
  shape, hence every pyramid is identical and the hardware's access pattern
  never changes; the pyramid moves by T, and the last tile is shifted back
  to end at the map edge (O = 5, T = 2: starts 0, 2, 3), overlapping its
  neighbour - those outputs (and their pyramids) are computed twice.

Coordinates: ranges are half-open ``(lo, hi)`` in each map's own
(unpadded) coordinates. A conv with zero padding ``p`` may *request* input
rows ``-p .. H + p``; only the rows inside the map are produced (or fetched
off-chip, for the group input) and the padding is filled with zeros on chip.

Example::

    from lenetlab.fused.schedule import Schedule, plan
    sched = Schedule(tuple(group), tile=1, policy="uniform")
    tiles = plan(sched)           # 25 pyramids for LeNet-5's 5 x 5 pool2 output
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from lenetlab.errors import LenetlabError
from lenetlab.fused.stages import Stage

POLICIES = ("uniform", "ragged")

Range = tuple[int, int]


@dataclass(frozen=True)
class Schedule:
    """Consecutive stages fused into one pyramid, square output tiles of ``tile`` pixels, a stride policy."""

    stages: tuple[Stage, ...]
    tile: int
    policy: str = "uniform"

    def __post_init__(self) -> None:
        if not self.stages:
            raise LenetlabError("a schedule needs at least one layer")
        if self.policy not in POLICIES:
            raise LenetlabError(f"unknown tile-stride policy {self.policy!r}; choose from: {', '.join(POLICIES)}")
        _, oh, ow = self.stages[-1].out_shape
        if not isinstance(self.tile, int) or self.tile < 1:
            raise LenetlabError(f"tile size must be a positive integer, got {self.tile!r}")
        if self.tile > min(oh, ow):
            raise LenetlabError(f"tile {self.tile} is larger than the output of {self.stages[-1].name} ({oh}x{ow})")

    @property
    def label(self) -> str:
        return f"T={self.tile} {self.policy}"


def tile_ranges(size: int, tile: int, policy: str) -> list[Range]:
    """Output ranges of the tiles along one axis of length ``size``."""
    starts = list(range(0, size, tile))
    if policy == "ragged":
        return [(a, min(a + tile, size)) for a in starts]
    if policy == "uniform":
        return [(min(a, size - tile), min(a, size - tile) + tile) for a in starts]
    raise LenetlabError(f"unknown tile-stride policy {policy!r}; choose from: {', '.join(POLICIES)}")


@dataclass(frozen=True)
class AxisPlan:
    """One pyramid along one axis.

    ``need[l]``: the input range stage ``l`` reads (it may reach into the stage's zero padding);
    ``held[v]``: the range of map ``v`` held on chip (v = 0: the group input, fetched off-chip;
    v = l + 1: the output of stage ``l``, so ``held[-1]`` is the output tile), always inside the map.
    """

    need: tuple[Range, ...]
    held: tuple[Range, ...]


def stage_input(stage: Stage, out: Range) -> Range:
    """The input range a stage reads for an output range: ``(a*s - p, (b-1)*s + k - p)``."""
    a, b = out
    return a * stage.stride - stage.pad, (b - 1) * stage.stride + stage.k - stage.pad


def axis_plan(stages: tuple[Stage, ...], out: Range, axis: int) -> AxisPlan:
    """Walk a last-stage output range down the group (``axis`` 1 = rows, 2 = columns of C,H,W shapes)."""
    need: list[Range] = []
    held: list[Range] = [out]
    for s in reversed(stages):
        lo, hi = stage_input(s, held[0])
        need.insert(0, (lo, hi))
        # the map below holds only the requested part that lies inside it; padding is zeros made on chip
        held.insert(0, (max(lo, 0), min(hi, s.in_shape[axis])))
    return AxisPlan(tuple(need), tuple(held))


@dataclass(frozen=True)
class Tile:
    """One pyramid: its row plan and its column plan (the two axes are independent)."""

    rows: AxisPlan
    cols: AxisPlan


def plan(schedule: Schedule) -> list[Tile]:
    """Every pyramid of the schedule, row-major over the last stage's output map."""
    st = schedule.stages
    _, oh, ow = st[-1].out_shape
    rows = [axis_plan(st, r, 1) for r in tile_ranges(oh, schedule.tile, schedule.policy)]
    cols = [axis_plan(st, c, 2) for c in tile_ranges(ow, schedule.tile, schedule.policy)]
    return [Tile(r, c) for r, c in product(rows, cols)]


def pyramid(stages: tuple[Stage, ...], tile: int) -> list[int]:
    """Nominal extents of an interior pyramid, group input (padded) first: T=1 on conv1..pool2 -> 16,12,6,2,1."""
    ext = [tile]
    for s in reversed(stages):
        ext.insert(0, (ext[0] - 1) * s.stride + s.k)
    return ext
