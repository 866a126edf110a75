"""Additive Gaussian noise after every layer, without editing the model (docs/papers/noise.md).

The noise model of Wang, Borras, Klein and Froening (2025), as in their public
code: each layer output ``y`` becomes ``y + sigma * N(0, 1)`` with one global
absolute ``sigma``. ``relative=True`` scales sigma by ``max|y|`` of the site,
taken per sample (over all non-batch dimensions) so that a batch of D
repeated draws gives exactly what D separate passes would.

Sites are found by module type on leaf modules - ``input`` (a pre-hook on the
model), ``conv`` (Conv2d), ``linear`` (Linear, the logits included), ``pool``
(max/avg pooling) and ``act`` (any other parameter-free leaf, i.e. the
activation modules) - so every registered model works unchanged. A module
used twice (LeNet-5's one ``pool``) gets noise at each call.

Optional weight noise (``weight_sigma``, absolute, added to conv/linear
weights once per forward) is one draw per forward, so it cannot be
vectorised over draws; :func:`noisy_accuracy` loops over draws in that case.

Example::

    from lenetlab.noise import NoiseInjector, noisy_accuracy
    with NoiseInjector(model, sigma=0.1, seed=0):
        logits = model(x)
    acc = noisy_accuracy(model, x, y, sigma=0.1, draws=8)   # {"mean", "std", "per_draw"}
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models.pooling import MaxPool2x2
from lenetlab.models.pooling import max_pool2x2 as _pool2x2
from lenetlab.noise import kernels

SITES = ("input", "conv", "act", "pool", "linear")
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_SKIP = (nn.Dropout, nn.Flatten, nn.Identity, nn.BatchNorm1d, nn.BatchNorm2d)


def site_of(module: nn.Module) -> str | None:
    """The noise-site kind of a leaf module, or None if it gets no noise.

    A composite layer (e.g. a tensor-train linear layer, :mod:`lenetlab.compress`) declares its kind with a
    ``noise_site`` class attribute ("conv" / "linear"); it is then one site and its submodules are not."""
    declared = getattr(module, "noise_site", None)
    if declared is not None:
        return declared
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _POOL):
        return "pool"
    if isinstance(module, _SKIP) or any(True for _ in module.children()):
        return None
    if any(True for _ in module.parameters(recurse=False)):
        return None       # a leaf with weights that is not conv/linear (e.g. an RBF layer): not a site
    return "act"


def leaf_sites(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) of every noise site of ``model``, in definition order.

    Modules inside ``parametrizations`` (the QAT weight fake-quant) are not layers and are skipped.
    """
    out = []
    inside: list[str] = []      # composite layers already taken as one site
    for name, m in list(model.named_modules()):
        if m is model or "parametrizations" in name.split("."):
            continue
        if any(name.startswith(p + ".") for p in inside):
            continue
        kind = site_of(m)
        if kind is not None:
            out.append((name, m, kind))
            if getattr(m, "noise_site", None) is not None:
                inside.append(name)
    return out


def check_sigma(sigma: float, what: str = "sigma") -> float:
    sigma = float(sigma)
    if not sigma >= 0 or sigma == float("inf"):
        raise LenetlabError(f"{what} must be a finite number >= 0, got {sigma}")
    return sigma


def check_sites(sites: Sequence[str]) -> tuple[str, ...]:
    bad = [s for s in sites if s not in SITES]
    if bad:
        raise LenetlabError(f"unknown noise site(s) {', '.join(bad)}; choose from: {', '.join(SITES)}")
    return tuple(sites)


