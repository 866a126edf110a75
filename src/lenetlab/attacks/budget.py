"""Attacks compared at one gradient budget (Lin & Sengupta 2025; docs/papers/snn-attacks.md).

An attack that takes more input-gradient evaluations is stronger for that
reason alone, so a comparison of attacks ("the hybrid attack beats PGD") is
fair only when each gets the same number of them. Each attack class states
what it spends (:meth:`Attack.gradient_calls`) and how to spend a given
budget (:meth:`Attack.budget_options`): PGD and black-box PGD take
``steps = budget``; the hybrid splits it between its transfer steps on the
substitute and its target steps (two evaluations each: target and
substitute); FGSM-style single-step attacks spend 1 whatever the budget.

Example::

    from lenetlab.attacks.budget import make_budgeted
    pgd = make_budgeted("pgd", target, eps=0.1, budget=12)
    hybrid = make_budgeted("hybrid", target, eps=0.1, budget=12, substitute=sub)
    assert pgd.gradient_calls() == hybrid.gradient_calls() == 12
"""

from __future__ import annotations

from typing import Any

from lenetlab.attacks.base import Attack, Target, make_attack
from lenetlab.errors import LenetlabError


def make_budgeted(name: str, target: Target, eps: float, budget: int, seed: int = 0,
                  substitute: Target | None = None, **options: Any) -> Attack:
    """Attack ``name`` configured to spend at most ``budget`` gradient evaluations (exactly ``budget`` unless
    it is a single-step attack). ``options`` may set anything but the step counts the budget fixes."""
    from lenetlab.registry import get

    fixed = get("attack", name).budget_options(budget)
    clash = sorted(set(fixed) & set(options))
    if clash:
        raise LenetlabError(f"option {clash[0]!r} of attack {name!r} is set by the gradient budget")
    attack = make_attack(name, target, eps, seed=seed, substitute=substitute, **fixed, **options)
    calls = attack.gradient_calls()
    if calls is None or calls > budget:
        raise LenetlabError(f"attack {name!r} cannot be held to a budget of {budget} gradient evaluations "
                            f"(it spends {calls if calls is not None else 'an unstated number'})")
    return attack
