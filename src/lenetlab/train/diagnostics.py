"""Gradient diagnostics: per-layer gradient norms, averaged over each epoch.

Berngardt 2023 (docs/papers/abs.md) argues that |x| keeps gradients from
vanishing or exploding; to check that on any model, the trainer logs, for
every layer (every module that owns parameters), the mean over the epoch's
steps of the L2 norm of that layer's gradient, into ``metrics.jsonl`` as
``grad_norms``. One fused ``_foreach_norm`` per step keeps the cost small.

Example::

    gn = GradNorms(model)
    loss.backward(); gn.accumulate()
    gn.epoch_means()       # {"conv1": 0.41, "conv2": 0.22, ...}
"""

from __future__ import annotations

import torch
from torch import nn


def layer_of(param_name: str) -> str:
    """'features.0.weight' -> 'features.0' (a parameter's owning module)."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


class GradNorms:
    def __init__(self, model: nn.Module):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.layers: list[str] = []
        index = []
        for n, _ in named:
            layer = layer_of(n)
            if layer not in self.layers:
                self.layers.append(layer)
            index.append(self.layers.index(layer))
        self.params = [p for _, p in named]
        # summed where the gradients are (MPS has no float64)
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.index = torch.tensor(index, dtype=torch.long)
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros(len(self.layers), dtype=self.dtype, device=self.device)
        self.steps = 0

    def step_norms(self) -> torch.Tensor:
        """This step's per-layer gradient norms (parameters without a gradient count as 0)."""
        have = [(i, p.grad) for i, p in zip(self.index.tolist(), self.params) if p.grad is not None]
        sq = torch.zeros(len(self.layers), dtype=self.dtype, device=self.device)
        if have:
            norms = torch.stack(torch._foreach_norm([g for _, g in have])).to(self.dtype)
            sq.index_add_(0, torch.tensor([i for i, _ in have], device=self.device), norms * norms)
        return sq.sqrt()

    @torch.no_grad()
    def accumulate(self) -> None:
        self.total += self.step_norms()
        self.steps += 1

    def epoch_means(self) -> dict[str, float]:
        means = self.total / max(self.steps, 1)
        return {name: float(v) for name, v in zip(self.layers, means)}