class NoiseInjector:
    """Hooks adding ``sigma * N(0,1)`` (or ``sigma * max|y| * N(0,1)``) at every chosen site of ``model``.

    ``sigma`` is a plain attribute and may change between forwards (noise ramps).
    With ``train_only`` the hooks do nothing while the model is in eval mode
    (noisy training with clean validation). Use as a context manager or call
    :meth:`remove`. ``stats`` (if ``record=True``) collects per-site sums of the
    injected noise for statistical tests.
    """

    def __init__(self, model: nn.Module, sigma: float, relative: bool = False,
                 sites: Sequence[str] = SITES, weight_sigma: float = 0.0, seed: int | None = 0,
                 train_only: bool = False, record: bool = False):
        self.model = model
        self.sigma = check_sigma(sigma)
        self.weight_sigma = check_sigma(weight_sigma, "weight sigma")
        self.relative = relative
        self.sites = check_sites(sites)
        self.train_only = train_only
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self.record = record
        self.stats: dict[str, list[torch.Tensor]] = {}
        self._handles: list[Any] = []
        self._saved_weights: dict[nn.Module, torch.Tensor] = {}
        if "input" in self.sites:
            self._handles.append(model.register_forward_pre_hook(self._input_hook))
        for name, m, kind in leaf_sites(model):
            if kind in self.sites:
                self._handles.append(m.register_forward_hook(self._make_hook(f"{kind}:{name}")))
            if self.weight_sigma > 0 and kind in ("conv", "linear"):
                self._handles.append(m.register_forward_pre_hook(self._weight_pre))
                self._handles.append(m.register_forward_hook(self._weight_post))

    # ---- noise
    def _active(self) -> bool:
        return not (self.train_only and not self.model.training)

    def _noise(self, y: torch.Tensor, site: str) -> torch.Tensor:
        n = torch.randn(y.shape, generator=self.generator, dtype=y.dtype).to(y.device)
        if self.relative:
            # the scale is a property of the hardware's range, not a learnable path: no gradient through it
            if getattr(self.model, "rule_time_major", False) and y.dim() == 3:
                # a spiking model's (T, B, features) layer output: per time step and sample
                scale = y.detach().abs().amax(2, keepdim=True)
            else:
                scale = y.detach().abs().flatten(1).amax(1).view(-1, *([1] * (y.dim() - 1)))
            n = n * (self.sigma * scale)
        else:
            n = n * self.sigma
        if self.record:
            self.stats.setdefault(site, []).append(n.detach().flatten())
        return y + n

    def _input_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if not self._active() or self.sigma == 0:
            return None
        return (self._noise(args[0], "input"), *args[1:])

    def _make_hook(self, site: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if not self._active() or self.sigma == 0 or not isinstance(out, torch.Tensor):
                return None
            return self._noise(out, site)
        return hook

    def _weight_pre(self, module: nn.Module, args: tuple) -> None:
        if not self._active():
            return
        w = module.weight
        self._saved_weights[module] = w.data.clone()
        with torch.no_grad():
            w.add_(torch.randn(w.shape, generator=self.generator, dtype=w.dtype).to(w.device) * self.weight_sigma)

    def _weight_post(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        saved = self._saved_weights.pop(module, None)
        if saved is not None:
            with torch.no_grad():
                module.weight.copy_(saved)

    # ---- lifetime
    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> NoiseInjector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def noisy_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, draws: int = 5,
                   relative: bool = False, sites: Sequence[str] = SITES, weight_sigma: float = 0.0,
                   seed: int = 0, batch_size: int = 1000, reference: bool = False) -> dict[str, Any]:
    """Test accuracy under ``draws`` independent noise draws: ``{"mean", "std", "per_draw", "per_image"}``.

    ``per_image``: each image's fraction of draws classified correctly (a score in [0, 1] per image, what
    :mod:`lenetlab.experiments.stats` resamples for intervals over seeds and test images).

    Vectorised: each batch is repeated ``draws`` times and pushed through one
    forward, so every draw sees fresh noise at every site. ``batch_size`` counts
    images per forward including the repeats.

    The default path (:func:`_fast_noisy_accuracy`) returns exactly what ``reference=True`` (the plain
    :class:`NoiseInjector` implementation, kept as the oracle) returns: the same random stream (one
    ``torch.Generator`` seeded with ``seed``, consumed site by site and batch by batch in the same order), the
    same float operations, so the same numbers for the same seed. It is faster because it drops work that
    does not change a single bit: no autograd bookkeeping, the noise written in place into its own buffer
    instead of three temporaries, an exact strided 2x2 max-pool instead of ``max_pool2d``'s index-tracking
    kernel, and the next batch's noise drawn on a second thread while the current batch runs (torch ops on
    one intra-op thread meanwhile; LeNet logits are bit-identical for 1 and 2 threads). Weight noise
    (``weight_sigma > 0``, one draw per forward) always takes the reference path.
    """
    if draws < 1:
        raise LenetlabError(f"draws must be >= 1, got {draws}")
    if len(x) != len(y):
        raise LenetlabError(f"{len(x)} images but {len(y)} labels")
    if reference or weight_sigma > 0:
        return _reference_noisy_accuracy(model, x, y, sigma, draws, relative, sites, weight_sigma, seed,
                                         batch_size)
    return _fast_noisy_accuracy(model, x, y, sigma, draws, relative, sites, seed, batch_size)


def _result(correct: torch.Tensor, per_image: torch.Tensor, n: int, draws: int) -> dict[str, Any]:
    acc = correct.double() / max(1, n)
    return {"mean": float(acc.mean()), "std": float(acc.std()) if draws > 1 else 0.0,
            "per_draw": acc.tolist(), "per_image": (per_image.double() / draws).tolist()}


@torch.no_grad()
def _reference_noisy_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, draws: int = 5,
                              relative: bool = False, sites: Sequence[str] = SITES, weight_sigma: float = 0.0,
                              seed: int = 0, batch_size: int = 1000) -> dict[str, Any]:
    """:func:`noisy_accuracy` through :class:`NoiseInjector` hooks: the reference implementation (the oracle
    the fast path is tested against, tests/test_noise_fast.py) and the weight-noise path."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(draws, dtype=torch.long, device=x.device)
    per_image = torch.zeros(len(x), dtype=torch.long, device=x.device)
    try:
        with NoiseInjector(model, sigma, relative, sites, weight_sigma, seed):
            if weight_sigma > 0:
                # one weight draw per forward: loop over draws
                for d in range(draws):
                    for i in range(0, len(x), batch_size):
                        hit = model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                        correct[d] += int(hit.sum())
                        per_image[i:i + batch_size] += hit.long()
            else:
                per = max(1, batch_size // draws)
                for i in range(0, len(x), per):
                    xb, yb = x[i:i + per], y[i:i + per]
                    logits = model(xb.repeat(draws, *([1] * (xb.dim() - 1))))
                    hit = logits.argmax(1).view(draws, len(xb)) == yb
                    correct += hit.sum(1)
                    per_image[i:i + per] += hit.sum(0)
    finally:
        model.train(was_training)
    return _result(correct, per_image, len(x), draws)


# ---- the fast path: the reference's numbers, less work


def _plain_2x2(m: nn.Module) -> bool:
    def pair(v: Any) -> tuple:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (type(m) is nn.MaxPool2d and pair(m.kernel_size) == (2, 2) and pair(m.stride) == (2, 2)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices and "forward" not in vars(m))


@contextlib.contextmanager
def _fast_pools(model: nn.Module, noise: _PrefetchedNoise | None = None) -> Iterator[None]:
    """Inside the block every plain ``nn.MaxPool2d(2)`` of ``model`` runs :func:`_pool2x2` (its hooks still
    fire: only the module's own ``forward`` is swapped, on the instance, and restored after). With ``noise``,
    these, lenetlab's MaxPool2x2 and every plain ``nn.ReLU`` run :meth:`_PrefetchedNoise.native_op` first (the C
    kernels, in a stacked forward) and their own code where it declines."""
    def pool(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
        out = noise.native_op(m, x, "pool") if noise is not None else None
        if out is not None:
            return out
        return _pool2x2(x) if type(m) is nn.MaxPool2d else MaxPool2x2.forward(m, x)

    def relu(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
        out = noise.native_op(m, x, "act")
        return out if out is not None else torch.relu(x)

    swapped = []
    for m in model.modules():
        if _plain_2x2(m) or (noise is not None and type(m) is MaxPool2x2 and "forward" not in vars(m)):
            m.forward = functools.partial(pool, m=m)
        elif noise is not None and type(m) is nn.ReLU and not m.inplace and "forward" not in vars(m):
            m.forward = functools.partial(relu, m=m)
        else:
            continue
        swapped.append(m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


class _ForwardState(threading.local):
    """One thread's forward in :class:`_PrefetchedNoise` (pieces of a batch may run on two threads at once)."""

    def __init__(self) -> None:
        self.ready: list[torch.Tensor] | None = None    # this forward's normals, or None: draw as asked
        self.next = 0
        self.keep = False
        self.drawn: list[torch.Tensor] = []
        self.shapes: list[tuple[torch.Size, torch.dtype]] = []
        self.first = False    # this forward's first layer comes from the batch's cache (see _FirstLayer)
        self.sigma = 0.0      # this forward's sigma (two threads may run two sigmas at once)
        self.probe = False    # a forward that only records the site shapes (zero noise, nothing drawn)
        # stack > 1: this forward's rows are ``stack`` copies of one piece, copy k at sigma[k] (a tensor), all
        # with the piece's normals (see _predict_sigmas)
        self.stack = 1
        self.offset: int | None = None
        self.sigmas: dict[tuple, torch.Tensor] = {}     # a stacked forward's sigma, cast and shaped, by (dtype, dim)
        self.noised: torch.Tensor | None = None    # an output to which its module's forward added the site's noise
        # the first layer's stacked output, not yet written: (its tensor, base, v, g), see _FirstLayer
        self.pending: tuple | None = None


