"""Model tests, including the registry contract (every model, every option)."""

import json

import pytest
import torch

import lenetlab
from lenetlab.errors import LenetlabError
from lenetlab.models import create_model, model_entry, param_count
from lenetlab.models.classic import C3_TABLE, rbf_loss
from lenetlab.registry import names


def test_lenet5_param_count():
    assert param_count(create_model("lenet5")) == 61_706


def test_classic_per_layer_counts():
    m = create_model("lenet5_classic")
    counts = {name: sum(p.numel() for p in layer.parameters() if p.requires_grad)
              for name, layer in [("C1", m.c1), ("S2", m.s2), ("C3", m.c3), ("S4", m.s4),
                                  ("C5", m.c5), ("F6", m.f6), ("RBF", m.out)]}
    assert counts == {"C1": 156, "S2": 12, "C3": 1516, "S4": 32, "C5": 48120, "F6": 10164, "RBF": 0}
    assert param_count(m) == 60_000


def test_c3_connection_table_is_respected():
    m = create_model("lenet5_classic")
    w = m.c3.dense_weight()
    for o, ins in enumerate(C3_TABLE):
        for i in range(6):
            nonzero = bool(w[o, i].abs().sum() > 0)
            assert nonzero == (i in ins), (o, i)
    # an S2 map outside the table has no influence on the C3 map
    x = torch.randn(1, 6, 14, 14, requires_grad=True)
    m.c3(x)[0, 0].sum().backward()
    assert x.grad[0, 3:].abs().sum() == 0 and x.grad[0, :3].abs().sum() > 0


def test_rbf_bitmaps_distinct():
    from lenetlab.models.bitmaps import digit_bitmaps

    b = digit_bitmaps()
    assert b.shape == (10, 84) and set(b.unique().tolist()) == {-1.0, 1.0}
    diff = (b[:, None] != b[None]).sum(-1) + torch.eye(10, dtype=torch.long) * 99
    assert diff.min() >= 7


def test_rbf_loss_matches_formula():
    torch.manual_seed(0)
    y = torch.rand(4, 10) * 50       # RBF distances
    t = torch.tensor([3, 0, 9, 5])
    j = 1.5
    expect = torch.stack([y[n, t[n]] + torch.log(torch.exp(torch.tensor(-j)) + torch.exp(-y[n]).sum())
                          for n in range(4)]).mean()
    assert torch.allclose(rbf_loss(-y, t, j), expect)


def test_rbf_output_is_euclidean_distance():
    m = create_model("lenet5_classic")
    f = torch.randn(5, 84)
    d = ((f[:, None, :] - m.out.centres[None]) ** 2).sum(-1)
    assert torch.allclose(m.out(f), d, atol=1e-4)


@pytest.mark.parametrize("act", ["relu", "tanh", "scaled_tanh", "sigmoid", "selu"])
def test_pool_first_is_the_same_function(act):
    """Pool-then-activate (our speed path) equals activate-then-pool, values and gradients."""
    torch.manual_seed(0)
    a = create_model("lenet5", activation=act)
    b = create_model("lenet5", activation=act)
    b.load_state_dict(a.state_dict())
    b.pool_first = False
    assert a.pool_first
    x = torch.randn(8, 1, 28, 28)
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5)


def test_abs_and_avg_do_not_swap():
    assert not create_model("lenet5", activation="abs").pool_first
    assert not create_model("lenet5", pool="avg").pool_first


def test_width_multiplier():
    assert param_count(create_model("lenet5", width=0.5)) < 61_706 / 3


def test_create_model_bad_options():
    with pytest.raises(LenetlabError, match="unknown config key 'model.actvation'"):
        create_model("lenet5", actvation="relu")
    with pytest.raises(LenetlabError, match="'model.width' must be float"):
        create_model("lenet5", width="wide")
    with pytest.raises(LenetlabError, match="unknown activation 'gelu2'"):
        create_model("lenet5", activation="gelu2")
    with pytest.raises(LenetlabError, match="unknown model 'lenet6'; choose from: .*lenet5_classic"):
        create_model("lenet6")


def test_thin_variant_is_a_config():
    m = lenetlab.create_model("lenet5_abs")
    assert m.config.activation == "abs" and type(m).__name__ == "LeNet5"


# ------------------------------------------------------------------ contract tests
def _variants():
    out = [(name, {}) for name in names("model")]
    out += [("lenet5", {"activation": a}) for a in names("activation")]
    out += [("lenet5", {"pool": "avg"}), ("lenet5", {"width": 0.5})]
    return out


@pytest.mark.parametrize("name, opts", _variants(), ids=lambda v: str(v))
def test_contract_forward_backward(name, opts):
    torch.manual_seed(0)
    m = create_model(name, **opts)
    x = torch.randn(3, *m.input_shape)
    out = m(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    from lenetlab.config import TrainConfig
    from lenetlab.train import make_loss

    make_loss(m, TrainConfig())(out, torch.tensor([0, 1, 2])).backward()
    for pname, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, f"{name}{opts}: {pname} gets no gradient"


@pytest.mark.parametrize("name", names("model"))
def test_contract_run_dir_roundtrip(tmp_path, name):
    """Every model trains for a moment, writes a run dir, and reloads to the same outputs."""
    from lenetlab.rundir import load_model, read_summary
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    cfg = resolve("fast", name, overrides={"data": {"train_subset": 256, "test_subset": 128, "val_size": 64},
                                          "train": {"epochs": 1, "batch_size": 64}})
    s = fit(cfg, out=tmp_path / "r", log=None, progress=False)
    model = s.pop("_model")
    summary = read_summary(tmp_path / "r")
    assert summary == json.loads(json.dumps(s))
    for key in ("model", "params", "epochs", "test_accuracy", "wall_seconds"):
        assert key in summary
    assert summary["model"] == name and summary["params"] == param_count(model)
    loaded, cfg2 = load_model(tmp_path / "r")
    x = torch.randn(4, *loaded.input_shape)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert cfg2 == cfg


def test_model_entries_have_descriptions():
    for n in names("model"):
        assert model_entry(n).description
