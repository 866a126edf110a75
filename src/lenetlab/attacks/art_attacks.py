"""Standard strong attacks through the Adversarial Robustness Toolbox (ART; optional extra ``lenetlab[art]``).

``lenetlab attack RUN --attack art:apgd --eps 0.1`` (``--norm 2``, ``--targeted``, ``--steps`` ...):

- ``art:apgd``: Auto-PGD (Croce & Hein 2020), ART's ``AutoProjectedGradientDescent``; cross-entropy or
  DLR loss (``--loss``), initial step 2 eps unless ``--step-size``, ``--restarts`` random starts;
- ``art:autoattack``: ART's ``AutoAttack`` runner over APGD-CE, APGD-DLR and Square, each image keeping
  the first attack that fools the model inside the budget; ``--steps``, ``--restarts`` and ``--queries``
  size the ensemble (default 100 APGD iterations, one run of each attack, 5000 Square queries, as in
  Croce & Hein's standard version, which has APGD-T and FAB-T where ART has APGD-DLR and no FAB). ART's
  own default ensemble adds DeepFool (and 5 restarts); we leave DeepFool out: a minimal-norm attack whose
  examples mostly fall outside an L-inf eps ball, it took ~90% of the time (100 iterations of 10 class
  gradients each) on 16 images;
- ``art:cw``: Carlini & Wagner L2 (2017), ART's ``CarliniL2Method``. CW looks for the smallest
  perturbation and takes no budget, so an image whose CW perturbation is larger than eps (L2) counts as
  not fooled: it is returned unchanged. Its L-inf variant is not offered: ART's ``CarliniLInfMethod``
  optimises one image at a time, up to ~50 x 21 runs of ``max_iter`` steps each (32 images at 5 steps
  ran for over 10 minutes on our CPU); art:apgd is the L-inf attack;
- ``art:square``: Square Attack (Andriushchenko et al. 2020), ART's ``SquareAttack``: score-based black
  box, no gradients; ``--steps`` is its number of queries.

The model is wrapped once (:func:`art_classifier`): ART's ``PyTorchClassifier`` on [0, 1] images
(``clip_values=(0, 1)``) around a module that calls :meth:`Target.logits`, so the run's normalisation
and padding are the ones our own attacks use, and ``--grad-source rule`` reaches ART's gradients too.

Options: ``norm`` ``inf`` or ``2`` (the eps ball; with ``2`` the result is projected onto the L2
ball of radius eps as well as [0, 1]); ``targeted`` with ``target_class`` ``next`` ((y + 1) mod classes)
or ``random`` (a seeded uniform draw among the other classes) - art:autoattack's ``targeted`` is ART's
own (it also runs the targeted attacks against every other class). The accuracy table still counts
an image as fooled when its prediction differs from the true label.

Seeds: ART draws from numpy's and Python's global generators; each call seeds both with the attack's
seed and restores their state afterwards, so a seeded attack is repeatable and leaves the caller's
random state alone. ART computes its gradients itself, outside :meth:`Target.loss_grad`, so these
attacks cannot be held to a gradient budget (:mod:`lenetlab.attacks.budget`).

ART is imported only when an attack runs: this module, the registry and ``lenetlab attack --help``
work without it.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lenetlab.attacks.base import (
    NORMS,
    Attack,
    Target,
    norm_field,
    project_l2,
    target_class_field,
    target_labels,
    targeted_field,
)
from lenetlab.errors import LenetlabError
from lenetlab.registry import register
from lenetlab.validate import MAX_STEPS

INSTALL = "pip install 'lenetlab[art]'"


def require_art() -> None:
    """Fail in one line if ART is not installed."""
    try:
        import art  # noqa: F401
    except ImportError:
        raise LenetlabError(f"the art:* attacks need the Adversarial Robustness Toolbox: {INSTALL}") from None


class TargetLogits(nn.Module):
    """[0, 1] images -> the target's logits (its normalisation, padding and state reset inside)."""

    def __init__(self, target: Target):
        super().__init__()
        self.net = target.model          # a submodule, so ART's .to() / .eval() reach the model
        self.target = target

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.target.logits(x01)


def art_classifier(target: Target, input_shape: tuple[int, ...], nb_classes: int):
    """ART ``PyTorchClassifier`` for ``target`` on [0, 1] images of ``input_shape`` (C, H, W)."""
    require_art()
    from art.estimators.classification import PyTorchClassifier

    param = next(target.model.parameters(), None)
    on_gpu = param is not None and param.device.type == "cuda"
    return PyTorchClassifier(model=TargetLogits(target), loss=nn.CrossEntropyLoss(), input_shape=tuple(input_shape),
                             nb_classes=int(nb_classes), clip_values=(0.0, 1.0),
                             device_type="gpu" if on_gpu else "cpu")


