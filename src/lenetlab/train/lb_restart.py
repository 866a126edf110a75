"""Lower-bound restart schedule for Adam (Berngardt 2023; docs/papers/abs.md).

After every epoch, the validation accuracy p on N images gives a lower bound of
the accuracy to expect on unseen data, LB = p - k sqrt(p (1 - p) / N). The
weights with the best LB are kept. When LB has not improved for ``patience``
epochs, the best weights are restored, the learning rate is divided by
``lr_divisor`` and Adam is re-created with fresh moments; training stops once
the learning rate falls below ``min_lr``. All constants live in the
``train.lb`` section (:class:`~lenetlab.config.LBConfig`); the schedule
``train.schedule = "lb-restart"`` turns it on.

:class:`LBRestart` is only the decision logic - it sees accuracies and returns
what to do - so it is unit-tested with scripted accuracies;
:class:`LBRestartPlugin` (trainer plugin ``lb-restart``) carries the decisions
out in ``fit``: it keeps the best weights (saved in every checkpoint) and asks
``fit`` to restore them and re-create the optimiser.

Example::

    ctl = LBRestart(k=2.0, patience=2, lr=1e-3, lr_divisor=10, min_lr=1e-6)
    ctl.after_epoch(0.98, 5000)   # -> Decision(improved=True, restart=False, stop=False, ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lenetlab.config import TrainConfig
from lenetlab.errors import LenetlabError
from lenetlab.registry import register
from lenetlab.train.plugins import EpochAction, TrainContext, TrainerPlugin


def lower_bound(p: float, n: int, k: float) -> float:
    """LB = p - k sqrt(p(1-p)/N) (normal approximation of the binomial)."""
    if n <= 0:
        raise ValueError("the LB schedule needs a validation set (data.val_size > 0)")
    return p - k * math.sqrt(max(p * (1.0 - p), 0.0) / n)


@dataclass
class Decision:
    lb: float
    improved: bool   # keep the current weights as the best
    restart: bool    # restore best weights, lower the lr, fresh optimiser
    stop: bool       # lr fell below the floor: training is over
    lr: float        # the lr to use from now on


@dataclass
class LBRestart:
    k: float
    patience: int
    lr: float
    lr_divisor: float
    min_lr: float
    best_lb: float = -math.inf
    stale: int = 0
    restarts: int = 0

    def after_epoch(self, val_accuracy: float, n_val: int) -> Decision:
        lb = lower_bound(val_accuracy, n_val, self.k)
        if lb > self.best_lb:
            self.best_lb, self.stale = lb, 0
            return Decision(lb, True, False, False, self.lr)
        self.stale += 1
        if self.stale < self.patience:
            return Decision(lb, False, False, False, self.lr)
        self.stale = 0
        self.lr /= self.lr_divisor
        self.restarts += 1
        stop = self.lr < self.min_lr
        return Decision(lb, False, not stop, stop, self.lr)

    def state(self) -> dict:
        return {"best_lb": self.best_lb, "stale": self.stale, "restarts": self.restarts, "lr": self.lr}

    def load(self, s: dict) -> None:
        self.best_lb, self.stale, self.restarts, self.lr = s["best_lb"], s["stale"], s["restarts"], s["lr"]


@register("schedule", "lb-restart")
def lb_restart_schedule(cfg: TrainConfig, total: int, per_epoch: int) -> Any:
    """Berngardt's lower-bound restarts: constant lr per phase, divided on LB plateaus (the lb-restart plugin)."""
    # the lb-restart plugin owns the phase lr (it changes on restarts); this is the first phase
    return lambda step: cfg.lr


@register("trainer_plugin", "lb-restart")
class LBRestartPlugin(TrainerPlugin):
    """Keep the best-LB weights; on a plateau restore them with a lower lr and a fresh optimiser, or stop."""

    order = 40

    @classmethod
    def active(cls, tc: TrainConfig) -> bool:
        return tc.schedule == "lb-restart"

    def setup(self, ctx: TrainContext) -> None:
        if len(ctx.splits.val_x) == 0:
            raise LenetlabError("train.schedule 'lb-restart' needs a validation set (data.val_size > 0)")
        lb = ctx.tc.lb
        self.ctl = LBRestart(lb.k, lb.patience, ctx.tc.lr, lb.lr_divisor, lb.min_lr)
        self.best: dict[str, torch.Tensor] | None = None
        ctx.schedule = lambda step: self.ctl.lr   # the phase lr, changed by restarts

    def after_epoch(self, row: dict[str, Any], ctx: TrainContext) -> EpochAction:
        d = self.ctl.after_epoch(row["val_accuracy"], len(ctx.splits.val_x))
        row["val_lower_bound"] = d.lb
        if d.improved:
            self.best = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        action = EpochAction(stop=d.stop)
        if d.restart or d.stop:
            # restore the best-LB weights; a restart also gets a fresh optimiser (new moments)
            action.restore = self.best
            row["restored_best"] = True
        if d.restart:
            action.new_optimizer = True
            row["restart"], row["next_lr"] = True, d.lr
        return action

    def epoch_note(self, row: dict[str, Any]) -> str:
        note = f"LB {100 * row['val_lower_bound']:.2f}%"
        if row.get("restart"):
            note += f"  -> restart from best, lr {row['next_lr']:.2e}"
        return note

    def end(self, ctx: TrainContext) -> bool:
        if self.best is None:
            return False
        # the LB schedule's result is its best-LB weights, whatever the last epoch did
        ctx.model.load_state_dict(self.best)
        return True

    def state_dict(self) -> dict[str, Any]:
        best = {f"best.{k}": v for k, v in (self.best or {}).items()}
        return {"controller": self.ctl.state(), **best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "controller" in state:
            self.ctl.load(state["controller"])
        self.best = {k[len("best."):]: v.clone() for k, v in state.items() if k.startswith("best.")} or None