class _PrefetchedNoise:
    """Forward hooks adding the noise of :class:`NoiseInjector` (absolute or relative, no weight noise) with
    the same generator and the same float operations, but with the standard normals of a forward drawn
    ahead of it, on another thread, when the site shapes are known (a previous forward of the same size).

    :meth:`standard` hands out the prepared normals in call order; a site the plan did not foresee (a model
    whose shapes change from forward to forward) gets normals from a second generator seeded from ``seed``,
    so the result stays deterministic and correctly distributed (it then no longer equals the reference's)."""

    def __init__(self, model: nn.Module, sigma: float, relative: bool, sites: Sequence[str], seed: int | None,
                 fused: bool = False):
        self.model, self.sigma, self.relative = model, sigma, relative
        # fused: y + factor * z in one rounding (torch.add / addcmul), not the reference's product then sum
        self.fused = fused
        self.time_major = bool(getattr(model, "rule_time_major", False))
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self._spare_seed = self.generator.initial_seed()
        self._spare: torch.Generator | None = None
        self.first: _FirstLayer | None = None     # a _FirstLayer sets itself here
        self.defer_ok = False     # the first layer's stacked output may be left to the pool to compute (_defers)
        # id() of the modules whose forward may add their site's noise itself (native_op; set by the sweep,
        # see _fusable)
        self.fuse_ids: set[int] = set()
        self.f = _ForwardState()      # this thread's forward: its normals, where it is in them (see start())
        self._handles: list[Any] = []
        self._site_ids: set[int] = set()        # id() of the modules whose output is a noise site
        if sigma == 0:
            return
        if "input" in sites:
            self._handles.append(model.register_forward_pre_hook(self._input_hook))
        for _, m, kind in leaf_sites(model):
            if kind in sites:
                self._handles.append(m.register_forward_hook(self._output_hook))
                self._site_ids.add(id(m))

    def draw(self, plan: list[tuple[torch.Size, torch.dtype]],
             into: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Standard normals for one forward's sites, in order, from the main generator. ``into``: a batch's
        normals that are no longer used, whose memory is drawn into where it holds a site's shape (its first
        rows, if it has more): the same numbers as into new tensors (a contiguous block, filled in order), but
        no fresh pages to fault in - a batch of LeNet-5's normals under absolute noise is ~42 MB, and page
        faults in new memory were ~12% of a sweep's time."""
        out = []
        with torch.inference_mode():     # a sweep's forwards run in it (its tensors, reused here, are inference ones)
            for i, (shape, dtype) in enumerate(plan):
                old = into[i] if into is not None and i < len(into) else None
                if (old is not None and old.dtype == dtype and old.dim() == len(shape) and old.dim() > 0
                        and old.shape[1:] == shape[1:] and len(old) >= shape[0] and old.is_contiguous()):
                    z = old[: shape[0]]
                else:
                    z = torch.empty(shape, dtype=dtype)
                out.append(z.normal_(generator=self.generator))
        return out

    def row_plan(self, x1: torch.Tensor) -> list[tuple[torch.Size, torch.dtype]] | None:
        """The site shapes of a one-row forward of ``x1``, in call order, found without drawing (zero noise),
        or None where a site's output does not have the one row first. For a :func:`row_wise` model the plan
        of an R-row batch is this with R rows: drawn from it, the normals are the very ones the batch's own
        forward would draw site by site (the same shapes in the same order from the same generator)."""
        self.start(None)
        self.f.probe = True
        try:
            with torch.random.fork_rng(devices=[]):      # a model that draws (MC dropout) keeps its stream
                self.model(x1)
        finally:
            self.f.probe = False
        shapes = self.f.shapes
        if not shapes or any(len(sh) == 0 or sh[0] != 1 for sh, _ in shapes):
            return None
        return shapes

    def start(self, ready: list[torch.Tensor] | None, keep: bool = False, sigma: Any = None,
              stack: int = 1, offset: int | None = None) -> None:
        """Before a forward: its prepared normals (None: draw as the hooks ask). ``keep``: leave the normals
        as they are (a sweep reuses them for its next sigma) and collect those drawn now in ``drawn``. With a
        :class:`_FirstLayer` attached and normals in hand, the first layer's output comes from its cache.
        ``sigma``: this forward's (default: the ``sigma`` attribute). ``stack`` > 1: the forward's rows are
        that many copies of the rows of ``ready``, copy k at ``sigma[k]`` (``sigma`` a 1-d tensor), each site's
        normals shared by the copies; ``offset``: where in its batch the piece starts."""
        f = self.f
        f.ready, f.next, f.shapes, f.keep, f.drawn = ready, 0, [], keep, []
        f.sigma = self.sigma if sigma is None else sigma
        f.probe = False
        f.first = ready is not None and self.first is not None
        f.stack, f.offset = stack, offset
        f.sigmas = {}
        f.noised = None
        f.pending = None

    @property
    def drawn(self) -> list[torch.Tensor]:
        """The normals the last forward on this thread drew as its hooks asked (with ``keep``)."""
        return self.f.drawn

    @property
    def shapes(self) -> list[tuple[torch.Size, torch.dtype]]:
        """The site outputs (shape, dtype) of the last forward on this thread, in call order."""
        return self.f.shapes

    def standard(self, y: torch.Tensor) -> torch.Tensor:
        f = self.f
        f.shapes.append((y.shape, y.dtype))
        if f.probe:
            return torch.zeros(y.shape, dtype=y.dtype, device=y.device)
        ready = f.ready
        z = ready[f.next] if ready is not None and f.next < len(ready) else None
        if ready is None:
            z = torch.empty(y.shape, dtype=y.dtype).normal_(generator=self.generator)
            if f.keep:
                f.drawn.append(z)
        elif z is not None and z.dtype == y.dtype and (
                z.shape == y.shape if f.stack == 1 else
                (y.dim() > 0 and z.dim() > 0 and y.shape[0] == f.stack * z.shape[0] and z.shape[1:] == y.shape[1:])):
            f.next += 1
        else:
            if self._spare is None:
                self._spare = torch.Generator().manual_seed(self._spare_seed + 0x5EED)
            z = torch.empty(y.shape, dtype=y.dtype).normal_(generator=self._spare)
        return z if z.device == y.device else z.to(y.device)

    def noisy(self, y: torch.Tensor) -> torch.Tensor:
        """``y + sigma * z`` (absolute) or ``y + sigma * max|y| * z`` (relative), as NoiseInjector computes it
        (the product first, then the sum, so bit for bit the same), written into z's buffer; ``fused``: in one
        operation, one rounding."""
        z = self.standard(y)
        if self.f.stack > 1:
            return self._noisy_stacked(y, z)
        if self.relative:
            first = self.first if self.f.first else None
            scale = first.scales.get(id(y)) if first is not None else None
            if scale is None:
                scale = self.scale(y)
                if first is not None and first.cached(y):
                    first.scales[id(y)] = scale     # the cached first-layer output: the same max for every sigma
            factor: Any = self.f.sigma * scale
        else:
            factor = self.f.sigma
        if self.fused:
            return torch.add(y, z, alpha=factor) if not self.relative else torch.addcmul(y, z, factor)
        # the same product and sum either way; kept normals get a buffer of their own
        return (torch.mul(z, factor) if self.f.keep else z.mul_(factor)).add_(y)

    def _noisy_stacked(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """:meth:`noisy` for a stacked forward: ``y``'s rows are ``stack`` copies of a piece, copy k at
        ``sigma[k]``; ``z`` is the piece's normals, shared by the copies (broadcast, not copied), or (an
        unforeseen site) normals of ``y``'s own shape. One operation, one rounding (a sweep's default)."""
        k = self.f.stack
        shape = y.shape
        rows = shape[0] // k
        sig = self._sigma_of(y)
        if self.relative:
            factor = sig * self.scale(y).view(k, rows, *([1] * (len(shape) - 1)))    # (k, rows, 1, ...)
        else:
            factor = sig
        # the piece's normals broadcast over the k copies (trailing dimensions line up)
        zz = z.view(k, rows, *shape[1:]) if z.shape[0] == shape[0] else z
        return torch.addcmul(y.view(k, rows, *shape[1:]), zz, factor).view(shape)

    def _sigma_of(self, y: torch.Tensor) -> torch.Tensor:
        """A stacked forward's sigmas for the site output ``y``: (k, 1, 1, ...), one per copy, in y's dtype."""
        f = self.f
        key = (y.dtype, y.dim())
        sig = f.sigmas.get(key)
        if sig is None:
            sig = f.sigmas[key] = f.sigma.to(y.dtype).view(f.stack, *([1] * y.dim()))
        return sig

    def native_op(self, module: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor | None:
        """In a stacked forward, ``module``'s output for ``x`` - a 2x2 max-pool (``kind`` "pool") or a ReLU
        ("act") - from the C kernels (:mod:`lenetlab.noise.kernels`), with its site's noise added in the same
        pass when its output is a site (the output hook then adds none): the same numbers as torch's ops and
        :meth:`_noisy_stacked`. None (torch's ops run) in any other forward, for other dtypes and layouts, or
        without the kernels."""
        f = self.f
        k = f.stack
        pending, f.pending = f.pending, None
        if pending is not None:
            if kind == "pool" and x is pending[0] and kernels.library() is not None:
                return self._pool_pending(module, pending, k)
            self._write_pending(pending)
        if (k <= 1 or not NATIVE or self.time_major or x.dtype != torch.float32 or x.device.type != "cpu"
                or not x.is_contiguous() or x.dim() < 2 or (kind == "pool" and x.dim() != 4) or len(x) % k
                or (x.requires_grad and torch.is_grad_enabled()) or kernels.library() is None):
            return None
        op = kernels.pool2x2 if kind == "pool" else kernels.relu
        shape = (len(x), x.shape[1], x.shape[2] // 2, x.shape[3] // 2) if kind == "pool" else tuple(x.shape)
        return self._site_out(module, shape, k, lambda z, s, mode, out: op(x, z, s, k, mode, out=out))

    def _pool_pending(self, module: nn.Module, pending: tuple, k: int) -> torch.Tensor:
        """:meth:`native_op` of the pool whose input is the first layer's unwritten output ``pending``."""
        x, base, v, g = pending
        shape = (len(x), x.shape[1], x.shape[2] // 2, x.shape[3] // 2)
        return self._site_out(module, shape, k,
                              lambda z, s, mode, out: kernels.pool2x2_fma(base, v, g, k, z, s, mode, out=out))

    def _site_out(self, module: nn.Module, shape: tuple, k: int, run: Any) -> torch.Tensor:
        """``module``'s output (of ``shape``) from a kernel ``run(z, sigmas, mode, out)``, with the site's noise
        where its forward may add it (:attr:`fuse_ids`; the output hook then adds none), else without (the hook
        adds it as for torch's ops)."""
        if id(module) not in self.fuse_ids:
            return run(None, None, None, None)
        out = torch.empty(shape, dtype=torch.float32)
        z = self.standard(out)          # this site's normals (only out's shape and dtype are read)
        if z.dtype == out.dtype and z.is_contiguous() and len(z) * k == len(out) and z.shape[1:] == out.shape[1:]:
            run(z, self._sigma_of(out).view(k), "relative" if self.relative else "absolute", out)
        else:                            # normals of the output's own shape (a site no plan foresaw)
            out = self._noisy_stacked(run(None, None, None, out), z)
        self.f.noised = out
        return out

    @staticmethod
    def _write_pending(pending: tuple) -> None:
        """Write the first layer's deferred output after all (its reader is not the pool that was expected)."""
        x, base, v, g = pending
        k, rows = len(x) // len(base), len(base)
        xs = x.view(k, rows, *base.shape[1:])
        if v is None:
            xs.copy_(base.unsqueeze(0))
        else:
            torch.addcmul(base.unsqueeze(0), v.unsqueeze(0), g.view(k, rows, *([1] * (base.dim() - 1))), out=xs)

    def scale(self, y: torch.Tensor) -> torch.Tensor:
        """max|y| per sample (per time step and sample for a spiking model's (T, B, features) output)."""
        if self.time_major and y.dim() == 3:
            return y.detach().abs().amax(2, keepdim=True)
        return y.detach().abs().flatten(1).amax(1).view(-1, *([1] * (y.dim() - 1)))

    def _input_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.f.first and self.first.folds:
            self.standard(args[0])      # these normals are folded into the first layer's cached output
            return None
        return (self.noisy(args[0]), *args[1:])

    def _output_hook(self, module: nn.Module, args: tuple, out: Any) -> torch.Tensor | None:
        if out is self.f.noised:         # its forward added the noise (native_op)
            self.f.noised = None
            return None
        if not isinstance(out, torch.Tensor):
            return None
        if self.f.first and module is self.first.module and (self.first.folds or self.f.stack > 1):
            self.standard(out)          # the first layer's output already has its noise (folded, or stacked)
            return None
        return self.noisy(out)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _layer_class(m: nn.Module) -> type:
    from torch.nn.utils import parametrize

    # torch's Parametrized<Class> wrapper (QAT's weight fake-quant): the layer's own class
    return type(m).__mro__[1] if parametrize.is_parametrized(m) else type(m)


def _hooks_free(m: nn.Module) -> bool:
    return not (m._forward_pre_hooks or m._forward_hooks)


def first_layer(model: nn.Module, x: torch.Tensor) -> nn.Module | None:
    """The leaf module a forward of ``model`` calls first, when it is a ``Conv2d`` or ``Linear`` (its weight
    possibly parametrized, e.g. QAT's fake-quant) that gets the model's input tensor itself, is called once
    per forward and carries no hooks (nor does the model, nor torch globally); else None. Found with one
    clean forward of ``x[:1]`` (no gradient). Its output then depends on the model input alone, linearly
    (up to its bias), which :class:`_FirstLayer` uses."""
    import torch.nn.modules.module as mm

    if not _hooks_free(model) or any(getattr(mm, k, None) for k in ("_global_forward_pre_hooks",
                                                                    "_global_forward_hooks")):
        return None
    from torch.nn.utils import parametrize

    # the layers: modules without children, or whose only children are a weight's parametrizations; not those
    # parametrizations themselves (run when the weight is read)
    leaves = [m for name, m in model.named_modules() if m is not model
              and "parametrizations" not in name.split(".")
              and (parametrize.is_parametrized(m) or not any(True for _ in m.children()))]
    hook_free = {id(m) for m in leaves if _hooks_free(m)}
    calls: list[tuple[nn.Module, Any]] = []
    given: list[Any] = []
    handles = [model.register_forward_pre_hook(lambda mod, args: given.append(args[0] if args else None))]
    handles += [m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args[0] if args else None)))
                for m in leaves]
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):   # a model may draw (MC dropout)
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not calls or not given:
        return None
    first, inp = calls[0]
    if (_layer_class(first) not in (nn.Conv2d, nn.Linear) or "forward" in vars(first)
            or id(first) not in hook_free or inp is not given[0] or sum(m is first for m, _ in calls) != 1):
        return None
    return first


