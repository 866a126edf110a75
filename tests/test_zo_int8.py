"""ElasticZO-INT8 (lenetlab.train.zo_int8): integer-only step, integer kernels against float, run dirs."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lenetlab.errors import LenetlabError
from lenetlab.models import create_model
from lenetlab.train.zo_int8 import (
    Int8Config,
    Int8ElasticZO,
    conv_int,
    conv_pool_int,
    int8_matmul,
    int_cross_entropy,
    integer_matmul,
    quantize_input,
)


class DtypeRecorder(TorchDispatchMode):
    """Records (op, dtype) of every tensor any ATen op returns inside the block."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.seen.append((str(func), t.dtype))
        return out


def _net(cutoff: int, seed: int = 0) -> Int8ElasticZO:
    torch.manual_seed(0)
    return Int8ElasticZO.from_float(create_model("lenet5"), cutoff, Int8Config(seed=seed))


def _batch(n: int = 16) -> tuple[torch.Tensor, int, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 28, 28, generator=g)
    xq, e = quantize_input(x)
    return xq, e, torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("cutoff", [2, 4, 5])
def test_int8_step_creates_no_floating_point_tensor(cutoff):
    net = _net(cutoff)
    xq, e, y = _batch()
    with integer_matmul(), DtypeRecorder() as rec:
        net.train_step(xq, e, y, step=0)
    floats = sorted({op for op, dt in rec.seen if dt.is_floating_point or dt.is_complex})
    assert not floats, floats
    ops = {op for op, _ in rec.seen}
    assert len(rec.seen) > 100 and any("_int_mm" in op for op in ops) and any("randint" in op for op in ops)
    assert {dt for _, dt in rec.seen} <= {torch.int8, torch.int16, torch.int32, torch.int64, torch.bool}


@pytest.mark.parametrize("cutoff", [2, 4, 5])
def test_float32_exact_matmul_trains_the_same_bits_as_int_mm(cutoff, mnist_test):
    """The default engine multiplies int8 by int8 on float32 GEMM: the same int32 products, so the same training,
    bit for bit, as torch._int_mm's; its only floating-point tensors are the GEMM's operands, product and pooling
    (no float in the loss, the perturbations or the updates)."""
    from lenetlab.config import DataConfig
    from lenetlab.data.transforms import to_model_input

    x, y = mnist_test
    xq, e = quantize_input(to_model_input(torch.from_numpy(x[:64]), DataConfig()))
    y = torch.from_numpy(y[:64]).long()
    nets = [_net(cutoff, seed=3), _net(cutoff, seed=3)]
    losses = []
    for k, net in enumerate(nets):
        ctx = integer_matmul() if k else contextlib.nullcontext()
        with ctx:
            losses.append([repr(net.train_step(xq, e, y, step=i)) for i in range(4)])
    assert losses[0] == losses[1]
    for a, b in zip(nets[0].int8_tensors().items(), nets[1].int8_tensors().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1]), a[0]
    with DtypeRecorder() as rec:
        nets[0].train_step(xq, e, y, step=9)
    floats = {op for op, dt in rec.seen if dt.is_floating_point}
    # float32 only for the GEMM and the convolution: their operands (conversion, views), products and the
    # max-pool (two strided maxima)
    gemm = {"aten._to_copy.default", "aten.mm.default", "aten.convolution.default", "aten.view.default",
            "aten._unsafe_view.default", "aten.alias.default", "aten.slice.Tensor", "aten.maximum.default",
            "aten.t.default"}
    assert {"aten.mm.default", "aten.convolution.default"} <= floats <= gemm, floats - gemm


def test_int8_matmul_is_exact_at_the_extremes():
    g = torch.Generator().manual_seed(0)
    for k in (1, 25, 150, 400, 1023):   # up to the largest K float32 holds exactly
        a = torch.randint(-128, 128, (40, k), dtype=torch.int8, generator=g)
        b = torch.randint(-128, 128, (k, 24), dtype=torch.int8, generator=g)
        a[0], b[:, 0] = -128, -128          # the largest sum: K * 2**14
        a[1], b[:, 1] = 127, -128
        want = (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)
        assert torch.equal(int8_matmul(a, b), want) and int(want[0, 0]) == k << 14
        with integer_matmul():
            assert torch.equal(int8_matmul(a, b), want)


