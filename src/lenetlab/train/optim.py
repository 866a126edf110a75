"""Optimiser registry: ``f(params, cfg) -> optimiser``.

``adam`` and ``adamw`` are :class:`FusedAdam`, a thin wrapper over ATen's
fused CPU kernels (``torch._fused_adam_`` / ``_fused_adamw_``, the same ones
``torch.optim.Adam(fused=True)`` calls). Why not ``torch.optim.Adam`` itself:
constructing any ``torch.optim.Optimizer`` imports ``torch._dynamo``, which
costs about 1.2 s of a 5 s training run on this class of machine. The
wrapper keeps the ``param_groups`` / ``state_dict`` interface, and
``tests/test_optim.py`` checks it step for step against ``torch.optim.Adam``.
Off the CPU (``--device cuda|mps``) ``adam`` and ``adamw`` are torch's own
``torch.optim.Adam`` / ``AdamW``, which pick their fastest kernels there.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from lenetlab.config import TrainConfig
from lenetlab.registry import register


class FusedAdam:
    """Adam / AdamW on ATen's fused kernel, with torch.optim's state_dict layout."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False):
        plist = [p for p in params]
        self.param_groups: list[dict[str, Any]] = [
            {"params": plist, "lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
             "decoupled": decoupled}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            for p in ps:
                if p not in self.state:
                    self.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                     "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            st = [self.state[p] for p in ps]
            steps = [s["step"] for s in st]
            torch._foreach_add_(steps, 1)
            fn = torch._fused_adamw_ if g["decoupled"] else torch._fused_adam_
            fn(ps, [p.grad for p in ps], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [], steps,
               lr=float(g["lr"]), beta1=g["betas"][0], beta2=g["betas"][1], weight_decay=g["weight_decay"],
               eps=g["eps"], amsgrad=False, maximize=False)

    def state_dict(self) -> dict[str, Any]:
        index: dict[torch.Tensor, int] = {}
        groups = []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index.setdefault(p, len(index))
                ids.append(index[p])
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[p]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        flat = [p for g in self.param_groups for p in g["params"]]
        if len(sd["param_groups"]) != len(self.param_groups):
            raise ValueError("optimiser state has a different number of parameter groups")
        for g, saved in zip(self.param_groups, sd["param_groups"]):
            for k, v in saved.items():
                if k != "params":
                    g[k] = tuple(v) if k == "betas" else v
        self.state = {}
        for i, s in sd["state"].items():
            p = flat[int(i)]
            # empty_like keeps the parameter's memory format (channels-last conv weights):
            # the fused kernel walks params and moments as flat arrays, so layouts must match
            self.state[p] = {k: v.to(dtype=torch.float32).clone() if k == "step"
                             else torch.empty_like(p).copy_(v) for k, v in s.items()}


def _on_cpu(params: list[torch.Tensor]) -> bool:
    return all(p.device.type == "cpu" for p in params)


@register("optimizer", "adam")
def adam(params, cfg: TrainConfig) -> FusedAdam | torch.optim.Adam:
    """Adam (Kingma & Ba 2015), L2 weight decay; fused CPU kernel (torch.optim.Adam off the CPU)."""
    params = list(params)
    if not _on_cpu(params):
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return FusedAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register("optimizer", "adamw")
def adamw(params, cfg: TrainConfig) -> FusedAdam | torch.optim.AdamW:
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019); fused CPU kernel (torch.optim.AdamW
    off the CPU)."""
    params = list(params)
    if not _on_cpu(params):
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return FusedAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled=True)


@register("optimizer", "sgd")
def sgd(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with (optionally Nesterov) momentum (torch.optim.SGD)."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, foreach=True)
