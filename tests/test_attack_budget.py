"""Equal gradient budgets (lenetlab.attacks.budget): every registered attack spends what it says it spends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenetlab.attacks import Target
from lenetlab.attacks.budget import make_budgeted
from lenetlab.config import DataConfig
from lenetlab.errors import LenetlabError
from lenetlab.registry import get, names


class CountingTarget(Target):
    """A target that counts its input-gradient evaluations (one per image batch)."""

    def __init__(self, model, seed: int):
        super().__init__(model, DataConfig(), name=f"counting{seed}")
        self.calls = 0

    def loss_grad(self, x01, y):
        self.calls += 1
        return super().loss_grad(x01, y)


def _target(seed: int) -> CountingTarget:
    from lenetlab.models import create_model

    torch.manual_seed(seed)
    return CountingTarget(create_model("lenet5"), seed)


@pytest.fixture(scope="module")
def batch(mnist_test):
    x, y = mnist_test
    return torch.from_numpy(x[:8].copy()).float().div(255).unsqueeze(1), torch.from_numpy(y[:8].astype(np.int64))


# the art:* attacks compute their gradients inside ART, outside Target.loss_grad: they refuse a budget
# (tests/test_attacks_art.py)
@pytest.mark.parametrize("name", [n for n in names("attack") if not n.startswith("art:")])
@pytest.mark.parametrize("budget", [3, 7, 12])
def test_attacks_spend_their_budget(name, budget, batch):
    target, sub = _target(0), _target(1)
    attack = make_budgeted(name, target, 0.1, budget, substitute=sub)
    attack(*batch)
    spent = target.calls + sub.calls
    assert spent == attack.gradient_calls()
    iterative = "steps" in get("attack", name).budget_options(budget)
    assert spent == (budget if iterative else 1)


def test_budget_errors():
    target = _target(0)
    with pytest.raises(LenetlabError, match="at least 3"):
        make_budgeted("hybrid", target, 0.1, 2, substitute=_target(1))
    with pytest.raises(LenetlabError, match="positive integer"):
        make_budgeted("pgd", target, 0.1, 0)
    with pytest.raises(LenetlabError, match="'steps' of attack 'pgd' is set by the gradient budget"):
        make_budgeted("pgd", target, 0.1, 5, steps=3)
