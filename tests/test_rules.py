"""Learning rules (lenetlab.rules): FA / DFA / LE backward passes against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lenetlab.errors import LenetlabError
from lenetlab.models import create_model
from lenetlab.rules import attach_rule, model_blocks
from lenetlab.rules.grads import FAConv2d, FALinear, local_logits


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10


def _grads(model, x, y, rule=None, seed=0):
    model.zero_grad(set_to_none=True)
    h = attach_rule(model, rule, seed) if rule else None
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    if h is not None:
        h.remove()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _output_error(model, x, y):
    with torch.no_grad():
        z = model(x)
    return (torch.softmax(z, 1) - F.one_hot(y, 10).float()) / len(y)


# ------------------------------------------------------------------ FA
def test_fa_linear_input_gradient_uses_b_not_w():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, generator=g, requires_grad=True)
    w = torch.randn(3, 5, generator=g, requires_grad=True)
    b = torch.randn(3, generator=g, requires_grad=True)
    fb = torch.randn(3, 5, generator=g)
    up = torch.randn(4, 3, generator=g)
    y = FALinear.apply(x, w, b, fb)
    assert torch.allclose(y, x @ w.t() + b)
    y.backward(up)
    assert torch.allclose(x.grad, up @ fb)                  # B, by hand
    assert not torch.allclose(x.grad, up @ w.detach())      # not W^T
    assert torch.allclose(w.grad, up.t() @ x.detach()) and torch.allclose(b.grad, up.sum(0))


def test_fa_conv_input_gradient_is_transposed_conv_with_b():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 9, 9, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True)
    fb = torch.randn(4, 3, 3, 3, generator=g)
    y = FAConv2d.apply(x, w, b, fb, (1, 1), (1, 1), (1, 1), 1)
    up = torch.randn(y.shape, generator=g)
    y.backward(up)
    # oracle: autograd of the same conv with B as its weight (input grad) and with W (weight grad)
    x2 = x.detach().clone().requires_grad_(True)
    F.conv2d(x2, fb, None, 1, 1).backward(up)
    w2 = w.detach().clone().requires_grad_(True)
    F.conv2d(x.detach(), w2, None, 1, 1).backward(up)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(w.grad, w2.grad, atol=1e-4)
    assert torch.allclose(b.grad, up.sum((0, 2, 3)), atol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_snn"])
def test_fa_on_a_model(name):
    """At the top layer the error reaching fc2's output is e B (hand); with B := W, FA is BP."""
    torch.manual_seed(0)
    m = create_model(name)
    x, y = _data()
    e = _output_error(m, x, y)
    h = attach_rule(m, "fa", seed=3)
    seen = {}

    def keep(mod, i, o):
        o.register_hook(lambda g: seen.__setitem__("g", g))

    hook = model_blocks(m)[3][1].register_forward_hook(keep)     # fc2's block output = fc3's input
    F.cross_entropy(m(x), y).backward()
    hook.remove()
    if name == "lenet5_snn":
        # the leaky integrator readout: d mean_t' u[t'] / d I[t] = (1/T) sum_{k <= T-1-t} beta^k
        t_steps, beta = m.steps, m.out.beta
        c = torch.tensor([sum(beta ** k for k in range(t_steps - t)) / t_steps for t in range(t_steps)])
        expect = c.view(-1, 1, 1) * (e @ h.state[4])
        wrong = c.view(-1, 1, 1) * (e @ m.fc3.weight.detach())
    else:
        expect, wrong = e @ h.state[4], e @ m.fc3.weight.detach()
    assert torch.allclose(seen["g"], expect, atol=1e-6)
    assert not torch.allclose(seen["g"], wrong, atol=1e-6)
    # FA with B = W is backprop
    for i, (layer, _) in enumerate(model_blocks(m)):
        h.state[i].copy_(layer.weight.detach())
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    fa = {n: p.grad.clone() for n, p in m.named_parameters()}
    h.remove()
    _, bp = _grads(m, x, y)
    for n in bp:
        assert torch.allclose(fa[n], bp[n], atol=1e-6, rtol=1e-4), n


