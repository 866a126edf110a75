"""Compressors and the compressed LeNet-5 they produce (``lenet5_tt``, ``lenet5_adtn``).

One base class, one method: a :class:`Compressor` turns one dense layer
(``nn.Linear`` / ``nn.Conv2d``) into its tensor-network replacement
(:meth:`Compressor.replace`), either with the right shapes only (rebuilding a
saved model, or training from scratch) or initialised from the layer's
trained weights (TT-SVD; the ADTN least-squares fit). Registered under kind
``"compressor"`` (``lenetlab list compressors``).

:class:`LeNet5TN` is a LeNet-5 with some layers replaced. It is a registered
model, so a compressed run directory is an ordinary run directory:
``lenetlab eval`` / :func:`lenetlab.rundir.load_model` rebuild it from the
options in config.json. :meth:`LeNet5TN.materialize` returns the plain
``LeNet5`` with the dense weights the networks represent (what export ships).

Layer names are the attribute names (conv1, conv2, fc1, fc2, fc3) or the
1998 paper's (c1, c3, c5 = the 400 -> 120 layer, f6 = 120 -> 84, f7/out).

Example::

    from lenetlab.compress import compress_model
    small = compress_model(trained_lenet5, "tt", ["c5", "f6"], rank=8)
    small.compression()          # {'layer_params': ..., 'layer_ratio': ...}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models.base import register_model
from lenetlab.models.lenet5 import LeNet5, LeNet5Config
from lenetlab.registry import get, names, register

LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")
ALIASES = {"c1": "conv1", "c3": "conv2", "c5": "fc1", "f6": "fc2", "f7": "fc3", "out": "fc3"}
PAPER_NAME = {"conv1": "c1", "conv2": "c3", "fc1": "c5", "fc2": "f6", "fc3": "f7"}


def parse_layers(spec: str | list[str]) -> list[str]:
    """``"c5,f6"`` -> ``["fc1", "fc2"]`` (LeNet-5 order, no duplicates); unknown names are an error."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise LenetlabError("no layers to compress (give e.g. --layers c5,f6)")
    out = []
    for s in items:
        name = ALIASES.get(s.lower(), s.lower())
        if name not in LAYERS:
            raise LenetlabError(f"unknown layer {s!r}; choose from: {', '.join(LAYERS)} "
                                f"(or {', '.join(ALIASES)})")
        out.append(name)
    return [n for n in LAYERS if n in out]


def dense_count(layer: nn.Module) -> int:
    """Weight + bias count of a dense conv/linear layer."""
    return sum(p.numel() for p in layer.parameters())


@dataclass
class LeNet5TNConfig(LeNet5Config):
    """LeNet-5 options plus which layers are tensor networks and how big they are."""

    method: str = "tt"            # tt | adtn (see `lenetlab list compressors`)
    layers: str = "fc1,fc2"       # comma-separated (c5,f6 = fc1,fc2)
    rank: int = 8                 # tt: cap on every bond rank
    cores: int = 3                # tt: number of cores per layer
    tt_ranks: str = ""            # tt: exact bond ranks per layer, "fc1=1-8-6-1;fc2=..." (set by --tol)
    depth: int = 4                # adtn: brick-wall layers M
    tn_activation: str = "tanh"   # adtn: elementwise activation between layers


class Compressor:
    """Subclasses implement :meth:`replace`. Settings (fit steps, a log) are constructor arguments."""

    name = ""

    def __init__(self, fit_steps: int = 1000, log: Callable[[str], None] | None = None):
        self.fit_steps = fit_steps
        self.log = log

    def replace(self, layer: nn.Module, lname: str, cfg: LeNet5TNConfig, fit: bool) -> nn.Module:
        """The tensor-network replacement of dense ``layer``; ``fit``: initialise it from its weights."""
        raise NotImplementedError


