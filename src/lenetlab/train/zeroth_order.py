"""Training without (full) backprop: SPSA zeroth-order and the ElasticZO hybrid.

ElasticZO (Sugiura, Matsutani 2025, docs/papers/zo.md): LeNet-5's weight
layers (conv1, conv2, fc1, fc2, fc3) are split at a cutoff C. The first C
layers are trained by zeroth-order SPSA, the rest by ordinary backprop.
C = 5 is vanilla ZO (no backward pass at all), C = 0 is ordinary training.

One SPSA step with seed s (MeZO's "seed trick"): the perturbation z ~ N(0, I)
is never stored - it is regenerated from s whenever it is needed::

    theta += eps z        -> loss+        (forward only)
    theta -= 2 eps z      -> loss-
    theta += eps z        (restore)
    g = (loss+ - loss-) / (2 eps)          (the projected gradient, a scalar)
    theta -= lr_zo * g * z                 (z regenerated once more)

With q > 1 perturbations the q projected gradients are averaged. At most
``CHUNK`` values of z exist at any moment (z is drawn chunk by chunk from
one generator), so the ZO part needs no gradient buffers, no
optimiser state and no kept activations.

The BP part (the last 5 - C layers) takes its gradient from the same two
perturbed passes (the mean of the two backward passes, ``bp_grad="mean"``,
the default: no extra forward) or from one extra unperturbed pass
(``bp_grad="clean"``), and is updated by the configured optimiser. The ZO
layers' parameters are frozen (``requires_grad=False``) during the step, so
autograd records nothing upstream of the first BP layer: only the BP layers'
activations are kept.

The ZO part is updated by plain SGD with its own learning rate: ``lr_zo =
zo_lr_scale * lr`` where ``lr`` is the schedule's value (the same schedule
drives both parts). From a config, ``zo_lr_scale`` is ``train.zo_lr /
train.lr`` when the config has a ``zo_lr``, else ``DEFAULT_ZO_LR / train.lr``
(the ZO part peaks at ``DEFAULT_ZO_LR`` = 5e-3 whatever the BP lr is).

Clipping (``clip``, not in the paper, off by default in the class, on in
:func:`make_stepper` and ``lenetlab reproduce zo``): the update uses
``clamp(g, -clip, clip)`` instead of g; ``last_projected`` keeps the raw g.
Why: LeNet-5 has ~62k parameters, so one SPSA step ``lr g z`` is a random
walk of norm ``lr |g| sqrt(d)`` that inflates the weights, which sharpens the
loss, which makes |g| larger - a feedback loop that made unclipped plain-SGD ZO
diverge above lr ~1e-3, where it learns almost nothing in a few thousand
steps (10% after 1,500 steps at 2e-4, 21% at 1e-3). With |g| <= 0.3 the
lr can be 5e-3: 65% after 3,000 steps of batch 64 (our tuning, MNIST, 20k
images). The perturbation itself stays z ~ N(0, I) and g is the paper's g.

Example::

    from lenetlab.train import fit
    from lenetlab.train.presets import resolve
    cfg = resolve("fast", overrides={"train": {"zo": {"method": "elasticzo", "layers": 4}}})
    fit(cfg, out="runs/ezo")

In ``fit`` this is the ``zo`` trainer plugin (:class:`ZOPlugin`, the
``train.zo`` section), which replaces the training step; the optimiser it
steps is always ``fit``'s current one (re-created after an LB restart).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from lenetlab.config import TrainConfig
from lenetlab.errors import LenetlabError
from lenetlab.registry import register
from lenetlab.train.plugins import TrainContext, TrainerPlugin

METHODS = ("bp", "zo", "elasticzo", "elasticzo-int8")
# the ZO learning rate when the config names no zo_lr, and the |g| clip that makes it stable (module docstring):
# tuned for LeNet-5 / MNIST, batch 64, eps 1e-3, q 1 (1e-2 with clip 0.2 did as well; unclipped, >1e-3 diverged)
DEFAULT_ZO_LR = 5e-3
DEFAULT_ZO_CLIP = 0.3
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The model's weight layers (Conv2d / Linear) in definition order: LeNet-5's conv1..fc3."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_params(layers: Sequence[nn.Module]) -> list[torch.Tensor]:
    return [p for m in layers for p in m.parameters(recurse=False)]


def step_seed(run_seed: int, step: int, i: int, q: int) -> int:
    """The seed of perturbation ``i`` of global step ``step``: a pure function, so a resumed run matches."""
    return (run_seed * 1_000_003 + step * q + i) % (2**63 - 1)


CHUNK = 4096   # z is drawn this many elements at a time: the perturbation never needs a whole tensor


def flat_view(p: torch.Tensor) -> torch.Tensor:
    """A 1-D view of p in memory order (contiguous or channels-last), so z can be applied chunk by chunk."""
    if p.is_contiguous():
        return p.view(-1)
    if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last):
        return p.permute(0, 2, 3, 1).view(-1)
    raise LenetlabError(f"zeroth-order training needs dense parameters, got strides {p.stride()}")


def z_chunks(params: Sequence[torch.Tensor], seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(slice of a parameter's flat view, its z) pairs; z ~ N(0, I) regenerated from ``seed``, CHUNK at a time."""
    g = torch.Generator().manual_seed(seed)
    for p in params:
        flat = flat_view(p)
        for i in range(0, flat.numel(), CHUNK):
            part = flat[i:i + CHUNK]
            yield part, torch.randn(part.shape, generator=g, dtype=p.dtype).to(p.device)   # drawn on the CPU


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], seed: int, scale: float) -> None:
    """``p += scale * z`` for every p, z ~ N(0, I) regenerated from ``seed`` (at most CHUNK values at a time)."""
    for part, z in z_chunks(params, seed):
        part.add_(z, alpha=scale)


