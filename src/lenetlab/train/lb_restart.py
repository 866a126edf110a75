"""Lower-bound restart schedule for Adam (Berngardt 2023; PAPERS.md section 8).

After every epoch, the validation accuracy p on N images gives a lower bound of
the accuracy to expect on unseen data, LB = p - k sqrt(p (1 - p) / N). The
weights with the best LB are kept. When LB has not improved for ``patience``
epochs, the best weights are restored, the learning rate is divided by
``lr_divisor`` and Adam is re-created with fresh moments; training stops once
the learning rate falls below ``min_lr``. All constants live in
:class:`~lenetlab.config.TrainConfig` (``lb_*``).

:class:`LBRestart` is only the decision logic - it sees accuracies and returns
what to do - so it is unit-tested with scripted accuracies; the trainer
carries the decisions out.

Example::

    ctl = LBRestart(k=2.0, patience=2, lr=1e-3, lr_divisor=10, min_lr=1e-6)
    ctl.after_epoch(0.98, 5000)   # -> Decision(improved=True, restart=False, stop=False, ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
