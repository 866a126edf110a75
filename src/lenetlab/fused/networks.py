"""Fused-layer counting on conv stacks given by their layer shapes only: AlexNet and VGG-16 (USEFUSE,
docs/papers/fused.md).

USEFUSE's abstract also quotes operational-intensity gains for AlexNet's (17.8x) and VGG-16's (279.4x)
convolution stacks. Traffic and MAC counts need no weights and no training, only the layer shapes (public),
so these are counted with the same pyramid plan (:mod:`lenetlab.fused.schedule`) and the same conventions as
the LeNet-5 rows (:mod:`lenetlab.fused.counting`), for an int8 deployment:

- activations 1 byte; per conv layer 1-byte weights plus 12 bytes per output channel (int32 bias, the
  requantisation multiplier and shift) and one 256-byte activation look-up table (the ReLU);
- a conv output costs ``in_c * k * k`` MACs (padding taps included), pools cost none;
- batch 1: the parameters are read once per image, every fused pyramid fetches its input tile (overlaps
  re-read), every output tile is written; layer-by-layer writes and reads back every map in between.

Layer shapes: AlexNet (Krizhevsky et al. 2012) in its single-tower form (no channel groups in conv2/4/5) on
227 x 227 x 3: conv 11x11/4 96, max-pool 3x3/2, conv 5x5 pad 2 256, pool, conv 3x3 pad 1 384, 384, 256, pool
(output 6 x 6 x 256). VGG-16 (Simonyan & Zisserman 2015, configuration D) on 224 x 224 x 3: thirteen 3x3 pad-1
convs in blocks of 2, 2, 3, 3, 3 (64, 128, 256, 512, 512 channels), each block ending in a 2x2/2 max-pool
(output 7 x 7 x 512). The fusion group is the whole stack (every conv and pool); tiles are square, in pixels
of the group's output map, 1 .. its size, both stride policies.

Example::

    from lenetlab.fused.networks import NETWORKS, stack_rows
    rows = stack_rows("vgg16")              # layer-by-layer first, then one row per (tile, policy)
    best = max(rows[1:], key=lambda r: r["OI_useful"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lenetlab.errors import LenetlabError
from lenetlab.fused.counting import Counts
from lenetlab.fused.schedule import POLICIES, Schedule, plan, pyramid
from lenetlab.fused.stages import Stage

VALUE_BYTES = 1                 # int8 activations
PER_CHANNEL_BYTES = 12          # int32 bias + requantisation multiplier + shift
LUT_BYTES = 256                 # one activation look-up table per conv


@dataclass(frozen=True)
class Layer:
    """One layer of a shape-only conv stack: ``conv`` (``out_c`` channels) or ``maxpool``."""

    op: str
    k: int
    stride: int = 1
    pad: int = 0
    out_c: int = 0


def _conv(c: int, k: int = 3, stride: int = 1, pad: int = 1) -> Layer:
    return Layer("conv", k, stride, pad, c)


def _pool(k: int = 2, stride: int = 2) -> Layer:
    return Layer("maxpool", k, stride)


def _vgg16() -> list[Layer]:
    out: list[Layer] = []
    for c, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        out += [_conv(c)] * n + [_pool()]
    return out


NETWORKS: dict[str, tuple[tuple[int, int, int], list[Layer]]] = {
    "alexnet": ((3, 227, 227), [_conv(96, 11, 4, 0), _pool(3, 2), _conv(256, 5, 1, 2), _pool(3, 2), _conv(384),
                                _conv(384), _conv(256), _pool(3, 2)]),
    "vgg16": ((3, 224, 224), _vgg16()),
}


def stack(name: str) -> tuple[list[Stage], dict[str, int], dict[str, int]]:
    """The network's stages (shapes worked out layer by layer), their parameter bytes and MACs per output
    position."""
    if name not in NETWORKS:
        raise LenetlabError(f"unknown network {name!r}; valid: {', '.join(NETWORKS)}")
    shape, layers = NETWORKS[name]
    stages: list[Stage] = []
    params: dict[str, int] = {}
    macs: dict[str, int] = {}
    counts = {"conv": 0, "pool": 0}
    c, h, w = shape
    for i, layer in enumerate(layers):
        kind = "conv" if layer.op == "conv" else "pool"
        counts[kind] += 1
        oc = layer.out_c if kind == "conv" else c
        oh, ow = ((x + 2 * layer.pad - layer.k) // layer.stride + 1 for x in (h, w))
        st = Stage(f"{kind}{counts[kind]}", layer.op, i, i, (c, h, w), (oc, oh, ow), layer.k, layer.stride, layer.pad)
        stages.append(st)
        params[st.name] = (oc * c * layer.k * layer.k + PER_CHANNEL_BYTES * oc + LUT_BYTES) if kind == "conv" else 0
        macs[st.name] = oc * c * layer.k * layer.k if kind == "conv" else 0
        c, h, w = oc, oh, ow
    return stages, params, macs


def count(schedule: Schedule, params: dict[str, int], macs: dict[str, int]) -> Counts:
    """Traffic and work of one fused schedule of a shape-only stack, per image (as
    :func:`lenetlab.fused.counting.count_fused`)."""
    st = schedule.stages
    chans = [st[0].in_shape[0]] + [s.out_shape[0] for s in st]
    made = [0] * len(st)
    in_b = out_b = buf = 0
    tiles = plan(schedule)
    for t in tiles:
        areas = [(r[1] - r[0]) * (c[1] - c[0]) for r, c in zip(t.rows.held, t.cols.held)]
        in_b += areas[0] * chans[0] * VALUE_BYTES
        out_b += areas[-1] * chans[-1] * VALUE_BYTES
        buf = max(buf, sum(a * ch for a, ch in zip(areas, chans)) * VALUE_BYTES)
        for i in range(len(st)):
            made[i] += areas[i + 1]
    unique = [s.out_shape[1] * s.out_shape[2] for s in st]
    weights = sum(params[s.name] for s in st)
    per_pos = [macs[s.name] for s in st]
    return Counts(schedule.label, len(tiles), ">".join(map(str, pyramid(st, schedule.tile))),
                  macs=sum(m * p for m, p in zip(made, per_pos)),
                  useful_macs=sum(u * p for u, p in zip(unique, per_pos)),
                  in_bytes=in_b, weight_bytes=weights, mid_bytes=0, out_bytes=out_b, buffer_bytes=buf + weights,
                  recompute={s.name: m / u for s, m, u, p in zip(st, made, unique, per_pos) if p})


def count_layer_by_layer(stages: list[Stage], params: dict[str, int], macs: dict[str, int]) -> Counts:
    """Every stage alone on whole maps; the maps between stages written and read back."""
    parts = [count(Schedule((s,), min(s.out_shape[1:]), "ragged"), params, macs) for s in stages]
    mid = sum(p.out_bytes for p in parts[:-1]) + sum(p.in_bytes for p in parts[1:])
    return Counts("layer-by-layer", sum(p.tiles for p in parts), "-", macs=sum(p.macs for p in parts),
                  useful_macs=sum(p.useful_macs for p in parts), in_bytes=parts[0].in_bytes,
                  weight_bytes=sum(p.weight_bytes for p in parts), mid_bytes=mid, out_bytes=parts[-1].out_bytes,
                  buffer_bytes=max(p.buffer_bytes for p in parts))


def stack_rows(name: str, policies: tuple[str, ...] = POLICIES) -> list[dict[str, Any]]:
    """Layer-by-layer row, then one row per (tile size, policy) of the whole stack fused into one group."""
    stages, params, macs = stack(name)
    base = count_layer_by_layer(stages, params, macs)
    rows = [_row(base, base)]
    for t in range(1, min(stages[-1].out_shape[1:]) + 1):
        for p in policies:
            rows.append(_row(count(Schedule(tuple(stages), t, p), params, macs), base))
    return rows


def _row(c: Counts, base: Counts) -> dict[str, Any]:
    return {"schedule": c.label, "tiles": c.tiles, "offchip_B": c.offchip_bytes, "weights_B": c.weight_bytes,
            "mid_B": c.mid_bytes, "buffer_B": c.buffer_bytes, "MACs": c.macs, "useful_MACs": c.useful_macs,
            "recompute": round(c.macs / c.useful_macs, 4), "OI": round(c.oi, 3), "OI_useful": round(c.oi_useful, 3),
            "OI_gain": round(c.oi / base.oi, 4), "OI_useful_gain": round(c.oi_useful / base.oi_useful, 4)}