def projected_gradient(params: Sequence[torch.Tensor], loss: Callable[[], float], eps: float, seed: int
                       ) -> tuple[float, float, float]:
    """(g, loss+, loss-) of one central-difference SPSA probe along z(seed); params are restored."""
    perturb_(params, seed, eps)
    lp = loss()
    perturb_(params, seed, -2 * eps)
    lm = loss()
    perturb_(params, seed, eps)
    return (lp - lm) / (2 * eps), lp, lm


def spsa_estimate(params: Sequence[torch.Tensor], loss: Callable[[], float], eps: float, q: int, seed: int
                  ) -> list[torch.Tensor]:
    """The dense SPSA gradient estimate (1/q) sum_i g_i z_i - for tests and analysis only.

    Training never materialises this: it applies ``-lr g_i z_i`` directly with z regenerated.
    """
    est = [torch.zeros_like(p) for p in params]
    for i in range(q):
        g, _, _ = projected_gradient(params, loss, eps, seed + i)
        for part, z in z_chunks(est, seed + i):
            part.add_(z, alpha=g / q)
    return est


@contextlib.contextmanager
def _frozen(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """requires_grad=False for the duration: autograd then keeps nothing upstream of the first BP layer."""
    old = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in zip(params, old):
            p.requires_grad_(r)


class ElasticZOStepper:
    """One training step of ElasticZO; cutoff 0 is exactly the ordinary BP step, cutoff = all is vanilla ZO.

    ``step(xb, yb, lr, step, opt) -> (logits, loss)`` is what the ``zo`` plugin calls per batch; ``opt``
    (the optimiser of the BP part) is passed on every step, so it is always the trainer's current one
    (``opt`` given at construction is the default, for direct use).
    """

    def __init__(self, model: nn.Module, cutoff: int, loss_fn: LossFn, opt: Any, eps: float = 1e-3, q: int = 1,
                 seed: int = 0, zo_lr_scale: float = 1.0, bp_grad: str = "mean", clip: float | None = None):
        layers = weight_layers(model)
        if not 0 <= cutoff <= len(layers):
            raise LenetlabError(f"train.zo.layers must be in [0, {len(layers)}] for this model, got {cutoff}")
        if eps <= 0:
            raise LenetlabError(f"train.zo.eps must be positive, got {eps}")
        if q < 1:
            raise LenetlabError(f"train.zo.q must be >= 1, got {q}")
        if bp_grad not in ("mean", "clean"):
            raise LenetlabError(f"bp_grad must be 'mean' or 'clean', got {bp_grad!r}")
        if clip is not None and clip <= 0:
            raise LenetlabError(f"the projected-gradient clip must be positive (or None), got {clip}")
        self.model, self.loss_fn, self.opt = model, loss_fn, opt
        self.cutoff, self.eps, self.q, self.seed = cutoff, eps, q, seed
        self.zo_lr_scale, self.bp_grad, self.clip = zo_lr_scale, bp_grad, clip
        self.zo_params = layer_params(layers[:cutoff])
        zo_ids = {id(p) for p in self.zo_params}
        # everything else trainable (BP layers, and biases/extra params outside the weight layers) is BP
        self.bp_params = [p for p in model.parameters() if id(p) not in zo_ids and p.requires_grad]
        self.last_projected: list[float] = []

    def _forward_loss(self, xb: torch.Tensor, yb: torch.Tensor, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if backward:
            logits = self.model(xb)
            loss = self.loss_fn(logits, yb)
            loss.backward()
            return logits.detach(), loss.detach()
        with torch.no_grad():
            logits = self.model(xb)
            return logits, self.loss_fn(logits, yb)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float, step: int, opt: Any = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        opt = self.opt if opt is None else opt
        has_bp = bool(self.bp_params)
        if not self.zo_params:   # pure BP: the ordinary step, op for op
            logits = self.model(xb)
            loss = self.loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return logits, loss
        opt.zero_grad(set_to_none=True)
        bp_in_probes = has_bp and self.bp_grad == "mean"
        gs: list[float] = []
        losses: list[torch.Tensor] = []
        logits = None
        with _frozen(self.zo_params):
            for i in range(self.q):
                s = step_seed(self.seed, step, i, self.q)
                perturb_(self.zo_params, s, self.eps)
                logits, lp = self._forward_loss(xb, yb, bp_in_probes)
                perturb_(self.zo_params, s, -2 * self.eps)
                _, lm = self._forward_loss(xb, yb, bp_in_probes)
                perturb_(self.zo_params, s, self.eps)
                gs.append(float(lp - lm) / (2 * self.eps))
                losses += [lp, lm]
            if has_bp and self.bp_grad == "clean":
                logits, lc = self._forward_loss(xb, yb, True)
        lr_zo = lr * self.zo_lr_scale
        for i, g in enumerate(gs):   # theta -= lr_zo * mean_i(g_i z_i), z_i regenerated
            if self.clip is not None:
                g = max(-self.clip, min(self.clip, g))
            perturb_(self.zo_params, step_seed(self.seed, step, i, self.q), -lr_zo * g / self.q)
        self.last_projected = gs
        if has_bp:
            if bp_in_probes:   # the backward passes of the 2q probes accumulated; use their mean
                with torch.no_grad():
                    for p in self.bp_params:
                        if p.grad is not None:
                            p.grad.div_(2 * self.q)
            opt.step()
            opt.zero_grad(set_to_none=True)
        loss = lc if has_bp and self.bp_grad == "clean" else torch.stack(losses).mean()
        return logits, loss


def resolve_cutoff(model: nn.Module, tc: TrainConfig) -> int:
    """ElasticZO's cutoff C from the config: ``zo`` defaults to all layers, ``elasticzo`` to all but the last."""
    n = len(weight_layers(model))
    zo = tc.zo
    if zo.method == "bp":
        return 0
    if zo.layers is not None:
        return zo.layers
    return n if zo.method == "zo" else n - 1


def make_stepper(model: nn.Module, tc: TrainConfig, loss_fn: LossFn, opt: Any = None) -> Any:
    """The per-batch step for ``tc.zo.method`` (the ``zo`` plugin's; ``opt``: see ElasticZOStepper.step)."""
    zo = tc.zo
    if zo.method not in METHODS:
        raise LenetlabError(f"unknown train.zo.method {zo.method!r}; choose from: {', '.join(METHODS)}")
    if tc.rule.name != "bp":
        raise LenetlabError(f"train.method {zo.method!r} cannot be combined with train.rule {tc.rule.name!r}")
    scale = (DEFAULT_ZO_LR if zo.lr is None else zo.lr) / tc.lr
    if zo.method == "elasticzo-int8":
        from lenetlab.train.zo_int8 import Int8Stepper

        return Int8Stepper(model, tc, resolve_cutoff(model, tc))
    # zo.clip None = the unclipped rule of the paper
    return ElasticZOStepper(model, resolve_cutoff(model, tc), loss_fn, opt, zo.eps, zo.q, tc.seed, scale,
                            clip=zo.clip)


@register("trainer_plugin", "zo")
class ZOPlugin(TrainerPlugin):
    """ZO / ElasticZO / ElasticZO-INT8 training steps (``train.zo.method`` other than bp)."""

    order = 30

    @classmethod
    def active(cls, tc: TrainConfig) -> bool:
        return tc.zo.method != "bp"

    def cpu_only(self) -> str:
        # the integer engine and its generators are CPU code
        return "ElasticZO-INT8 training (its integer engine)" if self.tc.zo.method == "elasticzo-int8" else ""

    def setup(self, ctx: TrainContext) -> None:
        self.stepper = make_stepper(ctx.model, ctx.tc, ctx.loss_fn)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float, step: int, ctx: TrainContext
             ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stepper.step(xb, yb, lr, step, ctx.opt)

    def weights_changed(self, ctx: TrainContext) -> None:
        if hasattr(self.stepper, "weights_changed"):
            self.stepper.weights_changed()

    def state_dict(self) -> dict[str, Any]:
        # the float stepper's state is the optimiser's (in the checkpoint already) and the step number
        return self.stepper.state_dict() if hasattr(self.stepper, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.stepper, "load_state_dict"):
            self.stepper.load_state_dict(state)

    def finish(self, ctx: TrainContext, out_dir: Any, summary: dict[str, Any]) -> None:
        if hasattr(self.stepper, "finish"):
            # elasticzo-int8: the integer engine's own test accuracy, and model_int8.safetensors beside the float twin
            self.stepper.finish(out_dir, ctx.splits, summary)


__all__ = ["ElasticZOStepper", "make_stepper", "perturb_", "projected_gradient", "spsa_estimate",
           "weight_layers", "resolve_cutoff", "step_seed", "METHODS", "ZOPlugin",
           "DEFAULT_ZO_LR", "DEFAULT_ZO_CLIP"]
