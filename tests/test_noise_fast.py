"""The fast noisy-accuracy path against its oracle, the hook-based reference (lenetlab.noise.inject)."""

from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models import create_model
from lenetlab.noise import apply_qat, noisy_accuracy
from lenetlab.noise.inject import _fast_pools, _pool2x2, _PrefetchedNoise


@pytest.fixture(autouse=True)
def one_thread():
    """The reference is slow on tiny batches with two threads on a busy machine; neither path's numbers
    depend on the thread count (the fast path sets its own and restores it: test_model_state_is_restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model(name: str = "lenet5", **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **options).eval()


@pytest.mark.parametrize("name,options", [("lenet5", {}), ("lenet5", {"activation": "tanh", "pool": "avg"}),
                                          ("lenet_deep", {"depth": 4})])
@pytest.mark.parametrize("kw", [{}, {"relative": True}, {"relative": True, "sites": ("conv", "linear")},
                                {"sites": ("input", "pool")}])
def test_fast_path_returns_exactly_the_reference(name, options, kw):
    """Same seed, same batches: the same generator stream and float operations, so the same result dict.
    37 images, 3 draws, batch 39: forwards of 13, 13, 11 images (on-demand, prefetched plan, new size)."""
    model = _model(name, **options)
    x, y = _data(37)
    for sigma in (0.0, 0.3, 2.0):
        ref = noisy_accuracy(model, x, y, sigma, draws=3, seed=4, batch_size=39, reference=True, **kw)
        assert noisy_accuracy(model, x, y, sigma, draws=3, seed=4, batch_size=39, **kw) == ref, sigma


def test_fast_path_uses_the_background_draws_and_still_matches():
    """Many equal batches: most forwards get normals drawn ahead on the worker thread."""
    model = _model()
    x, y = _data(60)
    ref = noisy_accuracy(model, x, y, 0.5, draws=5, seed=1, batch_size=25, reference=True)
    assert noisy_accuracy(model, x, y, 0.5, draws=5, seed=1, batch_size=25) == ref


def test_fast_path_matches_with_qat_on():
    model = _model()
    x, y = _data(20)
    with apply_qat(model, 4, 0.5):
        ref = noisy_accuracy(model, x, y, 0.2, draws=2, seed=0, batch_size=10, reference=True)
        assert noisy_accuracy(model, x, y, 0.2, draws=2, seed=0, batch_size=10) == ref


def test_sigma_zero_is_the_clean_accuracy_and_seeds_are_deterministic():
    model = _model()
    x, y = _data(30)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    a0 = noisy_accuracy(model, x, y, 0.0, draws=3)
    assert a0["per_draw"] == [clean] * 3 and a0["std"] == 0.0
    a = noisy_accuracy(model, x, y, 3.0, draws=4, seed=7)
    assert a == noisy_accuracy(model, x, y, 3.0, draws=4, seed=7)
    b = noisy_accuracy(model, x, y, 3.0, draws=4, seed=8)
    assert a["per_image"] != b["per_image"]


def test_model_state_is_restored():
    model = _model().train()
    x, y = _data(10)
    torch.set_num_threads(2)
    noisy_accuracy(model, x, y, 0.4, draws=2)
    assert model.training and torch.get_num_threads() == 2
    assert "forward" not in vars(model.pool)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("kw,needle", [({"sigma": -0.1}, "sigma"), ({"sigma": float("nan")}, "sigma"),
                                       ({"sigma": float("inf")}, "sigma"), ({"draws": 0}, "draws"),
                                       ({"sites": ("conv", "bogus")}, "bogus")])
def test_bad_input(kw, needle):
    model = _model()
    x, y = _data(4)
    args = {"sigma": 0.1, "draws": 2} | kw
    with pytest.raises(LenetlabError, match=needle):
        noisy_accuracy(model, x, y, **args)
    assert "forward" not in vars(model.pool) and not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("reference", [False, True])
def test_images_and_labels_must_pair_up(reference):
    model = _model()
    x, y = _data(4)
    with pytest.raises(LenetlabError, match="4 images but 3 labels"):
        noisy_accuracy(model, x, y[:3], 0.1, draws=2, reference=reference)


def test_strided_pool_equals_max_pool2d():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 4, 8, 8), (2, 3, 7, 9), (5, 6, 5), (1, 1, 2, 2)]:
        x = torch.randn(shape, generator=g)
        x.view(-1)[::7] = float("nan")
        x.view(-1)[3::11] = float("-inf")
        x.view(-1)[5::13] = float("inf")
        assert torch.equal(_pool2x2(x).isnan(), F.max_pool2d(x, 2).isnan())
        assert torch.equal(_pool2x2(x).nan_to_num(), F.max_pool2d(x, 2).nan_to_num()), shape
    odd = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(3), nn.MaxPool2d(2))
    with _fast_pools(odd):
        # only the plain 2x2 floor-mode pool is swapped, and only inside the block
        assert [("forward" in vars(m)) for m in odd] == [False, False, True]
    assert not any("forward" in vars(m) for m in odd)


def _injected(model: nn.Module, x: torch.Tensor, sigma: float, relative: bool, seed: int = 0):
    """Per site call: (clean output, injected noise) of one forward with :class:`_PrefetchedNoise`, read by hooks
    registered before and after its own (a forward hook's return value is what later hooks see)."""
    from lenetlab.noise.inject import leaf_sites

    before: dict[str, list] = {}
    after: dict[str, list] = {}
    handles = [m.register_forward_hook(lambda m, a, o, k=k: before.setdefault(k, []).append(o.clone()))
               for k, m, _ in leaf_sites(model)]
    noise = _PrefetchedNoise(model, sigma, relative, ("conv", "act", "pool", "linear"), seed)
    handles += [m.register_forward_hook(lambda m, a, o, k=k: after.setdefault(k, []).append(o.clone()))
                for k, m, _ in leaf_sites(model)]
    try:
        with torch.no_grad():
            noise.start(None)
            model(x)
    finally:
        noise.remove()
        for h in handles:
            h.remove()
    # a module called twice (LeNet-5's one pool) is two sites
    return {f"{k}#{i}": (c, a - c) for k in before for i, (c, a) in enumerate(zip(before[k], after[k]))}


@pytest.mark.parametrize("relative", [False, True])
def test_injected_noise_is_gaussian_with_the_configured_scale(relative):
    """At every site, noise / (sigma [x max|y| per sample]) has mean 0 and std 1 within 5 standard errors of
    its sample size, and the draws of one image (the repeated rows) are uncorrelated."""
    model = _model()
    sigma, draws = 0.25, 2
    x = _data(32)[0].repeat(draws, 1, 1, 1)
    for site, (clean, n) in _injected(model, x, sigma, relative).items():
        scale = sigma * (clean.abs().flatten(1).amax(1).view(-1, *[1] * (clean.dim() - 1)) if relative else 1.0)
        z = (n.double() / scale).flatten()
        count = z.numel()
        assert abs(float(z.mean())) < 5 / math.sqrt(count), site
        assert abs(float(z.std()) - 1) < 5 / math.sqrt(2 * count) + 1e-3, site
        a, b = (n.double() / scale).flatten(1).chunk(draws)
        corr = float((a * b).mean() / (a.std() * b.std()))
        assert abs(corr) < 5 / math.sqrt(a.numel()), site


@pytest.mark.parametrize("name,options", [("lenet5", {}), ("lenet_deep", {"depth": 4})])
@pytest.mark.parametrize("kw", [{}, {"relative": True, "sites": ("conv", "linear")}, {"sites": ("input", "pool")}])
def test_sweep_returns_exactly_the_separate_calls(name, options, kw):
    """One seed for every sigma: the sweep's list equals the reference's calls one by one (0 included, in any
    order); 37 images, 3 draws, batch 39: forwards of 13, 13, 11 images (drawn on demand, prefetched, new size)."""
    from lenetlab.noise.inject import noisy_accuracy_sweep

    model = _model(name, **options)
    x, y = _data(37)
    sigmas = [0.3, 0.0, 2.0, 0.05, 0.3]
    got = noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, exact=True, **kw)
    ref = [noisy_accuracy(model, x, y, s, draws=3, seed=4, batch_size=39, reference=True, **kw) for s in sigmas]
    assert got == ref
    if name == "lenet5":      # the sigmas do differ, so the check can fail (an untrained deep net answers one
        assert got[0] != got[2]   # class whatever the noise)


