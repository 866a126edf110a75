"""Training: the trainer, its plugins, schedules, optimisers and presets.

The built-in trainer plugins (``hardening``, ``rule``, ``zo``, ``lb-restart``) register where they are
defined; :mod:`lenetlab.catalogue` lists those modules.
"""

from lenetlab.train import optim, presets, schedules  # noqa: F401  (register)
from lenetlab.train.trainer import evaluate, fit, make_loss

__all__ = ["fit", "evaluate", "make_loss"]
