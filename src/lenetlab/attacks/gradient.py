"""White-box L-inf attacks: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

PGD: random start uniform in the eps-ball, ``steps`` signed-gradient steps of
``step_size`` (default 2.5 eps / steps, Madry's choice), each projected back;
it returns, per image, the iterate with the highest loss on the target
(the clean image included), so its loss never decreases (``keep_best=False``:
the last iterate, as ART and most papers do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lenetlab.attacks.base import Attack, Target, project
from lenetlab.errors import LenetlabError
from lenetlab.registry import register
from lenetlab.validate import MAX_STEPS


@register("attack", "fgsm")
class FGSM(Attack):
    """Fast gradient sign method: one signed-gradient step of size eps."""

    name = "fgsm"
    description = "fast gradient sign method: one signed-gradient step of size eps"

    def gradient_calls(self) -> int:
        return 1

    def forward(self, x01, y, gen):
        _, g = self.source.loss_grad(x01, y)
        return x01 + self.eps * g.sign()


def pgd_options(eps: float, steps: int = 10, step_size: float | None = None, random_start: bool = True,
                keep_best: bool = True) -> dict[str, Any]:
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise LenetlabError(f"PGD steps must be a positive integer <= {MAX_STEPS}, got {steps}")
    if step_size is not None and not (0 < step_size and math.isfinite(step_size)):
        raise LenetlabError(f"PGD step size must be a finite number > 0, got {step_size}")
    return {"steps": steps, "step_size": 2.5 * eps / steps if step_size is None else float(step_size),
            "random_start": bool(random_start), "keep_best": bool(keep_best)}


def pgd(target: Target, x01: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
        random_start: bool, gen: torch.Generator, start: torch.Tensor | None = None,
        direction=None, keep_best: bool = True) -> torch.Tensor:
    """Projected signed-gradient ascent on ``target``'s loss, best iterate per image.

    ``start``: the first iterate (default x01, plus uniform noise if ``random_start``);
    ``direction(x, g_target) -> tensor``: the step direction before the sign (default the gradient);
    ``keep_best=False``: return the last iterate (the textbook / ART behaviour).
    """
    best = x01.clone()
    best_loss = target.losses(x01, y)
    x = x01.clone() if start is None else start.clone()
    if start is None and random_start:
        x = project(x + (torch.rand(x.shape, generator=gen).to(x.device) * 2 - 1) * eps, x01, eps)   # CPU draw
    for _ in range(steps):
        loss, g = target.loss_grad(x, y)
        better = loss > best_loss
        best[better], best_loss[better] = x[better], loss[better]
        d = g if direction is None else direction(x, g)
        x = project(x + step_size * d.sign(), x01, eps)
    if not keep_best:
        return x
    loss = target.losses(x, y)
    better = loss > best_loss
    best[better] = x[better]
    return best


@dataclass(frozen=True)
class PGDOptions:
    steps: int = field(default=10, metadata={"help": "PGD / hybrid steps"})
    step_size: float | None = field(default=None, metadata={"help": "PGD step size (default 2.5 eps / steps)"})
    random_start: bool = field(default=True, metadata={"help": "start uniformly in the eps-ball"})
    keep_best: bool = field(default=True, metadata={"help": "keep each image's best iterate (else the last)"})


@register("attack", "pgd")
class PGD(Attack):
    """Projected gradient descent: random start, `steps` signed steps, best iterate kept."""

    name = "pgd"
    description = "projected gradient descent: random start, `steps` signed steps, best iterate kept"
    Options = PGDOptions

    def validate(self, options):
        return pgd_options(self.eps, **options)

    def gradient_calls(self) -> int:
        return self.options["steps"]

    def forward(self, x01, y, gen):
        o = self.options
        return pgd(self.source, x01, y, self.eps, o["steps"], o["step_size"], o["random_start"], gen,
                   keep_best=o["keep_best"])
