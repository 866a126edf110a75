"""Training with QAT and/or noise on: the ``hardening`` trainer plugin (Wang et al. 2025, docs/papers/noise.md).

:func:`harden` reads the ``train.hardening`` section (:class:`~lenetlab.config.HardeningConfig`:
``qat_bits / act_scale / sigma / ramp / relative / sites``) and puts the fake-quant and the noise hooks
on the model (fake-quant first, so noise lands on the quantised values, as on
analog hardware). Noise is on in training mode only, so ``fit``'s validation
and test numbers are clean (but fake-quantised for a QAT run).
:class:`HardeningPlugin` is how ``fit`` uses it: hooks on at setup, the sigma
ramp per step, hooks off before the model is saved. Its state, saved in every
checkpoint, is the noise generator's (the ramp is a function of the step).

Example::

    lenetlab train --qat-bits 4 --out runs/qat4
    lenetlab train --train-noise 0.1 --hardening-ramp 0.5 --out runs/noisy
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.noise.inject import SITES, NoiseInjector, check_sigma, check_sites
from lenetlab.noise.qat import QATWrapper, check_bits, check_scale
from lenetlab.registry import register
from lenetlab.train.plugins import TrainContext, TrainerPlugin


class Hardening:
    """Handle returned by :func:`harden`: :meth:`step` sets the ramped sigma, :meth:`remove` undoes all."""

    def __init__(self, qat: QATWrapper | None, noise: NoiseInjector | None, sigma: float, ramp_steps: int):
        self.qat, self.noise, self.sigma, self.ramp_steps = qat, noise, sigma, ramp_steps

    def step(self, step: int) -> None:
        if self.noise is not None:
            frac = 1.0 if self.ramp_steps <= 0 else min(1.0, step / self.ramp_steps)
            self.noise.sigma = self.sigma * frac

    def remove(self) -> None:
        if self.noise is not None:
            self.noise.remove()
            self.noise = None
        if self.qat is not None:
            self.qat.remove()
            self.qat = None


def noise_sites(text: str) -> tuple[str, ...]:
    """``train.hardening.sites``: "all" or a comma list of site kinds (checked)."""
    if str(text).strip() == "all":
        return SITES
    return check_sites([t.strip() for t in str(text).split(",") if t.strip()] or ["(none)"])


def _section(tc: Any) -> Any:
    """The hardening section of a TrainConfig (or the section itself)."""
    return getattr(tc, "hardening", tc)


def apply_eval_qat(model: nn.Module, tc: Any) -> QATWrapper | None:
    """Fake-quant as the run was trained with (None for a float run). ``tc``: a TrainConfig or its section."""
    h = _section(tc)
    return None if h.qat_bits is None else QATWrapper(model, h.qat_bits, h.act_scale)


def harden(model: nn.Module, tc: Any, total_steps: int) -> Hardening | None:
    """Wrap ``model`` per the train config; None when neither QAT nor training noise is asked for."""
    h = _section(tc)
    sigma = check_sigma(h.sigma, "train.hardening.sigma")
    ramp = float(h.ramp)
    if not 0.0 <= ramp <= 1.0:
        raise LenetlabError(f"train.hardening.ramp must be a fraction in [0, 1], got {ramp}")
    sites = noise_sites(h.sites)
    if h.qat_bits is not None:
        check_bits(h.qat_bits)
    check_scale(h.act_scale)
    if h.qat_bits is None and sigma == 0:
        return None
    qat = apply_eval_qat(model, h)
    noise = None
    if sigma > 0:
        noise = NoiseInjector(model, 0.0 if ramp > 0 else sigma, relative=bool(h.relative), sites=sites,
                              seed=tc.seed + 7919, train_only=True)
    return Hardening(qat, noise, sigma, int(round(ramp * total_steps)))


@register("trainer_plugin", "hardening")
class HardeningPlugin(TrainerPlugin):
    """QAT fake-quant and/or training noise while training; removed before the model is saved."""

    order = 10   # first: a learning rule's hooks then see the fake-quantised layers

    @classmethod
    def active(cls, tc: Any) -> bool:
        # also when the values are invalid, so that harden() reports them
        return tc.hardening.qat_bits is not None or tc.hardening.sigma != 0

    def setup(self, ctx: TrainContext) -> None:
        self.handle = harden(ctx.model, ctx.tc, ctx.total_steps)

    def before_step(self, step: int, ctx: TrainContext) -> None:
        if self.handle is not None:
            self.handle.step(step)

    def state_dict(self) -> dict[str, Any]:
        # the noise generator advances with every draw: a resumed run must continue its stream
        noise = self.handle.noise if self.handle is not None else None
        return {} if noise is None else {"noise_rng": noise.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        noise = self.handle.noise if self.handle is not None else None
        if noise is not None and "noise_rng" in state:
            noise.generator.set_state(state["noise_rng"])

    def teardown(self, ctx: TrainContext) -> None:
        if self.handle is not None:
            self.handle.remove()   # plain names and float weights: the run loads into the plain model
