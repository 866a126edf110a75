"""Noise injection, constant-scale QAT and noisy training (lenetlab.noise; docs/papers/noise.md)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from lenetlab.cli import main
from lenetlab.models import create_model
from lenetlab.noise import NoiseInjector, apply_qat, noisy_accuracy
from lenetlab.noise.qat import quantize_act, quantize_weight
from lenetlab.noise.training import harden


def _x(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,options", [("lenet5", {}), ("lenet5", {"width": 2.0}), ("lenet_deep", {"depth": 6}),
                                          ("lenet5", {"activation": "tanh", "pool": "avg"})])
@pytest.mark.parametrize("relative", [False, True])
def test_sigma_zero_is_exact(name, options, relative):
    torch.manual_seed(0)
    model = create_model(name, **options).eval()
    x = _x()
    with torch.no_grad():
        plain = model(x)
        with NoiseInjector(model, 0.0, relative=relative, seed=3):
            wrapped = model(x)
        after = model(x)
    assert torch.equal(plain, wrapped) and torch.equal(plain, after)


def test_noise_changes_logits_and_is_seeded():
    model = create_model("lenet5").eval()
    x = _x()
    with torch.no_grad():
        clean = model(x)
        outs = []
        for _ in range(2):
            with NoiseInjector(model, 0.1, seed=5):
                outs.append(model(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], clean)


def test_injected_noise_statistics_match_config():
    """Absolute mode: at every site, injected noise has mean 0 and std sigma (large sample)."""
    model = create_model("lenet5").eval()
    sigma = 0.37
    with torch.no_grad(), NoiseInjector(model, sigma, seed=1, record=True) as inj:
        model(_x(64))
    kinds = {k.split(":")[0] for k in inj.stats}
    assert kinds == {"input", "conv", "act", "pool", "linear"}
    assert {"linear:fc3", "conv:conv1", "conv:conv2"} <= set(inj.stats)
    for site, chunks in inj.stats.items():
        n = torch.cat(chunks).double()
        se = sigma / n.numel() ** 0.5
        assert abs(float(n.mean())) < 5 * se, site
        # sample std of N draws has relative standard error ~ 1/sqrt(2N)
        assert abs(float(n.std()) / sigma - 1) < 5 / (2 * n.numel()) ** 0.5 + 1e-3, site


def test_relative_noise_scales_with_site_max_and_sites_are_selectable():
    model = nn.Sequential(nn.Linear(100, 100, bias=False), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(100) * 2.0)
    x = torch.full((200, 100), 1.5)
    x[:, 0] = 3.0            # max|x| = 3 at the input, max|y| = 6 after the linear layer
    with torch.no_grad(), NoiseInjector(model, 0.1, relative=True, sites=["input", "linear"], seed=0,
                                        record=True) as inj:
        model(x)
    assert set(inj.stats) == {"input", "linear:0"}
    assert abs(float(torch.cat(inj.stats["input"]).std()) - 0.1 * 3.0) < 0.01
    # the linear layer sees the noisy input, so its max|y| is about (not exactly) 6
    assert abs(float(torch.cat(inj.stats["linear:0"]).std()) - 0.1 * 6.0) < 0.06


def test_noisy_accuracy_vectorised_draws():
    model = create_model("lenet5").eval()
    x, y = _x(40), torch.arange(40) % 10
    a0 = noisy_accuracy(model, x, y, 0.0, draws=3)
    plain = float((model(x).argmax(1) == y).double().mean())
    assert a0["per_draw"] == [plain] * 3 and a0["std"] < 1e-12
    a = noisy_accuracy(model, x, y, 3.0, draws=4, seed=2)
    assert len(a["per_draw"]) == 4 and a == noisy_accuracy(model, x, y, 3.0, draws=4, seed=2)
    w = noisy_accuracy(model, x, y, 0.0, draws=2, weight_sigma=0.5)
    assert len(w["per_draw"]) == 2
    assert torch.equal(model(x), model(x))   # weights restored after weight noise


def test_quantizers_and_ste():
    w = torch.randn(6, 1, 5, 5, requires_grad=True)
    q = quantize_weight(w, 4, per_channel=True)
    levels = (q / (w.detach().abs().flatten(1).amax(1).view(-1, 1, 1, 1) / 7)).detach()
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 7 + 1e-4
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))          # straight through
    x = torch.tensor([-1.0, 0.2, 0.74, 3.0, 100.0], requires_grad=True)
    y = quantize_act(x, 3, 0.5)                              # levels 0..7 * 0.5
    assert y.tolist() == [0.0, 0.0, 0.5, 3.0, 3.5]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]     # clipped STE


def test_qat_gradients_flow_and_remove_restores_plain_model():
    torch.manual_seed(0)
    model = create_model("lenet5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = apply_qat(model, 4, 1.0)
    loss = nn.functional.cross_entropy(model(_x(32)), torch.arange(32) % 10)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    q.remove()
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_qat16_matches_float(small_run):
    from lenetlab.data import load_splits
    from lenetlab.rundir import load_model
    from lenetlab.train import evaluate

    model, cfg = load_model(small_run)
    splits = load_splits(dataclasses.replace(cfg.data, val_size=0, train_subset=1))
    base = evaluate(model, splits.test_x, splits.test_y)["accuracy"]
    with apply_qat(model, 16, 2.0 ** -8):     # range 0..256, step 1/256
        q = evaluate(model, splits.test_x, splits.test_y)["accuracy"]
    assert abs(q - base) <= 0.001, (q, base)


def test_train_with_qat_and_noise_saves_plain_model(tmp_path, capsys, monkeypatch):
    from lenetlab.rundir import load_model
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    small = {"data": {"train_subset": 600, "test_subset": 200, "val_size": 200},
             "train": {"epochs": 1, "qat_bits": 6, "act_scale": 0.5, "train_noise": 0.2, "train_noise_ramp": 0.5}}
    r = fit(resolve("fast", "lenet5", overrides=small), out=tmp_path / "run", log=None, progress=False)
    model, cfg = load_model(tmp_path / "run")
    assert cfg.train.hardening.qat_bits == 6 and list(model.state_dict()) == list(create_model("lenet5").state_dict())
    assert 0 <= r["test_accuracy"] <= 1
    code = main(["noise", "eval", str(tmp_path / "run"), "--sigma", "0", "0.1", "--draws", "2", "--limit", "100",
                 "--json"])
    assert code == 0
    # --exact: one evaluation per sigma's numbers bit for bit (the QAT fake-quant on, as the CLI applies it)
    capsys.readouterr()
    from lenetlab.noise import inject

    asked = []
    sweep = inject.noisy_accuracy_sweep
    monkeypatch.setattr(inject, "noisy_accuracy_sweep", lambda *a, **k: asked.append(k.get("exact")) or sweep(*a, **k))
    assert main(["noise", "eval", str(tmp_path / "run"), "--sigma", "0.1", "0.7", "--draws", "2", "--limit", "100",
                 "--json", "--exact"]) == 0
    assert asked == [True]
    rows = json.loads(capsys.readouterr().out)["rows"]
    from lenetlab.data import load_splits

    splits = load_splits(dataclasses.replace(cfg.data, val_size=0, train_subset=1, test_subset=100))
    with apply_qat(model, 6, 0.5):
        want = [noisy_accuracy(model, splits.test_x, splits.test_y, s, draws=2, reference=True)["mean"]
                for s in (0.1, 0.7)]
    assert [r["accuracy_mean"] for r in rows] == want


def test_noise_ramp():
    from lenetlab.config import HardeningConfig, TrainConfig

    model = create_model("lenet5")
    h = harden(model, TrainConfig(hardening=HardeningConfig(sigma=0.4, ramp=0.5)), total_steps=100)
    h.step(0)
    assert h.noise.sigma == 0.0
    h.step(25)
    assert abs(h.noise.sigma - 0.2) < 1e-12
    h.step(80)
    assert h.noise.sigma == 0.4
    model.eval()
    x = _x(4)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))   # noise only in training mode
    h.remove()
    assert harden(model, TrainConfig(), 100) is None


@pytest.mark.parametrize("argv,needle", [
    (["noise", "eval", "RUN", "--sigma", "-0.5"], "sigma"),
    (["noise", "eval", "RUN", "--sigma", "0.1", "--sites", "conv,bogus"], "bogus"),
    (["noise", "eval", "RUN", "--sigma", "0.1", "--draws", "0"], "draws"),
    (["train", "--qat-bits", "1", "--out", "OUT"], "2..16"),
    (["train", "--qat-bits", "17", "--out", "OUT"], "2..16"),
    (["train", "--train-noise", "-1", "--out", "OUT"], "hardening.sigma"),
    (["train", "--qat-bits", "8", "--act-scale", "0", "--out", "OUT"], "scale"),
])
def test_cli_bad_input(argv, needle, small_run, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(small_run) if a == "RUN" else str(out) if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lenetlab: error:") and needle in err[0]
    assert not out.exists()


def test_reproduce_noise_tiny(tiny):
    tmp_path, r = tiny("noise")           # sigmas 0.01 and 1 (the contract's override); resume: test_experiments
    assert [c.name for c in r.claims] == ["qat_beats_float_lenet5", "qat_beats_float_lenet5_w4",
                                          "noisy_beats_qat_lenet5", "noisy_beats_qat_lenet5_w4",
                                          "noisy_gain_larger_net"]
    assert all(c.verdict == "inconclusive" and "1 seed" in c.measured for c in r.claims)   # tiny: one seed
    assert (tmp_path / "accuracy_vs_sigma.png").stat().st_size > 0 and (tmp_path / "report.md").exists()
    data = json.loads((tmp_path / "result.json").read_text())
    validation, curves, models = data["tables"].values()
    # every QAT configuration is scored on the validation split; exactly one is chosen per architecture
    assert len(validation) == 4 and sum(row["chosen"] == "yes" for row in validation) == 2
    assert [row["model"] for row in curves[:3]] == ["float", next(row["config"] for row in validation
                                                              if row["chosen"]), "noisy (sigma_train = sigma)"]
    assert all(0 <= row["1"] <= 100 for row in curves)
    # noisy models are trained at the evaluation sigma (one per sigma), the larger net is 4x as wide
    assert {row["model"] for row in models} >= {"float", "noisy0.01", "noisy1"}
    assert {row["params"] for row in models} == {61_706, 972_554}


def test_tensor_network_layers_are_one_noise_site_and_qat_skips_them():
    from lenetlab.noise.inject import leaf_sites

    model = create_model("lenet5_tt", layers="c5,f6", rank=4).eval()
    sites = {name: kind for name, _, kind in leaf_sites(model)}
    assert sites["fc1"] == "linear" and sites["fc2"] == "linear"
    assert not any(name.startswith(("fc1.", "fc2.")) for name in sites)   # the cores are not sites
    x = torch.randn(3, 1, 28, 28)
    seen = {}
    handle = model.fc1.register_forward_hook(lambda m, a, y: seen.setdefault("clean", y.clone()))
    clean = model(x)
    handle.remove()
    with NoiseInjector(model, 0.5, sites=("linear",), seed=0, record=True) as inj:
        noisy = model(x)
    assert "linear:fc1" in inj.stats and inj.stats["linear:fc1"][0].numel() == 3 * 120
    assert not torch.allclose(clean, noisy)
    with apply_qat(model, 8, 1.0):            # generated weights are left alone, the model still runs
        assert model(x).shape == (3, 10)


def test_relative_noise_of_a_time_major_model_is_per_step_and_sample():
    class TimeMajor(nn.Module):
        rule_time_major = True

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 2000, bias=False)
            with torch.no_grad():
                self.fc.weight.fill_(1.0)

        def forward(self, x):           # x: (T, B, 1) -> (T, B, 2000), every feature equal to x
            return self.fc(x)

    model = TimeMajor()
    x = torch.tensor([[[1.0], [100.0]], [[3.0], [0.5]]])      # T = 2, B = 2: very different scales
    with NoiseInjector(model, 0.1, relative=True, sites=("linear",), seed=0, record=True) as inj:
        model(x)
    noise = inj.stats["linear:fc"][0].view(2, 2, 2000)
    std = noise.std(dim=2) / (0.1 * x.squeeze(2).abs())
    # each (step, sample) gets sigma x its own max|y|, not the batch's or the step's maximum
    assert torch.allclose(std, torch.ones(2, 2), atol=0.08), std
