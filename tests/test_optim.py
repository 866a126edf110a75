"""FusedAdam against torch.optim.Adam/AdamW (the oracle), and its state_dict round trip."""

import sys

import pytest
import torch

from lenetlab.models import create_model
from lenetlab.train.optim import FusedAdam


def _train(opt_factory, steps=15, model=None):
    torch.manual_seed(0)
    m = model or create_model("lenet5")
    opt = opt_factory(m.parameters())
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        x = torch.randn(8, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (1 + i % 3)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m, opt


@pytest.mark.parametrize("decoupled, torch_cls", [(False, torch.optim.Adam), (True, torch.optim.AdamW)])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_matches_torch(decoupled, torch_cls, wd):
    ours, _ = _train(lambda p: FusedAdam(p, lr=1e-3, weight_decay=wd, decoupled=decoupled))
    ref, _ = _train(lambda p: torch_cls(p, lr=1e-3, weight_decay=wd, foreach=False))
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_state_dict_resume_is_exact():
    full, _ = _train(lambda p: FusedAdam(p, lr=1e-3), steps=10)
    half, opt = _train(lambda p: FusedAdam(p, lr=1e-3), steps=5)
    m2 = create_model("lenet5")
    m2.load_state_dict(half.state_dict())
    opt2 = FusedAdam(m2.parameters(), lr=1e-3)
    opt2.load_state_dict(opt.state_dict())
    g = torch.Generator().manual_seed(1)
    for i in range(10):
        x = torch.randn(8, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        if i < 5:
            continue
        for group in opt2.param_groups:
            group["lr"] = 1e-3 * (1 + i % 3)
        opt2.zero_grad()
        torch.nn.functional.cross_entropy(m2(x), y).backward()
        opt2.step()
    for a, b in zip(full.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow   # a fresh process (a torch import); the fast tier checks the same on a whole `lenetlab train`
def test_no_dynamo_import():   # process: tests/test_cli.py::test_train_cli_small
    """The point of FusedAdam: training never imports torch._dynamo (1.2 s)."""
    import subprocess

    code = ("import sys\nfrom lenetlab.train.optim import FusedAdam\nfrom lenetlab.models import create_model\n"
            "import torch\nm = create_model('lenet5'); o = FusedAdam(m.parameters())\n"
            "m(torch.randn(2,1,28,28)).sum().backward(); o.step()\n"
            "print('torch._dynamo' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
