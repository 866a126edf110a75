"""The sprint preset's parts: Muon (against torch.optim.Muon, the oracle), data-parallel shards on threads
(against the whole batch's backward), and both in the trainer (deterministic, resumable, refusals)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models import create_model
from lenetlab.train import fit
from lenetlab.train.optim import FusedAdam, Muon, orthogonalize
from lenetlab.train.presets import resolve
from lenetlab.train.shards import ShardedStep, check
from test_trainer_plugins import _resume_matches


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4))


def _steps(model, opt_step, lrs, seed=1):
    g = torch.Generator().manual_seed(seed)
    for lr in lrs:
        x, y = torch.randn(32, 20, generator=g), torch.randint(0, 4, (32,), generator=g)
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(x), y).backward()
        opt_step(lr)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_muon_matches_torch_muon_bit_for_bit(wd):
    """Computed in bfloat16 as torch.optim.Muon does, the hidden matrices step exactly as torch's (a tall and
    a wide one); the output layer and the biases take Adam's steps (torch.optim.Adam's, FusedAdam)."""
    lrs = [1e-3, 3e-3, 2e-3, 5e-4]
    ours = _mlp()
    opt = Muon(ours.parameters(), lr=1e-3, muon_lr=0.02, momentum=0.9, ns_steps=4, weight_decay=wd,
               ns_dtype=torch.bfloat16)

    def ours_step(lr):
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()

    _steps(ours, ours_step, lrs)
    ref = _mlp()
    hidden = [ref[0].weight, ref[2].weight]
    rest = [p for p in ref.parameters() if all(p is not h for h in hidden)]
    tm = torch.optim.Muon(hidden, lr=0.02, momentum=0.9, nesterov=True, ns_steps=4, weight_decay=wd)
    ta = FusedAdam(rest, lr=1e-3, weight_decay=wd)

    def ref_step(lr):
        tm.param_groups[0]["lr"] = lr * 0.02 / 1e-3
        ta.param_groups[0]["lr"] = lr
        tm.step()
        ta.step()

    _steps(ref, ref_step, lrs)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0].weight, _mlp()[0].weight)     # it did step


def test_muon_steps_a_conv_kernel_as_its_flattened_matrix_in_any_layout():
    """A 4-D kernel steps as the (out, in*k*k) matrix does under torch.optim.Muon; channels-last weights
    step exactly like contiguous ones."""
    torch.manual_seed(0)
    models = [create_model("lenet5"), create_model("lenet5").to(memory_format=torch.channels_last)]
    models[1].load_state_dict(models[0].state_dict())
    grads = [torch.randn_like(p) for p in models[0].parameters()]
    for m in models:
        opt = Muon(m.parameters(), lr=1e-3, muon_lr=0.05, ns_dtype=torch.bfloat16)
        for _ in range(2):
            for p, g in zip(m.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    w = nn.Parameter(create_model("lenet5").conv2.weight.detach().reshape(16, -1).clone())
    tm = torch.optim.Muon([w], lr=0.05, momentum=0.95, ns_steps=3, weight_decay=0.0)
    for _ in range(2):
        w.grad = grads[2].reshape(16, -1).clone()
        tm.step()
    assert torch.equal(models[0].conv2.weight.reshape(16, -1), w.detach())


def test_muon_groups_and_orthogonalisation():
    m = create_model("lenet5")
    opt = Muon(m.parameters(), lr=1e-3)
    hidden = opt.param_groups[0]["params"]
    assert [p.shape for p in hidden] == [m.conv1.weight.shape, m.conv2.weight.shape, m.fc1.weight.shape,
                                         m.fc2.weight.shape]           # fc3 (the output layer) is Adam's
    assert any(p is m.fc3.weight for p in opt.param_groups[1]["params"])
    g = torch.randn(30, 80, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(orthogonalize(g, 5))
    assert s.min() > 0.5 and s.max() < 1.3          # singular values pulled near 1 (not exactly: Muon's NS)
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 3
    assert orthogonalize(g.T, 5).shape == (80, 30)


def test_muon_state_dict_resumes_exactly():
    def run(steps, state=None):
        m = create_model("lenet5")
        torch.manual_seed(0)
        m.load_state_dict(create_model("lenet5").state_dict())
        opt = Muon(m.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(3)
        batches = [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
                   for _ in range(6)]
        if state is not None:
            m.load_state_dict(state[0])
            opt.load_state_dict(state[1])
        for x, y in batches[steps[0]:steps[1]]:
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        return m, opt

    full, _ = run((0, 6))
    half, opt = run((0, 3))
    sd = opt.state_dict()
    assert set(sd["state"]) == set(range(10)) and "momentum_buffer" in sd["state"][0]
    rest, _ = run((3, 6), (half.state_dict(), sd))
    for a, b in zip(full.parameters(), rest.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="Muon"):
        Muon(nn.Linear(3, 2).parameters(), lr=1e-3).load_state_dict(sd)


def _batch(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("n, size", [(2, 96), (3, 97), (2, 1)])
def test_shards_give_the_whole_batch_gradient(n, size):
    """The shards' summed gradients equal the whole batch's backward up to float rounding, and exactly the
    shard-by-shard sum computed on one thread (so the thread a shard runs on changes nothing)."""
    torch.manual_seed(0)
    m = create_model("lenet5")
    params = list(m.parameters())
    x, y = _batch(size)
    loss_fn = lambda logits, t: F.cross_entropy(logits, t, label_smoothing=0.1)   # noqa: E731
    whole = torch.autograd.grad(loss_fn(m(x), y), params)
    threads = torch.get_num_threads()
    with ShardedStep(n, params) as step:
        assert torch.get_num_threads() == 1
        with step.released():
            assert torch.get_num_threads() == threads
        logits, loss = step(m, x, y, loss_fn)
    assert torch.get_num_threads() == threads
    assert logits.shape == (size, 10)
    assert torch.allclose(loss, loss_fn(m(x), y), rtol=1e-5)
    cuts = [size * i // n for i in range(n + 1)]
    by_hand = None
    torch.set_num_threads(1)     # as each shard runs (other thread counts split the kernels' sums otherwise)
    try:
        for lo, hi in zip(cuts, cuts[1:]):
            if hi == lo:
                continue
            g = torch.autograd.grad(loss_fn(m(x[lo:hi]), y[lo:hi]) * ((hi - lo) / size), params)
            by_hand = g if by_hand is None else [a + b for a, b in zip(by_hand, g)]
    finally:
        torch.set_num_threads(threads)
    for p, w, h in zip(params, whole, by_hand):
        assert torch.allclose(p.grad, w, rtol=1e-4, atol=1e-6)
        assert torch.equal(p.grad, h)


def test_shard_refusals():
    m = create_model("lenet5")
    check(1, nn.BatchNorm1d(3), ["hardening"], torch.device("meta"))      # one shard: nothing to refuse
    with pytest.raises(LenetlabError, match="samples do not interact"):
        check(2, nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), [], torch.device("cpu"))
    drop = create_model("lenet5")
    drop.fc1 = nn.Sequential(drop.fc1, nn.Dropout(0.1))
    with pytest.raises(LenetlabError, match="dropout"):
        check(2, drop, [], torch.device("cpu"))
    with pytest.raises(LenetlabError, match="hardening"):
        check(2, m, ["hardening"], torch.device("cpu"))
    with pytest.raises(LenetlabError, match="on meta"):
        check(2, m, [], torch.device("meta"))
    with pytest.raises(ValueError):
        ShardedStep(1, list(m.parameters()))
    with pytest.raises(RuntimeError, match="with"):
        ShardedStep(2, list(m.parameters()))(m, *_batch(4), F.cross_entropy)


SPRINT_SMALL = {"data": {"train_subset": 2000, "test_subset": 300}, "train": {"batch_size": 50}}


def test_sprint_run_is_deterministic_and_learns(tmp_path):
    cfg = resolve("sprint", overrides=SPRINT_SMALL)
    assert (cfg.train.optimizer, cfg.train.shards, cfg.train.epochs, cfg.train.native_convs) == ("muon", 2, 1, True)
    threads = torch.get_num_threads()
    a = fit(cfg, out=tmp_path / "a", log=None, progress=False)
    assert torch.get_num_threads() == threads
    b = fit(cfg, log=None, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a["_model"].parameters(), b["_model"].parameters()))
    assert a["test_accuracy"] > 0.5      # 40 steps on 2,000 images


def test_muon_with_shards_and_c_convs_kill_and_resume_is_bit_identical(tmp_path):
    _resume_matches(tmp_path, {"optimizer": "muon", "shards": 2, "native_convs": True})


@pytest.mark.parametrize("over, message", [
    ({"train": {"shards": 2, "hardening": {"qat_bits": 4}}}, "hardening"),
    ({"train": {"shards": 0}}, "shards"),
    ({"train": {"muon_ns_steps": 0}}, "muon_ns_steps"),
])
def test_bad_shard_and_muon_settings_are_refused_before_anything_is_written(tmp_path, over, message):
    with pytest.raises(LenetlabError, match=message):
        fit(resolve("fast", overrides={**SPRINT_SMALL, **over}), out=tmp_path / "run", log=None, progress=False)
    assert not (tmp_path / "run").exists()


def test_sprint_preset_is_for_lenet5_only():
    with pytest.raises(LenetlabError, match="lenet5 only"):
        resolve("sprint", "lenet5_classic")
