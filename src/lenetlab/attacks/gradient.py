"""White-box attacks: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018), L-inf or L2, untargeted
or targeted.

PGD: random start uniform in the eps-ball, ``steps`` signed-gradient steps of
``step_size`` (default 2.5 eps / steps, Madry's choice), each projected back;
it returns, per image, the iterate with the highest loss on the target
(the clean image included), so its loss never decreases (``keep_best=False``:
the last iterate, as ART and most papers do).

``norm="2"``: the step follows the L2-normalised gradient instead of its sign, the random start is a
uniform point of the L2 ball, and each iterate is projected onto the L2 ball (eps is then an L2 radius).
``targeted=True``: the attack descends the cross-entropy of the target class (``target_class`` ``next``
or ``random``, see :func:`lenetlab.attacks.base.target_labels`), and PGD keeps each image's iterate with
the lowest target loss. The defaults (``inf``, untargeted) compute exactly what they did before these
options existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lenetlab.attacks.base import Attack, Target, norm_field, project, project_l2, target_class_field, targeted_field
from lenetlab.errors import LenetlabError
from lenetlab.registry import register
from lenetlab.validate import MAX_STEPS


def l2_unit(g: torch.Tensor) -> torch.Tensor:
    """Each image's gradient scaled to unit L2 norm (a zero gradient stays zero)."""
    n = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.ndim - 1)))
    return g / n.clamp_min(1e-12)


def _direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    return g.sign() if norm == "inf" else l2_unit(g)


def _l2_ball_start(x01: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    """A uniform point of the L2 ball of radius eps around each image (CPU draws), clipped to [0, 1]."""
    d = torch.randn(x01.shape, generator=gen)
    dims = x01[0].numel()
    r = eps * torch.rand(len(x01), generator=gen) ** (1.0 / dims)
    d = l2_unit(d) * r.view(-1, *([1] * (x01.ndim - 1)))
    return project_l2(x01 + d.to(x01.device), x01, eps)


@dataclass(frozen=True)
class FGSMOptions:
    norm: str = norm_field()
    targeted: bool = targeted_field()
    target_class: str = target_class_field()


@register("attack", "fgsm")
class FGSM(Attack):
    """Fast gradient sign method: one signed-gradient step of size eps."""

    name = "fgsm"
    description = "fast gradient sign method: one signed-gradient step of size eps (L2: along the gradient)"
    Options = FGSMOptions

    def gradient_calls(self) -> int:
        return 1

    def forward(self, x01, y, gen):
        labels, ascend = self.aims(x01, y, gen)
        _, g = self.source.loss_grad(x01, labels)
        d = _direction(g, self.norm)
        return x01 + self.eps * d if ascend else x01 - self.eps * d


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
        direction=None, keep_best: bool = True, norm: str = "inf", ascend: bool = True) -> torch.Tensor:
    """Projected signed-gradient ascent on ``target``'s loss, best iterate per image.

    ``start``: the first iterate (default x01, plus uniform noise if ``random_start``);
    ``direction(x, g_target) -> tensor``: the step direction before the sign (default the gradient);
    ``keep_best=False``: return the last iterate (the textbook / ART behaviour);
    ``norm="2"``: L2-normalised steps, L2 ball; ``ascend=False``: descend the loss of labels ``y`` (a
    targeted attack passes its target classes), keeping the lowest-loss iterate.
    """
    proj = project if norm == "inf" else project_l2
    best = x01.clone()
    best_loss = target.losses(x01, y)
    x = x01.clone() if start is None else start.clone()
    if start is None and random_start:
        if norm == "inf":
            x = project(x + (torch.rand(x.shape, generator=gen).to(x.device) * 2 - 1) * eps, x01, eps)   # CPU draw
        else:
            x = _l2_ball_start(x01, eps, gen)
    for _ in range(steps):
        loss, g = target.loss_grad(x, y)
        better = loss > best_loss if ascend else loss < best_loss
        best[better], best_loss[better] = x[better], loss[better]
        d = g if direction is None else direction(x, g)
        step = step_size * (d.sign() if norm == "inf" else l2_unit(d))
        x = proj(x + step if ascend else x - step, x01, eps)
    if not keep_best:
        return x
    loss = target.losses(x, y)
    better = loss > best_loss if ascend else loss < best_loss
    best[better] = x[better]
    return best


@dataclass(frozen=True)
class PGDSteps:
    """The iteration options PGD shares with the hybrid attack."""

    steps: int = field(default=10, metadata={"help": "PGD / hybrid steps"})
    step_size: float | None = field(default=None, metadata={"help": "PGD step size (default 2.5 eps / steps)"})
    random_start: bool = field(default=True, metadata={"help": "start uniformly in the eps-ball"})
    keep_best: bool = field(default=True, metadata={"help": "keep each image's best iterate (else the last)"})


@dataclass(frozen=True)
class PGDOptions(PGDSteps):
    norm: str = norm_field()
    targeted: bool = targeted_field()
    target_class: str = target_class_field()


@register("attack", "pgd")
class PGD(Attack):
    """Projected gradient descent: random start, `steps` signed steps, best iterate kept."""

    name = "pgd"
    description = "projected gradient descent: random start, `steps` signed steps, best iterate kept"
    Options = PGDOptions

    def validate(self, options):
        o = dict(options)
        aim = {k: o.pop(k) for k in ("norm", "targeted", "target_class")}
        return {**pgd_options(self.eps, **o), **aim}

    def gradient_calls(self) -> int:
        return self.options["steps"]

    def forward(self, x01, y, gen):
        o = self.options
        labels, ascend = self.aims(x01, y, gen)
        return pgd(self.source, x01, labels, self.eps, o["steps"], o["step_size"], o["random_start"], gen,
                   keep_best=o["keep_best"], norm=o["norm"], ascend=ascend)
