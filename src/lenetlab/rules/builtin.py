"""BP, FA, DFA and LE (Lin & Sengupta 2025, docs/papers/snn-attacks.md), from global to local.

- ``bp``: plain autograd (backpropagation through time for ``lenet5_snn``).
- ``fa``: feedback alignment - every weight layer sends ``B^T delta`` to its
  input, with a fixed random B of W's shape (Lillicrap et al. 2016).
- ``dfa``: direct feedback alignment - the output error e goes straight to
  every hidden block through a fixed random ``B_l`` (10 x features); the
  gradient from the block above is dropped (Noekland 2016).
- ``le``: local errors - every hidden block has a fixed random 10-way
  classifier ``G_l`` and its own cross-entropy; no gradient crosses blocks
  (Mostafa et al. 2018; DECOLLE). The output layer learns from the real loss.

Feedback matrices are uniform in +-1/sqrt(fan) (fan = fan-in of W for FA,
features for the LE heads, 10 for DFA), regenerated from the run's seed.
Their overall scale is deliberately left alone: under Adam (the ``fast``
preset) a constant factor on B_l multiplies every gradient below block l and
cancels in Adam's per-parameter normalisation, and the attacks use sign
gradients, so rescaling B (e.g. to ``lenet5_snn``'s 2.5x init gain) changes
nothing that matters; we checked it with SGD, where it is equivalent to a
larger learning rate for the lower layers.

Recommended training settings (``Rule.recommended``, applied on top of the
preset whenever ``train.rule`` is set - ``lenetlab train --rule X``, ``lenetlab
reproduce snn-attacks`` - and overridden by a config file or flags): FA and
DFA learn only as fast as the forward weights come to align with the fixed
feedback, which takes *steps*, not epochs, and large Adam steps on
random-feedback gradients undo the alignment. So they get smaller batches
and a lower peak learning rate than the ``fast`` preset's
128 / 6e-3 (measured on 30k MNIST images x 3 epochs, 2000 test images,
issue 7): FA-SNN 87.7% (preset) -> 92.9% (batch 32, lr 2e-3); FA-ANN
91.5% (lr 1e-3) -> 94.8% (batch 64); DFA-ANN 88.2% (preset) -> 93.7% (batch
64, lr 1e-3); DFA-SNN 93.0% -> 93.8% (batch 64, lr 3e-3). LE, whose every
layer has its own error signal, does best with the preset (SNN 94.1%,
ANN 96.8%).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lenetlab.registry import register
from lenetlab.rules.base import Installer, Rule
from lenetlab.rules.grads import CaptureError, DFAInject, ErrorBox, FAConv2d, FALinear, LEInject


def _uniform(shape: tuple[int, ...], fan: int, gen: torch.Generator) -> torch.Tensor:
    bound = 1.0 / math.sqrt(max(1, fan))
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


@register("rule", "bp")
class BP(Rule):
    """Backpropagation (through time for the SNN): plain autograd."""

    name = "bp"
    description = "backpropagation (through time for the SNN): plain autograd"

    def install(self, inst, blocks, time_major):
        pass


@register("rule", "fa")
class FA(Rule):
    """Feedback alignment: a fixed random B replaces W^T in every layer's backward."""

    name = "fa"
    description = "feedback alignment: a fixed random B replaces W^T in every layer's backward"
    recommended = {"lenet5": {"lr": 1e-3, "batch_size": 64}, "lenet5_snn": {"lr": 2e-3, "batch_size": 32}}

    def install(self, inst: Installer, blocks, time_major):
        for i, (layer, _) in enumerate(blocks):
            w = layer.weight
            fb = _uniform(tuple(w.shape), w[0].numel(), inst.generator(i, "fa")).to(w.device, w.dtype)
            inst.state[i] = fb
            if isinstance(layer, nn.Conv2d):
                fn = (lambda x, m=layer, b=fb: FAConv2d.apply(x, m.weight, m.bias, b, m.stride, m.padding,
                                                              m.dilation, m.groups))
            elif isinstance(layer, nn.Linear):
                fn = lambda x, m=layer, b=fb: FALinear.apply(x, m.weight, m.bias, b)  # noqa: E731
            else:
                raise TypeError(f"FA supports Conv2d and Linear layers, not {type(layer).__name__}")
            inst.replace_forward(layer, fn)


class _OutputErrorRule(Rule):
    """DFA and LE: capture the output error, inject a replacement at every hidden block output."""

    tag = ""

    def make(self, inst: Installer, index: int, features: int, device, dtype) -> torch.Tensor:
        raise NotImplementedError

    def inject(self, h: torch.Tensor, mat: torch.Tensor, box: ErrorBox, time_major: bool) -> torch.Tensor:
        raise NotImplementedError

    def install(self, inst: Installer, blocks, time_major):
        box = ErrorBox(self.name)
        inst.wrap_output(inst.model, lambda z: CaptureError.apply(z, box))
        for i, (_, out) in enumerate(blocks[:-1]):

            def hook(h: torch.Tensor, i=i) -> torch.Tensor:
                if i not in inst.state:   # created at the first forward, when the block's size is known
                    feats = h[0, 0].numel() if time_major else h[0].numel()
                    inst.state[i] = self.make(inst, i, feats, h.device, h.dtype)
                return self.inject(h, inst.state[i], box, time_major)

            inst.wrap_output(out, hook)


@register("rule", "dfa")
class DFA(_OutputErrorRule):
    """Direct feedback alignment: output error -> every hidden layer by a fixed random B_l."""

    name = "dfa"
    description = "direct feedback alignment: output error -> every hidden layer by a fixed random B_l"
    recommended = {"lenet5": {"lr": 1e-3, "batch_size": 64}, "lenet5_snn": {"lr": 3e-3, "batch_size": 64}}

    def make(self, inst, index, features, device, dtype):
        return _uniform((10, features), 10, inst.generator(index, "dfa")).to(device, dtype)

    def inject(self, h, mat, box, time_major):
        return DFAInject.apply(h, mat, box, time_major)


@register("rule", "le")
class LE(_OutputErrorRule):
    """Local errors: a fixed random classifier + loss per hidden layer, no gradient across layers."""

    name = "le"
    description = "local errors: a fixed random classifier + loss per hidden layer, no gradient across layers"

    def make(self, inst, index, features, device, dtype):
        return _uniform((10, features), features, inst.generator(index, "le")).to(device, dtype) * 4.0

    def inject(self, h, mat, box, time_major):
        return LEInject.apply(h, mat, box, time_major)
