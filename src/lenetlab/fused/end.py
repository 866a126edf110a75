"""Early negative detection (END) with a most-significant-digit-first model (USEFUSE, docs/papers/fused.md).

USEFUSE computes each convolution's sum of products with left-to-right
(MSDF, online) digit-serial arithmetic and stops it as soon as the result is
known to be negative: ReLU will turn it into 0, so its remaining digits are
ineffectual work. This module measures that on the int8 model's exact
integer accumulators.

The digit-serial model: every int8 activation x is streamed as D = 8 radix-2
signed digits, most significant first (two's complement is such a
representation: digit 7 weighs -2^7, the others +2^j). Weights are applied
in parallel. After c digit cycles each input is known up to its top c digits,
x_c = floor(x / 2^(D-c)) * 2^(D-c), and its unseen digits can still add at
most 2^(D-c) - 1 in magnitude. So the accumulator satisfies

    acc in [P_c - R_c, P_c + R_c],   P_c = b + sum_i w_i x_c,i,   R_c = (2^(D-c) - 1) * sum_i |w_i|

(the sum of |w_i| runs over taps inside the map; zero padding is known). The
sign is certain once P_c + R_c < 0: the output is terminated after c cycles
and D - c digit cycles of each of its MACs are skipped. Only outputs proven
negative are terminated, so nothing else changes; :func:`end_layer` checks
that by zeroing the terminated outputs, re-running the layers up to the ReLU
and comparing with the unfused model, element by element.

END needs a ReLU-like activation (negative -> 0) as the first nonlinearity
after the conv, with at most max-pooling in between (max commutes with the
monotone ReLU). With tanh-like activations (``lenet5_classic``'s scaled tanh)
a negative pre-activation still gives a nonzero output, so END does not
apply; float32 models have no integer accumulators to stream, so the model
runs on int8 files only.

Example::

    from lenetlab.fused.end import end_layer
    r = end_layer(fm8, stage, x_in)       # x_in: the conv's int8 input maps
    r.skipped, r.changed                  # fraction of MAC digit-cycles skipped; 0
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lenetlab.deploy import runtime
from lenetlab.deploy.flat import FlatModel
from lenetlab.fused.kernels import apply_layer, conv_acc, conv_weights, correlate, requant, single_thread
from lenetlab.fused.stages import Stage

DIGITS = 8   # int8 activations: 8 radix-2 signed digits


@dataclass
class EndResult:
    layer: str
    applies: bool
    reason: str = ""                 # why END does not apply, if it does not
    outputs: int = 0                 # conv outputs examined (all images, channels, positions)
    negative: float = 0.0            # fraction of accumulators < 0
    zero: float = 0.0
    positive: float = 0.0
    terminated: float = 0.0          # fraction of outputs stopped before the last digit
    mean_digits: float = 0.0         # mean digit cycles a terminated output needed
    skipped: float = 0.0             # fraction of the layer's MAC digit-cycles skipped
    changed: int = 0                 # outputs that differ from the unfused model after END
    checked_at: str = ""             # the layer whose outputs were compared
    digits_histogram: list[int] = field(default_factory=list)   # terminated outputs by cycles needed, 0..D-1


def truncate(x: np.ndarray, cycles: int, digits: int = DIGITS) -> np.ndarray:
    """The value of integers x after their top ``cycles`` of ``digits`` MSDF digits (floor to 2^(digits-cycles))."""
    m = digits - cycles
    return (x >> m) << m


def remaining_bound(cycles: int, digits: int = DIGITS) -> int:
    """Largest magnitude the unseen ``digits - cycles`` signed digits of one input can still add."""
    return (1 << (digits - cycles)) - 1


def digits_needed(partials: list[np.ndarray], bounds: list[np.ndarray]) -> np.ndarray:
    """First cycle c with partials[c] + bounds[c] < 0 (sign certainly negative); len(partials) - 1 if none.

    ``partials[c]`` and ``bounds[c]`` are P_c and R_c for c = 0..D; at c = D the
    bound is 0, so an output needing D cycles was either non-negative or only
    known negative at the very end (no saving).
    """
    d = len(partials) - 1
    need = np.full(partials[0].shape, d, np.int64)
    for c in range(d - 1, -1, -1):   # walk back so the earliest certain cycle wins
        need = np.where(partials[c] + bounds[c] < 0, c, need)
    return need


def relu_after(fm: FlatModel, stage: Stage) -> tuple[int | None, str]:
    """Flat index of the ReLU that makes the conv's negative outputs irrelevant, or (None, why not)."""
    if fm.dtype != "int8":
        return None, "the digit-serial model runs on int8 accumulators (use an int8 model)"
    if stage.op != "conv":
        return None, f"{stage.name} is not a convolution"
    j = stage.first + 1
    while j < len(fm.layers) and fm.layers[j].op == "maxpool":
        j += 1
    layer = fm.layers[j] if j < len(fm.layers) else None
    if layer is None or layer.op != "act":
        what = layer.op if layer is not None else "nothing"
        return None, f"{what} follows {stage.name} before any activation, so negative outputs still matter"
    if layer.act != "relu":
        return None, f"activation {layer.act} gives nonzero outputs for negative inputs (END needs ReLU)"
    return j, ""


