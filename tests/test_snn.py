"""Spiking LeNet-5 (lenetlab.models.spiking) and its surrogate gradients."""

from __future__ import annotations

import math

import pytest
import torch

from lenetlab.errors import LenetlabError
from lenetlab.models import create_model
from lenetlab.models.spiking import LIF
from lenetlab.models.surrogate import make_spike


def test_lif_matches_hand_computation():
    """Constant current 0.4, beta 0.9, theta 1, reset by subtraction."""
    lif = LIF(0.9, 1.0, make_spike("fast_sigmoid", 5.0))
    s = lif(torch.full((6, 1), 0.4))
    u, expect = 0.0, []
    for _ in range(6):
        u = 0.9 * u + 0.4
        spk = float(u > 1.0)
        expect.append(spk)
        u -= spk
    assert s.flatten().tolist() == expect == [0, 0, 1, 0, 0, 1]
    assert lif.mem is not None and abs(float(lif.mem) - u) < 1e-6
    lif.reset_state()
    assert lif.mem is None


def test_leaky_integrator_readout():
    lif = LIF(0.5, 1.0, make_spike("arctan", 2.0), fire=False)
    out = lif(torch.ones(3, 1))
    assert out.flatten().tolist() == [1.0, 1.5, 1.75]


@pytest.mark.parametrize("name, formula", [
    ("fast_sigmoid", lambda v, k: 1 / (k * v.abs() + 1) ** 2),
    ("arctan", lambda v, a: (a / 2) / (1 + (math.pi * a * v / 2) ** 2)),
])
def test_surrogate_gradients(name, formula):
    v = torch.linspace(-2, 2, 41, requires_grad=True)
    s = make_spike(name, 3.0)(v)
    assert torch.equal(s, (v > 0).float())
    s.sum().backward()
    assert torch.allclose(v.grad, formula(v.detach(), 3.0))


def test_snntorch_oracle():
    snn = pytest.importorskip("snntorch")
    torch.manual_seed(0)
    cur = torch.rand(8, 3, 5)
    ours = LIF(0.8, 1.0, make_spike("fast_sigmoid", 25.0))(cur)
    leaky = snn.Leaky(beta=0.8, threshold=1.0, reset_mechanism="subtract")
    mem = leaky.init_leaky()
    theirs = []
    for t in range(8):
        spk, mem = leaky(cur[t], mem)
        theirs.append(spk)
    assert torch.equal(ours, torch.stack(theirs))


def test_each_call_starts_from_rest():
    torch.manual_seed(0)
    m = create_model("lenet5_snn").eval()
    x = torch.randn(4, 1, 28, 28)
    a = m(x)
    b = m(x)
    assert torch.equal(a, b)
    assert torch.allclose(m(x[:1]), a[:1], atol=1e-5)      # independent of the rest of the batch
    assert m.lif1.mem is not None
    m.reset_state()
    assert all(lif.mem is None for lif in (m.lif1, m.lif2, m.lif3, m.lif4, m.out))


def test_options_and_encodings():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    for opts in ({"readout": "spikes"}, {"encoding": "rate"}, {"surrogate": "arctan", "steps": 2}):
        m = create_model("lenet5_snn", **opts)
        out = m(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        out.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, opts
        x.grad = None
    counts = create_model("lenet5_snn", readout="spikes", steps=3)(x)
    assert set(counts.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    rate = create_model("lenet5_snn", encoding="rate")
    torch.manual_seed(5)
    r1 = rate(x)
    torch.manual_seed(5)
    assert torch.equal(r1, rate(x))               # Poisson draws follow the global seed


def test_bad_options():
    with pytest.raises(LenetlabError, match="model.steps must be >= 1"):
        create_model("lenet5_snn", steps=0)
    with pytest.raises(LenetlabError, match="model.encoding must be 'direct' or 'rate'"):
        create_model("lenet5_snn", encoding="latency")
    with pytest.raises(LenetlabError, match="unknown surrogate 'relu'; choose from: fast_sigmoid, arctan"):
        create_model("lenet5_snn", surrogate="relu")


def test_bp_snn_learns(tmp_path):
    """BPTT through the surrogate: 1 epoch on 2k real MNIST images (0.77 measured; 0.81 with 3k, 0.82 with 5k)."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    cfg = resolve("fast", "lenet5_snn", overrides={"data": {"train_subset": 2000, "test_subset": 300},
                                                  "train": {"epochs": 1, "batch_size": 64}})
    s = fit(cfg, out=tmp_path / "r", log=None, progress=False)
    assert s["test_accuracy"] > 0.6