def test_conv_int_equals_float_conv_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (3, 6, 14, 14), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (16, 6, 5, 5), dtype=torch.int8, generator=g)
    ref = F.conv2d(x.double(), w.double())
    assert torch.equal(conv_int(x, w, 0).double(), ref)
    ref_pad = F.conv2d(x[:, :1].double(), w[:6, :1].double(), padding=2)
    assert torch.equal(conv_int(x[:, :1].contiguous(), w[:6, :1].contiguous(), 2).double(), ref_pad)


def test_integer_cross_entropy_matches_float_base2():
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-3000, 3000, (64, 10), dtype=torch.int32, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    exp = -9
    loss, grad = int_cross_entropy(acc, exp, y, True)
    z = acc.double() * 2.0 ** exp * math.log(2)            # base-2 logits as natural-log logits
    ref_bits = F.cross_entropy(z, y, reduction="sum") / math.log(2)
    assert loss.dtype == torch.int64
    assert abs(int(loss) / 256 - float(ref_bits)) < 0.02 * 64          # within 0.02 bits per sample
    ref_grad = torch.softmax(z, 1) - F.one_hot(y, 10).double()
    assert (grad.double() / 2**16 - ref_grad).abs().max() < 2e-3


def test_same_seed_same_integer_update_and_exact_restore():
    xq, e, y = _batch()
    nets = [_net(4, seed=s) for s in (3, 3, 4)]
    for n in nets:
        n.train_step(xq, e, y, step=5)
    a, b, c = (n.int8_tensors() for n in nets)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    net = _net(5)
    before = {k: v.clone() for k, v in net.int8_tensors().items()}
    net._perturb(11, +1)
    assert not all(torch.equal(before[k], v) for k, v in net.int8_tensors().items())
    net._perturb(11, -2)
    net._perturb(11, +1)
    assert all(torch.equal(before[k], v) for k, v in net.int8_tensors().items())


def test_integer_engine_matches_the_float_twin(small_run, mnist_test):
    """A BP-trained model quantised to the integer engine keeps its accuracy (within 2 points)."""
    from lenetlab.config import DataConfig
    from lenetlab.data.transforms import to_model_input
    from lenetlab.rundir import load_model

    model, _ = load_model(small_run)
    x, y = mnist_test
    xf = to_model_input(torch.from_numpy(x[:1000]), DataConfig())
    yt = torch.from_numpy(y[:1000].astype("int64"))
    with torch.no_grad():
        float_acc = float((model(xf).argmax(1) == yt).double().mean())
    net = Int8ElasticZO.from_float(model, 4)
    xq, e = quantize_input(xf)
    assert net.accuracy(xq, e, yt) > float_acc - 0.02
    twin = create_model("lenet5")
    twin.load_state_dict(net.float_state())
    with torch.no_grad():
        assert float((twin(xf).argmax(1) == model(xf).argmax(1)).double().mean()) > 0.97


