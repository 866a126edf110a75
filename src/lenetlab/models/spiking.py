"""Spiking LeNet-5 (Lin & Sengupta 2025, docs/papers/snn-attacks.md).

The modern LeNet-5 topology (conv 6@5x5 pad 2 -> pool -> conv 16@5x5 -> pool ->
FC 120 -> FC 84 -> FC 10) with every activation replaced by a layer of leaky
integrate-and-fire neurons, run for ``steps`` (T) time steps::

    u[t] = beta * u[t-1] + I[t] - theta * s[t-1],     s[t] = H(u[t] - theta)

(reset by subtraction; the reset term is detached from the graph, as snnTorch
does by default). H has a surrogate gradient (:mod:`lenetlab.models.surrogate`,
fast sigmoid or arctan). The output layer is a non-firing leaky integrator
read out as its mean membrane potential over T (``readout="membrane"``), or a
firing layer read out as its spike count (``readout="spikes"``).

Input encoding: ``direct`` feeds the (normalised) image as a constant current
every step - C1's output is computed once; ``rate`` draws Bernoulli (Poisson)
spikes with probability ``clamp(x, 0, 1)`` each step, with a straight-through
gradient (use ``data.normalize = "unit"`` so the probabilities are the pixel
intensities).

Speed: the network is feed-forward, so each layer processes all T steps at
once - time is folded into the batch for the convolutions and linear layers,
and only the cheap LIF recurrence loops over t.

Every call resets the neuron state (each query is independent, which the
adversarial attacks rely on); each LIF layer owns its membrane and exposes
``reset_state()`` (STYLE principle 5: no global state).

Example::

    import lenetlab
    m = lenetlab.create_model("lenet5_snn", steps=6, surrogate="arctan")
    logits = m(torch.randn(2, 1, 28, 28))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models.base import register_model
from lenetlab.models.lenet5 import add_lenet5_layers
from lenetlab.models.surrogate import SURROGATES, make_spike


@dataclass
class SpikingLeNet5Config:
    steps: int = 4                  # T time steps per query
    beta: float = 0.9               # membrane leak per step
    threshold: float = 1.0          # theta
    surrogate: str = "fast_sigmoid"  # fast_sigmoid | arctan
    slope: float = 5.0              # k of the fast sigmoid, a of the arctan
    encoding: str = "direct"        # direct (constant current) | rate (Bernoulli/Poisson spikes)
    readout: str = "membrane"       # membrane (mean potential of a non-firing output) | spikes (spike count)
    pool: str = "max"               # max | avg (pools the input currents of each spiking layer)
    width: float = 1.0
    init_gain: float = 2.5          # weights = gain x PyTorch's default init, so deep layers spike at init
    num_classes: int = 10
    in_channels: int = 1
    input_size: int = 28
    c1_padding: int = 2


class LIF(nn.Module):
    """A layer of leaky integrate-and-fire neurons over a (T, B, ...) input current.

    ``fire=False`` gives a non-spiking leaky integrator (the membrane readout).
    The layer owns its membrane ``mem`` (the state after the last step);
    :meth:`reset_state` clears it.
    """
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    def __init__(self, beta: float, threshold: float, spike, fire: bool = True):
        super().__init__()
        self.beta, self.threshold, self.spike, self.fire = beta, threshold, spike, fire
        self.mem: torch.Tensor | None = None

    def reset_state(self) -> None:
        self.mem = None

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        """(T, B, ...) currents -> (T, B, ...) spikes (or membrane potentials if not firing)."""
        u = self.mem if self.mem is not None else torch.zeros_like(current[0])
        out = []
        for t in range(current.shape[0]):
            u = self.beta * u + current[t]
            if self.fire:
                s = self.spike(u - self.threshold)
                out.append(s)
                u = u - self.threshold * s.detach()
            else:
                out.append(u)
        self.mem = u.detach()
        return torch.stack(out)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}, fire={self.fire}"


class SpikingLeNet5(nn.Module):
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise
    default_loss = "ce"

    def __init__(self, cfg: SpikingLeNet5Config):
        super().__init__()
        checks = [(cfg.steps >= 1, f"model.steps must be >= 1, got {cfg.steps}"),
                  (0.0 <= cfg.beta <= 1.0, f"model.beta must be in [0, 1], got {cfg.beta}"),
                  (cfg.threshold > 0, f"model.threshold must be positive, got {cfg.threshold}"),
                  (cfg.encoding in ("direct", "rate"), f"model.encoding must be 'direct' or 'rate', got "
                                                       f"{cfg.encoding!r}"),
                  (cfg.readout in ("membrane", "spikes"), f"model.readout must be 'membrane' or 'spikes', got "
                                                          f"{cfg.readout!r}"),
                  (cfg.init_gain > 0, f"model.init_gain must be positive, got {cfg.init_gain}"),
                  (cfg.surrogate in SURROGATES, f"unknown surrogate {cfg.surrogate!r}; choose from: "
                                                f"{', '.join(SURROGATES)}")]
        for ok, msg in checks:
            if not ok:
                raise LenetlabError(msg)
        self.steps = cfg.steps
        self.encoding = cfg.encoding
        add_lenet5_layers(self, cfg)      # the same geometry and checks as lenet5
        spike = make_spike(cfg.surrogate, cfg.slope)
        self.lif1, self.lif2, self.lif3, self.lif4 = (LIF(cfg.beta, cfg.threshold, spike) for _ in range(4))
        self.readout = cfg.readout
        self.out = LIF(cfg.beta, cfg.threshold, spike, fire=cfg.readout == "spikes")
        # With the default init and theta = 1 the FC layers stay silent (no spikes -> no weight
        # gradient above them); 2.5x puts every layer at roughly 10-40% firing on MNIST.
        with torch.no_grad():
            for layer in (self.conv1, self.conv2, self.fc1, self.fc2, self.fc3):
                layer.weight.mul_(cfg.init_gain)

    def reset_state(self) -> None:
        for m in self.modules():
            if isinstance(m, LIF):
                m.reset_state()

    def rule_blocks(self) -> list[tuple[nn.Module, nn.Module | None]]:
        """(weight layer, module whose output is the block's output) in order, for :mod:`lenetlab.rules`.

        Block outputs carry a leading time dimension (T, B, ...).
        """
        return [(self.conv1, self.lif1), (self.conv2, self.lif2), (self.fc1, self.lif3),
                (self.fc2, self.lif4), (self.fc3, None)]

    rule_time_major = True

    def _over_time(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Apply a per-step layer to (T, B, ...) with time folded into the batch."""
        t, b = x.shape[:2]
        y = layer(x.reshape(t * b, *x.shape[2:]))
        return y.reshape(t, b, *y.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.reset_state()     # every query starts from rest
        steps = self.steps
        if self.encoding == "direct":
            i1 = self.pool(self.conv1(x))                       # the same current every step
            i1 = i1.unsqueeze(0).expand(steps, *i1.shape)
        else:
            p = x.clamp(0.0, 1.0).unsqueeze(0).expand(steps, *x.shape)
            # Bernoulli spikes forward, straight-through gradient to the pixel intensity
            # (drawn by the CPU's generator whatever the device: the same spikes on any device)
            spikes = p + (torch.bernoulli(p.detach().cpu()).to(p.device) - p).detach()
            i1 = self._over_time(lambda z: self.pool(self.conv1(z)), spikes)
        s = self.lif1(i1)
        s = self.lif2(self._over_time(lambda z: self.pool(self.conv2(z)), s))
        s = self.lif3(self.fc1(s.flatten(2)))
        s = self.lif4(self.fc2(s))
        out = self.out(self.fc3(s))
        # membrane: mean potential of the integrator; spikes: the spike count
        return out.mean(0) if self.readout == "membrane" else out.sum(0)


@register_model("lenet5_snn", SpikingLeNet5Config)
def lenet5_snn(cfg: SpikingLeNet5Config) -> SpikingLeNet5:
    """Spiking LeNet-5: LIF neurons, T steps, surrogate gradients (Lin & Sengupta 2025)."""
    return SpikingLeNet5(cfg)