def test_sweep_with_many_batches_and_its_bad_input():
    from lenetlab.noise.inject import noisy_accuracy_sweep

    model = _model()
    x, y = _data(60)
    got = noisy_accuracy_sweep(model, x, y, [0.5, 1.5], draws=5, seed=1, batch_size=25, exact=True)
    assert got == [noisy_accuracy(model, x, y, s, draws=5, seed=1, batch_size=25, reference=True) for s in (0.5, 1.5)]
    assert noisy_accuracy_sweep(model, x, y, [], draws=2) == []
    with pytest.raises(LenetlabError, match="sigma"):
        noisy_accuracy_sweep(model, x, y, [0.1, float("nan")])
    with pytest.raises(LenetlabError, match="draws"):
        noisy_accuracy_sweep(model, x, y, [0.1], draws=0)


def test_normals_drawn_into_a_spent_batch_are_the_fresh_ones():
    """A batch's normals drawn into the memory of an earlier batch's (the sweep recycles it) are the numbers
    drawn into new tensors: a shorter batch takes the first rows; a site whose shape does not fit gets new
    memory."""
    model = _model()
    plan = [(torch.Size((10, 1, 28, 28)), torch.float32), (torch.Size((10, 6, 28, 28)), torch.float32),
            (torch.Size((10, 84)), torch.float32)]
    short = [(torch.Size((4, *s[1:])), d) for s, d in plan]
    odd = [(torch.Size((10, 1, 28, 28)), torch.float32), (torch.Size((10, 7)), torch.float32),
           (torch.Size((10, 84)), torch.float64)]
    noise = _PrefetchedNoise(model, 0.3, False, ("input",), seed=5)
    try:
        spent = noise.draw(plan)
        old = [z.clone() for z in spent]
        for p in (plan, short, odd):
            fresh = _PrefetchedNoise(model, 0.3, False, ("input",), seed=9)
            want = fresh.draw(p)
            fresh.remove()
            noise.generator.manual_seed(9)
            got = noise.draw(p, into=spent)
            assert [(z.shape, z.dtype) for z in got] == [(s, d) for s, d in p]
            assert all(torch.equal(g, w) for g, w in zip(got, want))
            # where the shape fits, the spent memory itself was drawn into (no new tensor)
            fits = [z.data_ptr() == o.data_ptr() for z, o in zip(got, spent)]
            assert fits == [s[1:] == o.shape[1:] and d == o.dtype for (s, d), o in zip(p, old)]
    finally:
        noise.remove()


