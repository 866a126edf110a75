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

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lenetlab.errors import LenetlabError

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


@torch.no_grad()
def noisy_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, draws: int = 5,
                   relative: bool = False, sites: Sequence[str] = SITES, weight_sigma: float = 0.0,
                   seed: int = 0, batch_size: int = 1000) -> dict[str, Any]:
    """Test accuracy under ``draws`` independent noise draws: ``{"mean", "std", "per_draw", "per_image"}``.

    ``per_image``: each image's fraction of draws classified correctly (a score in [0, 1] per image, what
    :mod:`lenetlab.experiments.stats` resamples for intervals over seeds and test images).

    Vectorised: each batch is repeated ``draws`` times and pushed through one
    forward, so every draw sees fresh noise at every site. ``batch_size`` counts
    images per forward including the repeats.
    """
    if draws < 1:
        raise LenetlabError(f"draws must be >= 1, got {draws}")
    was_training = model.training
    model.eval()
    correct = torch.zeros(draws, dtype=torch.long)
    per_image = torch.zeros(len(x), dtype=torch.long)
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
    acc = correct.double() / max(1, len(x))
    return {"mean": float(acc.mean()), "std": float(acc.std()) if draws > 1 else 0.0,
            "per_draw": acc.tolist(), "per_image": (per_image.double() / draws).tolist()}
