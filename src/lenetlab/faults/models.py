"""Fault models: what a hardware fault does to one stored word (docs/papers/faults.md).

One base class, one method: :meth:`FaultModel.corrupt` maps the values of a
two's-complement word of ``width`` bits (int8 weights and activations, int32
accumulators) to their faulty values, given the bit position hit. Register a
new model with ``@register("fault_model", NAME)``; ``lenetlab list fault_models``
shows them. Random bit-error rates (BER) over a tensor or a whole model are
:func:`ber_flip`, which draws independent single-bit flips.

Example::

    from lenetlab.registry import get
    flip = get("fault_model", "bitflip")()
    flip.corrupt(np.array([3]), np.array([7]), 8)     # -> [-125]
"""

from __future__ import annotations

import numpy as np

from lenetlab.errors import LenetlabError
from lenetlab.registry import register

TARGETS = ("weights", "activations", "accumulators")


def to_unsigned(v: np.ndarray, width: int) -> np.ndarray:
    return np.asarray(v, np.int64) & ((1 << width) - 1)


def to_signed(u: np.ndarray, width: int) -> np.ndarray:
    u = np.asarray(u, np.int64)
    return np.where(u >= (1 << (width - 1)), u - (1 << width), u)


class FaultModel:
    """Subclasses implement :meth:`corrupt`."""

    name = ""

    def corrupt(self, values: np.ndarray, bits: np.ndarray, width: int) -> np.ndarray:
        """Faulty values of ``width``-bit two's-complement words ``values`` hit at bit ``bits`` (broadcast)."""
        raise NotImplementedError


@register("fault_model", "bitflip")
class BitFlip(FaultModel):
    """Single-event upset: the bit is inverted."""

    def corrupt(self, values, bits, width):
        return to_signed(to_unsigned(values, width) ^ (np.int64(1) << np.asarray(bits, np.int64)), width)


@register("fault_model", "stuck_at_0")
class StuckAt0(FaultModel):
    """Permanent fault: the bit always reads 0."""

    def corrupt(self, values, bits, width):
        return to_signed(to_unsigned(values, width) & ~(np.int64(1) << np.asarray(bits, np.int64)), width)


@register("fault_model", "stuck_at_1")
class StuckAt1(FaultModel):
    """Permanent fault: the bit always reads 1."""

    def corrupt(self, values, bits, width):
        return to_signed(to_unsigned(values, width) | (np.int64(1) << np.asarray(bits, np.int64)), width)


def fault_model(name: str) -> FaultModel:
    from lenetlab.registry import get

    return get("fault_model", name)()


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise LenetlabError(f"unknown fault target {target!r}; choose from: {', '.join(TARGETS)}")
    return target


def ber_flip(values: np.ndarray, width: int, ber: float, rng: np.random.Generator) -> np.ndarray:
    """Every bit of every word flips independently with probability ``ber`` (a random bit-error rate)."""
    if not 0 <= ber <= 1:
        raise LenetlabError(f"bit-error rate must be in [0, 1], got {ber}")
    values = np.asarray(values, np.int64)
    n_bits = values.size * width
    k = rng.binomial(n_bits, ber) if n_bits else 0
    if k == 0:
        return values.copy()
    where = rng.choice(n_bits, size=k, replace=False) if k < n_bits // 4 else np.flatnonzero(
        rng.random(n_bits) < ber)
    mask = np.zeros(values.size, np.int64)
    np.bitwise_xor.at(mask, where // width, np.int64(1) << (where % width))
    return to_signed(to_unsigned(values.reshape(-1), width) ^ mask, width).reshape(values.shape)