@pytest.mark.parametrize("exact", [True, False])
def test_sweep_with_an_uneven_last_batch(exact):
    """Batches of 5 images and a last one of 3: every batch's normals after the second are drawn into a spent
    batch's memory, the last into its first rows; the separate calls are still returned (exact: bit for bit;
    the default sweep: up to rounding, here no score moves)."""
    from lenetlab.noise.inject import noisy_accuracy_sweep

    model = _model()
    x, y = _data(63, seed=3)
    got = noisy_accuracy_sweep(model, x, y, [0.3, 0.9, 2.0], draws=5, seed=4, batch_size=25, exact=exact)
    want = [noisy_accuracy(model, x, y, s, draws=5, seed=4, batch_size=25, reference=True) for s in (0.3, 0.9, 2.0)]
    if exact:
        assert got == want
    else:
        assert [g["per_image"] for g in got] == [w["per_image"] for w in want]
    one = noisy_accuracy(model, x, y, 0.9, draws=5, seed=4, batch_size=25)      # the per-call path recycles too
    assert one == want[1]


class _BatchCentred(nn.Module):
    """A layer whose rows interact (it subtracts the batch mean): pieces of a batch give other values. It
    claims ``row_wise`` falsely, so the bit-for-bit check is what must catch it."""

    row_wise = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(0, keepdim=True)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name,options,kw", [("lenet5", {}, {}), ("lenet5", {}, {"relative": True}),
                                             ("lenet5", {"activation": "tanh", "pool": "avg"}, {}),
                                             ("lenet_deep", {"depth": 4}, {"sites": ("input", "pool")})])
def test_pieces_return_exactly_the_reference(monkeypatch, threads, name, options, kw):
    """Forwards in 7-row pieces (a last piece of another size), on one thread or two (a sweep's helper): the
    sweep and the single calls equal the reference, and pieces did run (the bit-for-bit check passed)."""
    from lenetlab.noise import inject

    monkeypatch.setattr(inject, "CHUNK_ROWS", 7)
    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 7)
    torch.set_num_threads(threads)
    model = _model(name, **options)
    x, y = _data(37)
    sigmas = [0.3, 2.0, 0.05]
    ref = [noisy_accuracy(model, x, y, s, draws=3, seed=4, batch_size=39, reference=True, **kw) for s in sigmas]
    assert inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, exact=True, **kw) == ref
    assert [noisy_accuracy(model, x, y, s, draws=3, seed=4, batch_size=39, **kw) for s in sigmas] == ref
    checked = inject._CHUNK_OK[model]
    assert checked and all(checked.values())
    assert torch.get_num_threads() == threads


def test_sweep_pieces_run_on_the_helper_thread(monkeypatch):
    from lenetlab.noise import inject

    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 7)
    torch.set_num_threads(2)
    model = _model()
    names = set()
    handle = model.conv1.register_forward_hook(lambda *a: names.add(threading.current_thread().name))
    x, y = _data(37)
    try:
        got = inject.noisy_accuracy_sweep(model, x, y, [0.3, 2.0], draws=3, seed=4, batch_size=39, exact=True)
    finally:
        handle.remove()
    assert got == [noisy_accuracy(model, x, y, s, draws=3, seed=4, batch_size=39, reference=True)
                   for s in (0.3, 2.0)]
    assert any(n.startswith("lenetlab-noise-pieces") for n in names) and threading.main_thread().name in names


def test_only_row_wise_models_run_in_pieces(monkeypatch):
    """A module class that does not declare itself row-wise (a user's own layer) keeps whole batches: no check,
    no pieces; a torch layer subclass counts as unknown too; parametrized layers (QAT) are known."""
    from lenetlab.noise import inject

    class Mine(nn.Module):
        def forward(self, x):
            return x * 2

    class MyLinear(nn.Linear):
        pass

    class MyLeNet(type(_model())):
        def forward(self, x):       # overrides a declared class's forward without declaring itself
            return super().forward(x - x.mean(0))

    class SameLeNet(type(_model())):
        pass

    assert inject.row_wise(_model()) and inject.row_wise(_model("lenet5_classic"))
    from lenetlab.models.lenet5 import LeNet5Config
    assert not inject.row_wise(MyLeNet(LeNet5Config())) and inject.row_wise(SameLeNet(LeNet5Config()))
    assert not inject.row_wise(nn.Sequential(nn.Flatten(), Mine(), nn.Linear(784, 10)))
    assert not inject.row_wise(nn.Sequential(nn.Flatten(), MyLinear(784, 10)))
    assert not inject.row_wise(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(784, track_running_stats=False)))
    assert inject.row_wise(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(784).eval()))
    m = _model()
    with apply_qat(m, 4, 0.5):
        assert inject.row_wise(m)
    monkeypatch.setattr(inject, "CHUNK_ROWS", 8)
    model = nn.Sequential(nn.Flatten(), Mine(), nn.Linear(784, 10)).eval()
    x, y = _data(40)
    assert noisy_accuracy(model, x, y, 0.5, draws=2, seed=1, batch_size=40) == \
        noisy_accuracy(model, x, y, 0.5, draws=2, seed=1, batch_size=40, reference=True)
    assert model not in inject._CHUNK_OK