# ------------------------------------------------------------------ DFA / LE: nothing crosses layers
def test_dfa_matches_hand_computation_and_sends_nothing_across_layers():
    torch.manual_seed(0)
    m = create_model("lenet5")
    x, y = _data()
    e = _output_error(m, x, y)
    logits, dfa = _grads(m, x, y, "dfa", seed=5)
    h = attach_rule(m, "dfa", seed=5)
    m(x)                                  # materialise the B_l (regenerated from the seed)
    fbs = dict(h.state)
    h.remove()
    # hand: block l alone (its input detached), its output given the gradient B_l e
    a = x
    for i, (layer, act) in enumerate(model_blocks(m)[:-1]):
        m.zero_grad()
        inp = a.detach()
        pre = layer(inp if layer is not m.fc1 else inp.flatten(1))
        out = act(m.pool(pre)) if i < 2 else act(pre)
        out.backward((e @ fbs[i]).reshape(out.shape))
        assert torch.allclose(dfa[f"{_name(m, layer)}.weight"], layer.weight.grad, atol=1e-6), i
        a = out
    # the output layer learns from the real error
    assert torch.allclose(dfa["fc3.weight"], e.t() @ a.detach(), atol=1e-6)


def _name(model, module):
    return next(n for n, mod in model.named_modules() if mod is module)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_snn"])
def test_le_matches_local_losses(name):
    torch.manual_seed(0)
    m = create_model(name)
    x, y = _data()
    _, le = _grads(m, x, y, "le", seed=7)
    h = attach_rule(m, "le", seed=7)
    outs = {}
    hooks = [out.register_forward_hook(lambda mod, i, o, k=k: outs.__setitem__(k, o))
             for k, (_, out) in enumerate(model_blocks(m)[:-1])]
    m(x)
    heads = dict(h.state)
    for hk in hooks:
        hk.remove()
    h.remove()
    tm = name == "lenet5_snn"
    # hand: each block's own CE(G_l h_l, y), the block input detached -> recompute block l from its input
    for k, (layer, _out_mod) in enumerate(model_blocks(m)[:-1]):
        m.zero_grad()
        inp = x if k == 0 else outs[k - 1].detach()
        hk = _block(m, k, inp)
        F.cross_entropy(local_logits(hk, heads[k], tm), y).backward()
        assert torch.allclose(le[f"{_name(m, layer)}.weight"], layer.weight.grad, atol=1e-6, rtol=1e-4), k


def _block(m, k, inp):
    """Recompute block k of lenet5 / lenet5_snn from its (detached) input."""
    if hasattr(m, "rule_time_major"):
        m.reset_state()          # the LIF layers keep their membrane after a call
        if k == 0:
            i1 = m.pool(m.conv1(inp))
            return m.lif1(i1.unsqueeze(0).expand(m.steps, *i1.shape))
        if k == 1:
            return m.lif2(m._over_time(lambda z: m.pool(m.conv2(z)), inp))
        if k == 2:
            return m.lif3(m.fc1(inp.flatten(2)))
        return m.lif4(m.fc2(inp))
    if k == 0:
        return m.act1(m.pool(m.conv1(inp)))
    if k == 1:
        return m.act2(m.pool(m.conv2(inp)))
    return (m.act3(m.fc1(inp.flatten(1))) if k == 2 else m.act4(m.fc2(inp)))


@pytest.mark.parametrize("name", ["lenet5", "lenet5_snn"])
@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "le"])
def test_local_rules_drop_the_gradient_from_above(name, rule):
    """Blow up the gradient that conv2 sends back to block 0 (x1000): BP and FA feel it, DFA and LE must not."""
    torch.manual_seed(0)
    m = create_model(name)
    x, y = _data()
    _, base = _grads(m, x, y, rule)

    def scale(mod, inp):
        if inp[0].requires_grad:
            inp[0].register_hook(lambda g: g * 1000.0)

    hook = m.conv2.register_forward_pre_hook(scale)
    _, blown = _grads(m, x, y, rule)
    hook.remove()
    same = torch.allclose(base["conv1.weight"], blown["conv1.weight"], atol=1e-7, rtol=1e-5)
    assert same == (rule in ("dfa", "le"))
    assert torch.equal(base["fc3.weight"], blown["fc3.weight"])


