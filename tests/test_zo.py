"""SPSA zeroth-order and ElasticZO (lenetlab.train.zeroth_order): oracle, determinism, cutoffs, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from lenetlab.config import DataConfig, TrainConfig, ZOConfig
from lenetlab.errors import LenetlabError
from lenetlab.models import create_model
from lenetlab.train import fit
from lenetlab.train.presets import resolve
from lenetlab.train.zeroth_order import (
    DEFAULT_ZO_CLIP,
    DEFAULT_ZO_LR,
    ElasticZOStepper,
    make_stepper,
    perturb_,
    spsa_estimate,
    step_seed,
    weight_layers,
)

TINY = {"data": {"train_subset": 1000, "test_subset": 300, "val_size": 0},
        "train": {"epochs": 1, "batch_size": 50, "lr": 2e-3, "schedule": "constant"}}


def _cos(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    va, vb = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float(va @ vb / (va.norm() * vb.norm()))


def test_spsa_average_matches_autograd():
    """Oracle: the mean of 400 SPSA estimates points along autograd's gradient (cosine > 0.9). With d = 51
    parameters the mean of q Gaussian probes has cosine about 1 / sqrt(1 + d / q) ~ 0.94 with the gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 3, (32,))
    params = list(model.parameters())
    F.cross_entropy(model(x), y).backward()
    exact = [p.grad.clone() for p in params]
    before = [p.detach().clone() for p in params]

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    est = spsa_estimate(params, loss, eps=1e-4, q=400, seed=123)
    assert _cos(est, exact) > 0.9
    assert _cos(spsa_estimate(params, loss, eps=1e-4, q=1, seed=7), exact) < 0.6   # one probe is noisy
    # every probe restores the parameters (to rounding)
    assert all(torch.allclose(p, b, atol=1e-12) for p, b in zip(params, before))


def _stepper(cutoff: int, seed: int = 0, q: int = 1, clip: float | None = None) -> tuple[nn.Module, ElasticZOStepper]:
    torch.manual_seed(0)
    m = create_model("lenet5")
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    return m, ElasticZOStepper(m, cutoff, F.cross_entropy, opt, eps=1e-3, q=q, seed=seed, clip=clip)


