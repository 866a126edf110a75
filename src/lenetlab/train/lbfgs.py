"""Full-batch L-BFGS as a trainer plugin (``train.lbfgs.enabled``), for small convex models.

``pca_logreg``'s logistic regression (docs/papers/cascade.md) is a convex
problem: full-batch L-BFGS from zeros solves it deterministically in a few
hundred iterations, where mini-batch Adam would only approach it. The plugin
replaces ``fit``'s step: every step minimises ``loss + l2/2 sum ||W||^2``
(``train.loss``, the weight matrices of the trainable parameters) over the
*whole* training set in its stored order, whatever the batch, so one step
(``train.epochs = 1``, ``train.batch_size`` >= the training set) is the fit.
The trainable parameters are zeroed once, at setup (a fresh run only).

Example::

    lenetlab train --model pca_logreg --set train.lbfgs.enabled=true --set train.epochs=1 \\
        --set train.batch_size=60000 --set train.label_smoothing=0 --out runs/pca
"""

from __future__ import annotations

from typing import Any

import torch

from lenetlab.config import TrainConfig
from lenetlab.registry import register
from lenetlab.train.plugins import TrainContext, TrainerPlugin


@register("trainer_plugin", "lbfgs")
class LBFGSPlugin(TrainerPlugin):
    """Each training step is a full-batch L-BFGS fit of the trainable parameters."""

    order = 30

    @classmethod
    def active(cls, tc: TrainConfig) -> bool:
        return tc.lbfgs.enabled

    def setup(self, ctx: TrainContext) -> None:
        self.info: dict[str, Any] = {}
        with torch.no_grad():   # from zeros: the convex fit is then independent of any seed
            for p in ctx.model.parameters():
                if p.requires_grad:
                    p.zero_()

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float, step: int, ctx: TrainContext
             ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = ctx.tc.lbfgs
        x, y = ctx.splits.train_x, ctx.splits.train_y
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        weights = [p for p in params if p.dim() > 1]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=cfg.max_iter, history_size=20, tolerance_grad=1e-6,
                                tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = ctx.loss_fn(ctx.model(x), y) + 0.5 * cfg.l2 * sum(w.square().sum() for w in weights)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            logits = ctx.model(xb)
            loss = ctx.loss_fn(ctx.model(x), y)
        self.info = {"train_loss": float(loss), "lbfgs_iterations": int(opt.state[params[0]].get("n_iter", 0)),
                     "l2": cfg.l2}
        return logits, ctx.loss_fn(logits, yb)

    def finish(self, ctx: TrainContext, out_dir: Any, summary: dict[str, Any]) -> None:
        summary["lbfgs"] = self.info
