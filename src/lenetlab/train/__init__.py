"""Training: the trainer, schedules, optimisers and presets."""

from lenetlab.train import optim, presets, schedules  # noqa: F401  (register)
from lenetlab.train.trainer import evaluate, fit, make_loss

__all__ = ["fit", "evaluate", "make_loss"]
