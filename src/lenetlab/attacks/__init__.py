"""Adversarial attacks on lenetlab models (Lin & Sengupta 2025, docs/papers/snn-attacks.md).

``lenetlab attack RUN_DIR --attack pgd --eps 0.1``; ``lenetlab list attacks``.
Registered: fgsm, pgd (white-box), bb-fgsm, bb-pgd (transfer from a
substitute), hybrid (transfer start + target and substitute gradients); art:apgd,
art:autoattack, art:cw, art:square (through ART, optional extra ``lenetlab[art]``).
"""

from lenetlab.attacks import art_attacks, gradient, transfer  # noqa: F401  (register the attacks)
from lenetlab.attacks.base import GRAD_SOURCES, Attack, AttackResult, Target, make_attack, project, run_attack

__all__ = ["GRAD_SOURCES", "Attack", "AttackResult", "Target", "make_attack", "project", "run_attack"]