class _MCDropout(nn.Module):
    """Dropout that stays on in eval (Monte-Carlo dropout), declared row-wise: it draws from the global RNG."""

    row_wise = True

    def forward(self, x):
        return F.dropout(x, 0.3, training=True)


def test_the_check_leaves_the_global_random_state_alone(monkeypatch):
    """The one-time check's extra forward must not consume the global stream a model draws from."""
    from lenetlab.noise import inject

    monkeypatch.setattr(inject, "CHUNK_ROWS", 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), _MCDropout(), nn.ReLU(), nn.Linear(32, 10)).eval()
    x, y = _data(40)
    torch.manual_seed(5)
    ref = noisy_accuracy(model, x, y, 0.5, draws=2, seed=1, batch_size=40, reference=True)
    after_ref = torch.random.get_rng_state()
    torch.manual_seed(5)
    assert noisy_accuracy(model, x, y, 0.5, draws=2, seed=1, batch_size=40) == ref
    assert torch.equal(torch.random.get_rng_state(), after_ref)


def test_a_model_whose_rows_interact_runs_whole(monkeypatch):
    """The check catches a model where pieces differ from the whole batch: it then runs whole, so the numbers
    still equal the reference's (without the check, the pieces' logits would be used and differ)."""
    from lenetlab.noise import inject

    monkeypatch.setattr(inject, "CHUNK_ROWS", 8)
    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), _BatchCentred(), nn.ReLU(), nn.Linear(32, 10)).eval()
    x, y = _data(40)
    sigmas = [0.2, 1.0]
    ref = [noisy_accuracy(model, x, y, s, draws=2, seed=3, batch_size=40, reference=True) for s in sigmas]
    assert inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=2, seed=3, batch_size=40, exact=True) == ref
    assert list(inject._CHUNK_OK[model].values()) == [False]
    # what the pieces alone would have given: other logits (so the check is what kept the numbers right)
    with torch.inference_mode():
        xr = x[:20].repeat(2, 1, 1, 1)
        assert not torch.equal(torch.cat([model(xr[a:a + 8]) for a in range(0, 40, 8)]), model(xr))


class _Scaled(nn.Module):
    """conv1 does not get the model input itself (the input is scaled first): no fold."""

    def __init__(self):
        super().__init__()
        self.conv1, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(self.conv1(x * 2).flatten(1))


