"""The art:* attacks (lenetlab.attacks.art_attacks): ART behind lenetlab's Attack, checked against ART itself;
and ART as the oracle for lenetlab's own fgsm and pgd. The one fast test module that imports ART (seconds).

Fast tier: one run of each art:* family (apgd: the CLI against ART called directly, the L2 ball, a targeted
run; square: seed repeatability; cw: the L2 ball; autoattack: the budget). The other norm/targeted
variants of square and cw are in the slow tier."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli
from lenetlab.attacks import Target, make_attack, project, run_attack
from lenetlab.data.transforms import from_unit
from lenetlab.errors import LenetlabError

# checked without importing it: art takes seconds to import, and every xdist worker collects this module
pytestmark = pytest.mark.skipif(importlib.util.find_spec("art") is None,
                                reason="the art extra is not installed (pip install 'lenetlab[art]')")


@pytest.fixture(scope="module")
def batch(mnist_test):
    x, y = mnist_test
    return torch.from_numpy(x[:64].copy()).float().div(255).unsqueeze(1), torch.from_numpy(y[:64].astype(np.int64))


class Normalised(nn.Module):
    """The test's own adapter (not the library's): [0, 1] images -> the run's model on its normalised input."""

    def __init__(self, model, data):
        super().__init__()
        self.model, self.data = model, data

    def forward(self, x):
        return self.model(from_unit(x, self.data))


def test_fgsm_and_pgd_match_art(small_run, batch):
    """lenetlab's own fgsm and pgd against ART's FastGradientMethod and ProjectedGradientDescent."""
    import art
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    x, y = batch
    eps = 0.1
    target = Target.from_run(small_run)
    cfg = target.data
    clf = PyTorchClassifier(model=target.model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0),
                            preprocessing=(np.float32(cfg.mean), np.float32(cfg.std)))
    xn = x.numpy()
    ours = make_attack("fgsm", target, eps)(x, y).numpy()
    theirs = FastGradientMethod(clf, norm=np.inf, eps=eps, batch_size=64).generate(xn, y=y.numpy())
    assert np.abs(ours - theirs).max() < 1e-6
    ours = make_attack("pgd", target, eps, steps=5, step_size=0.03, random_start=False, keep_best=False)(x, y)
    theirs = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=0.03, max_iter=5, num_random_init=0,
                                      batch_size=64, verbose=False).generate(xn, y=y.numpy())
    same = np.isclose(ours.numpy(), theirs, atol=1e-5).mean()
    assert same > 0.999, same
    assert abs(float((target.predict(ours) == y).float().mean())
               - float((target.predict(torch.from_numpy(theirs)) == y).float().mean())) <= 1 / 64
    assert art.__version__


def test_cli_apgd_matches_art_called_directly(small_run, batch):
    """`lenetlab attack --attack art:apgd` = ART's AutoProjectedGradientDescent on the same model, inputs and seed:
    the same adversarial examples (up to our projection onto the eps ball, a float rounding), so the same accuracy."""
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    x, y = batch
    x, y = x[:32], y[:32]
    eps, seed, steps = 0.1, 5, 10
    r = run_cli("attack", str(small_run), "--attack", "art:apgd", "--eps", str(eps), "--limit", "32",
                "--steps", str(steps), "--seed", str(seed), "--json", check=True)
    cli = json.loads(r.stdout)["rows"][0]

    target = Target.from_run(small_run)
    clf = PyTorchClassifier(Normalised(target.model, target.data), loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    np.random.seed(seed)
    theirs = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps,
                                          nb_random_init=1, batch_size=64, loss_type="cross_entropy",
                                          verbose=False).generate(x.numpy(), y=y.numpy())
    theirs = torch.from_numpy(theirs)
    projected = project(theirs, x, eps)
    assert (projected - theirs).abs().max() <= 1e-6          # ART's examples were in the ball already
    ours = make_attack("art:apgd", target, eps, seed=seed, steps=steps)(x, y)
    assert torch.equal(ours, projected)
    acc = float((target.predict(projected) == y).float().mean())
    assert cli["adv_accuracy"] == acc and cli["n"] == 32
    assert cli["clean_accuracy"] == float((target.predict(x) == y).float().mean())
    assert acc < cli["clean_accuracy"]


