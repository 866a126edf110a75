"""The 2x2 max-pool of LeNet-5 (lenetlab.models.pooling): torch's values without torch's argmax bookkeeping
when no gradient is asked for; with a gradient, the C forward pass on 6-channel channels-last maps (torch's
values, argmax indices and so gradients, bit for bit) and torch's layer elsewhere; torch's own layer while a
graph is traced or exported."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from lenetlab.models import create_model
from lenetlab.models.pooling import MaxPool2x2, max_pool2x2


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, 28, 28, generator=g)
    ties = torch.randint(-2, 3, (3, 4, 10, 10), generator=g).float()      # many equal values per window
    odd = torch.randn(2, 3, 9, 11, generator=g)                           # floor mode drops the last row/col
    return [x, ties, odd, x.contiguous(memory_format=torch.channels_last)]


def test_values_equal_torch_max_pool_bit_for_bit():
    for x in _inputs():
        assert torch.equal(max_pool2x2(x), F.max_pool2d(x, 2))
        with torch.no_grad():
            assert torch.equal(MaxPool2x2()(x), F.max_pool2d(x, 2))
    q = torch.randint(-128, 128, (4, 6, 12, 12), dtype=torch.int32)
    assert torch.equal(max_pool2x2(q), F.max_pool2d(q.double(), 2).to(torch.int32))


def test_gradient_is_torchs_own():
    """With a gradient the layer is torch's max_pool2d (its backward routes each window's gradient to the
    first maximum): the same input gradient as F.max_pool2d, ties included."""
    for x in _inputs():
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        g = torch.randn(F.max_pool2d(x, 2).shape, generator=torch.Generator().manual_seed(1))
        MaxPool2x2()(a).backward(g)
        F.max_pool2d(b, 2).backward(g)
        assert torch.equal(a.grad, b.grad)


def _hard(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random values with what makes a max-pool's choice delicate: windows of ties, NaNs (one, and two in a
    window), -inf, and -0 next to +0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x[:, :, :4, :4] = 0.5
    x[0, 0, 0, 1] = float("nan")
    x[0, 1, 2, 2], x[0, 1, 3, 3] = float("nan"), float("nan")
    x[0, 2, 2:4, 2:4] = float("-inf")
    x[1, 0, 4, 4], x[1, 0, 4, 5], x[1, 0, 5, 4], x[1, 0, 5, 5] = -1.0, -0.0, 0.0, -5.0
    x[-1, -1, -2:, -2:] = torch.tensor([[1.0, 3.0], [3.0, 2.0]])     # the tie of the top right and bottom left
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(4, 6, 28, 28), (3, 5, 7, 9), (2, 3, 6, 6), (2, 10, 7, 6)])
def test_training_kernel_equals_torch_values_indices_and_gradients(shape):
    """The C forward pass with a gradient: the same outputs (NaN where torch's are, the sign of every zero
    too), the same memory layout, torch's argmax indices, so the same input gradients (a -0 gradient
    included)."""
    import lenetlab.models.pooling as pooling

    if pooling._LIBRARY.get() is None:
        pytest.skip(f"no C kernels: {pooling._LIBRARY.why_not()}")
    x = _hard(shape)
    assert pooling._ours(x)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = MaxPool2x2()(a), F.max_pool2d(b, 2)
    assert ya.grad_fn is not None and "TrainPool" in type(ya.grad_fn).__name__
    assert torch.equal(ya.isnan(), yb.isnan()) and torch.equal(ya.nan_to_num(), yb.nan_to_num())
    assert torch.equal(torch.signbit(ya), torch.signbit(yb)) and ya.stride() == yb.stride()
    g = torch.randn(yb.shape, generator=torch.Generator().manual_seed(1))
    g[..., ::3, ::2] = -0.0
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(a.grad, b.grad) and torch.equal(torch.signbit(a.grad), torch.signbit(b.grad))
    assert a.grad.stride() == b.grad.stride()


def test_training_kernel_indices_are_torchs():
    import lenetlab.models.pooling as pooling

    if pooling._LIBRARY.get() is None:
        pytest.skip(f"no C kernels: {pooling._LIBRARY.why_not()}")
    x = _hard((3, 6, 10, 12), seed=2)
    saved = []
    ctx = type("Ctx", (), {"save_for_backward": lambda self, *t: saved.extend(t),
                           "mark_non_differentiable": lambda self, *t: None})()
    out = pooling._TrainPool.forward(ctx, x)
    want, idx = F.max_pool2d_with_indices(x, 2)
    assert torch.equal(saved[1], idx) and torch.equal(out.nan_to_num(), want.nan_to_num())


def test_training_kernel_only_where_it_is_faster(monkeypatch):
    """16 channels (torch's vectors fill), contiguous maps, one channel (both layouts), integers or no C
    kernels: torch's max_pool2d, the same results."""
    import lenetlab.models.pooling as pooling

    cl = torch.channels_last
    for x in (torch.randn(2, 16, 8, 8).contiguous(memory_format=cl), torch.randn(2, 6, 8, 8),
              torch.randn(2, 1, 8, 8).contiguous(memory_format=cl), torch.randn(2, 6, 8, 8).double()):
        assert not pooling._ours(x)
        y = MaxPool2x2()(x.requires_grad_(True))
        assert type(y.grad_fn).__name__.startswith("MaxPool2DWithIndices")
    monkeypatch.setattr(pooling._LIBRARY, "_tried", True)
    monkeypatch.setattr(pooling._LIBRARY, "_lib", None)
    x = _hard((2, 6, 8, 8)).requires_grad_(True)
    assert type(MaxPool2x2()(x).grad_fn).__name__.startswith("MaxPool2DWithIndices")


def test_no_compiler_trains_on_torchs_pool_with_one_warning_even_under_w_error(monkeypatch):
    import warnings

    import lenetlab.models.pooling as pooling
    from lenetlab import native

    monkeypatch.setattr(pooling._LIBRARY, "_tried", False)
    monkeypatch.setattr(pooling._LIBRARY, "_lib", None)
    monkeypatch.setattr(native, "compiler", lambda: None)
    x = _hard((2, 6, 8, 8)).requires_grad_(True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("error")
        y = MaxPool2x2()(x)
    assert type(y.grad_fn).__name__.startswith("MaxPool2DWithIndices")
    assert [str(w.message) for w in seen if "max-pooling" in str(w.message)] == [
        "lenetlab: max-pooling trains on torch's kernel (slower, same results): no C compiler found (set CC)"]


def test_training_with_the_kernel_is_bit_identical(monkeypatch):
    """A few Adam steps of channels-last LeNet-5 (its 6-channel first pool on the C kernel) give the same
    weights as with torch's pool."""
    import lenetlab.models.pooling as pooling
    from lenetlab.train.optim import FusedAdam

    if pooling._LIBRARY.get() is None:
        pytest.skip(f"no C kernels: {pooling._LIBRARY.why_not()}")

    def train() -> list[torch.Tensor]:
        torch.manual_seed(0)
        m = create_model("lenet5").to(memory_format=torch.channels_last)
        opt = FusedAdam(m.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            x = torch.randn(32, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
            x[:, :, :6] = -0.42        # a flat background: conv1 ties everywhere there
            opt.zero_grad()
            F.cross_entropy(m(x), torch.randint(0, 10, (32,), generator=g)).backward()
            opt.step()
        return [p.detach().clone() for p in m.parameters()]

    calls = []
    real = pooling._TrainPool.apply
    monkeypatch.setattr(pooling._TrainPool, "apply", lambda x: calls.append(1) or real(x))
    ours = train()
    assert len(calls) == 4        # the first pool, once a step
    monkeypatch.setattr(pooling._LIBRARY, "_lib", None)
    torchs = train()
    assert all(torch.equal(a, b) for a, b in zip(ours, torchs))


def test_fast_path_taken_only_without_gradient(monkeypatch):
    calls = []
    import lenetlab.models.pooling as pooling

    real = pooling.max_pool2x2
    monkeypatch.setattr(pooling, "max_pool2x2", lambda x: calls.append(1) or real(x))
    pool, x = MaxPool2x2(), torch.randn(2, 3, 8, 8)
    pool(x.requires_grad_(True))
    assert calls == []
    with torch.no_grad():
        pool(x)
    with torch.inference_mode():
        pool(torch.randn(2, 3, 8, 8))
    assert calls == [1, 1]


def test_lenet5_logits_and_hooks_unchanged():
    """LeNet-5's eval logits equal those of the same weights with torch's nn.MaxPool2d; forward hooks on the
    pool (noise injection, fault sites) still see each call."""
    torch.manual_seed(0)
    m = create_model("lenet5").eval()
    assert isinstance(m.pool, torch.nn.MaxPool2d) and type(m.pool) is MaxPool2x2
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        fast = m(x)
        seen = []
        h = m.pool.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        m(x)
        h.remove()
        m.pool = torch.nn.MaxPool2d(2)
        plain = m(x)
    assert torch.equal(fast, plain)
    assert seen == [torch.Size([16, 6, 14, 14]), torch.Size([16, 16, 5, 5])]


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="onnx extra not installed")
def test_onnx_export_keeps_a_maxpool_node():
    import onnx

    from lenetlab.deploy.onnx_export import to_onnx

    proto = onnx.load_from_string(to_onnx(create_model("lenet5").eval(), torch.randn(1, 1, 28, 28), "input"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MaxPool") == 2 and "Max" not in ops, ops