class _FirstLayer:
    """A sweep's first layer, computed once per batch instead of once per sigma.

    Every sigma's forward of a batch feeds the first layer (:func:`first_layer`) the same clean rows. Where
    the model input gets no noise, its output is the same for every sigma: it is computed at the batch's
    first forward and reused - the same values, so the results do not change (``folds`` False).

    Where the input does get absolute noise, the first layer's input differs from sigma to sigma, but only by
    ``sigma * z`` with the batch's fixed normals ``z``: the layer is linear, so its output is
    ``L(x) + sigma * L0(z)`` (``L0``: without the bias), and its own output noise ``sigma * z1`` adds to that:
    ``L(x) + sigma * (L0(z) + z1)``. Both terms are computed once per batch, and each sigma costs one
    scaled sum instead of the layer (``folds`` True; about half of LeNet-5's forward is conv1). The same
    normals and the same sum, in another order: the numbers agree with the reference up to float rounding
    (tests/test_noise_fast.py), not bit for bit, so ``exact=True`` leaves this out.

    In a stacked forward (not exact: every sigma of a piece at once, :func:`_predict_sigmas`) the layer's terms
    come from :meth:`prepare`, run once per batch on the distinct images, and the layer adds its own output
    noise for all copies in one broadcast operation (the output hook then adds none).

    Installed by swapping the layer's ``forward`` on the instance (its hooks still fire); the cache is keyed
    by the input rows' storage and cleared at every batch."""

    def __init__(self, module: nn.Module, noise: _PrefetchedNoise, folds: bool, output_site: bool):
        self.module, self.noise, self.folds, self.output_site = module, noise, folds, output_site
        self._cls = _layer_class(module)            # whose forward computes the layer (the instance's is swapped)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._bases: set[int] = set()                 # id() of the cached outputs (alive until clear())
        self.scales: dict[int, torch.Tensor] = {}     # a cached output's relative-noise scale, by id()
        self._out = threading.local()
        self._batch: tuple | None = None           # prepare(): (images, outputs per image, folded terms, scales)
        noise.first = self
        module.forward = self._forward

    def clear(self) -> None:
        self._cache.clear()
        self._bases.clear()
        self.scales.clear()
        self._batch = None

    def prepare(self, xr: torch.Tensor, images: int, ready: list[torch.Tensor]) -> None:
        """Before a batch's stacked forwards: ``xr`` is ``images`` rows repeated once per draw, ``ready`` its
        normals. The layer's output for each distinct image (the draws' copies are the same rows), its max|y|
        where relative noise follows, and (folded) L0(z) + z1 for every row, in calls of half
        :data:`CHUNK_ROWS` rows (oneDNN's one-channel conv is slow both on the few rows of a stacked piece and on
        a whole batch)."""
        step = max(1, CHUNK_ROWS // 2)
        outs = [self._cls.forward(self.module, xr[a:min(a + step, images)]) for a in range(0, images, step)]
        base = outs[0] if len(outs) == 1 else torch.cat(outs)
        terms = None
        if self.folds:
            z_in, z_out = self._normals(ready, xr.shape, (len(xr), *base.shape[1:]))
            # kept in step-row parts (a piece takes its rows from one or more of them)
            # the layer's output normals are read here for the last time (the stacked forwards take these terms;
            # the output hook only counts the site): the terms are written into them
            terms = (step, [self._terms(z_in[a:a + step], None if z_out is None else z_out[a:a + step], True)
                            for a in range(0, len(xr), step)])
        scale = self.noise.scale(base) if self.noise.relative and self.output_site and not self.folds else None
        self._batch = (images, base, terms, scale)

    def cached(self, y: torch.Tensor) -> bool:
        """Whether ``y`` is one of this batch's cached first-layer outputs (the same tensor for every sigma)."""
        return id(y) in self._bases

    def remove(self) -> None:
        self.clear()
        self.noise.first = None
        del self.module.forward

    def _terms(self, z_in: torch.Tensor, z_out: torch.Tensor | None, in_place: bool = False) -> torch.Tensor:
        """The folded noise per unit sigma: L0(z_in), plus the layer's own output normals ``z_out`` if any;
        ``in_place``: the sum written into ``z_out`` (the same sum: float addition commutes), for a caller after
        which nothing reads those normals (:meth:`prepare`): no new memory kept per batch."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            w = m._conv_forward(z_in, m.weight, None)       # the layer's padding mode, no bias
        else:
            w = nn.functional.linear(z_in, m.weight)
        if z_out is None:
            return w
        return z_out.add_(w) if in_place else w.add_(z_out)

    def _normals(self, ready: list[torch.Tensor], inp_shape: tuple, out_shape: tuple,
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first two of the prepared normals when the input is a site: the model input's, and (if it is a
        site) the layer output's, checked against the shapes the forward has."""
        zs = ready[: 1 + self.output_site]
        if zs[0].shape != inp_shape or (self.output_site and zs[1].shape != out_shape):
            raise _sites_changed()
        return zs[0], (zs[1] if self.output_site else None)

    def _forward(self, inp: torch.Tensor) -> torch.Tensor:
        f = self.noise.f
        if not f.first:
            return self._cls.forward(self.module, inp)
        if f.stack > 1:
            return self._forward_stacked(inp)
        key = (inp.data_ptr(), tuple(inp.shape), tuple(inp.stride()), inp.dtype)
        hit = self._cache.get(key)
        if hit is None:
            base = self._cls.forward(self.module, inp)
            w = self._terms(*self._normals(f.ready, inp.shape, base.shape)) if self.folds else None
            hit = self._cache[key] = (base, w)
            if w is None:
                self._bases.add(id(base))
        base, w = hit
        if w is not None:
            return torch.add(base, w, alpha=f.sigma, out=self._buffer(base.shape, base))
        # the output hook's noise leaves its input alone; without it, the next layer might work in place
        return base if self.output_site else base.clone()

    def _forward_stacked(self, inp: torch.Tensor) -> torch.Tensor:
        """A stacked forward (its rows: ``stack`` copies of one piece, copy k at sigma[k], the piece starting at
        row ``offset`` of its batch): every copy's output is made from the batch's terms from :meth:`prepare`
        (folded: L(x) + sigma_k (L0(z) + z1))."""
        f = self.noise.f
        k = f.stack
        rows = inp.shape[0] // k
        if self._batch is None or f.offset is None:
            raise LenetlabError("internal: a stacked forward of the first layer before its batch was prepared")
        images, outs, terms, scales = self._batch       # prepared for the batch: this piece's rows of them
        a, start = f.offset, f.offset % images
        if start + rows <= images:
            base = outs[start:start + rows]
            scale = scales[start:start + rows] if scales is not None else None
        else:                                           # the piece runs over from one draw to the next
            idx = torch.arange(a, a + rows) % images
            base = outs.index_select(0, idx)
            scale = scales.index_select(0, idx) if scales is not None else None
        ones = [1] * (base.dim() - 1)
        sig = f.sigma.to(base.dtype).view(k, 1, *ones)
        shape = (k * rows, *base.shape[1:])
        # every copy c of row r is base[r] + v[r] * g[c, r] (one rounding), or base[r] where v is None
        if self.folds:
            step, parts = terms
            i, j = a // step, (a + rows - 1) // step
            # the piece's rows of the parts it spans (more than two where a piece is longer than a part)
            v = parts[i][a - i * step:a - i * step + rows] if i == j else \
                torch.cat([parts[i][a - i * step:], *parts[i + 1:j], parts[j][:a + rows - j * step]])
            g = sig
        elif not self.output_site:
            v = g = None
        else:
            # the output's own noise, added here for all copies at once (the output hook then adds none): no copy
            # of the clean output per sigma, and its max|y| found once per batch
            v = f.ready[0]
            if len(v) != rows or v.shape[1:] != base.shape[1:]:
                raise _sites_changed()
            g = sig * scale.unsqueeze(0) if scale is not None else sig
        defer = self.noise.defer_ok and base.dtype == torch.float32
        if v is None and not defer:
            return base.repeat(k, *ones)
        buf = self._buffer((k, rows, *base.shape[1:]), base)
        if defer:
            # the model's pool takes this output straight from here (_defers): it pools these terms itself and
            # the copies are never written out (_PrefetchedNoise.native_op; anything else writes them first)
            out = buf.view(shape)
            f.pending = (out, base.contiguous(), None if v is None else v.contiguous(),
                         None if v is None else g.expand(k, rows, *ones).reshape(k * rows))
            return out
        return torch.addcmul(base.unsqueeze(0), v.unsqueeze(0), g, out=buf).view(shape)

    def _buffer(self, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        """This thread's output buffer of ``shape``: its forward has read it before the thread comes here again
        (a fresh tensor per forward would be fresh pages from the OS each time, several MB of them)."""
        buf = self._out.__dict__.get("buf")
        if buf is None or buf.shape != shape or buf.dtype != like.dtype:
            buf = self._out.buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf


def _lenet5_as_written(model: nn.Module) -> bool:
    """Whether ``model`` is lenetlab's own LeNet-5 running its own code (not a subclass, no forward swapped on
    the instance): its modules are called through ``__call__``, so their hooks see every output."""
    from lenetlab.models.lenet5 import LeNet5

    return type(model) is LeNet5 and not {"forward", "features"} & set(vars(model))


def _fusable(model: nn.Module, noise: _PrefetchedNoise) -> set[int]:
    """id() of the site modules of ``model`` whose output this noise's hook is the first to see (no global
    forward hooks; ours the module's first): only their forwards may add the site's noise themselves. Another
    hook first (QAT's fake-quant of activations, say) must see the output without the noise, as it did."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks:
        return set()
    return {id(m) for m in model.modules() if id(m) in noise._site_ids and not m._forward_hooks_with_kwargs
            and getattr(next(iter(m._forward_hooks.values()), None), "__self__", None) is noise}


def _defers(model: nn.Module, first: _FirstLayer, noise: _PrefetchedNoise) -> bool:
    """Whether a stacked forward may leave the first layer's output unwritten for the pool to compute from its
    terms (:meth:`_PrefetchedNoise.native_op`): only where that output is known to go straight into the pool
    and nowhere else: lenetlab's own LeNet-5 (its forward: conv1, then the pool, when the pool comes first),
    with no hooks on conv1 or the pool but this sweep's and no global module hooks. (The sweep asks this only
    where the kernels' multiply-add is torch's, :func:`lenetlab.noise.kernels.fma_like_torch`.)"""
    from torch.nn.modules import module as torch_module

    def only_ours(hooks: dict) -> bool:
        return all(getattr(h, "__self__", None) is noise for h in hooks.values())

    pool = getattr(model, "pool", None)
    return (NATIVE and _lenet5_as_written(model) and model.pool_first
            and first.module is model.conv1 and type(pool) is MaxPool2x2
            and "forward" not in vars(pool) and only_ours(model.conv1._forward_hooks)
            and only_ours(pool._forward_hooks) and not pool._forward_pre_hooks
            and not model.conv1._forward_hooks_with_kwargs and not pool._forward_hooks_with_kwargs
            and not torch_module._global_forward_hooks and not torch_module._global_forward_pre_hooks)


def _sites_changed() -> LenetlabError:
    return LenetlabError("the model's noise sites changed from one forward to the next; evaluate it with exact=True")


#: rows per forward of the fast path once a batch's normals are drawn: a batch of 1,000 rows is pushed through
#: the model in pieces this size, so each layer's output stays in cache (oneDNN's conv with one input channel
#: runs about 3x faster on 200-row pieces than on 1,000 rows, with the same values per row)
CHUNK_ROWS = 200
#: stacked forwards pool and apply ReLU with the C kernels of :mod:`lenetlab.noise.kernels` where they are
#: available (False: torch's ops; the same numbers)
NATIVE = True
#: rows per piece in a sweep, which runs every sigma of a piece before the next piece (its first layer is not
#: run per sigma, :class:`_FirstLayer`, and smaller pieces keep the piece's normals in cache)
SWEEP_CHUNK_ROWS = 100
#: rows per forward of a stacked sweep (not exact): pieces of STACK_ROWS // (number of sigmas) rows, each run
#: once with a copy per sigma, so each piece's normals are read once and the per-forward overhead is shared
STACK_ROWS = 400

# torch modules whose output row i depends on input row i only (in eval mode; exact types: a subclass may
# override forward)
_ROW_WISE_TORCH = {nn.Conv1d, nn.Conv2d, nn.Linear, nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout2d,
                   nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict, *_POOL,
                   nn.ReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                   nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
                   nn.LogSigmoid, nn.Tanhshrink, nn.Threshold}

# model -> {(input, parameters, modules, noise settings, pieces): whether the pieces' logits equal the whole
# batch's, bit for bit (checked once)}
_CHUNK_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def row_wise(model: nn.Module) -> bool:
    """Whether every module of ``model`` is known to compute each sample from that sample alone (in eval mode):
    the torch layers above, BatchNorm with running statistics, and classes that declare ``row_wise = True``
    (lenetlab's models and layers do; a subclass that defines its own ``forward`` must declare it again). Only
    such models run in pieces; any other (a user's own class, until it declares itself) runs whole batches."""
    from torch.nn.utils import parametrize

    for m in model.modules():
        cls = type(m)
        if parametrize.is_parametrized(m):
            cls = cls.__mro__[1]                 # torch's Parametrized<Class> wrapper: the layer's own class
        if cls in _ROW_WISE_TORCH:
            continue
        if vars(cls).get("row_wise") is True or (getattr(cls, "row_wise", False) is True
                                                 and "forward" not in vars(cls)):
            continue     # declared; a subclass with a forward of its own must declare it again
        if cls is parametrize.ParametrizationList:
            continue
        if cls in (nn.BatchNorm1d, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None:
            continue
        return False
    return True


def _piece_key(model: nn.Module, noise: _PrefetchedNoise) -> tuple | None:
    """What a pieces check depends on besides the input (taken once per evaluation: the model does not change
    during one); None when the model may not run in pieces at all (not :func:`row_wise`, time-major)."""
    if noise.time_major or not row_wise(model):
        return None
    return (tuple((p.dtype, p.device) for p in model.parameters()),
            tuple((type(m), id(m)) for m in model.modules()), noise.relative)


def _forward(model: nn.Module, noise: _PrefetchedNoise, xr: torch.Tensor, ready: list[torch.Tensor] | None,
             keep: bool, fixed: tuple | None, helper: ThreadPoolExecutor | None = None,
             chunk: int | None = None) -> torch.Tensor:
    """One noisy forward of the batch ``xr`` with the batch's normals ``ready`` (None: drawn as the hooks ask).

    For a :func:`row_wise` model (``fixed``: its :func:`_piece_key`; None: never in pieces), with normals in
    hand and every site's output of the batch's row count, the batch runs in :data:`CHUNK_ROWS`-row pieces,
    each with the matching rows of every site's normals: the same numbers per row, less memory traffic (a
    time-major spiking model's sites are not row-major: it runs whole); with a ``helper`` thread, the second
    half of the pieces runs on it (each thread's torch ops on one intra-op thread, so the values do not
    change). The kernels' own row independence (a BLAS may block rows differently) is checked too: the first
    time a model meets an input shape, the pieces' logits (on a copy of the normals, laid out as they will be)
    are compared bit for bit with one whole-batch forward; if they differ anywhere, this model and shape always
    run whole. The check leaves the global random state and the noise's generators as it found them."""
    chunk = CHUNK_ROWS if chunk is None else chunk
    record = _piece_record(model, xr, ready, fixed, chunk)
    if record is None:
        noise.start(ready, keep=keep)
        return model(xr)
    seen, key = record
    if key not in seen:
        if len(seen) >= 64:                      # e.g. QAT put on and taken off a long-lived model many times
            seen.clear()
        spare = noise._spare, (noise._spare.get_state() if noise._spare is not None else None)
        with torch.random.fork_rng(devices=[]):
            trial = [z.clone() for z in ready] if not keep else ready
            pieces = _pieces(model, noise, xr, trial, keep, chunk, None)
        noise._spare = spare[0]                  # as it was: absent, or at the same place in its stream
        if spare[1] is not None:
            noise._spare.set_state(spare[1])
        noise.start(ready, keep=keep)
        whole = model(xr)
        seen[key] = torch.equal(pieces, whole)
        return whole
    if not seen[key]:
        noise.start(ready, keep=keep)
        return model(xr)
    return _pieces(model, noise, xr, ready, keep, chunk, helper)


def _piece_record(model: nn.Module, xr: torch.Tensor, ready: list[torch.Tensor] | None, fixed: tuple | None,
                  chunk: int) -> tuple[dict, tuple] | None:
    """(the model's record of pieces checks, this batch's key in it) where the batch ``xr`` may run in
    ``chunk``-row pieces (see :func:`_forward`); None where it may not."""
    rows = len(xr)
    if fixed is None or ready is None or chunk <= 0 or rows <= chunk or any(z.dim() == 0 or len(z) != rows
                                                                            for z in ready):
        return None
    try:
        seen = _CHUNK_OK.setdefault(model, {})
    except TypeError:                            # a model class that cannot be hashed: no record, no pieces
        return None
    return seen, (xr.shape, xr.dtype, xr.device, fixed, chunk)


def _predict_sigmas(model: nn.Module, noise: _PrefetchedNoise, xr: torch.Tensor, ready: list[torch.Tensor],
                    sigmas: list[float], fixed: tuple | None, helper: ThreadPoolExecutor | None,
                    worker: ThreadPoolExecutor, prefetch: Any, images: int) -> tuple[torch.Tensor, Any]:
    """The predicted class of every row of ``xr`` at each of ``sigmas`` (a sweep: the batch's normals in hand
    and kept), ``(len(sigmas), len(xr))``, and what ``prefetch()`` (the next batch's normals, or None) returns.

    Where the batch may run in pieces (:func:`_forward`, whose one-time check runs here too), it runs piece by
    piece, every sigma of a piece before the next piece, so the piece's normals and first-layer output stay in
    cache. With a ``helper`` thread the pieces are taken from one queue by both threads, the helper first
    drawing the next batch's normals (only one thread ever uses the generator); otherwise ``prefetch`` runs on
    ``worker`` meanwhile. The same forwards, so the same predictions as a forward per sigma.

    Not exact (the noise ``fused``), every sigma of a piece runs in one stacked forward, and the first layer's
    terms are prepared once for the batch (:meth:`_FirstLayer.prepare`; ``images``: the distinct images of
    ``xr``, which repeats them once per draw) while the helper draws the next batch's normals."""
    out = torch.empty(len(sigmas), len(xr), dtype=torch.long)
    chunk = SWEEP_CHUNK_ROWS
    record = _piece_record(model, xr, ready, fixed, chunk)
    on_helper = prefetch is not None and helper is not None and record is not None and record[0].get(record[1])
    pending = worker.submit(prefetch) if prefetch is not None and not on_helper else None
    try:
        done = 0
        if record is not None and record[1] not in record[0]:
            noise.sigma = sigmas[0]
            out[0] = _forward(model, noise, xr, ready, True, fixed, None, chunk).argmax(1)
            done = 1
        if record is None or not record[0][record[1]]:
            for j in range(done, len(sigmas)):
                noise.sigma = sigmas[j]
                out[j] = _forward(model, noise, xr, ready, True, fixed, None, chunk).argmax(1)
            return out, (pending.result() if pending is not None else None)
        inference = torch.is_inference_mode_enabled()     # thread-local, like grad mode: the helper takes ours
        # not exact (fused noise): all sigmas of a piece in one stacked forward, a copy of the piece per sigma
        k = len(sigmas) - done
        stacked = noise.fused and k > 1
        if stacked:
            chunk = max(1, STACK_ROWS // k)
            sig = torch.tensor(sigmas[done:], dtype=torch.float64)     # cast to each layer output's dtype

        first = noise.first if stacked else None
        prepared = threading.Event()
        if first is None:
            prepared.set()

        def run(queue: Iterator[int]) -> None:
            prepared.wait()
            if first is not None and first._batch is None:
                return                                    # prepare() failed: its error is raised on the main thread
            with torch.inference_mode(inference):
                for a in queue:
                    xa, zs = xr[a:a + chunk], [z[a:a + chunk] for z in ready]
                    if stacked:
                        n = len(xa)
                        noise.start(zs, keep=True, sigma=sig, stack=k, offset=a)
                        out[done:, a:a + n] = model(xa.repeat(k, *([1] * (xa.dim() - 1)))).argmax(1).view(k, n)
                        continue
                    for j in range(done, len(sigmas)):
                        noise.start(zs, keep=True, sigma=sigmas[j])
                        out[j, a:a + chunk] = model(xa).argmax(1)

        def helper_job() -> Any:
            got = prefetch() if on_helper else None
            run(queue)
            return got

        def prepare() -> None:
            try:
                with torch.inference_mode(inference):
                    first.prepare(xr, images, ready)
            finally:
                prepared.set()

        queue = iter(range(0, len(xr), chunk))            # one iterator, two threads: each piece taken once
        nxt = None
        if helper is None:
            if first is not None:
                prepare()
            run(queue)
        else:
            second = helper.submit(helper_job)
            try:
                if first is not None:
                    prepare()
                run(queue)
            finally:
                nxt = second.result()
        return out, (nxt if on_helper else pending.result() if pending is not None else None)
    finally:
        if pending is not None:
            pending.result()                  # no draw is left running (and its error, if any, is raised)


def _pieces(model: nn.Module, noise: _PrefetchedNoise, xr: torch.Tensor, ready: list[torch.Tensor], keep: bool,
            chunk: int, helper: ThreadPoolExecutor | None) -> torch.Tensor:
    inference = torch.is_inference_mode_enabled()     # thread-local, like grad mode: the helper takes ours

    def run(starts: list[int]) -> list[torch.Tensor]:
        out = []
        with torch.inference_mode(inference):
            for a in starts:
                noise.start([z[a:a + chunk] for z in ready], keep=keep)
                out.append(model(xr[a:a + chunk]))
        return out

    starts = list(range(0, len(xr), chunk))
    if helper is None or len(starts) < 2:
        return torch.cat(run(starts))
    half = (len(starts) + 1) // 2
    second = helper.submit(run, starts[half:])
    try:
        first = run(starts[:half])
    finally:
        rest = second.result()
    return torch.cat(first + rest)


def _fast_noisy_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, draws: int,
                         relative: bool, sites: Sequence[str], seed: int, batch_size: int) -> dict[str, Any]:
    """:func:`noisy_accuracy` without weight noise; the same batches, stream and numbers as the reference."""
    return _sweep(model, x, y, [check_sigma(sigma)], draws, relative, check_sites(sites), seed, batch_size)[0]


def noisy_accuracy_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float],
                         draws: int = 5, relative: bool = False, sites: Sequence[str] = SITES, seed: int = 0,
                         batch_size: int = 1000, exact: bool = False) -> list[dict[str, Any]]:
    """:func:`noisy_accuracy` at every sigma of ``sigmas`` with one ``seed``: the list
    ``[noisy_accuracy(model, x, y, s, draws, relative, sites, seed=seed, batch_size=batch_size) for s in
    sigmas]``, in a fraction of the time. With ``exact=True`` the same numbers bit for bit
    (tests/test_noise_fast.py). By default every site adds its noise in one rounding (``y + s * z`` as one
    operation), and where the input gets absolute noise and the model's first layer is a plain convolution
    or linear layer, that layer is folded (:class:`_FirstLayer`): computed once per batch and not once per
    sigma, from the same normals. So the numbers equal the list's up to float rounding (the logits agree to
    about 1e-6 of their size; an image whose top two logits are that close may flip). A model on another
    device than the CPU gets the exact sweep.

    Each call of that list seeds its own generator with ``seed`` and draws the same standard normals, batch by
    batch and site by site; only the factor sigma (x max|y| when ``relative``) differs. So here each batch's
    normals are drawn once and every sigma's forward multiplies them into a buffer of its own - common random
    numbers across sigmas, exactly as the separate calls had them. (``lenetlab noise eval`` uses one seed for
    every sigma and runs this; an experiment that wants independent draws per sigma calls
    :func:`noisy_accuracy` with a seed per sigma.) No weight noise here. (A model whose site shapes change
    from forward to forward gets its unforeseen sites' normals from a second generator, as the per-call path
    does; that stream then runs on across sigmas, so only such models differ from the separate calls.)"""
    if draws < 1:
        raise LenetlabError(f"draws must be >= 1, got {draws}")
    if len(x) != len(y):
        raise LenetlabError(f"{len(x)} images but {len(y)} labels")
    sigmas = [check_sigma(s) for s in sigmas]
    sites = check_sites(sites)
    live = [s for s in sigmas if s > 0]
    results: dict[int, dict[str, Any]] = {}
    if len(live) < len(sigmas):      # sigma 0 adds nothing anywhere: the clean accuracy, once
        clean = _fast_noisy_accuracy(model, x, y, 0.0, draws, relative, sites, seed, batch_size)
        results.update({j: clean for j, s in enumerate(sigmas) if s == 0})
    if live:
        shared = _sweep(model, x, y, live, draws, relative, sites, seed, batch_size, exact)
        it = iter(shared)
        results.update({j: next(it) for j, s in enumerate(sigmas) if s > 0})
    return [results[j] for j in range(len(sigmas))]


def _sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigmas: list[float], draws: int,
           relative: bool, sites: tuple[str, ...], seed: int, batch_size: int,
           exact: bool = True) -> list[dict[str, Any]]:
    """The fast path, for one sigma or (:func:`noisy_accuracy_sweep`) several > 0 with one seed: each batch's
    normals are drawn once - on demand in the first forward of a batch size, else from the plan of site shapes
    that forward recorded, the next batch's on a second thread while this one runs (torch on one intra-op
    thread meanwhile: two cores busy, no oversubscription; the generator is only ever used by one thread at a
    time) - and each sigma gets one forward; with several sigmas the normals are kept for the next one. Once a
    batch's normals are in hand its forwards run in pieces (:func:`_forward`).

    A sweep of several sigmas (:func:`_predict_sigmas`) of a row-wise model plans every batch's normals from a
    one-row forward (:meth:`_PrefetchedNoise.row_plan`), runs every sigma of a piece before the next piece, on
    both threads when torch was given two or more (the helper drawing the next batch's normals first), and
    computes the first layer once per batch (:class:`_FirstLayer`: reused where the input is clean; with
    ``exact`` False, folded where the input gets absolute noise, and every site's noise added in one
    rounding)."""
    was_training = model.training
    threads = torch.get_num_threads()
    model.eval()
    correct = torch.zeros(len(sigmas), draws, dtype=torch.long, device=x.device)
    per_image = torch.zeros(len(sigmas), len(x), dtype=torch.long, device=x.device)
    per = max(1, batch_size // draws)
    starts = list(range(0, len(x), per))
    # the first layer's reuse and folding and the stacked forwards are built and tested for the CPU (the
    # normals are drawn there); on another device a sweep takes the exact path
    on_cpu = x.device.type == "cpu" and all(p.device.type == "cpu" for p in model.parameters())
    first = first_layer(model, x) if len(sigmas) > 1 and len(x) and on_cpu else None
    noise = _PrefetchedNoise(model, sigmas[0], relative, sites, seed,
                             fused=not exact and len(sigmas) > 1 and on_cpu)
    if first is not None and noise._handles:
        output_site = any(m is first and kind in sites for _, m, kind in leaf_sites(model))
        if "input" not in sites:
            first = _FirstLayer(first, noise, folds=False, output_site=output_site)
        elif not relative and not exact:
            first = _FirstLayer(first, noise, folds=True, output_site=output_site)
        else:
            first = None
    else:
        first = None
    fuses = NATIVE and noise.fused and _lenet5_as_written(model) and kernels.fma_like_torch()
    noise.fuse_ids = _fusable(model, noise) if fuses else set()
    noise.defer_ok = first is not None and fuses and _defers(model, first, noise)
    plans: dict[int, list[tuple[torch.Size, torch.dtype]]] = {}
    pending: Future | None = None
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lenetlab-noise")
    # a sweep's normals are drawn once for all its sigmas: its forwards may use a second thread
    # (its torch ops on one intra-op thread: a new thread's OpenMP default would be every core)
    helper = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="lenetlab-noise-pieces",
                                 initializer=torch.set_num_threads, initargs=(1,))
              if len(sigmas) > 1 and threads > 1 else None)
    try:
        torch.set_num_threads(1)
        fixed = _piece_key(model, noise)
        with torch.inference_mode(), _fast_pools(model, noise):
            # a sweep of a row-wise model knows every batch's site shapes from a one-row forward, so even the
            # first batch's normals are drawn ahead of its forwards (the same draws in the same order)
            row_plan = (noise.row_plan(x[:1]) if len(sigmas) > 1 and fixed is not None and noise._handles
                        and len(x) else None)

            def plan_for(rows: int) -> list[tuple[torch.Size, torch.dtype]] | None:
                if rows in plans:
                    return plans[rows]
                if row_plan is None:
                    return None
                return [(torch.Size((rows, *shape[1:])), dtype) for shape, dtype in row_plan]

            ahead: list[torch.Tensor] | None = None      # the next batch's normals, drawn during this one
            # the last finished batch's normals: nothing reads them any more, so the batch after the current
            # one has its normals drawn into their memory (the current batch's are still in use)
            spent: list[torch.Tensor] | None = None
            for k, i in enumerate(starts):
                xb, yb = x[i:i + per], y[i:i + per]
                rows = len(xb) * draws
                nxt_rows = min(per, len(x) - starts[k + 1]) * draws if k + 1 < len(starts) else None
                if ahead is not None:
                    ready, ahead = ahead, None
                elif pending is not None:
                    ready = pending.result()
                elif noise._handles and plan_for(rows) is not None:
                    ready = noise.draw(plan_for(rows), into=spent)
                    spent = None           # now this batch's: the next batch's normals must not go there
                else:
                    ready = None
                pending = None
                if ready is not None and len(sigmas) == 1 and nxt_rows in plans:
                    pending = worker.submit(noise.draw, plans[nxt_rows], spent)
                xr = xb.repeat(draws, *([1] * (xb.dim() - 1)))
                if first is not None:
                    first.clear()
                preds = torch.empty(len(sigmas), rows, dtype=torch.long)
                done = 0
                if ready is None or len(sigmas) == 1:
                    noise.sigma = sigmas[0]
                    preds[0] = _forward(model, noise, xr, ready, len(sigmas) > 1, fixed, helper).argmax(1)
                    if ready is None:          # the first forward of this size drew as its hooks asked
                        ready = noise.drawn
                        plans.setdefault(rows, noise.shapes)
                    done = 1
                if done < len(sigmas):
                    plan = plan_for(nxt_rows) if nxt_rows is not None else None
                    prefetch = (lambda pl=plan, old=spent: noise.draw(pl, into=old)) if plan is not None else None
                    preds[done:], ahead = _predict_sigmas(model, noise, xr, ready, sigmas[done:], fixed, helper,
                                                          worker, prefetch, images=len(xb))
                for j in range(len(sigmas)):
                    hit = preds[j].view(draws, len(xb)) == yb
                    correct[j] += hit.sum(1)
                    per_image[j, i:i + per] += hit.sum(0)
                spent = ready
    finally:
        worker.shutdown(wait=True)
        if helper is not None:
            helper.shutdown(wait=True)
        if first is not None:
            first.remove()
        noise.remove()
        torch.set_num_threads(threads)
        model.train(was_training)
    return [_result(correct[j], per_image[j], len(x), draws) for j in range(len(sigmas))]
