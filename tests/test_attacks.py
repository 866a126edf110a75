"""Adversarial attacks (lenetlab.attacks): invariants on every attack, CLI. (The ART oracle for fgsm/pgd and the
art:* attacks are checked in tests/test_attacks_art.py, the one fast test module that imports ART.)"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from lenetlab.attacks import Target, make_attack, run_attack
from lenetlab.errors import LenetlabError
from lenetlab.registry import get, names


@pytest.fixture(scope="module")
def substitute_run(tmp_path_factory):
    """A second lenet5 (other seed, other images) as the black-box substitute."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    out = tmp_path_factory.mktemp("attack") / "sub"
    fit(resolve("fast", "lenet5", overrides={"data": {"train_subset": 1000, "test_subset": 200},
                                             "train": {"epochs": 1, "batch_size": 64, "seed": 1}}),
        out=out, log=None, progress=False)
    return out


@pytest.fixture(scope="module")
def snn_run(tmp_path_factory):
    """A spiking LeNet-5 trained for a moment (BPTT, 2k images)."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    out = tmp_path_factory.mktemp("attack") / "snn"
    fit(resolve("fast", "lenet5_snn", overrides={"data": {"train_subset": 1000, "test_subset": 100},
                                                 "model": {"steps": 3}, "train": {"epochs": 1, "batch_size": 64}}),
        out=out, log=None, progress=False)
    return out


@pytest.fixture(scope="module")
def batch(mnist_test):
    x, y = mnist_test
    return torch.from_numpy(x[:64].copy()).float().div(255).unsqueeze(1), torch.from_numpy(y[:64].astype(np.int64))


EPS = 0.1


def option_names(name: str) -> list[str]:
    """The options attack ``name`` declares (its ``Options`` dataclass: what the CLI makes flags of)."""
    return [f.name for f in dataclasses.fields(get("attack", name).Options)]


def tiny(name: str) -> dict:
    """Few steps (restarts, queries, CW search steps) for the attacks whose schema has them."""
    small = {"steps": 4, "restarts": 1, "queries": 20, "search_steps": 1}
    return {k: v for k, v in small.items() if k in option_names(name)}


# The art:* attacks run here in the slow tier only: ART's import and its attacks cost seconds each, and
# tests/test_attacks_art.py checks every art:* attack's ball, seed repeatability and model mode in the fast tier.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("art:") else n
                                  for n in names("attack")])
def test_attack_invariants(name, small_run, substitute_run, batch):
    if name.startswith("art:"):
        pytest.importorskip("art")              # the optional extra (tests/test_attacks_art.py)
    x, y = batch
    target, sub = Target.from_run(small_run), Target.from_run(substitute_run)
    atk = make_attack(name, target, EPS, seed=3, substitute=sub, **tiny(name))
    xa = atk(x, y)
    assert (xa - x).abs().max() <= EPS + 1e-6              # the L-inf budget (float rounding only)
    assert xa.min() >= 0 and xa.max() <= 1
    assert torch.equal(xa, atk(x, y))                      # deterministic with a seed
    assert not target.model.training
    clean, adv = target.losses(x, y), target.losses(xa, y)
    if name in ("pgd", "hybrid"):
        assert (adv >= clean - 1e-6).all()                 # best iterate kept: never worse than clean
    if name == "fgsm":
        assert adv.mean() > clean.mean()
    if atk.needs_substitute and not atk.white_box:
        assert sub.losses(xa, y).mean() > sub.losses(x, y).mean()   # crafted to hurt the substitute
    if name in ("pgd", "bb-pgd", "hybrid"):                # random starts follow the seed
        other = make_attack(name, target, EPS, seed=4, substitute=sub, **tiny(name))(x, y)
        assert not torch.equal(other, xa)


def test_snn_white_box_and_reset(snn_run, batch):
    x, y = batch
    x, y = x[:16], y[:16]
    target = Target.from_run(snn_run)
    for name in ("fgsm", "pgd"):
        atk = make_attack(name, target, 0.2, seed=0, steps=2) if name == "pgd" else make_attack(name, target, 0.2)
        xa = atk(x, y)
        assert (xa - x).abs().max() <= 0.2 + 1e-6 and 0 <= xa.min() and xa.max() <= 1
        assert torch.equal(xa, atk(x, y))
        assert target.losses(xa, y).mean() > target.losses(x, y).mean()
    # a query does not depend on the one before it (state reset)
    a = target.logits(x[:4])
    target.logits(torch.rand(4, 1, 28, 28))
    assert torch.equal(target.logits(x[:4]), a)


def test_rule_pathway_gradient_is_the_rules(tmp_path, batch):
    """grad_source='rule' on a DFA run: d loss / d x = conv1 / pool / act1 backward of B_1 e, by hand."""
    from lenetlab.rules import attach_rule
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    fit(resolve("fast", "lenet5", overrides={"data": {"train_subset": 256, "test_subset": 64, "val_size": 64},
                                             "train": {"epochs": 1, "rule": "dfa", "seed": 9}}),
        out=tmp_path / "dfa", log=None, progress=False)
    x, y = batch
    x, y = x[:8], y[:8]
    rule_t, auto_t = Target.from_run(tmp_path / "dfa", "rule"), Target.from_run(tmp_path / "dfa")
    _, g_rule = rule_t.loss_grad(x, y)
    _, g_auto = auto_t.loss_grad(x, y)
    m, cfg = rule_t.model, rule_t.data
    with torch.no_grad():
        z = auto_t.logits(x)
    e = (torch.softmax(z, 1) - F.one_hot(y, 10).float()) / len(y)
    h = attach_rule(m, "dfa", 9)
    rule_t.logits(x)
    b1 = h.state[0]
    h.remove()
    xr = x.clone().requires_grad_(True)
    out = m.act1(m.pool(m.conv1((xr - cfg.mean) / cfg.std)))
    out.backward((e @ b1).reshape(out.shape))
    assert torch.allclose(g_rule, xr.grad, atol=1e-7, rtol=1e-4)
    assert not torch.allclose(g_rule, g_auto)


def test_run_attack_counts(small_run, batch):
    x, y = batch
    target = Target.from_run(small_run)
    res, kept = run_attack(make_attack("fgsm", target, 0.0), x, y, batch_size=16, keep=True)
    assert res.adv_accuracy == res.clean_accuracy and res.success_rate == 0.0 and res.n == 64
    assert torch.equal(kept, x)
    res, _ = run_attack(make_attack("pgd", target, 0.3, steps=5), x, y)
    assert res.adv_accuracy < 0.2 and res.success_rate > 0.8


def test_bad_attack_input(small_run, batch):
    x, y = batch
    t = Target.from_run(small_run)
    with pytest.raises(LenetlabError, match=r"eps must be in \[0, 1\]"):
        make_attack("fgsm", t, 1.5)
    with pytest.raises(LenetlabError, match="needs a substitute"):
        make_attack("hybrid", t, 0.1)
    with pytest.raises(LenetlabError, match="unknown attack 'cw'; choose from: art:apgd, art:autoattack, art:cw, "
                                            "art:square, bb-fgsm, bb-pgd, fgsm, hybrid, pgd"):
        make_attack("cw", t, 0.1)
    with pytest.raises(LenetlabError, match="PGD steps must be a positive integer"):
        make_attack("pgd", t, 0.1, steps=0)
    with pytest.raises(LenetlabError, match="attack 'fgsm' has no option 'steps'; options: norm, targeted"):
        make_attack("fgsm", t, 0.1, steps=3)
    with pytest.raises(LenetlabError, match="fgsm: norm must be inf or 2, got '1'"):
        make_attack("fgsm", t, 0.1, norm="1")
    with pytest.raises(LenetlabError, match=r"eps must be in \[0, 1\]"):
        make_attack("pgd", t, 1.5)
    with pytest.raises(LenetlabError, match=r"eps of an L2 attack must be in \[0, 64\]"):
        make_attack("pgd", t, 65.0, norm="2")
    with pytest.raises(LenetlabError, match="attack 'pgd' has no option 'stepz'; options: steps, step_size"):
        make_attack("pgd", t, 0.1, stepz=3)
    with pytest.raises(LenetlabError, match="'attack.hybrid.lam' must be float"):
        make_attack("hybrid", t, 0.1, substitute=t, lam="big")
    with pytest.raises(LenetlabError, match="unknown gradient source 'spsa'"):
        Target(t.model, t.data, "spsa")
    with pytest.raises(LenetlabError, match=r"must be in \[0, 1\] pixel units"):
        make_attack("fgsm", t, 0.1)(x * 255, y)


def test_cli_attack(small_run, substitute_run, tmp_path):
    r = run_cli("attack", str(small_run), "--attack", "pgd", "--eps", "0", "0.2", "--steps", "3", "--limit", "100",
                "--json", check=True)
    rows = json.loads(r.stdout)["rows"]
    assert rows[0]["adv_accuracy"] == rows[0]["clean_accuracy"] and rows[1]["adv_accuracy"] < rows[0]["adv_accuracy"]
    out = tmp_path / "ex"
    r = run_cli("attack", str(small_run), "--attack", "bb-fgsm", "--substitute", str(substitute_run), "--eps", "0.1",
                "--limit", "20", "--save-examples", str(out), check=True)
    assert "success rate" in r.stdout
    from lenetlab.data import read_idx

    imgs = read_idx(out / "adversarial-images-idx3-ubyte")
    assert imgs.shape == (20, 28, 28) and imgs.dtype == np.uint8 and (out / "grid.png").stat().st_size > 0
    for args, msg in [(["--eps", "2"], "--eps must be in [0, 1]"),
                      (["--attack", "hybrid"], "needs --substitute"),
                      (["--attack", "nope"], "unknown attack 'nope'")]:
        r = run_cli("attack", str(small_run), *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    r = run_cli("attack", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no such run directory" in r.stderr


@pytest.mark.parametrize("name", names("attack"))
def test_every_option_in_the_schema_is_a_cli_flag(name):
    """The CLI reads the same schema: each declared option is a flag, parsed and handed to that attack."""
    from lenetlab.attacks.cli import _options
    from lenetlab.cli import build_parser

    p = build_parser()
    cls = get("attack", name)
    argv, want = ["attack", "RUN", "--attack", name], {}
    for f in dataclasses.fields(cls.Options):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            argv.append(flag if not f.default else "--no-" + f.name.replace("_", "-"))
            want[f.name] = not f.default
        else:
            value = 3 if f.name.endswith("steps") else 0.25
            argv += [flag, str(value)]
            want[f.name] = value
    assert _options(p.parse_args(argv)) == want
    assert _options(p.parse_args(["attack", "RUN", "--attack", name])) == {}   # defaults stay the schema's
