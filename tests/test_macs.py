"""MAC counter: hand counts for LeNet-5 (modern and 1998), PCA-LR, and every registered model.

Convention (lenetlab.models.macs): MACs = multiply-accumulates of the weight
layers per image; bias additions, pooling reads and activations are counted
separately in ``other_ops``; the 1998 C3 counts connected map pairs only.
"""

import pytest
import torch
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models import create_model
from lenetlab.models.macs import count_macs, macs_of
from lenetlab.registry import names

# modern LeNet-5, 28x28 input, C1 padded by 2 (so C1 outputs 28x28)
C1 = 6 * 28 * 28 * (1 * 5 * 5)        # 6 maps x 784 pixels x 25 taps          = 117,600
C3 = 16 * 10 * 10 * (6 * 5 * 5)       # 16 maps x 100 pixels x 6 inputs x 25    = 240,000
F5 = 120 * (16 * 5 * 5)               # 120 units x 400 inputs                  =  48,000
F6 = 84 * 120                         #                                          =  10,080
OUT = 10 * 84                         #                                          =     840
LENET5 = C1 + C3 + F5 + F6 + OUT      #                                          = 416,520
BIAS = 6 * 28 * 28 + 16 * 10 * 10 + 120 + 84 + 10          # one add per output  =   6,518
POOL = 6 * 28 * 28 + 16 * 10 * 10                          # 2x2 pools read each input once = 6,304


def test_lenet5_hand_count():
    assert LENET5 == 416_520
    r = count_macs(create_model("lenet5", activation="tanh", pool="avg"))
    per_layer = {row.name: row.macs for row in r.layers if row.macs}
    assert per_layer == {"conv1": C1, "conv2": C3, "fc1": F5, "fc2": F6, "fc3": OUT}
    assert r.total == LENET5 == sum(row.macs for row in r.layers)
    # tanh is applied before pooling: on 6x28x28 + 16x10x10 + 120 + 84 elements
    assert r.other_ops == {"bias": BIAS, "pooling": POOL, "activation": 4704 + 1600 + 120 + 84}
    # MACs + bias adds + pooling = 429,342: the paper's "~0.43 M"
    assert LENET5 + BIAS + POOL == 429_342
    # the shared pooling module is counted at both of its calls
    assert [row.name for row in r.layers if "pool" in row.name] == ["pool", "pool#2"]


def test_lenet5_relu_pool_first_counts_fewer_activations():
    r = count_macs(create_model("lenet5"))          # relu + max-pool: activation after pooling
    assert r.total == LENET5
    assert r.other_ops["activation"] == 6 * 14 * 14 + 16 * 5 * 5 + 120 + 84


def test_width_multiplier_hand_count():
    # width 0.5: 3, 8, 60, 42 hidden units
    expect = 3 * 784 * 25 + 8 * 100 * (3 * 25) + 60 * (8 * 25) + 42 * 60 + 10 * 42
    assert expect == 133_740
    assert macs_of(create_model("lenet5", width=0.5)) == expect


def test_classic_hand_count_counts_connected_c3_pairs_only():
    c1 = 6 * 28 * 28 * 25                 # 117,600 (32x32 input, no padding)
    s2 = 6 * 14 * 14                      #   1,176 coefficient multiplies
    c3 = 60 * 10 * 10 * 25                # 150,000: 60 connected (C3, S2) map pairs of the 96
    s4 = 16 * 5 * 5                       #     400
    c5 = 120 * 16 * 25                    #  48,000
    f6 = 84 * 120                         #  10,080
    rbf = 10 * 84                         #     840 squared differences
    r = count_macs(create_model("lenet5_classic"))
    per_layer = {row.name: row.macs for row in r.layers if row.macs}
    assert per_layer == {"c1": c1, "s2": s2, "c3": c3, "s4": s4, "c5": c5, "f6": f6, "out": rbf}
    assert r.total == 328_096 == c1 + s2 + c3 + s4 + c5 + f6 + rbf
    # PyTorch's FLOP counter sees the dense masked C3 (all 96 pairs) and no subsampling multiplies
    assert r.dense_equivalent == c1 + 16 * 100 * 6 * 25 + c5 + f6 + rbf


def test_pca_logreg_cost():
    r = count_macs(create_model("pca_logreg"))
    assert r.total == 784 * 100 + 100 * 10 == 79_400
    assert {row.name: row.macs for row in r.layers} == {"pca": 78_400, "linear": 1_000}


@pytest.mark.parametrize("name", names("model"))
def test_every_registered_model_is_counted(name):
    m = create_model(name)
    m.train()
    r = count_macs(m)
    assert r.total > 0 and r.layers
    assert r.total == sum(row.macs for row in r.layers)
    assert m.training                      # the model's mode is restored
    assert all(v >= 0 for v in r.other_ops.values())


