"""Memory traffic, buffer size, MACs and operational intensity of a schedule (USEFUSE, docs/papers/fused.md).

Counted per image (batch-1 inference: nothing stays on chip between images),
from the same pyramid plan the simulator executes.

Conventions (also printed in the reproduce report):

- Value sizes: activations are 4 bytes in float32 models and 1 byte in int8
  ones (int8 conv/subsample outputs are requantised to int8 before they are
  stored); parameters are counted as the flat file stores them (float32: 4
  bytes per weight and bias; int8: 1-byte weights, 4-byte int32 biases, 4-byte
  requantisation multipliers and shifts per output channel, 256-byte
  activation look-up tables, 1-byte connection tables). C3's kernel is stored
  dense (zeros off its connection table).
- Off-chip traffic of a fused group: every pyramid fetches the part of its
  input tile that lies inside the input map (overlapping input tiles are
  re-read; zero padding is made on chip), every output tile is written once
  (a uniform-stride tile shifted back rewrites its overlap), and the group's
  parameters are read once per image. Intermediate maps never leave the chip.
- Layer-by-layer baseline: each stage reads its whole input map and its
  parameters and writes its whole output map; the maps between stages are
  written and read back (``mid``).
- On-chip buffer: the group's parameters plus, over the largest pyramid, the
  held input tile and every stage's output tile (activations run in place).
  Layer-by-layer: the largest (input map + output map + parameters) of a stage.
- MACs: a conv output costs its connected fan-in (``in_c * k * k``; C3: its
  table's inputs * 25), padding taps included; a subsampling output costs one
  multiply; pools and activations cost none. Executed MACs include outputs
  recomputed because pyramids overlap; ``useful_macs`` counts every output once.
- Operational intensity (OI) = executed MACs / off-chip bytes, as the paper
  defines it; ``oi_useful`` uses the useful MACs so recomputation cannot
  inflate it.

Example::

    from lenetlab.fused.counting import count_fused, count_layer_by_layer
    f = count_fused(Schedule(tuple(group), 1), fm)
    f.oi / count_layer_by_layer(group, fm).oi       # the OI gain of fusing
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lenetlab.deploy.flat import FlatModel
from lenetlab.fused.schedule import Schedule, plan, pyramid
from lenetlab.fused.stages import Stage
from lenetlab.models.macs import flat_position_macs

CONVENTIONS = ("per image; activations 4 B (float32) / 1 B (int8), parameters as the flat file stores them; "
               "overlapping input tiles re-read; OI = executed MACs / off-chip bytes, OI_useful = each output's "
               "MACs counted once / off-chip bytes")


def value_bytes(fm: FlatModel) -> int:
    return 1 if fm.dtype == "int8" else 4


def param_bytes(fm: FlatModel, stage: Stage) -> int:
    """Bytes of every array the flat file stores for the stage's layers."""
    return int(sum(a.nbytes for i in range(stage.first, stage.last + 1) for a in fm.layers[i].arrays.values()))


def macs_per_position(fm: FlatModel, stage: Stage) -> int:
    """MACs to produce one output pixel position (all channels) of the stage: the one MAC convention,
    :func:`lenetlab.models.macs.flat_position_macs` of its spatial layer (activations cost none)."""
    return flat_position_macs(fm.layers[stage.first])


@dataclass
class Counts:
    label: str
    tiles: int
    pyramid: str                     # nominal interior pyramid extents, input first
    macs: int
    useful_macs: int
    in_bytes: int
    weight_bytes: int
    mid_bytes: int
    out_bytes: int
    buffer_bytes: int                # on-chip: activations + parameters
    recompute: dict[str, float] = field(default_factory=dict)   # stage -> executed / unique outputs

    @property
    def offchip_bytes(self) -> int:
        return self.in_bytes + self.weight_bytes + self.mid_bytes + self.out_bytes

    @property
    def oi(self) -> float:
        return self.macs / self.offchip_bytes

    @property
    def oi_useful(self) -> float:
        return self.useful_macs / self.offchip_bytes


def _area(r, c) -> int:
    return (r[1] - r[0]) * (c[1] - c[0])


def count_fused(schedule: Schedule, fm: FlatModel) -> Counts:
    """Traffic and work of one fused schedule, per image."""
    st = schedule.stages
    vb = value_bytes(fm)
    chans = [st[0].in_shape[0]] + [s.out_shape[0] for s in st]          # channels of map v = 0..L
    per_pos = [macs_per_position(fm, s) for s in st]
    made = [0] * len(st)                                                # output positions each stage computed
    in_b = out_b = buf = 0
    tiles = plan(schedule)
    for t in tiles:
        areas = [_area(r, c) for r, c in zip(t.rows.held, t.cols.held)]
        in_b += areas[0] * chans[0] * vb
        out_b += areas[-1] * chans[-1] * vb
        buf = max(buf, sum(a * ch for a, ch in zip(areas, chans)) * vb)
        for i in range(len(st)):
            made[i] += areas[i + 1]
    unique = [s.out_shape[1] * s.out_shape[2] for s in st]
    weights = sum(param_bytes(fm, s) for s in st)
    ext = pyramid(st, schedule.tile)
    return Counts(schedule.label, len(tiles), ">".join(map(str, ext)),
                  macs=sum(m * p for m, p in zip(made, per_pos)),
                  useful_macs=sum(u * p for u, p in zip(unique, per_pos)),
                  in_bytes=in_b, weight_bytes=weights, mid_bytes=0, out_bytes=out_b,
                  buffer_bytes=buf + weights,
                  recompute={s.name: m / u for s, m, u, p in zip(st, made, unique, per_pos) if p})


def count_layer_by_layer(stages: list[Stage] | tuple[Stage, ...], fm: FlatModel) -> Counts:
    """The unfused baseline: every stage alone, one whole-map tile, maps between stages off-chip."""
    parts = [count_fused(Schedule((s,), min(s.out_shape[1:]), "ragged"), fm) for s in stages]
    mid = sum(p.out_bytes for p in parts[:-1]) + sum(p.in_bytes for p in parts[1:])
    return Counts("layer-by-layer", sum(p.tiles for p in parts), "-",
                  macs=sum(p.macs for p in parts), useful_macs=sum(p.useful_macs for p in parts),
                  in_bytes=parts[0].in_bytes, weight_bytes=sum(p.weight_bytes for p in parts), mid_bytes=mid,
                  out_bytes=parts[-1].out_bytes, buffer_bytes=max(p.buffer_bytes for p in parts),
                  recompute={k: v for p in parts for k, v in p.recompute.items()})
