"""Our own FGSM and PGD with ``norm="2"`` and ``targeted=True``: each checked against an independent
computation (autograd on the same model) or an invariant that a wrong sign or norm breaks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from lenetlab.attacks import Target, make_attack
from lenetlab.attacks.base import project_l2, target_labels
from lenetlab.errors import LenetlabError

N = 64


@pytest.fixture(scope="module")
def setup(small_run, mnist_test):
    target = Target.from_run(small_run)
    x = torch.from_numpy(mnist_test[0][:N].copy()).float().div(255).unsqueeze(1)
    y = torch.from_numpy(mnist_test[1][:N].astype("int64"))
    return target, x, y


def grad_of(target: Target, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d mean-CE / dx by plain autograd, outside the attack code."""
    x = x.clone().requires_grad_(True)
    F.cross_entropy(target.logits(x), labels).backward()
    return x.grad


def ce(target: Target, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(target.logits(x), labels, reduction="none")


def l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


def test_default_fgsm_is_the_signed_step(setup):
    target, x, y = setup
    want = (x + 0.1 * grad_of(target, x, y).sign()).clamp(0, 1)
    assert torch.equal(make_attack("fgsm", target, 0.1)(x, y), want)
    assert torch.equal(make_attack("fgsm", target, 0.1, norm="Linf", targeted=False)(x, y), want)


def test_l2_fgsm_steps_along_the_unit_gradient(setup):
    target, x, y = setup
    g = grad_of(target, x, y)
    unit = g / l2(g).view(-1, 1, 1, 1)
    want = project_l2(x + 1.5 * unit, x, 1.5)
    got = make_attack("fgsm", target, 1.5, norm="2")(x, y)
    assert torch.allclose(got, want, atol=1e-6)
    assert (l2(got - x) <= 1.5 + 1e-5).all() and got.min() >= 0 and got.max() <= 1
    assert (l2(got - x) > 1.0).float().mean() > 0.5           # most of the budget is spent, not clipped away


def test_l2_pgd_stays_in_the_ball_and_beats_l2_fgsm(setup):
    target, x, y = setup
    pgd = make_attack("pgd", target, 1.5, norm="2", steps=10)(x, y)
    fgsm = make_attack("fgsm", target, 1.5, norm="2")(x, y)
    assert (l2(pgd - x) <= 1.5 + 1e-5).all() and pgd.min() >= 0 and pgd.max() <= 1
    # the best iterate is kept: no image's loss falls below its clean loss
    assert (ce(target, pgd, y) >= ce(target, x, y) - 1e-6).all()
    assert ce(target, pgd, y).mean() > ce(target, fgsm, y).mean()
    # an L-inf ball of the same radius would allow far larger L2 changes: the two attacks differ
    linf = make_attack("pgd", target, 0.3, steps=10)(x, y)
    assert (l2(linf - x) > 1.5).any()


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_targeted_attacks_descend_the_target_loss(setup, name):
    target, x, y = setup
    aim = (y + 1) % 10
    untargeted = make_attack(name, target, 0.3)(x, y)
    targeted = make_attack(name, target, 0.3, targeted=True, target_class="next")(x, y)
    assert (targeted - x).abs().max() <= 0.3 + 1e-6
    assert ce(target, targeted, aim).mean() < ce(target, x, aim).mean()
    assert ce(target, targeted, aim).mean() < ce(target, untargeted, aim).mean()
    if name == "pgd":    # lowest target loss kept per image, the clean image included
        assert (ce(target, targeted, aim) <= ce(target, x, aim) + 1e-6).all()
        hit = (target.predict(targeted) == aim).float().mean()
        assert hit > (target.predict(untargeted) == aim).float().mean()


def test_random_target_classes_are_seeded_and_never_the_label():
    y = torch.arange(10).repeat(50)
    a = target_labels(y, 10, "random", torch.Generator().manual_seed(3))
    b = target_labels(y, 10, "random", torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not (a == y).any() and len(set(a.tolist())) == 10


def test_bad_norm_options_are_refused(setup):
    target, _, _ = setup
    with pytest.raises(LenetlabError, match="target_class must be one of next, random"):
        make_attack("pgd", target, 0.1, targeted=True, target_class="first")
    with pytest.raises(LenetlabError, match="pgd: norm must be inf or 2"):
        make_attack("pgd", target, 0.1, norm="1")


def test_cli_l2_and_targeted(small_run):
    r = run_cli("attack", str(small_run), "--attack", "pgd", "--norm", "2", "--eps", "1.5", "--steps", "5",
                "--limit", "50", "--json", check=True)
    row = json.loads(r.stdout)["rows"][0]
    assert row["n"] == 50 and row["eps"] == 1.5 and row["adv_accuracy"] < row["clean_accuracy"]
    r = run_cli("attack", str(small_run), "--attack", "fgsm", "--targeted", "--target-class", "random",
                "--eps", "0.2", "--limit", "50", "--json", check=True)
    assert json.loads(r.stdout)["rows"][0]["n"] == 50
    r = run_cli("attack", str(small_run), "--attack", "pgd", "--eps", "1.5", "--limit", "5")
    assert r.returncode == 2 and r.stderr.strip() == "lenetlab: error: --eps must be in [0, 1] (pixel units), got 1.5"
    r = run_cli("attack", str(small_run), "--attack", "pgd", "--norm", "2", "--eps", "70", "--limit", "5")
    assert r.returncode == 2 and "in [0, 64]" in r.stderr and len(r.stderr.strip().splitlines()) == 1
