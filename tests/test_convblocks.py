"""LeNet-5's convolution blocks in C for training (lenetlab.models.convblocks, ``train.native_convs``): torch's
layers are the oracle for values and for the four weight/bias gradients (ties, NaN, other geometries and
widths included); the trainer refuses models and settings the kernels do not fit; without the library
torch's layers run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenetlab.data import load_splits
from lenetlab.errors import LenetlabError
from lenetlab.models import convblocks, create_model
from lenetlab.train import fit
from lenetlab.train.presets import resolve

pytestmark = pytest.mark.skipif(convblocks._LIBRARY.get() is None, reason="no C compiler for the kernels")


def _torch_features(x: torch.Tensor, conv1: nn.Conv2d, conv2: nn.Conv2d) -> torch.Tensor:
    for conv in (conv1, conv2):
        x = F.relu(F.max_pool2d(conv(x), 2))
    return torch.flatten(x, 1)


def _params(m: nn.Module) -> list[torch.Tensor]:
    return [m.conv1.weight, m.conv1.bias, m.conv2.weight, m.conv2.bias]


def _compare(model: nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Values and gradients of the C blocks against torch's layers on the same model and input."""
    want = _torch_features(x, model.conv1, model.conv2)
    got = convblocks.features(x, model.conv1, model.conv2)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed))
    for a, b in zip(torch.autograd.grad(got, _params(model), g), torch.autograd.grad(want, _params(model), g)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()) + 1e-6)


@pytest.fixture(scope="module")
def mnist() -> torch.Tensor:
    cfg = resolve("sprint", overrides={"data": {"train_subset": 96, "test_subset": 16}})
    return load_splits(cfg.data).train_x


def test_values_and_gradients_match_torch_on_mnist(mnist):
    torch.manual_seed(0)
    _compare(create_model("lenet5"), mnist[:64])
    _compare(create_model("lenet5"), mnist[64:65], seed=1)           # one image


@pytest.mark.parametrize("options", [
    {"width": 0.5},                   # 3 and 8 channels: part of a 16-lane vector block
    {"width": 2.0},                   # 12 and 32: two vector blocks
    {"width": 5 / 6},                 # 5 input channels to block 2: odd
    {"input_size": 32, "c1_padding": 0},                 # the 1998 geometry
    {"input_size": 30, "c1_padding": 0},                 # block 2's 9x9 maps: floor mode drops a row
    {"input_size": 29},                                  # block 1's 29x29 maps: floor mode drops a row
])
def test_other_widths_and_geometries_match_torch(options):
    torch.manual_seed(1)
    m = create_model("lenet5", **options)
    side = m.input_shape[1]
    _compare(m, torch.randn(7, 1, side, side))


def test_non_square_images_match_torch():
    torch.manual_seed(4)
    m = create_model("lenet5")
    _compare(m, torch.randn(3, 1, 28, 37))      # the blocks alone: any height and width they can pool
    _compare(m, torch.randn(2, 1, 33, 20))


def test_ties_and_dead_windows_route_gradients_like_torch():
    """Integer images and kernels make exact sums in any order, so many windows hold tied maxima; torch's pool
    gives the gradient to the first of them (row-major), and so must the kernels. Negative biases and zero
    kernels leave block 1 dead: no gradient at all."""
    g = torch.Generator().manual_seed(2)
    m = create_model("lenet5")
    with torch.no_grad():
        for conv in (m.conv1, m.conv2):
            conv.weight.copy_(torch.randint(-1, 2, conv.weight.shape, generator=g).float())
            conv.bias.fill_(0.5)
    x = torch.randint(0, 2, (6, 1, 28, 28), generator=g).float()
    c1 = F.conv2d(x, m.conv1.weight, m.conv1.bias, padding=2)
    windows = c1.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    top = windows.max(-1, keepdim=True).values
    assert int(((windows == top).sum(-1) > 1).logical_and(top.squeeze(-1) > 0).sum()) > 1000   # many live ties
    _compare(m, x)
    with torch.no_grad():
        m.conv1.weight.zero_()
        m.conv1.bias.fill_(-1.0)
    _compare(m, x)
    grads = torch.autograd.grad(convblocks.features(x, m.conv1, m.conv2).sum(), _params(m))
    assert float(grads[0].abs().sum()) == 0.0 and float(grads[1].abs().sum()) == 0.0


def test_nan_propagates_like_torch():
    torch.manual_seed(3)
    m = create_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    x[0, 0, 5, 7] = float("nan")
    want = _torch_features(x, m.conv1, m.conv2)
    got = convblocks.features(x, m.conv1, m.conv2)
    assert torch.equal(got.isnan(), want.isnan()) and bool(got.isnan().any())
    torch.testing.assert_close(got[1], want[1])