def _parse_tt_ranks(spec: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        try:
            lname, ranks = part.split("=")
            out[parse_layers(lname)[0]] = [int(r) for r in ranks.split("-")]
        except ValueError:
            raise LenetlabError(f"bad tt_ranks entry {part!r} (want e.g. fc1=1-8-6-1)") from None
    return out


def format_tt_ranks(ranks: dict[str, list[int]]) -> str:
    return ";".join(f"{k}={'-'.join(map(str, v))}" for k, v in ranks.items())


@register("compressor", "tt")
class TTCompressor(Compressor):
    """Tensor-train / MPO layers (Novikov et al. 2015), initialised by TT-SVD, then fine-tuned."""

    name = "tt"

    def modes(self, layer: nn.Module, cfg: LeNet5TNConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        from lenetlab.compress.tt import conv_modes, linear_modes

        if cfg.cores < 2:
            raise LenetlabError(f"TT needs >= 2 cores, got cores={cfg.cores}")
        if isinstance(layer, nn.Conv2d):
            return conv_modes(layer.out_channels, layer.in_channels, layer.kernel_size[0], cfg.cores)
        return linear_modes(layer.out_features, layer.in_features, cfg.cores)

    def replace(self, layer: nn.Module, lname: str, cfg: LeNet5TNConfig, fit: bool) -> nn.Module:
        from lenetlab.compress.tt import TTConv2d, TTLinear, TTMatrix, _tt_svd_ranks, clip_ranks

        rows, cols = self.modes(layer, cfg)
        explicit = _parse_tt_ranks(cfg.tt_ranks).get(lname)
        ranks = explicit or clip_ranks(tuple(m * n for m, n in zip(rows, cols)), cfg.rank)
        if len(ranks) != len(rows) + 1:
            raise LenetlabError(f"tt_ranks for {lname} has {len(ranks)} entries, want {len(rows) + 1}")
        tt = TTMatrix(rows, cols, ranks)
        if fit:
            tt.load_cores(_tt_svd_ranks(layer.weight.detach().reshape(layer.weight.shape[0], -1), rows, cols, ranks))
        bias = layer.bias if fit else None
        if isinstance(layer, nn.Conv2d):
            return TTConv2d(tt, bias, layer.in_channels, layer.kernel_size[0], layer.padding[0])
        return TTLinear(tt, bias)


@register("compressor", "adtn")
class ADTNCompressor(Compressor):
    """Deep brick-wall tensor network (Qing et al. 2023): least-squares fit to the weight, then fine-tuned."""

    name = "adtn"

    def replace(self, layer: nn.Module, lname: str, cfg: LeNet5TNConfig, fit: bool) -> nn.Module:
        from lenetlab.compress.adtn import ADTNConv2d, ADTNLinear, ADTNWeight, fit_weight

        seed = LAYERS.index(lname)   # layers get different (but reproducible) random initial gates
        gen = ADTNWeight(tuple(layer.weight.shape), cfg.depth, cfg.tn_activation, seed=seed if fit else None)
        if fit:
            err = fit_weight(gen, layer.weight, steps=self.fit_steps)
            if self.log:
                self.log(f"  {lname}: ADTN Q={gen.q} M={gen.depth} ({gen.tn_params():,} params) fitted to the "
                         f"trained weight in {self.fit_steps} steps, relative error {err:.3f}")
        bias = layer.bias if fit else None
        if isinstance(layer, nn.Conv2d):
            return ADTNConv2d(gen, bias, layer.padding[0])
        return ADTNLinear(gen, bias)


class LeNet5TN(LeNet5):
    """LeNet-5 with the layers in ``cfg.layers`` replaced by tensor networks of ``cfg.method``."""

    def __init__(self, cfg: LeNet5TNConfig):
        super().__init__(cfg)
        self.tn_layers = parse_layers(cfg.layers)
        comp = get("compressor", cfg.method)()
        # the dense shells keep their shapes for accounting (not registered as submodules)
        self._dense_counts = {n: dense_count(getattr(self, n)) for n in self.tn_layers}
        for n in self.tn_layers:
            setattr(self, n, comp.replace(getattr(self, n), n, cfg, fit=False))

    def base_options(self) -> dict[str, Any]:
        """The plain LeNet-5 options of this model (for :meth:`materialize`)."""
        return {f.name: getattr(self.config, f.name) for f in dataclasses.fields(LeNet5Config)}

    def materialize(self) -> LeNet5:
        """The plain ``lenet5`` computing the same function, with the dense weights the networks represent."""
        from lenetlab.models import create_model

        dense = create_model("lenet5", **self.base_options())
        sd = {}
        with torch.no_grad():
            for n in LAYERS:
                mod = getattr(self, n)
                sd[f"{n}.weight"] = mod.weight.detach().clone()
                sd[f"{n}.bias"] = mod.bias.detach().clone()
        dense.load_state_dict(sd, strict=True)
        dense.train(self.training)
        return dense

    def compression(self) -> dict[str, Any]:
        """Parameter counts of the compressed layers and the whole model, before and after."""
        total = sum(p.numel() for p in self.parameters())
        layer = sum(sum(p.numel() for p in getattr(self, n).parameters()) for n in self.tn_layers)
        orig_layer = sum(self._dense_counts.values())
        orig_total = total - layer + orig_layer
        return {"method": self.config.method, "layers": self.tn_layers,
                "per_layer": {n: {"params": sum(p.numel() for p in getattr(self, n).parameters()),
                                  "dense_params": self._dense_counts[n]} for n in self.tn_layers},
                "layer_params": layer, "dense_layer_params": orig_layer,
                "layer_ratio": orig_layer / layer, "params": total, "dense_params": orig_total,
                "model_ratio": orig_total / total}


@register_model("lenet5_tt", LeNet5TNConfig, method="tt")
def lenet5_tt(cfg: LeNet5TNConfig) -> LeNet5TN:
    """LeNet-5 with tensor-train (MPO) layers (Novikov et al. 2015); default c5,f6 at rank 8."""
    return LeNet5TN(cfg)


@register_model("lenet5_adtn", LeNet5TNConfig, method="adtn")
def lenet5_adtn(cfg: LeNet5TNConfig) -> LeNet5TN:
    """LeNet-5 with deep brick-wall TN weights (ADTN, Qing et al. 2023); default c5,f6 at depth 4."""
    return LeNet5TN(cfg)


def tt_ranks_for_tol(model: LeNet5, layers: list[str], tol: float, cores: int) -> str:
    """Per-layer TT bond ranks reaching relative error ``tol`` on each layer's trained weight (TT-SVD)."""
    from lenetlab.compress.tt import matrix_to_tt

    cfg = LeNet5TNConfig(cores=cores)
    comp = TTCompressor()
    ranks = {}
    for n in layers:
        layer = getattr(model, n)
        rows, cols = comp.modes(layer, cfg)
        c = matrix_to_tt(layer.weight.detach().reshape(layer.weight.shape[0], -1), rows, cols, tol=tol)
        ranks[n] = [1, *(g.shape[-1] for g in c[:-1]), 1]
    return format_tt_ranks(ranks)


def compress_model(model: nn.Module, method: str, layers: str | list[str], rank: int = 8, cores: int = 3,
                   tol: float | None = None, depth: int = 4, tn_activation: str = "tanh", fit_steps: int = 1000,
                   log: Callable[[str], None] | None = None) -> LeNet5TN:
    """A :class:`LeNet5TN` whose ``layers`` are tensor networks initialised from ``model``'s trained weights.

    Uncompressed layers and all biases are copied. ``method`` "tt": TT-SVD at
    bond rank ``rank`` (or to relative error ``tol``) with ``cores`` cores;
    "adtn": ``depth`` brick-wall layers fitted by ``fit_steps`` Adam steps.
    """
    from lenetlab.models import create_model

    if type(model) is not LeNet5:
        raise LenetlabError(f"only the plain lenet5 model can be compressed, not "
                            f"{getattr(model, 'model_name', type(model).__name__)!r}")
    if method not in names("compressor"):
        raise LenetlabError(f"unknown compressor {method!r}; choose from: {', '.join(names('compressor'))}")
    lnames = parse_layers(layers)
    if method == "tt" and tol is not None:
        if not 0 < tol < 1:
            raise LenetlabError(f"--tol must be in (0, 1), got {tol}")
        tt_ranks = tt_ranks_for_tol(model, lnames, tol, cores)
    else:
        tt_ranks = ""
    if rank < 1 or depth < 1 or fit_steps < 0:
        raise LenetlabError("rank and depth must be >= 1 and fit steps >= 0")
    base = {f.name: getattr(model.config, f.name) for f in dataclasses.fields(LeNet5Config)}
    options = {**base, "layers": ",".join(lnames), "rank": rank, "cores": cores, "tt_ranks": tt_ranks,
               "depth": depth, "tn_activation": tn_activation}
    torch.manual_seed(0)
    small = create_model(f"lenet5_{method}", **options)
    comp = get("compressor", method)(fit_steps=fit_steps, log=log)
    for n in LAYERS:
        if n in lnames:
            setattr(small, n, comp.replace(getattr(model, n), n, small.config, fit=True))
        else:
            getattr(small, n).load_state_dict(getattr(model, n).state_dict())
    small.train(model.training)
    return small


def layer_error(small: LeNet5TN, model: LeNet5) -> dict[str, float]:
    """Relative Frobenius error of each compressed layer's weight against the dense one."""
    with torch.no_grad():
        return {n: float((getattr(small, n).weight - getattr(model, n).weight).norm()
                         / getattr(model, n).weight.norm().clamp_min(1e-30)) for n in small.tn_layers}