def test_layers_without_sparsity_agree_with_the_flop_counter():
    for opts in ({}, {"activation": "tanh", "pool": "avg"}, {"width": 0.5}):
        r = count_macs(create_model("lenet5", **opts))
        assert r.total == r.dense_equivalent


def test_matmul_outside_any_layer_is_counted():
    class Functional(nn.Module):
        input_shape = (1, 4, 4)

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(16, 3))
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(torch.tanh(x.flatten(1) @ self.w))

    r = count_macs(Functional())
    assert r.total == 16 * 3 + 3 * 2
    assert any(row.name == "(outside layers)" and row.macs == 48 for row in r.layers)


def test_missing_input_shape_is_a_clean_error():
    with pytest.raises(LenetlabError, match="input_shape"):
        count_macs(nn.Linear(3, 2))
    assert count_macs(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), input_shape=(1, 3, 4)).total == 24


@pytest.mark.parametrize("encoding, expected", [
    # direct encoding: conv1 + pool run once on the image, every later layer at each of the T steps
    ("direct", C1 + 4 * (C3 + F5 + F6 + OUT)),
    # rate (Poisson) encoding: the whole network at every step
    ("rate", 4 * LENET5),
])
def test_spiking_lenet_counts_every_time_step(encoding, expected):
    r = count_macs(create_model("lenet5_snn", steps=4, encoding=encoding))
    assert r.total == expected
    one_step = count_macs(create_model("lenet5_snn", steps=1, encoding=encoding)).total
    assert one_step == LENET5 and r.total > one_step


# ---------------------------------------------------------------- one counter: flat models, engine, NVF, fused
def _flat(name: str):
    """(model, flat float32 model) of an untrained registered model, or None if it has no flat exporter."""
    from lenetlab.config import DataConfig
    from lenetlab.deploy.graph import to_flat
    from lenetlab.models import model_entry

    torch.manual_seed(0)
    model = create_model(name).eval()
    try:
        fm = to_flat(model, DataConfig(**model_entry(name).data_defaults))
    except LenetlabError:
        return None
    # a compressed model ships (and deploys) the dense weights it represents: count those
    return (model.materialize() if hasattr(model, "materialize") else model), fm


@pytest.mark.parametrize("name", names("model"))
def test_flat_counts_match_count_macs_layer_by_layer(name):
    """The flat-model counter and the PyTorch trace agree on every layer with MACs, in network order."""
    from lenetlab.models.macs import flat_layer_macs, flat_macs

    pair = _flat(name)
    if pair is None:
        pytest.skip(f"{name} has no flat-format exporter")
    model, fm = pair
    report = count_macs(model)
    traced = [r.macs for r in report.layers if r.macs]
    flat = [flat_layer_macs(layer) for layer in fm.layers if flat_layer_macs(layer)]
    assert flat == traced
    assert flat_macs(fm) == report.total


@pytest.fixture(scope="module")
def calibration(mnist_test):
    return mnist_test[0][:32]


@pytest.mark.parametrize("name", names("model"))
def test_engine_nvf_and_fused_counts_match_the_one_counter(name, calibration):
    """IntEngine.macs (and hardened copies), NVF protection costs and the fused schedule's useful MACs are
    the flat counter's numbers for the same layers."""
    from lenetlab.deploy.quantize import quantize
    from lenetlab.faults.harden import harden
    from lenetlab.faults.nvf import protection_cost
    from lenetlab.fused.counting import count_fused, count_layer_by_layer
    from lenetlab.fused.schedule import Schedule
    from lenetlab.fused.stages import stages
    from lenetlab.models.macs import flat_layer_macs, flat_macs
    from lenetlab.quant.engine import IntEngine

    pair = _flat(name)
    if pair is None:
        pytest.skip(f"{name} has no flat-format exporter")
    model, fm = pair
    fm8 = quantize(fm, calibration)
    eng = IntEngine(fm8)
    assert eng.macs() == flat_macs(fm8) == flat_macs(fm) == count_macs(model).total
    for j, st in enumerate(eng.stages):
        assert int(protection_cost(eng, j)[:, 0].sum()) == flat_layer_macs(fm8.layers[st.flat_index])
    # a protected neuron costs exactly its own MACs once more per copy
    j = next(j for j, st in enumerate(eng.stages) if st.op == "conv")
    tmr = harden(eng, [(j, 0)], "tmr")
    assert tmr.macs() - eng.macs() == 2 * int(protection_cost(eng, j)[0, 0])
    group = stages(fm8)
    want = sum(flat_layer_macs(fm8.layers[i]) for s in group for i in range(s.first, s.last + 1))
    assert count_layer_by_layer(group, fm8).useful_macs == want
    fused = count_fused(Schedule(tuple(group), 1), fm8)
    assert fused.useful_macs == want and fused.macs >= want      # executed MACs add the recomputation