def test_same_seed_same_update_bit_for_bit():
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    states = []
    for seed in (5, 5, 6):
        m, st = _stepper(5, seed=seed, q=2)
        st.step(x, y, 1e-3, step=3)
        states.append([p.detach().clone() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(states[0], states[1]))
    assert not all(torch.equal(a, b) for a, b in zip(states[0], states[2]))


def test_zo_update_is_minus_lr_g_z_with_regenerated_z():
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    m, st = _stepper(5, seed=1)
    before = [p.detach().clone() for p in m.parameters()]
    st.step(x, y, 1e-2, step=0)
    (g,) = st.last_projected
    z = [p.clone() for p in before]
    perturb_(z, step_seed(1, 0, 0, 1), 1.0)   # z = (before + z) - before
    for b, a, zz in zip(before, m.parameters(), z):
        assert torch.allclose(a - b, -1e-2 * g * (zz - b), atol=1e-6)


def test_clipped_update_is_minus_lr_clamped_g_z():
    """clip bounds the g of the update only: last_projected keeps the raw (paper's) g, z is unchanged."""
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    m0, st0 = _stepper(5, seed=1)
    st0.step(x, y, 1e-2, step=0)
    (raw,) = st0.last_projected
    clip = abs(raw) / 4   # guaranteed to bind
    m, st = _stepper(5, seed=1, clip=clip)
    before = [p.detach().clone() for p in m.parameters()]
    st.step(x, y, 1e-2, step=0)
    assert st.last_projected == [raw]
    z = [p.clone() for p in before]
    perturb_(z, step_seed(1, 0, 0, 1), 1.0)
    g = clip if raw > 0 else -clip
    for b, a, zz in zip(before, m.parameters(), z):
        assert torch.allclose(a - b, -1e-2 * g * (zz - b), atol=1e-6)
    # a clip that does not bind changes nothing, bit for bit
    m2, st2 = _stepper(5, seed=1, clip=abs(raw) * 2)
    st2.step(x, y, 1e-2, step=0)
    assert all(torch.equal(a, b) for a, b in zip(m0.parameters(), m2.parameters()))


def test_make_stepper_defaults_for_zo():
    """Without train.zo.lr the ZO part peaks at DEFAULT_ZO_LR (whatever train.lr is), with the default clip."""
    m = create_model("lenet5")
    for lr in (1e-3, 6e-3):
        tc = TrainConfig(zo=ZOConfig(method="zo"), lr=lr)
        st = make_stepper(m, tc, F.cross_entropy, torch.optim.SGD(m.parameters(), lr=lr))
        assert st.zo_lr_scale * lr == pytest.approx(DEFAULT_ZO_LR) and st.clip == DEFAULT_ZO_CLIP
    st = make_stepper(m, TrainConfig(zo=ZOConfig(method="zo", lr=1e-4), lr=1e-3), F.cross_entropy,
                      torch.optim.SGD(m.parameters(), lr=1e-3))
    assert st.zo_lr_scale * 1e-3 == pytest.approx(1e-4)
    with pytest.raises(LenetlabError, match="clip must be positive"):
        ElasticZOStepper(m, 5, F.cross_entropy, None, clip=0.0)


def test_elasticzo_layers_split_and_frozen_during_step():
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    m, st = _stepper(3)
    assert [type(ly).__name__ for ly in weight_layers(m)] == ["Conv2d", "Conv2d", "Linear", "Linear", "Linear"]
    fc2_before = m.fc2.weight.detach().clone()
    st.step(x, y, 1e-3, step=0)
    # BP part was updated by the optimiser; the ZO layers never got a .grad; requires_grad is restored
    assert not torch.equal(m.fc2.weight, fc2_before)
    assert all(p.grad is None for p in st.zo_params) and all(p.requires_grad for p in m.parameters())
    assert len(st.zo_params) == 6 and len(st.bp_params) == 4


def test_pure_bp_cutoff_equals_ordinary_trainer(tmp_path):
    """ElasticZO with cutoff 0 is the ordinary trainer, weight for weight."""
    base = resolve("fast", overrides=TINY)
    ezo = resolve("fast", overrides={**TINY, "train": {**TINY["train"], "method": "elasticzo", "zo_layers": 0}})
    a = fit(base, out=tmp_path / "bp", log=None, progress=False)
    b = fit(ezo, out=tmp_path / "ezo", log=None, progress=False)
    assert a["test_accuracy"] == b["test_accuracy"]
    wa, wb = load_file(str(tmp_path / "bp/model.safetensors")), load_file(str(tmp_path / "ezo/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_elasticzo_beats_vanilla_zo_at_equal_steps():
    """50 steps (one epoch of 1.6k real MNIST images): conv by ZO + FC by BP >> everything by ZO (the
    reproduce run quotes the full comparison)."""
    from lenetlab.data import load_splits
    from lenetlab.experiments.zo import train_float

    splits = load_splits(DataConfig(val_size=0, train_subset=1600, test_subset=300))
    zo = train_float(splits, cutoff=5, steps=50, batch=32, lr=1e-3, zo_lr=2e-4, eps=1e-3, q=1, seed=0)
    ezo = train_float(splits, cutoff=2, steps=50, batch=32, lr=1e-3, zo_lr=2e-4, eps=1e-3, q=1, seed=0)
    assert ezo["test_accuracy"] > zo["test_accuracy"] + 0.3, (zo["test_accuracy"], ezo["test_accuracy"])


def test_fit_with_zo_methods_writes_a_usable_run(tmp_path):
    cfg = resolve("fast", overrides={**TINY, "train": {**TINY["train"], "method": "elasticzo", "zo_layers": 4,
                                                       "zo_q": 2}})
    s = fit(cfg, out=tmp_path / "r", log=None, progress=False)
    assert 0.0 <= s["test_accuracy"] <= 1.0 and (tmp_path / "r/model.safetensors").is_file()


@pytest.mark.parametrize("train,match", [
    ({"method": "nope"}, "unknown train.zo.method 'nope'; choose from: bp, zo, elasticzo, elasticzo-int8"),
    ({"method": "elasticzo", "zo_layers": 6}, r"zo.layers must be in \[0, 5\]"),
    ({"zo": {"method": "zo", "eps": 0.0}}, "zo.eps must be positive"),
    ({"method": "zo", "zo_q": 0}, "zo.q must be >= 1"),
    ({"method": "elasticzo-int8", "zo_layers": 1}, r"zo.layers must be in \[2, 5\]"),
])
def test_bad_zo_config_is_a_clean_error(train, match):
    cfg = resolve("fast", overrides={**TINY, "train": {**TINY["train"], **train}})
    with pytest.raises(LenetlabError, match=match):
        fit(cfg, log=None, progress=False)


def test_zo_config_fields_exist():
    tc = TrainConfig()
    assert (tc.zo.method, tc.zo.layers, tc.zo.q) == ("bp", None, 1)


def test_int8_journal_key_names_every_field_of_the_integer_recipe():
    """Changing any Int8Config field that defines the step (all but q and seed), or the schedule, changes the
    INT8 cells' journal key, so a journal of another recipe is never reused; q and seed do not enter it."""
    import dataclasses

    from lenetlab.experiments import zo as Z
    from lenetlab.train.zo_int8 import Int8Config

    s = Z.Settings(**Z.settings(False))
    base = Int8Config()
    tag = Z.int8_recipe(s, base)
    assert tag == Z.int8_recipe(s)
    for f in dataclasses.fields(Int8Config):
        v = getattr(base, f.name)
        other = (not v) if isinstance(v, bool) else (1 if v is None else None if f.name == "zo_clip" else v + 1)
        changed = Z.int8_recipe(s, dataclasses.replace(base, **{f.name: other}))
        assert (changed == tag) == (f.name in ("q", "seed")), f.name
    assert Z.int8_recipe(dataclasses.replace(s, cosine=not s.cosine), base) != tag
    r = {"label": "int8-4", "kind": "int8", "cutoff": 4, "seed": 0}
    assert Z._key("mnist", r, s) == f"mnist/int8-4/seed0/{tag}"
    assert Z._key("mnist", {**r, "label": "ezo-4", "kind": "float"}, s) == "mnist/ezo-4/seed0"
