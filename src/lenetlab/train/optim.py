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

``muon`` is :class:`Muon` (Jordan et al. 2024): the hidden weight matrices
(convolution kernels flattened to out x in*k*k) step along their
orthogonalised momentum; biases and the output layer use Adam. On LeNet-5 it
reaches 99% MNIST test accuracy in one epoch (the ``sprint`` preset).
``tests/test_optim.py`` checks it against ``torch.optim.Muon`` (not used here
for the same dynamo-import reason; it also takes 2-D parameters only).
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


def orthogonalize(g: torch.Tensor, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Newton-Schulz approximation of the orthogonal factor U V^T of a matrix G = U S V^T: ``steps`` rounds
    of Jordan's quintic X <- a X + (b A + c A A) X, A = X X^T, from X = G / ||G||_F, worked on the short
    side. It does not converge to U V^T exactly (singular values end up near, not at, 1), which is what
    Muon wants for speed. Computed in ``dtype`` (bfloat16 is what torch.optim.Muon uses)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.T
    x = x.div(x.norm().clamp(min=1e-7))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon:
    """Muon for the hidden weight matrices, Adam for the rest (biases, the output layer).

    Which parameters are "hidden matrices": every parameter with two or more dimensions except the last
    one in parameter order, the output layer on every model here. Each step, per matrix W with gradient G:
    B <- B + (1 - momentum) (G - B); U = G + momentum (B - G) (Nesterov); W <- W - lr_m sqrt(max(1, rows/cols))
    orthogonalize(U), with lr_m = the schedule's current lr times ``muon_lr / lr`` (so the schedule shapes both
    rates); decoupled weight decay W <- W (1 - lr_m wd) first. The Adam part is :class:`FusedAdam` on the CPU.
    The orthogonalisation runs in float32; ``ns_dtype=torch.bfloat16`` computes it as torch.optim.Muon does
    (then the steps of 2-D weights equal torch's bit for bit, tests/test_sprint.py), a little faster on
    LeNet-5's fc1 but, over seeds 0-9 of the sprint preset, 99.06% mean test accuracy against 99.15% in float32.
    ``state_dict`` has torch.optim's layout (parameters numbered across the two groups). ``pool``: an
    executor whose threads run one torch thread each (``train.shards`` lends its own) to share the
    orthogonalisations with."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, muon_lr: float = 0.02, momentum: float = 0.95,
                 ns_steps: int = 3, weight_decay: float = 0.0, ns_dtype: torch.dtype = torch.float32):
        plist = list(params)
        mats = [p for p in plist if p.ndim >= 2][:-1]
        hidden = {id(p) for p in mats}
        rest = [p for p in plist if id(p) not in hidden]
        self.adam = _adam(rest, lr, weight_decay)
        self.ns_dtype = ns_dtype
        self.pool: Any = None    # an executor to share the orthogonalisations with (ShardedStep lends its own)
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self.param_groups: list[dict[str, Any]] = [
            {"params": mats, "lr": lr, "muon_scale": muon_lr / lr, "momentum": momentum, "ns_steps": ns_steps,
             "weight_decay": weight_decay}, *self.adam.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        self.adam.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param_groups[0]
        lr, mom, wd = float(g["lr"]) * g["muon_scale"], g["momentum"], g["weight_decay"]
        todo = []
        for p in g["params"]:
            if p.grad is None:
                continue
            if p not in self.state:
                self.state[p] = {"momentum_buffer": torch.zeros_like(p.grad, memory_format=torch.preserve_format)}
            buf = self.state[p]["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mom)
            todo.append((p, p.grad.lerp(buf, mom).reshape(len(p), -1)))
        done = self._orthogonalize_all([u for _, u in todo], g["ns_steps"])
        for (p, _), o in zip(todo, done):
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(o.view(p.shape), alpha=-lr * max(1.0, o.shape[0] / o.shape[1]) ** 0.5)
        self.adam.step()

    def _orthogonalize_all(self, mats: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
        """Each matrix's orthogonalisation; with a ``pool`` (a trainer's shard threads, one torch thread
        each) the costliest runs there while this thread does the others. Which thread computes a matrix
        does not change its result."""
        if self.pool is None or len(mats) < 2:
            return [orthogonalize(m, steps, self.ns_dtype) for m in mats]
        cost = [min(m.shape) ** 2 * max(m.shape) for m in mats]
        big = cost.index(max(cost))
        future = self.pool.submit(orthogonalize, mats[big], steps, self.ns_dtype)
        out = [None if i == big else orthogonalize(m, steps, self.ns_dtype) for i, m in enumerate(mats)]
        out[big] = future.result()
        return out

    def state_dict(self) -> dict[str, Any]:
        mats = self.param_groups[0]["params"]
        inner = self.adam.state_dict()
        n = len(mats)
        state = {i: {"momentum_buffer": self.state[p]["momentum_buffer"]} for i, p in enumerate(mats)
                 if p in self.state}
        state.update({int(i) + n: s for i, s in inner["state"].items()})
        first = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        groups = [{**first, "params": list(range(n))}]
        groups += [{**ig, "params": [int(i) + n for i in ig["params"]]} for ig in inner["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        mats = self.param_groups[0]["params"]
        n = len(mats)
        if len(sd["param_groups"]) != len(self.param_groups) or len(sd["param_groups"][0]["params"]) != n:
            raise ValueError("optimiser state does not match Muon's parameter groups")
        for k, v in sd["param_groups"][0].items():
            if k != "params":
                self.param_groups[0][k] = v
        self.state = {}
        for i, s in sd["state"].items():
            if int(i) < n:
                p = mats[int(i)]
                self.state[p] = {"momentum_buffer": torch.empty_like(p).copy_(s["momentum_buffer"])}
        self.adam.load_state_dict({
            "state": {int(i) - n: s for i, s in sd["state"].items() if int(i) >= n},
            "param_groups": [{**g, "params": [int(i) - n for i in g["params"]]} for g in sd["param_groups"][1:]]})


def _adam(params: list[torch.Tensor], lr: float, weight_decay: float) -> FusedAdam | torch.optim.Adam:
    if not _on_cpu(params):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return FusedAdam(params, lr=lr, weight_decay=weight_decay)


def _on_cpu(params: list[torch.Tensor]) -> bool:
    return all(p.device.type == "cpu" for p in params)


@register("optimizer", "adam")
def adam(params, cfg: TrainConfig) -> FusedAdam | torch.optim.Adam:
    """Adam (Kingma & Ba 2015), L2 weight decay; fused CPU kernel (torch.optim.Adam off the CPU)."""
    return _adam(list(params), cfg.lr, cfg.weight_decay)


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


@register("optimizer", "muon")
def muon(params, cfg: TrainConfig) -> Muon:
    """Muon (Jordan et al. 2024): orthogonalised Nesterov momentum for the hidden weight matrices (peak rate
    train.muon_lr), Adam for biases and the output layer (peak rate train.lr)."""
    return Muon(params, lr=cfg.lr, muon_lr=cfg.muon_lr, momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps,
                weight_decay=cfg.weight_decay)
