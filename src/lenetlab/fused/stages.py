"""The fusable layers of a flat LeNet-5: conv/pool *stages* and their names (USEFUSE, docs/papers/fused.md).

A stage is one spatial operation of the flat layer list (``conv``,
``maxpool``, ``avgpool`` or ``subsample``) together with the activation
layers that directly follow it. Activations are elementwise, so a fused
accelerator applies them on the fly to the tile it just produced; folding
them into the stage keeps the fused group's output identical to the model's
own feature map at that point. The placement is the model's: modern
``lenet5`` with max-pooling pools *before* its monotone activation
(``model.pool_first``), so ``conv1`` is the raw convolution and ``pool1``
carries the ReLU; ``lenet5_classic`` squashes after every conv and every
subsampling layer.

Names count each kind in network order: ``conv1, pool1, conv2, pool2`` for
both models (classic: C1, S2, C3, S4), plus ``conv3`` for classic's C5.
Dense and RBF layers end the conv stack and are not stages.

Example::

    from lenetlab.fused.stages import select
    group = select(fm, "conv1,pool1,conv2,pool2")
    [s.name for s in group], group[-1].out_shape      # (..., (16, 5, 5))
"""

from __future__ import annotations

from dataclasses import dataclass

from lenetlab.deploy.flat import FlatModel, Layer
from lenetlab.errors import LenetlabError

SPATIAL = ("conv", "maxpool", "avgpool", "subsample")


@dataclass(frozen=True)
class Stage:
    """One conv/pool layer plus its trailing activations, as flat-layer indices ``first..last``."""

    name: str
    op: str                          # conv | maxpool | avgpool | subsample
    first: int                       # flat index of the spatial op
    last: int                        # flat index of its last trailing activation (or ``first``)
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    k: int                           # window size (pools: 2)
    stride: int                      # 1 for conv, 2 for pools
    pad: int                         # zero padding of a conv (0 for pools)


def stages(fm: FlatModel) -> list[Stage]:
    """Every conv/pool stage of ``fm``'s conv stack, in network order."""
    out: list[Stage] = []
    counts = {"conv": 0, "pool": 0}
    layers = fm.layers
    i = 0
    while i < len(layers) and layers[i].op in SPATIAL:
        layer: Layer = layers[i]
        kind = "conv" if layer.op == "conv" else "pool"
        counts[kind] += 1
        j = i
        while j + 1 < len(layers) and layers[j + 1].op == "act":
            j += 1
        conv = layer.op == "conv"
        out.append(Stage(f"{kind}{counts[kind]}", layer.op, i, j, tuple(layer.in_shape), tuple(layers[j].out_shape),
                         layer.k, 1 if conv else 2, layer.pad if conv else 0))
        i = j + 1
    if not out:
        raise LenetlabError("this model has no conv/pool layers to fuse")
    return out


def select(fm: FlatModel, layers: str | list[str]) -> list[Stage]:
    """The consecutive stages named in ``layers`` ("conv1,pool1,..." or a list), validated."""
    names = [n.strip() for n in (layers.split(",") if isinstance(layers, str) else layers)]
    all_stages = stages(fm)
    by_name = {s.name: k for k, s in enumerate(all_stages)}
    valid = ", ".join(s.name for s in all_stages)
    if not names or any(not n for n in names):
        raise LenetlabError(f"--layers needs a comma-separated list of layer names from: {valid}")
    for n in names:
        if n not in by_name:
            hint = " (activations are applied inside the conv/pool layer they follow)" if n.startswith("act") else ""
            raise LenetlabError(f"unknown layer {n!r}{hint}; this model's conv/pool layers are: {valid}")
    if len(set(names)) != len(names):
        raise LenetlabError(f"layer named twice in {','.join(names)}")
    idx = [by_name[n] for n in names]
    for a, b in zip(idx, idx[1:]):
        if b != a + 1:
            between = all_stages[a + 1].name if b > a else None
            why = f"{between} is missing after {all_stages[a].name}" if between else "they are out of network order"
            raise LenetlabError(f"fused layers must be consecutive, in network order: got {','.join(names)} ({why})")
    return all_stages[idx[0]: idx[-1] + 1]