def test_bp_rule_is_autograd_and_rules_keep_the_forward():
    torch.manual_seed(0)
    for name in ("lenet5", "lenet5_snn"):
        m = create_model(name)
        x, y = _data()
        z0, plain = _grads(m, x, y)
        z1, bp = _grads(m, x, y, "bp")
        assert torch.equal(z0, z1)
        for n in plain:
            assert torch.equal(plain[n], bp[n]), n
        for rule in ("fa", "dfa", "le"):
            z, g = _grads(m, x, y, rule)
            assert torch.equal(z, z0)             # same forward
            assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in g.values()), rule
        # removed: plain autograd again, state dict keys unchanged, no hooks left
        _, after = _grads(m, x, y)
        assert all(torch.equal(after[n], plain[n]) for n in plain)
        assert not m._forward_hooks and all("forward" not in mod.__dict__ for mod in m.modules())


def test_feedback_is_a_function_of_the_seed():
    m = create_model("lenet5")
    x, _ = _data(2)
    states = []
    for seed in (0, 0, 1):
        h = attach_rule(m, "dfa", seed)
        m(x)
        states.append(h.state[0].clone())
        h.remove()
    assert torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])


def test_bad_rule_input():
    m = create_model("lenet5")
    with pytest.raises(LenetlabError, match="unknown rule 'xfa'; choose from: bp, dfa, fa, le"):
        attach_rule(m, "xfa")
    with pytest.raises(LenetlabError, match="lenet5_snn; got lenet5_classic"):
        attach_rule(create_model("lenet5_classic"), "fa")
    from lenetlab.config import RuleConfig, TrainConfig, ZOConfig

    with pytest.raises(LenetlabError, match="cannot be combined with train.method 'zo'"):
        attach_rule(m, TrainConfig(rule=RuleConfig("dfa"), zo=ZOConfig(method="zo")))


def test_rule_trains_and_saves_a_plain_model(tmp_path):
    from lenetlab.rundir import load_model
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    cfg = resolve("fast", "lenet5", overrides={"data": {"train_subset": 3000, "test_subset": 500},
                                              "train": {"epochs": 1, "rule": "le", "batch_size": 32}})
    s = fit(cfg, out=tmp_path / "r", log=None, progress=False)
    assert s["test_accuracy"] > 0.5              # chance is 0.1; LE learns
    model, cfg2 = load_model(tmp_path / "r")
    assert cfg2.train.rule.name == "le"
    assert not model._forward_hooks


def test_recommended_training_settings_reach_the_experiment():
    from lenetlab.experiments.snn import Settings, run_config, settings
    from lenetlab.rules import recommended_train

    assert recommended_train("bp", "lenet5_snn") == {} and recommended_train("le", "lenet5") == {}
    for rule in ("fa", "dfa"):
        for domain, model in (("snn", "lenet5_snn"), ("ann", "lenet5")):
            rec = recommended_train(rule, model)
            assert rec and set(rec) <= {"lr", "batch_size"}
            cfg = run_config(domain, rule, Settings(**settings(False)))
            assert (cfg.train.lr, cfg.train.batch_size) == (rec["lr"], rec["batch_size"])
    bp = run_config("snn", "bp", Settings(**settings(False)))
    assert (bp.train.lr, bp.train.batch_size) == (6e-3, 128)        # the fast preset, untouched
    with pytest.raises(LenetlabError, match="unknown rule 'xfa'"):
        recommended_train("xfa", "lenet5")


def test_train_with_a_rule_gets_its_recommended_settings_unless_overridden():
    from lenetlab.train.presets import resolve

    fa = resolve("fast", "lenet5_snn", overrides={"train": {"rule": "fa"}})
    assert (fa.train.lr, fa.train.batch_size) == (2e-3, 32)
    from_file = resolve("fast", "lenet5", file_data={"train": {"rule": "dfa"}})
    assert (from_file.train.lr, from_file.train.batch_size) == (1e-3, 64)
    # flags and files still win; bp and LE keep the preset
    mine = resolve("fast", "lenet5_snn", file_data={"train": {"batch_size": 16}},
                   overrides={"train": {"rule": "fa", "lr": 5e-4}})
    assert (mine.train.lr, mine.train.batch_size) == (5e-4, 16)
    for rule in ("bp", "le"):
        cfg = resolve("fast", "lenet5", overrides={"train": {"rule": rule}})
        assert (cfg.train.lr, cfg.train.batch_size) == (6e-3, 128)
    with pytest.raises(LenetlabError, match="unknown rule 'xfa'"):
        resolve("fast", "lenet5", overrides={"train": {"rule": "xfa"}})
