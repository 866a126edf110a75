"""The one step ``fit`` takes to train with QAT and/or noise on (PAPERS.md section 2).

:func:`harden` reads ``TrainConfig.qat_bits / act_scale / train_noise /
train_noise_ramp / noise_relative / noise_sites`` and puts the fake-quant and the noise hooks
on the model (fake-quant first, so noise lands on the quantised values, as on
analog hardware). Noise is on in training mode only, so ``fit``'s validation
and test numbers are clean (but fake-quantised for a QAT run).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.noise.inject import SITES, NoiseInjector, check_sigma, check_sites
from lenetlab.noise.qat import QATWrapper, check_bits, check_scale


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
    """``train.noise_sites``: "all" or a comma list of site kinds (checked)."""
    if str(text).strip() == "all":
        return SITES
    return check_sites([t.strip() for t in str(text).split(",") if t.strip()] or ["(none)"])


def apply_eval_qat(model: nn.Module, tc: Any) -> QATWrapper | None:
    """Fake-quant as the run was trained with (None for a float run)."""
    bits = getattr(tc, "qat_bits", None)
    return None if bits is None else QATWrapper(model, bits, getattr(tc, "act_scale", 1.0))


def harden(model: nn.Module, tc: Any, total_steps: int) -> Hardening | None:
    """Wrap ``model`` per the train config; None when neither QAT nor training noise is asked for."""
    bits = getattr(tc, "qat_bits", None)
    sigma = check_sigma(getattr(tc, "train_noise", 0.0), "train.train_noise")
    ramp = float(getattr(tc, "train_noise_ramp", 0.0))
    if not 0.0 <= ramp <= 1.0:
        raise LenetlabError(f"train.train_noise_ramp must be a fraction in [0, 1], got {ramp}")
    sites = noise_sites(getattr(tc, "noise_sites", "all"))
    if bits is not None:
        check_bits(bits)
    check_scale(getattr(tc, "act_scale", 1.0))
    if bits is None and sigma == 0:
        return None
    qat = apply_eval_qat(model, tc)
    noise = None
    if sigma > 0:
        noise = NoiseInjector(model, 0.0 if ramp > 0 else sigma, relative=bool(getattr(tc, "noise_relative", False)),
                              sites=sites,
                              seed=tc.seed + 7919, train_only=True)
    return Hardening(qat, noise, sigma, int(round(ramp * total_steps)))