def test_gradients_are_deterministic_and_the_input_gradient_falls_back_to_torch(mnist):
    m = create_model("lenet5")
    x = mnist[:32]
    a = torch.autograd.grad(convblocks.features(x, m.conv1, m.conv2).square().sum(), _params(m))
    b = torch.autograd.grad(convblocks.features(x, m.conv1, m.conv2).square().sum(), _params(m))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    xg = x.clone().requires_grad_(True)       # an attack wants the input's gradient: torch's layers
    assert not convblocks.fits(xg, m.conv1, m.conv2) and convblocks.fits(x, m.conv1, m.conv2)
    gx = torch.autograd.grad(convblocks.features(xg, m.conv1, m.conv2).sum(), xg)[0]
    assert gx.shape == x.shape and float(gx.abs().sum()) > 0


def test_model_uses_the_blocks_only_for_training_with_a_gradient(mnist):
    m = create_model("lenet5")
    x = mnist[:8]
    with torch.no_grad():
        plain = m(x)
    m.native_convs = True
    with torch.no_grad():
        assert torch.equal(m(x), plain)                         # inference: torch's layers, unchanged
    calls = []
    orig = convblocks._Features.forward

    def spy(ctx, *a):
        calls.append(1)
        return orig(ctx, *a)

    convblocks._Features.forward = staticmethod(spy)
    try:
        torch.testing.assert_close(m(x), plain, rtol=1e-4, atol=1e-5)
    finally:
        convblocks._Features.forward = staticmethod(orig)
    assert calls == [1]


def test_other_dtypes_and_devices_run_torch_layers(mnist):
    m = create_model("lenet5").double()
    x = mnist[:4]
    assert not convblocks.fits(x.double(), m.conv1, m.conv2) and not convblocks.fits(x, m.conv1, m.conv2)
    f = convblocks.features(x.double(), m.conv1, m.conv2)
    assert f.dtype == torch.float64 and torch.equal(f, _torch_features(x.double(), m.conv1, m.conv2))
    assert not convblocks.fits(x[:0], create_model("lenet5").conv1, create_model("lenet5").conv2)


@pytest.mark.parametrize("conv1, conv2", [
    (nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 16, 5)),         # a 3x3 first kernel
    (nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(4, 16, 5)),         # channels that do not chain (torch raises)
    (nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5, stride=2)),
    (nn.Conv2d(1, 6, 5, padding=2, bias=False), nn.Conv2d(6, 16, 5)),
])
def test_direct_calls_with_other_layers_never_reach_the_kernels(conv1, conv2):
    """features() is public: layers the kernels were not written for run torch's ops (the C code would read
    past their weights), with torch's result or torch's error."""
    x = torch.randn(2, 1, 28, 28)
    assert not convblocks.fits(x, conv1, conv2)
    try:
        want = _torch_features(x, conv1, conv2)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            convblocks.features(x, conv1, conv2)
        return
    assert torch.equal(convblocks.features(x, conv1, conv2), want)


def test_without_the_library_torch_layers_run(monkeypatch, mnist):
    m = create_model("lenet5")
    monkeypatch.setattr(convblocks._LIBRARY, "get", lambda: None)
    x = mnist[:4]
    assert torch.equal(convblocks.features(x, m.conv1, m.conv2), _torch_features(x, m.conv1, m.conv2))


@pytest.mark.parametrize("model, change, message", [
    ("lenet5_classic", None, "plain 5x5|not a LeNet-5|ReLU"),
    ("lenet5_abs", None, "ReLU"),
    ("lenet5", "hook", "hooks"),
    ("lenet5", "stride", "plain 5x5"),
])
def test_check_refuses_models_the_kernels_do_not_fit(model, change, message):
    m = create_model(model)
    if change == "hook":
        m.conv2.register_forward_hook(lambda *a: None)
    elif change == "stride":
        m.conv2.stride = (2, 2)
    with pytest.raises(LenetlabError, match=message):
        convblocks.check(m)
    convblocks.check(create_model("lenet5"))        # the plain one passes
    with pytest.raises(LenetlabError, match="plugins noise"):
        convblocks.check(create_model("lenet5"), ["noise"])
    with pytest.raises(LenetlabError, match="on the CPU"):
        convblocks.check(create_model("lenet5"), [], torch.device("meta"))


def test_trainer_refuses_before_writing_and_resets_the_model(tmp_path):
    small = {"data": {"train_subset": 256, "test_subset": 64}, "train": {"batch_size": 64}}
    cfg = resolve("fast", "lenet5_classic", overrides={**small, "train": {**small["train"], "native_convs": True}})
    with pytest.raises(LenetlabError, match="native_convs"):
        fit(cfg, out=tmp_path / "run", log=None, progress=False)
    assert not (tmp_path / "run").exists()
    cfg = resolve("sprint", overrides=small)
    assert cfg.train.native_convs
    s = fit(cfg, log=None, progress=False)
    assert s["_model"].native_convs is False and 0.0 <= s["test_accuracy"] <= 1.0