class _Twice(nn.Module):
    """The first layer is called twice per forward: no fold."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 784), nn.Linear(784, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc2(self.fc1(self.fc1(x).relu()))


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())


def test_first_layer_is_found_only_where_folding_is_sound():
    from lenetlab.noise.inject import first_layer

    x = torch.randn(3, 1, 28, 28)
    m = _model()
    assert first_layer(m, x) is m.conv1
    with apply_qat(m, 4, 0.5):                  # a parametrized (fake-quant) weight is still a convolution
        assert first_layer(m, x) is m.conv1
    mlp = _Mlp()
    assert first_layer(mlp, x.flatten(1)) is mlp.fc1
    assert first_layer(_Scaled(), x) is None
    assert first_layer(_Twice(), x) is None
    assert first_layer(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), x) is None    # first is the Flatten
    for where in ("model", "conv1"):
        target = m if where == "model" else m.conv1
        for register in (target.register_forward_pre_hook, target.register_forward_hook):
            h = register(lambda *a: None)
            try:
                assert first_layer(m, x) is None, (where, register)
            finally:
                h.remove()
    assert first_layer(m, x) is m.conv1


@pytest.mark.parametrize("layer", ["conv", "linear"])
@pytest.mark.parametrize("output_site", [True, False])
def test_the_folded_first_layer_is_the_noisy_layer_up_to_rounding(layer, output_site):
    """L(x + s z) + s z1 computed as L(x) + s (L0(z) + z1): the same values to float rounding (the oracle: the
    layer run on the noisy input), the layer itself run once for all sigmas."""
    from lenetlab.noise import inject

    torch.manual_seed(1)
    if layer == "conv":
        model = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 784, 10))
        x = torch.randn(6, 1, 28, 28)
    else:
        model = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
        x = torch.randn(6, 784)
    model.eval()
    sites = ("input", "conv", "linear") if output_site else ("input", "act")
    noise = _PrefetchedNoise(model, 1.0, False, sites, seed=2)
    plan = noise.row_plan(x[:1])
    ready = noise.draw([(torch.Size((len(x), *s[1:])), d) for s, d in plan])
    ref = {}
    with torch.inference_mode():
        for s in (0.05, 0.7, 3.0):
            noise.start(ready, keep=True, sigma=s)
            ref[s] = model(x)
        first = inject._FirstLayer(model[0], noise, folds=True, output_site=output_site)
        base_calls = []
        orig = type(model[0]).forward
        try:
            type(model[0]).forward = lambda self, inp: (base_calls.append(self is model[0]), orig(self, inp))[1]
            for s in (0.05, 0.7, 3.0):
                noise.start(ready, keep=True, sigma=s)
                got = model(x)
                scale = ref[s].abs().max()
                assert torch.allclose(got, ref[s], rtol=1e-5, atol=1e-5 * scale), (s, (got - ref[s]).abs().max())
        finally:
            type(model[0]).forward = orig
        first.remove()
    noise.remove()
    assert sum(base_calls) == 1          # L(x) once; each sigma after it a scaled sum of the cached terms
    assert not hasattr(model[0], "forward") or "forward" not in vars(model[0])


@pytest.mark.parametrize("kw", [{}, {"relative": True, "sites": ("conv", "linear")}])
def test_default_sweep_runs_the_first_layer_once_per_batch_and_agrees_with_the_reference(monkeypatch, kw):
    """The default sweep: conv1 once per batch instead of once per sigma. Without input noise (relative at
    conv+linear) the cached output is the very one, so even the default equals the reference bit for bit; with
    absolute input noise it is folded and fused, and every image's score agrees with the reference's (a flip
    needs two logits within about 1e-6 of each other)."""
    from lenetlab.noise import inject

    model = _model()
    x, y = _data(37)
    sigmas = [0.3, 2.0, 0.05, 0.8, 1.2, 0.1]
    counts = {"n": 0}
    orig = nn.Conv2d.forward

    def counting(self, inp):
        if self is model.conv1:
            counts["n"] += 1
        return orig(self, inp)

    monkeypatch.setattr(nn.Conv2d, "forward", counting)
    got = inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, **kw)
    default_calls, counts["n"] = counts["n"], 0
    exact = inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, exact=True, **kw)
    exact_calls = counts["n"]
    batches = 3                              # 13, 13 and 11 images
    assert default_calls <= batches + 3      # + the probes (first layer, site plan) and the first batch's plan
    ref = [noisy_accuracy(model, x, y, s, draws=3, seed=4, batch_size=39, reference=True, **kw) for s in sigmas]
    assert exact == ref
    if kw:
        assert got == ref
        assert exact_calls <= batches + 3    # no input noise: cached in the exact sweep too
    else:
        assert exact_calls >= len(sigmas) * batches
        for g, r in zip(got, ref):
            assert g["per_image"] == r["per_image"] and g["mean"] == pytest.approx(r["mean"], abs=0)


def test_the_sweep_probes_leave_the_global_random_state_alone():
    """The one-row forwards that find the first layer and plan the normals run under a forked global stream."""
    from lenetlab.noise import inject

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), _MCDropout(), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.randn(4, 1, 28, 28)
    noise = _PrefetchedNoise(model, 0.5, False, inject.SITES, seed=1)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    with torch.inference_mode():
        plan = noise.row_plan(x[:1])
        assert inject.first_layer(model, x) is None          # its first module is the Flatten
    noise.remove()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [tuple(s) for s, _ in plan] == [(1, 1, 28, 28), (1, 32), (1, 32), (1, 32), (1, 10)]


@pytest.mark.parametrize("name,options,kw", [("lenet5", {}, {}),
                                             ("lenet5", {}, {"relative": True, "sites": ("conv", "linear")}),
                                             ("lenet5", {"activation": "tanh", "pool": "avg"},
                                              {"sites": ("input", "pool")}),
                                             ("lenet_deep", {"depth": 4}, {})])
def test_a_stacked_sweep_agrees_with_the_reference(monkeypatch, name, options, kw):
    """The default sweep in pieces: every sigma of a piece in one forward, a copy of the piece per sigma (here 4
    sigmas x 5 rows), on two threads; pieces that run over from one draw's rows to the next and over the parts
    the first layer was prepared in. Every image's score equals the reference's, and stacked forwards did run."""
    from lenetlab.noise import inject

    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 7)
    monkeypatch.setattr(inject, "STACK_ROWS", 20)
    monkeypatch.setattr(inject, "CHUNK_ROWS", 8)       # the first layer prepared in 8-row parts: pieces straddle
    torch.set_num_threads(2)
    model = _model(name, **options)
    x, y = _data(37)
    sigmas = [0.3, 2.0, 0.05, 0.8]
    rows = []
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    handle = last.register_forward_hook(lambda m, a, out: rows.append(len(out)))
    try:
        got = inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, **kw)
    finally:
        handle.remove()
    ref = [noisy_accuracy(model, x, y, s, draws=3, seed=4, batch_size=39, reference=True, **kw) for s in sigmas]
    assert 4 * 5 in rows and 4 * 4 in rows            # 39-row batches: seven 5-row pieces and a 4-row one
    for g, r in zip(got, ref):
        assert g["per_image"] == r["per_image"] and g["per_draw"] == r["per_draw"]
    if name == "lenet5" and not kw:
        assert got[0] != got[1]


def _kernels():
    from lenetlab.noise import kernels

    if not kernels.available():
        pytest.skip(f"the noise kernels are unavailable: {kernels.why_not()}")
    return kernels


@pytest.mark.parametrize("k,rows,c,h,w", [(3, 4, 2, 7, 9), (5, 2, 6, 28, 28), (2, 3, 16, 10, 10), (1, 1, 1, 2, 2)])
def test_native_kernels_equal_torch_ops(k, rows, c, h, w):
    """The C pool and ReLU (plain, with absolute and with relative noise) against the torch ops the stacked
    sweep runs otherwise - the strided max_pool2x2, clamp_min, addcmul with max|y| scales - bit for bit, NaN and -0
    included, odd sizes pooled in floor mode."""
    K = _kernels()
    g = torch.Generator().manual_seed(k * 100 + h)
    x = torch.randn(k * rows, c, h, w, generator=g) * 3
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, :2, :2] = -0.0
    if k * rows > 1:
        x[1, 0, 0, 1] = float("inf")
    f = torch.rand(k, dtype=torch.float64, generator=g).float()
    fv = f.view(k, 1, 1, 1, 1)
    y = _pool2x2(x)
    zp = torch.randn(rows, *y.shape[1:], generator=g)
    zr = torch.randn(rows, c, h, w, generator=g)
    r = torch.relu(x)

    def same(a, b):
        return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(), b.nan_to_num())

    def noisy(t, z, rel):
        fac = fv * t.abs().flatten(1).amax(1).view(k, rows, 1, 1, 1) if rel else fv
        return torch.addcmul(t.view(k, rows, *t.shape[1:]), z, fac).view_as(t)

    assert same(K.pool2x2(x, None, None, k, None), y)
    assert same(K.pool2x2(x, zp, f, k, "absolute"), noisy(y, zp, False))
    assert same(K.pool2x2(x, zp, f, k, "relative"), noisy(y, zp, True))
    assert same(K.relu(x, None, None, k, None), r)
    assert same(K.relu(x, zr, f, k, "absolute"), noisy(r, zr, False))
    assert same(K.relu(x, zr, f, k, "relative"), noisy(r, zr, True))
    inplace = x.clone()
    assert K.relu(inplace, zr, f, k, "absolute", out=inplace) is inplace and same(inplace, noisy(r, zr, False))
    # the pool of copies never written: copy c of row r = base[r] + v[r] * g[c, r] in one rounding
    base, v = x[:rows].contiguous(), torch.randn(rows, c, h, w, generator=g)
    gk = (torch.rand(k, 1, 1, 1, 1, generator=g) * torch.rand(1, rows, 1, 1, 1, generator=g))
    copies = torch.addcmul(base.unsqueeze(0), v.unsqueeze(0), gk).reshape(k * rows, c, h, w)
    flat = gk.reshape(k * rows)
    assert same(K.pool2x2_fma(base, v, flat, k, None, None, None), _pool2x2(copies))
    assert same(K.pool2x2_fma(base, v, flat, k, zp, f, "absolute"), noisy(_pool2x2(copies), zp, False))
    assert same(K.pool2x2_fma(base, v, flat, k, zp, f, "relative"), noisy(_pool2x2(copies), zp, True))
    assert same(K.pool2x2_fma(base, None, None, k, zp, f, "absolute"), noisy(_pool2x2(base.repeat(k, 1, 1, 1)),
                                                                            zp, False))


def test_native_kernels_check_what_they_are_given():
    """Every tensor the C code reads or writes is checked first (shape, dtype, layout, device): a ValueError,
    never an access out of bounds."""
    K = _kernels()
    x, z, f = torch.randn(6, 2, 8, 8), torch.randn(3, 2, 4, 4), torch.rand(2)
    big = torch.randn(6 * 2 * 8 * 8 + 1)          # an output one value off its input: they overlap
    bad = [lambda: K.pool2x2(x, z, f, 4, "absolute"),                     # 6 rows are not 4 copies
           lambda: K.pool2x2(x, z[:2], f, 2, "absolute"),                 # normals of another piece size
           lambda: K.pool2x2(x, z, f[:1], 2, "absolute"),                 # a sigma short
           lambda: K.pool2x2(x, z.double(), f, 2, "absolute"),
           lambda: K.pool2x2(x.transpose(2, 3), z, f, 2, "absolute"),     # not contiguous
           lambda: K.pool2x2(x, z, f, 2, "absolute", out=torch.empty(6, 2, 4, 3)),
           lambda: K.pool2x2(x.double(), None, None, 2, None),
           lambda: K.relu(x, z, f, 2, "relative"),                        # pooled-size normals for a ReLU
           lambda: K.relu(x, None, None, 2, None, out=torch.empty(6, 2, 8)),
           lambda: K.pool2x2_fma(x[:3], x[:2], torch.rand(6), 2, None, None, None),     # v of 2 rows for 3
           lambda: K.pool2x2_fma(x[:3], x[:3], torch.rand(5), 2, None, None, None),     # g short of 2 x 3
           lambda: K.pool2x2_fma(x[:3], None, None, 2, z[:2], f, "absolute"),
           lambda: K.relu(x, x[:3], f, 2, "absolute", out=x),                  # normals inside the output
           lambda: K.pool2x2(x, None, None, 2, None, out=x.view(-1)[:6 * 2 * 16].view(6, 2, 4, 4)),  # in x
           lambda: K.relu(big[:768].view(6, 2, 8, 8), None, None, 2, None, out=big[1:].view(6, 2, 8, 8))]
    for call in bad:
        with pytest.raises(ValueError, match="noise kernel"):
            call()


@pytest.mark.parametrize("name,options,kw", [("lenet5", {}, {}), ("lenet5", {}, {"relative": True}),
                                             ("lenet5", {}, {"relative": True, "sites": ("conv", "linear")}),
                                             ("lenet5", {}, {"sites": ("input", "act")}),
                                             ("lenet_deep", {"depth": 4}, {})])
def test_the_stacked_sweep_is_the_same_with_and_without_its_kernels(monkeypatch, name, options, kw):
    """The default sweep's stacked forwards with the C pool and ReLU kernels and with torch's ops: the same
    result dicts, bit for bit, on two threads; the kernels did run (with their site's noise where the pool or
    activation output is a site)."""
    from lenetlab.noise import inject

    K = _kernels()
    calls = {"pool": 0, "relu": 0, "noised": 0}

    def counted(fn, key):
        def run(x, z, f, k, mode, out=None):
            calls[key] += 1
            calls["noised"] += mode is not None
            return fn(x, z, f, k, mode, out=out)
        return run

    monkeypatch.setattr(K, "pool2x2", counted(K.pool2x2, "pool"))
    monkeypatch.setattr(K, "relu", counted(K.relu, "relu"))
    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 7)     # 39-row batches run in pieces, stacked
    monkeypatch.setattr(inject, "STACK_ROWS", 20)
    monkeypatch.setattr(inject, "CHUNK_ROWS", 8)
    torch.set_num_threads(2)
    model = _model(name, **options)
    x, y = _data(37)
    sigmas = [0.3, 2.0, 0.05, 0.8]
    with_kernels = inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, **kw)
    assert calls["pool"] > 0 and calls["relu"] > 0
    # the noise goes into the kernels on lenetlab's LeNet-5 only (its modules are called through their hooks)
    assert (calls["noised"] > 0) == (name == "lenet5" and kw.get("sites") != ("conv", "linear"))
    monkeypatch.setattr(inject, "NATIVE", False)
    before = dict(calls)
    without = inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, **kw)
    assert calls == before
    assert with_kernels == without


def test_without_a_compiler_the_sweep_runs_torch_ops(monkeypatch):
    """No C compiler (or LENETLAB_NATIVE=0): the kernels report why, a warning says so once (not when disabled
    on purpose), and the sweep runs torch's ops with the same numbers."""
    from lenetlab import native
    from lenetlab.noise import inject, kernels

    monkeypatch.setattr(kernels.LIBRARY, "_tried", False)
    monkeypatch.setattr(kernels.LIBRARY, "_lib", None)
    monkeypatch.setenv("LENETLAB_NATIVE", "0")
    assert not kernels.available() and "LENETLAB_NATIVE=0" in kernels.why_not()
    monkeypatch.setattr(kernels.LIBRARY, "_tried", False)
    monkeypatch.delenv("LENETLAB_NATIVE")
    monkeypatch.setattr(native, "compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="without their C kernels"):
        assert kernels.library() is None
    assert "no C compiler" in kernels.why_not()
    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 7)
    monkeypatch.setattr(inject, "STACK_ROWS", 20)
    model = _model()
    x, y = _data(37)
    got = inject.noisy_accuracy_sweep(model, x, y, [0.3, 2.0], draws=3, seed=4, batch_size=39)
    monkeypatch.setattr(inject, "NATIVE", False)
    assert got == inject.noisy_accuracy_sweep(model, x, y, [0.3, 2.0], draws=3, seed=4, batch_size=39)