def _l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


@pytest.mark.parametrize("name,options", [
    ("art:apgd", {"steps": 10}),
    pytest.param("art:square", {"steps": 40}, marks=pytest.mark.slow),   # square: seed test below (L-inf)
    ("art:cw", {"steps": 3, "search_steps": 1, "learning_rate": 0.1}),
    pytest.param("art:cw", {"steps": 5, "search_steps": 2, "learning_rate": 0.1}, marks=pytest.mark.slow),
])
def test_l2_variants_stay_in_the_l2_ball(name, options, small_run, batch):
    x, y = batch[0][:16], batch[1][:16]
    target = Target.from_run(small_run)
    eps = 1.0
    atk = make_attack(name, target, eps, seed=1, norm="2", **options)
    xa = atk(x, y)
    assert (_l2(xa - x) <= eps + 1e-6).all() and xa.min() >= 0 and xa.max() <= 1
    assert torch.equal(xa, atk(x, y))                          # seeded: repeatable
    assert not target.model.training
    if name != "art:cw":                                       # CW: the smallest perturbation, not the largest loss
        assert target.losses(xa, y).mean() > target.losses(x, y).mean()


# square and cw targeted: slow tier. Fast: apgd here, and the target classes each draws (test below).
@pytest.mark.parametrize("name,options", [
    ("art:apgd", {"steps": 10, "norm": "inf"}),
    pytest.param("art:square", {"steps": 100, "norm": "inf"}, marks=pytest.mark.slow),
    pytest.param("art:cw", {"steps": 5, "search_steps": 2, "learning_rate": 0.1},     # CW is L2 only
                 marks=pytest.mark.slow),
])
def test_targeted_variants_stay_in_the_ball(name, options, small_run, batch):
    x, y = batch[0][:16], batch[1][:16]
    target = Target.from_run(small_run)
    eps = 0.3 if options.get("norm") == "inf" else 1.0
    xa = make_attack(name, target, eps, seed=2, targeted=True, **options)(x, y)
    size = (xa - x).abs().flatten(1).amax(1) if options.get("norm") == "inf" else _l2(xa - x)
    assert (size <= eps + 1e-6).all() and xa.min() >= 0 and xa.max() <= 1
    if name != "art:cw":     # CW's targeted L2 perturbations on MNIST are mostly larger than 1 (kept clean)
        goal = (y + 1) % 10
        assert (target.predict(xa) == goal).sum() > (target.predict(x) == goal).sum()


def test_target_classes_are_seeded_and_never_the_label(small_run):
    atk = make_attack("art:apgd", Target.from_run(small_run), 0.1, targeted=True, target_class="random")
    y = torch.arange(10).repeat(20)
    draw = atk.labels(y, 10, torch.Generator().manual_seed(0))
    assert (draw != y.numpy()).all() and len(set(draw.tolist())) == 10
    assert np.array_equal(draw, atk.labels(y, 10, torch.Generator().manual_seed(0)))
    nxt = make_attack("art:cw", Target.from_run(small_run), 0.1, targeted=True)
    assert np.array_equal(nxt.labels(y, 10, torch.Generator()), ((y + 1) % 10).numpy())
    assert np.array_equal(make_attack("art:cw", Target.from_run(small_run), 0.1).labels(y, 10, None), y.numpy())


def test_seed_repeats_and_leaves_the_global_generators_alone(small_run, batch):
    x, y = batch[0][:16], batch[1][:16]
    target = Target.from_run(small_run)
    np.random.seed(123)
    random.seed(123)
    before = np.random.get_state()[1].copy(), random.getstate()
    a = make_attack("art:square", target, 0.2, seed=7, steps=20)(x, y)
    assert np.array_equal(np.random.get_state()[1], before[0]) and random.getstate() == before[1]
    assert torch.equal(a, make_attack("art:square", target, 0.2, seed=7, steps=20)(x, y))
    assert not torch.equal(a, make_attack("art:square", target, 0.2, seed=8, steps=20)(x, y))
    assert torch.equal(make_attack("art:apgd", target, 0.0)(x, y), x)     # eps 0: nothing to do (ART wants > 0)


