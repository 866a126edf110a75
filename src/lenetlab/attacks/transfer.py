"""Black-box transfer attacks and the hybrid attack (Lin & Sengupta 2025, docs/papers/snn-attacks.md).

- ``bb-fgsm`` / ``bb-pgd``: craft FGSM / PGD on a *substitute* model (for the
  paper, a BP-trained model of the same architecture, other seed) and hand
  the examples to the target unchanged - no target gradient, no queries.
- ``hybrid`` *(reconstructed - the paper's exact recipe is not public to us)*:
  start from the transferred example (PGD on the BP substitute), then take
  PGD steps on the target along ``sign(g_t/|g_t|_1 + lam * g_s/|g_s|_1)``,
  the target's own gradient (autograd or its rule's pathway) plus the
  substitute's, each normalised per image so neither scale dominates. Like
  PGD it keeps, per image, the candidate (clean, transferred, each iterate)
  with the highest target loss. When the target's own gradient is masked
  (local rules) the substitute's direction still makes progress; when it is
  informative it adds to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lenetlab.attacks.base import Attack
from lenetlab.attacks.gradient import FGSM, PGD, PGDSteps, pgd, pgd_options
from lenetlab.errors import LenetlabError
from lenetlab.registry import register
from lenetlab.validate import MAX_STEPS


@register("attack", "bb-fgsm")
class TransferFGSM(FGSM):
    """Black-box FGSM: crafted on the substitute, transferred to the target."""

    name = "bb-fgsm"
    description = "black-box FGSM: crafted on the substitute, transferred to the target"
    needs_substitute = True
    white_box = False       # Attack.source is the substitute


@register("attack", "bb-pgd")
class TransferPGD(PGD):
    """Black-box PGD: crafted on the substitute, transferred to the target."""

    name = "bb-pgd"
    description = "black-box PGD: crafted on the substitute, transferred to the target"
    needs_substitute = True
    white_box = False


def _unit(g: torch.Tensor) -> torch.Tensor:
    return g / g.abs().flatten(1).mean(1).clamp_min(1e-30).view(-1, *([1] * (g.ndim - 1)))


@dataclass(frozen=True)
class HybridOptions(PGDSteps):
    lam: float = field(default=1.0, metadata={"help": "hybrid: weight of the substitute gradient"})
    transfer_steps: int = field(default=10, metadata={"help": "hybrid: PGD steps on the substitute for the start"})


@register("attack", "hybrid")
class Hybrid(Attack):
    """Transfer from the BP substitute, then PGD along target + lam * substitute gradients."""

    name = "hybrid"
    description = "transfer from the BP substitute, then PGD along target + lam * substitute gradients"
    needs_substitute = True
    Options = HybridOptions

    def validate(self, options):
        lam, transfer_steps = options.pop("lam"), options.pop("transfer_steps")
        if not (lam >= 0 and math.isfinite(lam)):
            raise LenetlabError(f"hybrid lam must be a finite number >= 0, got {lam}")
        o = pgd_options(self.eps, **options)
        if not isinstance(transfer_steps, int) or not 1 <= transfer_steps <= MAX_STEPS:
            raise LenetlabError(f"hybrid transfer_steps must be a positive integer <= {MAX_STEPS}, "
                                f"got {transfer_steps}")
        return {**o, "lam": float(lam), "transfer_steps": transfer_steps}

    @classmethod
    def budget_options(cls, budget: int) -> dict[str, int]:
        """``transfer_steps + 2 * steps = budget`` with about a third of it on the target (each target step
        costs two evaluations); needs a budget of at least 3."""
        if not isinstance(budget, int) or budget < 3:
            raise LenetlabError(f"the hybrid attack needs a gradient budget of at least 3, got {budget!r}")
        steps = budget // 3
        return {"steps": steps, "transfer_steps": budget - 2 * steps}

    def gradient_calls(self) -> int:
        # each target step also takes the substitute's gradient at the same point
        return self.options["transfer_steps"] + 2 * self.options["steps"]

    def forward(self, x01, y, gen):
        o = self.options
        x0 = pgd(self.substitute, x01, y, self.eps, o["transfer_steps"], 2.5 * self.eps / o["transfer_steps"],
                 o["random_start"], gen)

        def direction(x: torch.Tensor, g_target: torch.Tensor) -> torch.Tensor:
            _, g_sub = self.substitute.loss_grad(x, y)
            return _unit(g_target) + o["lam"] * _unit(g_sub)

        # pgd scores its start (the transferred example) as a candidate like every iterate
        return pgd(self.target, x01, y, self.eps, o["steps"], o["step_size"], False, gen, start=x0,
                   direction=direction, keep_best=o["keep_best"])