@pytest.mark.parametrize("kw", [{}, {"relative": True, "sites": ("conv", "linear")}, {"sites": ("act", "linear")}])
def test_lenet5s_first_layer_output_is_pooled_without_being_written(monkeypatch, kw):
    """On lenetlab's LeNet-5 (conv1 straight into the pool) a stacked forward leaves conv1's noisy copies
    unwritten and the pool computes them from the layer's terms: the same results as the torch ops; a hook
    of someone else's on conv1 (which must see the real output) turns that off, with the same results."""
    from lenetlab.noise import inject

    K = _kernels()
    calls = []
    real = K.pool2x2_fma

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(K, "pool2x2_fma", counted)
    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 7)
    monkeypatch.setattr(inject, "STACK_ROWS", 20)
    monkeypatch.setattr(inject, "CHUNK_ROWS", 8)
    torch.set_num_threads(2)
    model = _model()
    x, y = _data(37)
    sigmas = [0.3, 2.0, 0.05, 0.8]
    deferred = inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, **kw)
    assert calls
    seen = []
    handle = model.conv1.register_forward_hook(lambda m, a, out: seen.append(bool(torch.isfinite(out).all())))
    try:
        n = len(calls)
        hooked = inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, **kw)
        assert len(calls) == n and seen and all(seen)
    finally:
        handle.remove()
    monkeypatch.setattr(inject, "NATIVE", False)
    assert deferred == hooked == inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39,
                                                             **kw)