def test_autoattack_runs_inside_the_budget(small_run, batch):
    pytest.importorskip("multiprocess")
    x, y = batch[0][:16], batch[1][:16]
    target = Target.from_run(small_run)
    res, xa = run_attack(make_attack("art:autoattack", target, 0.15, seed=0, steps=5, queries=20), x, y, keep=True)
    assert (xa - x).abs().max() <= 0.15 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert res.adv_accuracy < res.clean_accuracy
    # no more robust than its first attack alone (APGD-CE at the same settings)
    apgd, _ = run_attack(make_attack("art:apgd", target, 0.15, seed=0, steps=5), x, y)
    assert res.adv_accuracy <= apgd.adv_accuracy + 2 / 16


def test_norm_spellings_and_budget(small_run):
    from lenetlab.attacks.budget import make_budgeted

    t = Target.from_run(small_run)
    for spelled, want in [(2, "2"), ("L2", "2"), (2.0, "2"), (math.inf, "inf"), ("Linf", "inf"), ("inf", "inf")]:
        assert make_attack("art:apgd", t, 0.1, norm=spelled).options["norm"] == want
    assert make_attack("art:cw", t, 0.1).options["norm"] == "2"               # CW's classic norm by default
    with pytest.raises(LenetlabError, match="cannot be held to a gradient budget"):
        make_budgeted("art:apgd", t, 0.1, 5)


@pytest.mark.parametrize("args,msg", [
    (["--attack", "art:apgd", "--norm", "1"], "art:apgd: norm must be inf or 2, got '1'"),
    (["--attack", "art:apgd", "--steps", "0"], "art:apgd: steps must be a positive integer"),
    (["--attack", "art:apgd", "--loss", "hinge"], "art:apgd: loss must be ce or dlr"),
    (["--attack", "art:apgd", "--step-size", "-1"], "art:apgd: step_size must be a finite number > 0"),
    (["--attack", "art:square", "--p-init", "2"], "art:square: p_init must be a finite number > 0 and <= 1.0"),
    (["--attack", "art:cw", "--target-class", "first"], "art:cw: target_class must be one of next, random"),
    (["--attack", "art:cw", "--confidence", "-1.0"], "art:cw: confidence must be a finite number >= 0"),
    (["--attack", "art:cw", "--norm", "inf"], "art:cw: norm must be 2 (ART's L-inf CW"),
    (["--attack", "art:autoattack", "--restarts", "0"], "art:autoattack: restarts must be a positive integer"),
    (["--attack", "art:square", "--loss", "ce"], "attack 'art:square' has no option 'loss'"),
    (["--attack", "art:autoattack", "--target-class", "next"], "attack 'art:autoattack' has no option"),
])
def test_bad_options_are_one_line_exit_2(args, msg, small_run):
    r = run_cli("attack", str(small_run), "--limit", "4", *args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_without_art_one_line_says_how_to_install(small_run, batch, monkeypatch):
    x, y = batch
    atk = make_attack("art:apgd", Target.from_run(small_run), 0.1)       # building needs no ART
    import art

    real = art
    monkeypatch.setitem(sys.modules, "art", None)                          # `import art` now fails
    with pytest.raises(LenetlabError, match=r"pip install 'lenetlab\[art\]'"):
        atk(x[:2], y[:2])
    monkeypatch.setitem(sys.modules, "multiprocess", None)
    monkeypatch.setitem(sys.modules, "art", real)
    with pytest.raises(LenetlabError, match=r"multiprocess.*pip install 'lenetlab\[art\]'"):
        make_attack("art:autoattack", Target.from_run(small_run), 0.1)(x[:2], y[:2])