@pytest.mark.slow   # 150 integer ZO steps; the fit path and kill/resume of zo-int8 stay in the fast tier
def test_int8_training_learns_real_mnist():
    from lenetlab.config import DataConfig
    from lenetlab.data import load_splits
    from lenetlab.experiments.zo import train_int8

    splits = load_splits(DataConfig(val_size=0, train_subset=3000, test_subset=500))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the integer kernels' OpenMP threads spin badly on a loaded machine
    try:
        r = train_int8(splits, cutoff=2, steps=150, batch=32, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert r["test_accuracy"] > 0.5, r["test_accuracy"]


def test_fit_elasticzo_int8_run_dir_and_eval(tmp_path):
    from safetensors.torch import load_file

    from conftest import run_cli
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    cfg = resolve("fast", overrides={"data": {"train_subset": 600, "test_subset": 200, "val_size": 0},
                                     "train": {"epochs": 1, "batch_size": 50, "method": "elasticzo-int8",
                                               "zo_layers": 3}})
    s = fit(cfg, out=tmp_path / "r", log=None, progress=False)
    assert 0.0 <= s["int8_test_accuracy"] <= 1.0
    t = load_file(str(tmp_path / "r/model_int8.safetensors"))
    assert t["fc1.weight"].dtype == torch.int8 and t["fc1.weight_exp"].dtype == torch.int32
    assert json.loads((tmp_path / "r/summary.json").read_text())["int8_test_accuracy"] == s["int8_test_accuracy"]
    r = run_cli("eval", str(tmp_path / "r"), "--limit", "200", "--json", check=True)
    assert 0.0 <= json.loads(r.stdout)["test_accuracy"] <= 1.0


def test_int8_rejects_unsupported_models_and_cutoffs():
    with pytest.raises(LenetlabError, match="relu"):
        Int8ElasticZO.from_float(create_model("lenet5", activation="tanh"), 4)
    with pytest.raises(LenetlabError, match=r"\[2, 5\]"):
        Int8ElasticZO.from_float(create_model("lenet5"), 1)


def test_int8_zo_update_is_clamped_to_one_lsb():
    """A huge projected gradient moves each ZO weight by at most 1 LSB (zo_clip = 2**zo_shift), along -sign(g) z."""
    net = _net(5)
    before = {k: v.clone() for k, v in net.int8_tensors().items() if not k.endswith("_exp")}
    net._zo_update(11, 1 << 40, torch.Generator().manual_seed(0))
    after = net.int8_tensors()
    z = _net(5)
    z._perturb(11, +1)   # z = (w + z) - w, regenerated from the same seed
    for k, b in before.items():
        d = after[k].to(torch.int32) - b.to(torch.int32)
        zz = z.int8_tensors()[k].to(torch.int32) - b.to(torch.int32)
        inside = b.abs() < 126   # away from the clamp at +-(127 - eps)
        assert torch.equal(d[inside], -zz[inside]), k


def test_conv_pool_exact_on_both_paths_and_under_reduced_float32_precision():
    """conv + bias + 2x2 max-pool: the default float32 path, the integer path and a float64 reference agree;
    with the opt-in reduced float32 precision (which would round the products) the engine takes the integer
    path, so it stays exact."""
    g = torch.Generator().manual_seed(0)
    for n, c, h, o, pad in ((9, 1, 28, 6, 2), (40, 6, 14, 16, 0)):
        x = torch.randint(-128, 128, (n, c, h, h), dtype=torch.int8, generator=g)
        w = torch.randint(-128, 128, (o, c, 5, 5), dtype=torch.int8, generator=g)
        x[0], w[0] = -128, -128                 # the largest sums
        b = torch.randint(-1000, 1000, (o,), dtype=torch.int32, generator=g)
        ref = (F.max_pool2d(F.conv2d(x.double(), w.double(), padding=pad), 2).to(torch.int32) + b.view(1, o, 1, 1))
        assert torch.equal(conv_pool_int(x, w, b, pad), ref)
        with integer_matmul():
            assert torch.equal(conv_pool_int(x, w, b, pad), ref)
        before = torch.get_float32_matmul_precision()
        try:
            torch.set_float32_matmul_precision("medium")
            assert torch.equal(conv_pool_int(x, w, b, pad), ref)
            assert torch.equal(int8_matmul(x.view(n, -1)[:, :25], w.view(o, -1)[:, :25].t()),
                               (x.view(n, -1)[:, :25].long() @ w.view(o, -1)[:, :25].t().long()).to(torch.int32))
        finally:
            torch.set_float32_matmul_precision(before)


def _zo_weights(net: Int8ElasticZO) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.int8_tensors().items() if not k.endswith("_exp")}


def test_int8_schedule_factor_scales_every_update():
    """lr_q8 = 0 (the end of a cosine schedule) changes no weight, ZO or BP; 256 is the default full step."""
    xq, e, y = _batch()
    for cutoff in (2, 5):
        still, full, default = _net(cutoff), _net(cutoff), _net(cutoff)
        before = _zo_weights(still)
        still.train_step(xq, e, y, step=3, lr_q8=0)
        assert all(torch.equal(before[k], v) for k, v in _zo_weights(still).items())
        full.train_step(xq, e, y, step=3, lr_q8=256)
        default.train_step(xq, e, y, step=3)
        assert all(torch.equal(a, b) for a, b in zip(_zo_weights(full).values(), _zo_weights(default).values()))
        assert not all(torch.equal(before[k], v) for k, v in _zo_weights(full).items())
    with pytest.raises(LenetlabError, match="lr_q8"):
        _net(4).train_step(xq, e, y, step=0, lr_q8=257)