def _needed_cycles(layer, xpad: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """(exact accumulators, cycles needed) of a conv on zero-padded int inputs."""
    w = conv_weights(layer).astype(np.int64)
    inside = np.ones((1, *xpad.shape[1:]), np.int64)
    if layer.pad:
        p = layer.pad
        inside[:, :, :p], inside[:, :, -p:], inside[:, :, :, :p], inside[:, :, :, -p:] = 0, 0, 0, 0
    abs_sum = np.rint(correlate(inside, np.abs(w))).astype(np.int64)        # sum |w| over real taps
    partials = [conv_acc(layer, truncate(xpad, c, digits)) for c in range(digits + 1)]
    bounds = [remaining_bound(c, digits) * abs_sum for c in range(digits + 1)]
    return partials[-1], digits_needed(partials, bounds)


def end_layer(fm: FlatModel, stage: Stage, x_in: np.ndarray, ref: np.ndarray | None, digits: int = DIGITS,
              batch_size: int = 256) -> EndResult:
    """END statistics of one conv stage on its int8 input maps (N, C, H, W).

    ``ref``: the unfused model's output maps at the ReLU (:func:`relu_after`), which the outputs after
    END must equal element for element (``None`` only where END does not apply).
    """
    relu, why = relu_after(fm, stage)
    if relu is None:
        return EndResult(stage.name, False, why)
    layer = fm.layers[stage.first]
    oc, ic, k = layer.out_shape[0], layer.in_shape[0], layer.k
    t = layer.arrays.get("t")
    connected = t.reshape(oc, ic).sum(1) if t is not None and t.size else np.full(oc, ic)
    per_out = (connected.astype(np.int64) * k * k).reshape(1, -1, 1, 1)     # MACs of one output
    neg = zero = total = terminated = digit_sum = changed = skipped = work = 0
    hist = np.zeros(digits, np.int64)
    p = layer.pad
    with single_thread():
        for b0 in range(0, len(x_in), batch_size):
            xb = x_in[b0: b0 + batch_size]
            xpad = np.pad(xb, ((0, 0), (0, 0), (p, p), (p, p))) if p else xb
            acc, need = _needed_cycles(layer, xpad, digits)
            stop = need < digits
            total += acc.size
            neg += int((acc < 0).sum())
            zero += int((acc == 0).sum())
            terminated += int(stop.sum())
            digit_sum += int(need[stop].sum())
            hist += np.bincount(need[stop], minlength=digits)[:digits]
            skipped += int(((digits - need) * stop * per_out).sum())
            work += int((digits * per_out * np.ones_like(acc)).sum())
            # apply END: a terminated output leaves the SOP unit as 0 (what the ReLU makes of it); run on to
            # the ReLU and compare with the unfused model
            y = np.where(stop, 0, requant(layer, acc))
            for j in range(stage.first + 1, relu + 1):
                y = apply_layer(fm.layers[j], y, True)
            changed += int((y != ref[b0: b0 + batch_size]).sum())
    return EndResult(stage.name, True, "", total, neg / total, zero / total, (total - neg - zero) / total,
                     terminated / total, digit_sum / terminated if terminated else 0.0, skipped / work,
                     changed, f"{stage.name} outputs after flat layer {relu} ({fm.layers[relu].act})",
                     hist.tolist())


def end_analysis(fm: FlatModel, stages: list[Stage] | tuple[Stage, ...], images: np.ndarray) -> list[EndResult]:
    """END on every conv stage of ``stages`` for uint8 images (one unfused run gives inputs and references)."""
    outs = runtime.run(fm, images, collect=True)
    results = []
    for s in stages:
        if s.op != "conv":
            continue
        relu, _ = relu_after(fm, s)
        x = runtime.prepare_input(fm, images) if s.first == 0 else outs[s.first - 1]
        x = x.reshape(len(x), *s.in_shape)
        ref = None if relu is None else outs[relu].reshape(len(x), *fm.layers[relu].out_shape)
        results.append(end_layer(fm, s, x, ref))
    return results