@pytest.mark.parametrize("with_v", [True, False])
def test_a_deferred_first_layer_output_is_written_when_another_reader_comes(with_v):
    """The fallback when the deferred output meets a reader other than the pool: it is written as the torch
    path writes it, bit for bit."""
    g = torch.Generator().manual_seed(2)
    k, rows = 3, 4
    base, v = torch.randn(rows, 6, 8, 8, generator=g), torch.randn(rows, 6, 8, 8, generator=g)
    gk = torch.rand(k, 1, 1, 1, 1, generator=g) * torch.rand(1, rows, 1, 1, 1, generator=g)
    x = torch.full((k * rows, 6, 8, 8), float("nan"))
    _PrefetchedNoise._write_pending((x, base, v if with_v else None, gk.reshape(k * rows) if with_v else None))
    want = (torch.addcmul(base.unsqueeze(0), v.unsqueeze(0), gk) if with_v else base.repeat(k, 1, 1, 1))
    assert torch.equal(x, want.reshape(k * rows, 6, 8, 8))


def test_a_stacked_piece_longer_than_a_prepared_part_takes_every_part_it_spans(monkeypatch):
    """Pieces longer than the parts the folded first layer was prepared in (here 7-row pieces, 4-row parts; by
    default three sigmas make 133-row pieces against 100-row parts) can span three parts. Regression: the
    middle one was left out (`noise eval` with two or three sigmas crashed). The scores equal the reference's."""
    from lenetlab.noise import inject

    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 7)
    monkeypatch.setattr(inject, "STACK_ROWS", 14)       # 2 sigmas: 7-row pieces
    monkeypatch.setattr(inject, "CHUNK_ROWS", 8)        # parts of 4 rows
    torch.set_num_threads(2)
    model = _model()
    x, y = _data(37)
    rows = []
    handle = model.fc3.register_forward_hook(lambda m, a, out: rows.append(len(out)))
    try:
        got = inject.noisy_accuracy_sweep(model, x, y, [0.5, 1.5], draws=3, seed=4, batch_size=39)
    finally:
        handle.remove()
    assert 2 * 7 in rows                                  # stacked 7-row pieces ran (from rows 7, 14, ...: three parts)
    ref = [noisy_accuracy(model, x, y, s, draws=3, seed=4, batch_size=39, reference=True) for s in (0.5, 1.5)]
    for g, r in zip(got, ref):
        assert g["per_image"] == r["per_image"]