def test_int8_zo_step_keeps_its_real_size_after_a_halving():
    """A tensor halved on saturation (exponent + 1) moves half as many LSBs per step (here: a full 1-LSB step
    becomes a 1-LSB step with probability 1/2), so the step in real units stays what it was."""
    net, halved = _net(5), _net(5)
    ly = halved.layers[1]                        # conv2: 2,400 weights
    ly.w_exp += 1                                # as if halved (the values are irrelevant to the step size)
    g = net.cfg.zo_clip                          # |g| at the clamp: exactly 1 LSB per element before halving
    for n in (net, halved):
        n._zo_update(11, g, torch.Generator().manual_seed(0))
    b0 = _net(5).layers[1].w.to(torch.int32)
    inside = b0.abs() < 120
    moved = [float(((n.layers[1].w.to(torch.int32) - b0)[inside] != 0).double().mean()) for n in (net, halved)]
    assert moved[0] == 1.0
    assert 0.45 < moved[1] < 0.55, moved          # Bernoulli(1/2) over ~2,400 elements (seeded)
    # the other tensors were not halved: identical steps
    assert torch.equal(net.layers[0].w, halved.layers[0].w)


def test_int8_common_rounding_draws_make_a_null_perturbation_read_zero():
    """With eps = 0 both passes see the same weights: sharing the stochastic-rounding draws (crn) makes the
    projected gradient exactly 0, so nothing moves; with independent draws rounding noise alone moves weights."""
    xq, e, y = _batch(32)
    moved = {}
    for crn in (True, False):
        torch.manual_seed(0)
        net = Int8ElasticZO.from_float(create_model("lenet5"), 5, Int8Config(eps=0, crn=crn))
        before = _zo_weights(net)
        for step in range(4):
            net.train_step(xq, e, y, step=step)
        moved[crn] = sum(int((before[k] != v).sum()) for k, v in _zo_weights(net).items())
    assert moved[True] == 0 and moved[False] > 0, moved


def test_int8_stepper_checkpoint_keeps_the_step_exponents(tmp_path):
    """The stepper's state carries the exponents the step sizes refer to, so a resumed run steps the same."""
    from lenetlab.config import TrainConfig, ZOConfig
    from lenetlab.train.zo_int8 import Int8Stepper

    torch.manual_seed(0)
    model = create_model("lenet5")
    tc = TrainConfig(seed=0, lr=1e-3, zo=ZOConfig(method="elasticzo-int8", layers=4))
    st = Int8Stepper(model, tc, 4)
    xb, yb = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2)), torch.arange(8) % 10
    st.step(xb, yb, 1e-3, 0)
    st.net.layers[2].w_exp += 2                  # as if fc1 had been halved twice
    state = st.state_dict()
    other = Int8Stepper(create_model("lenet5"), tc, 4)
    other.load_state_dict(state)
    assert [(ly.w_exp0, ly.b_exp0) for ly in other.net.layers] == [(ly.w_exp0, ly.b_exp0) for ly in st.net.layers]
    assert other.net.layers[2].w_exp - other.net.layers[2].w_exp0 == 2


@pytest.mark.parametrize("zo_halve", [False, True])
def test_int8_saturated_zo_tensor_saturates_unless_asked_to_halve(zo_halve):
    """A ZO tensor at the int8 limit keeps its exponent (it saturates) by default; with zo_halve it is halved
    like a BP tensor. A saturated BP tensor is halved either way."""
    xq, e, y = _batch()
    torch.manual_seed(0)
    net = Int8ElasticZO.from_float(create_model("lenet5"), 4, Int8Config(zo_halve=zo_halve))
    lim = 127 - net.cfg.eps
    net.layers[1].w.view(-1)[:64] = lim          # conv2, a ZO layer: a 1-LSB step cannot move all 64 off the limit
    net.layers[4].w.view(-1)[0] = lim            # fc3: the BP layer at C = 4
    exps = [ly.w_exp for ly in net.layers]
    net.train_step(xq, e, y, step=0)
    assert net.layers[1].w_exp == exps[1] + (1 if zo_halve else 0)
    assert net.layers[4].w_exp == exps[4] + 1
    assert int(net.layers[1].w.abs().max()) <= lim
