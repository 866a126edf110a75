"""The 2x2 max-pool of LeNet-5 (lenetlab.models.pooling): torch's values without torch's argmax bookkeeping
when no gradient is asked for; torch's own layer with a gradient and while a graph is traced or exported."""

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