@pytest.mark.parametrize("kw", [{}, {"relative": True}])
def test_the_kernels_leave_the_noise_to_the_hook_when_another_hook_comes_first(monkeypatch, kw):
    """QAT fake-quantises activations in forward hooks registered before the noise's: the ReLU's output must
    be quantised, then get its noise. The kernels then pool and apply ReLU only, and the noise hook adds the
    noise after QAT's (regression: the noise was added inside the forward, before the quantiser). The same
    results as torch's ops."""
    from lenetlab.noise import inject

    _kernels()
    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 7)
    monkeypatch.setattr(inject, "STACK_ROWS", 20)
    monkeypatch.setattr(inject, "CHUNK_ROWS", 8)
    torch.set_num_threads(2)
    model = _model()
    apply_qat(model, 8)
    x, y = _data(37)
    sigmas = [0.3, 2.0, 0.05, 0.8]
    got = inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, **kw)
    monkeypatch.setattr(inject, "NATIVE", False)
    assert got == inject.noisy_accuracy_sweep(model, x, y, sigmas, draws=3, seed=4, batch_size=39, **kw)


def test_kernels_add_no_noise_where_torch_rounds_twice():
    """Where torch's addcmul rounds y + z * f twice (its kernels without FMA, forced here with
    ATEN_CPU_CAPABILITY=default), the kernels' fused multiply-add would give other last bits: the sweep sees
    that (fma_like_torch) and lets the hooks add the noise; its logits equal the torch path's bit for bit."""
    import os
    import subprocess
    import sys

    _kernels()
    code = (
        "import torch\n"
        "from lenetlab.models import create_model\n"
        "from lenetlab.noise import inject, kernels\n"
        "inject.SWEEP_CHUNK_ROWS, inject.STACK_ROWS, inject.CHUNK_ROWS = 7, 20, 8\n"
        "torch.manual_seed(0)\n"
        "m = create_model('lenet5').eval()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x, y = torch.randn(37, 1, 28, 28, generator=g), torch.randint(0, 10, (37,), generator=g)\n"
        "inject.noisy_accuracy_sweep(m, x, y, [0.3, 2.0, 0.05, 0.8], draws=3, seed=4, batch_size=39)\n"
        "logits = []   # from here both sweeps run the same forwards (the pieces check was made above)\n"
        "m.fc3.register_forward_hook(lambda mod, a, out: logits.append(out.clone()))\n"
        "a = inject.noisy_accuracy_sweep(m, x, y, [0.3, 2.0, 0.05, 0.8], draws=3, seed=4, batch_size=39)\n"
        "la, logits[:] = list(logits), []\n"
        "inject.NATIVE = False\n"
        "b = inject.noisy_accuracy_sweep(m, x, y, [0.3, 2.0, 0.05, 0.8], draws=3, seed=4, batch_size=39)\n"
        "same = len(la) == len(logits) and all(torch.equal(p, q) for p, q in zip(la, logits))\n"
        "print(torch.backends.cpu.get_cpu_capability(), kernels.fma_like_torch(), a == b and same)\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["DEFAULT", "False", "True"]


def test_a_model_that_calls_forward_itself_gets_the_noise_only_from_hooks(monkeypatch):
    """A module whose .forward a model calls itself fires no hooks: it gets no noise on the torch path, and the
    kernels (which add noise only inside lenetlab's LeNet-5) give it none either. The same results."""
    from lenetlab.noise import inject

    _kernels()

    class Direct(nn.Module):
        row_wise = True

        def __init__(self):
            super().__init__()
            self.fc, self.act, self.out = nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)

        def forward(self, x):
            h = self.act.forward(self.fc(x.flatten(1)))
            return self.out(self.act(h.t().contiguous().t()))

    monkeypatch.setattr(inject, "SWEEP_CHUNK_ROWS", 7)
    monkeypatch.setattr(inject, "STACK_ROWS", 20)
    monkeypatch.setattr(inject, "CHUNK_ROWS", 8)
    torch.manual_seed(0)
    model = Direct().eval()
    x, y = _data(37)
    kw = dict(draws=3, seed=4, batch_size=39, sites=("act",))
    got = inject.noisy_accuracy_sweep(model, x, y, [0.5, 1.0, 2.0], **kw)
    monkeypatch.setattr(inject, "NATIVE", False)
    assert got == inject.noisy_accuracy_sweep(model, x, y, [0.5, 1.0, 2.0], **kw)
