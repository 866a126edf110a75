"""Trainer plugins: how a capability changes training without ``fit`` knowing about it.

``fit`` runs one generic loop (batches, learning rate, forward, loss,
backward, optimiser step, evaluation, checkpoint). A capability that needs
more - fake-quant and noise hooks, a different backward pathway, a step
without backprop, restarts driven by the validation set - is a
:class:`TrainerPlugin` registered as ``@register("trainer_plugin", name)``.
Every registered plugin is asked :meth:`TrainerPlugin.active` with the run's
``TrainConfig``; the active ones are run in ``order``.

The hooks, in the order ``fit`` calls them:

- ``setup(ctx)`` - install hooks on ``ctx.model``, check the config; may
  return extra trainable parameters (they join ``ctx.params``). Called before
  the optimiser exists; ``ctx.schedule`` may be replaced here.
- ``before_step(step, ctx)`` - per batch, before the step.
- ``step(xb, yb, lr, step, ctx) -> (logits, loss)`` - replaces the default
  backprop step. At most one active plugin may override it.
- ``after_step(step, ctx)`` - after the step (``step`` steps done).
- ``after_epoch(row, ctx) -> EpochAction | None`` - after evaluation; may
  ask ``fit`` to restore weights, re-create the optimiser or stop. The row is
  written to metrics.jsonl, so a plugin may add keys to it. After a restore,
  ``fit`` calls every plugin's ``weights_changed(ctx)``.
- ``state_dict()`` / ``load_state_dict(state)`` - everything the plugin needs
  to continue bit for bit after a kill, saved in every checkpoint.
- ``end(ctx) -> bool`` - training is over; True if the plugin changed the
  weights (``fit`` then re-evaluates the test set).
- ``teardown(ctx)`` - remove hooks, so the saved model is the plain model.
- ``finish(ctx, out_dir, summary)`` - add to the summary / write extra files.

The optimiser belongs to ``ctx``: :meth:`TrainContext.new_optimizer` is the
only place it is (re-)created, and a plugin always reads ``ctx.opt`` when it
needs it, so after a restart every plugin steps the new one.

Example::

    from lenetlab.registry import register
    from lenetlab.train.plugins import TrainerPlugin

    @register("trainer_plugin", "print-lr")
    class PrintLR(TrainerPlugin):
        order = 90
        @classmethod
        def active(cls, tc):
            return tc.epochs > 100
        def before_step(self, step, ctx):
            if step % 1000 == 0:
                print(step, ctx.schedule(step))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lenetlab.config import RunConfig, TrainConfig
from lenetlab.errors import LenetlabError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EpochAction:
    """What a plugin asks of ``fit`` after an epoch (applied in this order)."""

    restore: dict[str, torch.Tensor] | None = None   # load these weights into the model
    new_optimizer: bool = False                      # re-create the optimiser: fresh state
    stop: bool = False                               # end training after this epoch


class TrainContext:
    """What plugins see: the run's objects, and the one owner of the optimiser."""

    def __init__(self, cfg: RunConfig, model: nn.Module, loss_fn: LossFn, splits: Any, total_steps: int,
                 steps_per_epoch: int, schedule: Callable[[int], float],
                 optimizer_factory: Callable[[list[torch.Tensor], TrainConfig], Any]):
        self.cfg, self.tc = cfg, cfg.train
        self.model, self.loss_fn, self.splits = model, loss_fn, splits
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.schedule = schedule
        self.params: list[torch.Tensor] = []
        self.opt: Any = None
        self.plugins: list[TrainerPlugin] = []   # every plugin of the run, in order (set by fit)
        self._optimizer_factory = optimizer_factory

    def new_optimizer(self) -> Any:
        """(Re-)create the optimiser over ``params`` with fresh state; the only place this happens."""
        self.opt = self._optimizer_factory(self.params, self.tc)
        return self.opt


class TrainerPlugin:
    """Base class: every hook is a no-op; subclasses override the ones they need.

    ``name`` is set by :func:`active_plugins` from the registry; ``order``
    fixes the order among active plugins (hooks before the model is wrapped
    by another plugin, e.g. fake-quant before a learning rule).
    """

    name = ""
    order = 50

    def __init__(self, tc: TrainConfig):
        self.tc = tc

    @classmethod
    def active(cls, tc: TrainConfig) -> bool:
        """Whether this plugin takes part in a run with train config ``tc``."""
        raise NotImplementedError

    @classmethod
    def recommended(cls, train: dict[str, Any], model: str) -> dict[str, Any]:
        """``train`` settings this plugin recommends on ``model``, given the (partial) ``train`` table the user
        asked for; applied by config resolution on top of the preset, below the user's file and flags."""
        return {}

    def cpu_only(self) -> str:
        """What of this plugin's training works on the CPU only (e.g. ``"ElasticZO-INT8 training"``), or ``""``:
        ``fit`` then trains on the CPU for ``device="auto"`` and refuses any other device."""
        return ""

    def setup(self, ctx: TrainContext) -> list[torch.Tensor] | None:
        return None

    def before_step(self, step: int, ctx: TrainContext) -> None:
        pass

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float, step: int, ctx: TrainContext
             ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError   # only called on a plugin that overrides it

    def after_step(self, step: int, ctx: TrainContext) -> None:
        """After the optimiser step; ``step`` is the number of steps done so far."""

    def after_epoch(self, row: dict[str, Any], ctx: TrainContext) -> EpochAction | None:
        return None

    def weights_changed(self, ctx: TrainContext) -> None:
        """``fit`` replaced the model's weights (an ``EpochAction.restore``)."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and JSON-able values (str, number, bool, None, lists/dicts of those) only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def epoch_note(self, row: dict[str, Any]) -> str:
        """Extra text for the per-epoch log line ("" for none)."""
        return ""

    def end(self, ctx: TrainContext) -> bool:
        return False

    def teardown(self, ctx: TrainContext) -> None:
        pass

    def finish(self, ctx: TrainContext, out_dir: Any, summary: dict[str, Any]) -> None:
        pass

    @classmethod
    def overrides_step(cls) -> bool:
        return cls.step is not TrainerPlugin.step


def recommended_train(train: dict[str, Any], model: str) -> dict[str, Any]:
    """What every registered plugin recommends for a (partial, sectioned) ``train`` table on ``model``."""
    from lenetlab.registry import get, names

    out: dict[str, Any] = {}
    for name in names("trainer_plugin"):
        out.update(get("trainer_plugin", name).recommended(train, model))
    return out


def active_plugins(tc: TrainConfig, extra: Sequence[TrainerPlugin] = ()) -> list[TrainerPlugin]:
    """Instances of every registered plugin that is active for ``tc``, plus ``extra`` instances, in ``order``;
    at most one of them may override the step."""
    from lenetlab.registry import get, names

    found = []
    for name in names("trainer_plugin"):
        cls = get("trainer_plugin", name)
        if cls.active(tc):
            p = cls(tc)
            p.name = name
            found.append(p)
    for i, p in enumerate(extra):
        p.name = p.name or f"{type(p).__name__}-{i}"
        found.append(p)
    plugins = sorted(found, key=lambda p: (p.order, p.name))
    stepping = [p.name for p in plugins if p.overrides_step()]
    if len(stepping) > 1:
        raise LenetlabError(f"these training plugins each replace the training step and cannot be combined: "
                            f"{', '.join(stepping)}")
    return plugins


__all__ = ["TrainerPlugin", "TrainContext", "EpochAction", "active_plugins", "recommended_train"]
