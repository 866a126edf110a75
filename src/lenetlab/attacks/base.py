"""One base class for adversarial attacks (Lin & Sengupta 2025, docs/papers/snn-attacks.md).

Modelled on torchattacks' ``Attack``: the base class puts every model in
eval mode (and restores it), takes and returns images in [0, 1] pixel units
(the run's normalisation and padding are applied inside, by :class:`Target`),
checks epsilon, seeds every random draw (random starts, Poisson encoding)
without touching the global RNG, and projects the result onto the eps ball
(L-inf, or L2 for an attack whose ``norm`` option is ``2``) and [0, 1]; a
subclass writes only :meth:`Attack.forward`.

Options: an attack declares its options as a dataclass, ``Options`` (field
name, type, default, ``metadata={"help": ...}``). ``make_attack`` checks the
options against it (unknown name, wrong type: one clear error) and
``lenetlab attack`` makes one flag per field (``step_size`` ->
``--step-size``), so an attack added by an outside plugin gets its flags too.

Gradient sources (``Target(grad_source=...)``):

- ``autograd``: the true autograd graph (for ``lenet5_snn``: BPTT through the
  surrogate spike derivatives);
- ``rule``: the model's own learning pathway, rebuilt from its run config -
  FA's B matrices, DFA's direct projections, LE's first local classifier
  (:mod:`lenetlab.rules`); for a BP model both are the same.

Each query of a spiking model starts from rest (the model resets its LIF
state per call; :class:`Target` calls ``reset_state()`` too).

Example::

    from lenetlab.attacks import Target, make_attack
    target = Target(model, cfg.data)
    x_adv = make_attack("pgd", target, eps=0.1)(x01, y)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lenetlab.config import DataConfig, from_dict
from lenetlab.data.transforms import from_unit
from lenetlab.errors import LenetlabError
from lenetlab.validate import L2_EPS_MAX

GRAD_SOURCES = ("autograd", "rule")
NORMS = {"inf": math.inf, "2": 2}       # the eps ball's norm, as the ``norm`` option spells it
TARGET_CLASSES = ("next", "random")     # what a targeted attack aims at


class Target:
    """A model as an attacker sees it: [0, 1] images in, logits out, input gradients on demand."""

    def __init__(self, model: nn.Module, data: DataConfig, grad_source: str = "autograd", rule: str = "bp",
                 rule_seed: int = 0, name: str = ""):
        if grad_source not in GRAD_SOURCES:
            raise LenetlabError(f"unknown gradient source {grad_source!r}; choose from: {', '.join(GRAD_SOURCES)}")
        self.model, self.data = model, data
        self.grad_source, self.rule, self.rule_seed = grad_source, rule, rule_seed
        self.name = name or getattr(model, "model_name", type(model).__name__)

    @classmethod
    def from_run(cls, run_dir: Any, grad_source: str = "autograd") -> "Target":
        from lenetlab.rundir import load_model

        model, cfg = load_model(run_dir)
        return cls(model, cfg.data, grad_source, cfg.train.rule.name, cfg.train.seed, name=str(run_dir))

    def logits(self, x01: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "reset_state"):
            self.model.reset_state()
        return self.model(from_unit(x01, self.data))

    @torch.no_grad()
    def predict(self, x01: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        return torch.cat([self.logits(x01[i:i + batch_size]).argmax(1) for i in range(0, len(x01), batch_size)])

    def loss_grad(self, x01: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample CE loss, d mean-CE / d x01) through the chosen gradient source."""
        x = x01.detach().clone().requires_grad_(True)
        with self._pathway(), torch.enable_grad():
            logits = self.logits(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            # mean reduction: LE recovers its targets from the output error assuming it (rules.grads)
            (g,) = torch.autograd.grad(losses.mean(), x)
        return losses.detach(), g.detach()

    @torch.no_grad()
    def losses(self, x01: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(x01), y, reduction="none")

    @contextlib.contextmanager
    def _pathway(self):
        if self.grad_source == "rule" and self.rule != "bp":
            from lenetlab.rules import attach_rule

            handle = attach_rule(self.model, self.rule, self.rule_seed)
            try:
                yield
            finally:
                handle.remove()
        else:
            yield


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto the L-inf ball of radius eps around x, intersected with [0, 1]."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Each image's perturbation scaled onto the L2 ball of radius eps around x (if outside), then clipped to
    [0, 1] (clipping moves every pixel toward x, so the result stays in the ball). Computed in float64."""
    d = (x_adv - x).double()
    n = d.flatten(1).norm(dim=1).view(-1, *([1] * (d.ndim - 1)))
    scale = torch.where(n > eps, eps / n.clamp_min(1e-300), torch.ones_like(n))
    return (x.double() + d * scale).clamp(0.0, 1.0).to(x.dtype)


def norm_name(value: Any) -> Any:
    """``inf``, ``Linf``, ``2``, ``L2`` (also as the numbers a CLI value parses to) -> ``inf`` / ``2``;
    anything else unchanged, for the option check to refuse."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return "inf" if value == math.inf else "2" if value == 2 else str(value)
    if isinstance(value, str):
        v = value.strip().lower()
        v = v[1:] if v.startswith("l") else v
        return {"inf": "inf", "infinity": "inf", "2": "2"}.get(v, value)
    return value


def target_labels(y: torch.Tensor, nb_classes: int, target_class: str, gen: torch.Generator) -> torch.Tensor:
    """The classes a targeted attack aims at: ``next`` ((y + 1) mod classes) or ``random`` (a seeded uniform
    draw among the other classes, from ``gen``)."""
    if target_class == "next":
        return (y.cpu() + 1) % nb_classes
    return (y.cpu() + torch.randint(1, nb_classes, y.shape, generator=gen)) % nb_classes


def norm_field(default: str = "inf"):
    return field(default=default, metadata={"help": "perturbation norm of the eps ball: inf or 2"})


def targeted_field():
    return field(default=False, metadata={"help": "targeted: aim at --target-class instead of any wrong class"})


def target_class_field():
    return field(default="next", metadata={
        "help": "class a targeted attack aims at: next ((y+1) mod classes) or random (seeded, never y)"})


def check_norm_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``norm`` spelled canonically and known, ``target_class`` known (where the attack has them)."""
    o = dict(options)
    if "norm" in o:
        o["norm"] = norm_name(o["norm"])
        if o["norm"] not in NORMS:
            raise LenetlabError(f"{name}: norm must be inf or 2, got {o['norm']!r}")
    if "target_class" in o and o["target_class"] not in TARGET_CLASSES:
        raise LenetlabError(f"{name}: target_class must be one of {', '.join(TARGET_CLASSES)}, "
                            f"got {o['target_class']!r}")
    return o


@dataclass(frozen=True)
class NoOptions:
    """An attack that takes no options."""


class Attack:
    """Subclasses set ``name``, ``needs_substitute``, ``Options`` and implement :meth:`forward` (x01, y -> x_adv)."""

    name = ""
    description = ""
    needs_substitute = False
    white_box = True        # uses the target's gradient
    Options: type = NoOptions   # dataclass of the attack's options (its fields become `lenetlab attack` flags)

    def __init__(self, target: Target, eps: float, seed: int = 0, substitute: Target | None = None, **options: Any):
        if self.needs_substitute and substitute is None:
            raise LenetlabError(f"attack {self.name!r} needs a substitute model (--substitute RUN_DIR)")
        self.target, self.eps, self.seed, self.substitute = target, float(eps), int(seed), substitute
        self.options = self.check_options(**options)
        if self.norm == "2":
            if not (math.isfinite(self.eps) and 0.0 <= self.eps <= L2_EPS_MAX):
                raise LenetlabError(f"eps of an L2 attack must be in [0, {L2_EPS_MAX:g}] (L2 radius in pixel "
                                    f"units), got {eps}")
        elif not 0.0 <= eps <= 1.0:
            raise LenetlabError(f"eps must be in [0, 1] (pixel units), got {eps}")

    @property
    def norm(self) -> str:
        """``inf`` or ``2``: the ball :meth:`__call__` projects onto (an attack without a ``norm`` option: inf)."""
        return self.options.get("norm", "inf")

    def aims(self, x01: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, bool]:
        """(labels whose loss the attack works on, ascend?): ``(y, True)``, or for a targeted attack the
        target classes (:func:`target_labels`) and False - it descends their loss."""
        if not self.options.get("targeted"):
            return y, True
        with torch.no_grad():
            nb_classes = int(self.source.logits(x01[:1]).shape[1])
        return target_labels(y, nb_classes, self.options["target_class"], gen).to(y.device), False

    @property
    def source(self) -> Target:
        """The model whose gradient crafts the examples: the target (white box) or the substitute (transfer)."""
        return self.target if self.white_box else self.substitute

    def check_options(self, **options: Any) -> dict[str, Any]:
        """``options`` parsed against :attr:`Options` (unknown names, wrong types: errors), then :meth:`validate`."""
        if "norm" in options:
            options["norm"] = norm_name(options["norm"])
        known = [f.name for f in dataclasses.fields(self.Options)]
        if options and not known:
            raise LenetlabError(f"attack {self.name!r} takes no options {sorted(options)}")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise LenetlabError(f"attack {self.name!r} has no option {unknown[0]!r}; options: {', '.join(known)}")
        parsed = dataclasses.asdict(from_dict(self.Options, options, where=f"attack.{self.name}"))
        return self.validate(check_norm_options(self.name, parsed))

    def validate(self, options: dict[str, Any]) -> dict[str, Any]:
        """Check values beyond their types and fill derived ones; returns what :meth:`forward` reads."""
        return options

    @classmethod
    def budget_options(cls, budget: int) -> dict[str, Any]:
        """Options that make this attack spend ``budget`` gradient evaluations: ``steps=budget`` for an
        iterative attack (one with a ``steps`` option), none for a single-step one (which spends 1)."""
        if not isinstance(budget, int) or budget < 1:
            raise LenetlabError(f"a gradient budget must be a positive integer, got {budget!r}")
        return {"steps": budget} if "steps" in {f.name for f in dataclasses.fields(cls.Options)} else {}

    def gradient_calls(self) -> int | None:
        """Input-gradient evaluations (forward + backward passes, on target or substitute) one call of this
        attack makes per image batch, or None if the attack does not say. Comparisons of attacks give each
        the same number (:mod:`lenetlab.attacks.budget`); loss-only forward passes are not counted."""
        return None

    def __call__(self, x01: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x01.ndim != 4:
            raise LenetlabError(f"attack inputs must be (N, C, H, W) images, got shape {tuple(x01.shape)}")
        if x01.numel() and (x01.min() < 0 or x01.max() > 1):
            raise LenetlabError("attack inputs must be in [0, 1] pixel units")
        models = [t.model for t in (self.target, self.substitute) if t is not None]
        modes = [m.training for m in models]
        for m in models:
            m.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                gen = torch.Generator().manual_seed(self.seed)
                x_adv = self.forward(x01.detach(), y, gen)
        finally:
            for m, was in zip(models, modes):
                m.train(was)
        if self.norm == "2":
            return project_l2(x_adv.detach(), x01, self.eps)
        return project(x_adv.detach(), x01, self.eps)

    def forward(self, x01: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class AttackResult:
    clean_accuracy: float
    adv_accuracy: float
    success_rate: float      # of the correctly classified images, the fraction the attack flips
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"clean_accuracy": self.clean_accuracy, "adv_accuracy": self.adv_accuracy,
                "success_rate": self.success_rate, "n": self.n}


def run_attack(attack: Attack, x01: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
               keep: bool = False, progress: Callable[[int], None] | None = None
               ) -> tuple[AttackResult, torch.Tensor | None]:
    """Attack (x01, y) in batches; clean/adversarial accuracy on the target and success rate.

    ``progress(n)`` after each batch, with its n images (the calls add up to ``len(x01)``)."""
    clean_ok, adv_ok, kept = [], [], []
    for i in range(0, len(x01), batch_size):
        xb, yb = x01[i:i + batch_size], y[i:i + batch_size]
        xa = attack(xb, yb)
        with torch.no_grad():
            clean_ok.append(attack.target.predict(xb) == yb)
            adv_ok.append(attack.target.predict(xa) == yb)
        if keep:
            kept.append(xa)
        if progress:
            progress(len(xb))
    c, a = torch.cat(clean_ok), torch.cat(adv_ok)
    n = len(c)
    flipped = int((c & ~a).sum())
    res = AttackResult(float(c.float().mean()), float(a.float().mean()), flipped / max(1, int(c.sum())), n)
    return res, (torch.cat(kept) if keep else None)


def make_attack(name: str, target: Target, eps: float, seed: int = 0, substitute: Target | None = None,
                **options: Any) -> Attack:
    """Build a registered attack. Example: ``make_attack("pgd", target, 0.1, steps=20)``."""
    from lenetlab.registry import get

    return get("attack", name)(target, eps, seed=seed, substitute=substitute, **options)