@contextlib.contextmanager
def seeded_globals(seed: int):
    """numpy's and Python's global generators seeded with ``seed`` inside, restored on exit."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _positive_int(name: str, what: str, value: int, hi: int = MAX_STEPS) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
        raise LenetlabError(f"{name}: {what} must be a positive integer <= {hi}, got {value!r}")


def _positive_real(name: str, what: str, value: float, hi: float | None = None) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
            and (hi is None or value <= hi)):
        bound = f" and <= {hi}" if hi is not None else ""
        raise LenetlabError(f"{name}: {what} must be a finite number > 0{bound}, got {value!r}")


class ARTAttack(Attack):
    """An ART evasion attack behind lenetlab's :class:`Attack`: subclasses build it in :meth:`make_art`."""

    def validate(self, options: dict[str, Any]) -> dict[str, Any]:
        o = dict(options)   # norm and target_class: checked by Attack.check_options
        for key in ("steps", "restarts", "queries", "search_steps"):
            if key in o:
                _positive_int(self.name, key, o[key])
        return self.check_more(o)

    def check_more(self, o: dict[str, Any]) -> dict[str, Any]:
        return o

    @classmethod
    def budget_options(cls, budget: int) -> dict[str, Any]:
        raise LenetlabError(f"attack {cls.name!r} runs inside ART (its gradients are not counted): it cannot be "
                            "held to a gradient budget")

    def labels(self, y: torch.Tensor, nb_classes: int, gen: torch.Generator) -> np.ndarray:
        """What ART is given as ``y``: the true labels, or the target classes of a targeted attack."""
        if not self.options.get("targeted") or "target_class" not in self.options:
            return y.cpu().numpy()
        return target_labels(y, nb_classes, self.options["target_class"], gen).numpy()

    def make_art(self, clf, norm: float | int, n: int):
        """The ART attack on ``clf`` for ``norm``; ``n``: its batch size (the whole batch it is given)."""
        raise NotImplementedError

    def bound(self, x_adv: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
        """The result kept inside the budget (the L-inf ball is enforced by :meth:`Attack.__call__`)."""
        return project_l2(x_adv, x01, self.eps) if self.options["norm"] == "2" else x_adv

    def forward(self, x01: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.eps == 0 or len(x01) == 0:
            return x01.clone()
        require_art()
        target = self.source
        with torch.no_grad():
            nb_classes = int(target.logits(x01[:1]).shape[1])
        labels = self.labels(y, nb_classes, gen)
        clf = art_classifier(target, tuple(x01.shape[1:]), nb_classes)
        attack = self.make_art(clf, NORMS[self.options["norm"]], len(x01))
        with seeded_globals(self.seed), target._pathway():
            x_adv = attack.generate(x01.detach().cpu().numpy().astype(np.float32), y=labels)
        return self.bound(torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).to(x01.device), x01)


STEPS_HELP = "iterations (art:autoattack: of each APGD; art:cw: per binary-search step; art:square: queries)"
RESTARTS_HELP = "random restarts (art:autoattack: of each APGD and Square)"


@dataclass(frozen=True)
class APGDOptions:
    norm: str = norm_field()
    targeted: bool = targeted_field()
    target_class: str = target_class_field()
    steps: int = field(default=100, metadata={"help": STEPS_HELP})
    step_size: float | None = field(default=None, metadata={"help": "(initial) step size (art:apgd: default 2 eps)"})
    restarts: int = field(default=1, metadata={"help": RESTARTS_HELP})
    loss: str = field(default="ce", metadata={"help": "loss ascended: ce (cross-entropy) or dlr (logit ratio)"})


@register("attack", "art:apgd")
class ARTAutoPGD(ARTAttack):
    """Auto-PGD (Croce & Hein 2020) through ART: step size adapted per image, CE or DLR loss."""

    name = "art:apgd"
    description = "Auto-PGD (Croce & Hein 2020) through ART: adaptive step size, CE or DLR loss, L-inf or L2"
    Options = APGDOptions

    def check_more(self, o):
        if o["loss"] not in ("ce", "dlr"):
            raise LenetlabError(f"{self.name}: loss must be ce or dlr, got {o['loss']!r}")
        if o["step_size"] is not None:
            _positive_real(self.name, "step_size", o["step_size"])
        return o

    def make_art(self, clf, norm, n):
        from art.attacks.evasion import AutoProjectedGradientDescent

        o = self.options
        step = 2 * self.eps if o["step_size"] is None else float(o["step_size"])
        return AutoProjectedGradientDescent(
            clf, norm=norm, eps=self.eps, eps_step=step, max_iter=o["steps"], targeted=o["targeted"],
            nb_random_init=o["restarts"], batch_size=n, verbose=False,
            loss_type="cross_entropy" if o["loss"] == "ce" else "difference_logits_ratio")


@dataclass(frozen=True)
class AutoAttackOptions:
    norm: str = norm_field()
    targeted: bool = field(default=False, metadata={
        "help": "art:autoattack: also run ART's targeted attacks against every other class"})
    steps: int = field(default=100, metadata={"help": STEPS_HELP})
    restarts: int = field(default=1, metadata={"help": RESTARTS_HELP})
    queries: int = field(default=5000, metadata={"help": "Square Attack queries per restart"})


@register("attack", "art:autoattack")
class ARTAutoAttack(ARTAttack):
    """ART's AutoAttack runner: APGD-CE, APGD-DLR and Square, the first success in budget kept per image."""

    name = "art:autoattack"
    description = "AutoAttack through ART: APGD-CE, APGD-DLR, Square; first success in the budget kept"
    Options = AutoAttackOptions

    def make_art(self, clf, norm, n):
        require_multiprocess()
        from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

        o = self.options
        apgd = [AutoProjectedGradientDescent(clf, norm=norm, eps=self.eps, eps_step=2 * self.eps,
                                             max_iter=o["steps"], targeted=False, nb_random_init=o["restarts"],
                                             batch_size=n, loss_type=loss, verbose=False)
                for loss in ("cross_entropy", "difference_logits_ratio")]
        square = SquareAttack(clf, norm=norm, max_iter=o["queries"], eps=self.eps, p_init=0.8,
                              nb_restarts=o["restarts"], batch_size=n, verbose=False)
        return AutoAttack(clf, norm=norm, eps=self.eps, eps_step=2 * self.eps, attacks=[*apgd, square],
                          batch_size=n, targeted=o["targeted"])


def require_multiprocess() -> None:
    try:
        import multiprocess  # noqa: F401  (ART's AutoAttack imports it when it runs)
    except ImportError:
        raise LenetlabError(f"art:autoattack needs the 'multiprocess' package (ART's AutoAttack imports it): "
                            f"{INSTALL}") from None


@dataclass(frozen=True)
class CWOptions:
    norm: str = norm_field("2")
    targeted: bool = targeted_field()
    target_class: str = target_class_field()
    steps: int = field(default=10, metadata={"help": STEPS_HELP})
    search_steps: int = field(default=10, metadata={"help": "binary-search steps over the constant c (norm 2)"})
    confidence: float = field(default=0.0, metadata={"help": "logit margin wanted past the boundary"})
    learning_rate: float = field(default=0.01, metadata={"help": "initial learning rate"})


@register("attack", "art:cw")
class ARTCarliniWagner(ARTAttack):
    """Carlini & Wagner L2 through ART; a perturbation larger than eps counts as a failure."""

    name = "art:cw"
    description = "Carlini-Wagner L2 through ART; a perturbation larger than eps counts as a failure"
    Options = CWOptions

    def check_more(self, o):
        if o["norm"] != "2":
            raise LenetlabError(f"{self.name}: norm must be 2 (ART's L-inf CW optimises one image at a time, tens of "
                                "thousands of model calls each: use art:apgd for L-inf)")
        if not (isinstance(o["confidence"], float) and math.isfinite(o["confidence"]) and o["confidence"] >= 0):
            raise LenetlabError(f"{self.name}: confidence must be a finite number >= 0, got {o['confidence']!r}")
        _positive_real(self.name, "learning_rate", o["learning_rate"])
        return o

    def make_art(self, clf, norm, n):
        from art.attacks.evasion import CarliniL2Method

        o = self.options
        return CarliniL2Method(clf, confidence=o["confidence"], targeted=o["targeted"],
                               learning_rate=o["learning_rate"], binary_search_steps=o["search_steps"],
                               max_iter=o["steps"], batch_size=n, verbose=False)

    def bound(self, x_adv, x01):
        over = (x_adv - x01).flatten(1).double().norm(dim=1) > self.eps * (1 + 1e-5)   # outside: the clean image
        x_adv = torch.where(over.view(-1, *([1] * (x01.ndim - 1))), x01, x_adv)
        return super().bound(x_adv, x01)


@dataclass(frozen=True)
class SquareOptions:
    norm: str = norm_field()
    targeted: bool = targeted_field()
    target_class: str = target_class_field()
    steps: int = field(default=1000, metadata={"help": STEPS_HELP})
    restarts: int = field(default=1, metadata={"help": RESTARTS_HELP})
    p_init: float = field(default=0.8, metadata={"help": "initial fraction of pixels per square"})


@register("attack", "art:square")
class ARTSquare(ARTAttack):
    """Square Attack through ART: score-based random search, no gradients."""

    name = "art:square"
    description = "Square Attack (Andriushchenko et al. 2020) through ART: score-based, no gradients"
    Options = SquareOptions
    white_box = True        # it queries the target (scores only), not a substitute

    def check_more(self, o):
        _positive_real(self.name, "p_init", o["p_init"], hi=1.0)
        return o

    def make_art(self, clf, norm, n):
        from art.attacks.evasion import SquareAttack

        o = self.options
        extra: dict[str, Any] = {}
        if o["targeted"]:
            # ART's Square is untargeted; its two hooks make it targeted: success = the target class wins,
            # loss (minimised) = best other logit - target logit
            def reached(pred, t):
                return np.argmax(pred, axis=1) == np.argmax(t, axis=1)

            def margin(x, t):
                z = clf.predict(x, batch_size=n)
                zt = np.sum(z * t, axis=1)
                return np.max(np.where(t > 0, -np.inf, z), axis=1) - zt

            extra = {"adv_criterion": reached, "loss": margin}
        return SquareAttack(clf, norm=norm, max_iter=o["steps"], eps=self.eps, p_init=o["p_init"],
                            nb_restarts=o["restarts"], batch_size=n, verbose=False, **extra)
