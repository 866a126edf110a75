"""ElasticZO-INT8: integer-only ElasticZO training of LeNet-5 (docs/papers/zo.md, reconstructed).

Sugiura & Matsutani 2025 describe an integer-only variant of ElasticZO; the
paper's exact arithmetic is not reproduced here, this is our reconstruction
of it (NITI-style integer training, Wang et al. 2022, plus integer SPSA):

- **Tensors**: weights, biases and activations are int8 with one power-of-two
  scale per tensor (value = q * 2**exp, ``exp`` a Python int). Convolutions
  and linear layers multiply int8 by int8 into int32 (:func:`int8_matmul`; the
  convolution on an int8 im2col buffer, a few samples at a time, each slice
  max-pooled at once). By default the int8 x int8 -> int32 products run on
  torch's float32 GEMM and convolution instead: every product is an integer
  of magnitude <= 2**14 and every partial sum of at most K = 1023 of them
  stays below 2**24, so float32 holds each one exactly, in any summation
  order, and the int32 result is the same, bit for bit, as
  ``torch._int_mm``'s (tested) - which on x86 CPUs without an int8 GEMM path
  is 15-30x slower. (Only while float32 runs in full precision: with the
  opt-in TF32 / bf16 modes of ``torch.set_float32_matmul_precision`` or
  ``torch.backends.mkldnn`` the engine falls back to the integer path.)
  ``with integer_matmul():`` uses
  ``torch._int_mm`` (the strictly integer-only engine, what the tests check
  op by op).
- **Requantisation**: an int32 accumulator goes back to int8 by an arithmetic
  right shift k = bitlen(max|acc|) - 7 with stochastic rounding
  ``(acc + r) >> k``, r uniform in [0, 2**k) (unbiased); k is added to the
  exponent. Evaluation rounds to nearest instead.
- **Integer base-2 cross-entropy**: the logits are read as base-2 logits in
  fixed point with F = 8 fractional bits; 2**x uses a 256-entry integer table
  (Q16) and shifts, log2 of the sum uses the bit length plus a 256-entry
  table. The loss is an integer in units of 2**-8 bits. Its gradient
  ``softmax - onehot`` is the Q16 quotient of two integers.
- **ZO layers** (the first C, always including both convolutions): integer
  SPSA. The perturbation is Rademacher (+-1 per element, times ``eps`` LSBs),
  regenerated from the step's seed by ``torch.randint`` - never stored; the
  restore is exact in integers. The projected gradient is the integer
  difference of the two integer batch losses, and the update is
  ``W -= sround((clamp(g, -zo_clip, zo_clip) * z) >> zo_shift)``. The clamp (not
  in the paper, like the float clip of :mod:`lenetlab.train.zeroth_order`) caps
  the step at 1 LSB per element: unclamped, rare huge |g| made the weights
  random-walk until the logits overflowed (int8-4 swung between 9% and 57%).
  The shift 3 makes the expected step about the float ZO run's (lr 5e-3, eps
  1e-3 ~ 1 LSB at LeNet-5's initial scales): with shift 12 the step was ~400x
  smaller and vanilla INT8 ZO (C = 5) stayed at chance. Both passes of a probe
  share their stochastic-rounding draws (``crn``, common random numbers), so
  their loss difference is the perturbation's, not rounding noise.
- **BP layers** (the last 5 - C, fully connected only): integer backprop of
  ``softmax - onehot`` through int8 weights (int64 accumulation, ReLU masks
  from the kept int8 activations); weight updates are
  ``sround(grad >> k)`` with k chosen so the largest update is about
  ``2**bp_bits`` LSBs (a NITI-style normalised step); biases get the
  consistently scaled step. ``bp_bits`` is 1: with 3, the normalised step
  kept growing fc3 (every saturation doubles the scale, so the next step in
  real units doubles too) until the logits overflowed.
- **Overflow**: weights are kept within +-(127 - eps) so a perturbation never
  wraps. A ZO tensor saturates there (``zo_halve`` False); a BP tensor that
  saturates is halved (exponent + 1), so BP weights can keep growing. Step
  sizes (ZO and BP) are counted in LSBs of the tensor's exponent at
  conversion, so a halved tensor takes the same step in real terms. Both
  choices came from 20,000-step runs: with steps in LSBs of the current
  exponent each halving doubled the real step and the exponents ran away
  (fc3's reached 2**69, accuracy fell to chance); with fixed real steps but
  ZO tensors halved too, the ZO random walk still saturated a few weights,
  every halving cost all the others a bit of precision (and doubled eps in
  real terms), and vanilla INT8 ZO rose to 46% by step 4,000 and fell back to
  13%; with saturating ZO tensors it ended at 63%.
- **Schedule**: every update is scaled by ``lr_q8 / 256``, an integer the
  trainer's schedule gives each step (:class:`Int8Stepper`: the step's
  learning rate over ``train.lr``); ``lenetlab reproduce zo`` uses the float
  runs' cosine decay.

No floating-point tensor is created in :meth:`Int8ElasticZO.train_step`
(``tests/test_zo_int8.py`` records the dtype of every ATen op's result). The
float input is quantised once, outside the step (``quantize_input``), as a
sensor would deliver int8; :meth:`float_state` dequantises the weights into
the ordinary float LeNet-5 (for ``lenetlab eval``); :meth:`int8_tensors`
gives the integer tensors and exponents (saved as ``model_int8.safetensors``).

Example::

    from lenetlab.models import create_model
    net = Int8ElasticZO.from_float(create_model("lenet5"), cutoff=4)
    xq, xe = quantize_input(x)
    loss = net.train_step(xq, xe, y, step=0)
    acc = net.accuracy(xq, xe, y)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models.pooling import max_pool2x2

FRAC = 8          # fractional bits of the fixed-point loss / log2-domain logits
ONE = 1 << 16     # Q16 one (probabilities, 2**x table)
# constant tables ("ROMs"), computed once from Python numbers: 2**(i/256) in Q16 and log2(1 + i/256) in Q8
EXP2_Q16 = torch.tensor([round(2 ** (i / 256) * ONE) for i in range(256)], dtype=torch.int64)
LOG2_Q8 = torch.tensor([round(math.log2(1 + i / 256) * 256) for i in range(256)], dtype=torch.int64)
QMAX = 127


@dataclass
class Int8Config:
    """Integer hyper-parameters (all shifts / LSB counts, no floats in the step)."""

    eps: int = 1           # SPSA perturbation, in LSBs of each tensor
    zo_shift: int = 3      # ZO update: W -= sround(g * z >> zo_shift); g in 2**-8 bits summed over the batch
    zo_clip: int | None = 1 << 3    # |g| of the update clamped to this (None: off): at most 1 LSB per element
    bp_bits: int = 1       # BP update: the largest |update| is about 2**bp_bits LSBs (3 was unstable at C=4)
    q: int = 1             # perturbations per step
    seed: int = 0
    crn: bool = True       # the + and - passes of a probe share their stochastic-rounding draws (common numbers)
    zo_halve: bool = False  # a saturated ZO tensor is halved (exponent + 1) like a BP one; False: it saturates


@dataclass
class IntLayer:
    kind: str             # conv | linear
    w: torch.Tensor       # int8
    w_exp: int
    b: torch.Tensor       # int8
    b_exp: int
    padding: int = 0
    # the exponents at conversion: updates are sized in these units, so a tensor halved on saturation (exponent
    # + 1) keeps the same step in real terms instead of a doubled one
    w_exp0: int | None = None
    b_exp0: int | None = None

    def __post_init__(self) -> None:
        self.w_exp0 = self.w_exp if self.w_exp0 is None else self.w_exp0
        self.b_exp0 = self.b_exp if self.b_exp0 is None else self.b_exp0


def _exp_for(max_abs: float) -> int:
    """The power-of-two exponent that maps max_abs to at most QMAX (used at conversion time only)."""
    if max_abs <= 0:
        return -QMAX.bit_length()
    return math.ceil(math.log2(max_abs / QMAX))


def _quant(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    t = t.detach()
    e = _exp_for(float(t.abs().max()))
    return torch.round(t * 2.0 ** -e).clamp(-QMAX, QMAX).to(torch.int8), e


def quantize_input(x: torch.Tensor, exp: int | None = None) -> tuple[torch.Tensor, int]:
    """Float images -> (int8, exponent): the data-loading side, outside the integer step."""
    if exp is None:
        exp = _exp_for(float(x.abs().max()))
    return torch.round(x * 2.0 ** -exp).clamp(-QMAX, QMAX).to(torch.int8).contiguous(), exp


def _shift(x: torch.Tensor, s: int) -> torch.Tensor:
    """x * 2**s for an integer tensor (floor for s < 0)."""
    return x << s if s >= 0 else x >> -s


def sround_shift(x: torch.Tensor, k: int, gen: torch.Generator | None) -> torch.Tensor:
    """x / 2**k rounded stochastically (gen) or to nearest (gen None); integer in, integer out."""
    if k <= 0:
        return x << min(-k, 30) if k < 0 else x
    if k > 62:   # |x| < 2**62 here: the result rounds to 0 (or stochastically to -1/0 for negatives: use 0)
        return torch.zeros_like(x)
    if gen is None:
        return (x + (1 << (k - 1))) >> k
    r = torch.randint(0, 1 << k, x.shape, generator=gen, dtype=x.dtype)
    return (x + r) >> k


def requant(acc: torch.Tensor, exp: int, gen: torch.Generator | None) -> tuple[torch.Tensor, int]:
    """int32 accumulator -> int8 by a power-of-two shift (dynamic: the batch maximum fits in 7 bits).

    In place on ``acc``; the stochastic-rounding noise is int16 (k <= 15 in practice).
    """
    k = max(0, max(int(acc.max()), -int(acc.min())).bit_length() - 7)
    if k:
        if gen is None:
            acc.add_(1 << (k - 1))
        else:
            acc.add_(torch.randint(0, 1 << k, acc.shape, generator=gen,
                                   dtype=torch.int16 if k <= 15 else torch.int32))
        acc.bitwise_right_shift_(k)
    return acc.clamp_(-QMAX, QMAX).to(torch.int8), exp + k


def bitlen(x: torch.Tensor) -> torch.Tensor:
    """Bit length of each element of a non-negative int64 tensor (binary search with shifts)."""
    n = torch.zeros_like(x)
    for b in (32, 16, 8, 4, 2, 1):
        m = (x >> b) > 0
        n += m * b
        x = torch.where(m, x >> b, x)
    return n + (x > 0)


#: ``"float32-exact"``: int8 x int8 -> int32 products on float32 GEMM (exact, see the module doc); ``"int"``:
#: ``torch._int_mm``. Switch with :func:`integer_matmul`; both give the same int32 results.
_MATMUL = ["float32-exact"]
FLOAT_CHUNK = 32   # samples per slice of the float32 path (its memory is not what the INT8 claims measure)
_EXACT_K = (1 << 24) // (128 * 128)    # 1024: K products of |q| <= 128 sum below 2**24, exact in float32


def _float32_exact() -> bool:
    """Whether float32 GEMM and convolution run in full float32 here (not the opt-in TF32 / bf16 modes,
    which would round the integer products): the float32 path is exact only then."""
    if _MATMUL[0] != "float32-exact":
        return False
    mk = torch.backends.mkldnn
    try:   # torch refuses to answer when the legacy and the new precision settings were mixed
        settings = [getattr(torch.backends, "fp32_precision", "none"), getattr(mk, "fp32_precision", "none"),
                    *(getattr(getattr(mk, part, None), "fp32_precision", "none") for part in ("matmul", "conv"))]
        return torch.get_float32_matmul_precision() == "highest" and all(v in ("none", "ieee") for v in settings)
    except RuntimeError:
        return False


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 (M, K) @ int8 (K, N) -> int32 (M, N), exactly."""
    if a.shape[1] < _EXACT_K and _float32_exact():
        return torch.mm(a.to(torch.float32), b.to(torch.float32)).to(torch.int32)
    return torch._int_mm(a, b)


class integer_matmul:
    """``with integer_matmul():`` the engine multiplies with ``torch._int_mm`` (no float tensor at all)."""

    def __enter__(self) -> "integer_matmul":
        self._before = _MATMUL[0]
        _MATMUL[0] = "int"
        return self

    def __exit__(self, *exc: object) -> None:
        _MATMUL[0] = self._before


def conv_pool_int(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, padding: int, chunk: int = 8
                  ) -> torch.Tensor:
    """int8 (N,C,H,W) conv int8 (O,C,kh,kw) + int32 bias, then 2x2 max-pool -> int32 (N,O,Ho/2,Wo/2).

    The integer engine (:func:`integer_matmul`): :func:`int8_matmul` (int8 x int8 -> int32) on an int8
    im2col buffer, ``chunk`` samples at a time, each slice pooled at once: the full-resolution int32
    accumulator never exists for the whole batch (a tiled integer engine). The default float32 path: torch's
    float32 convolution of the int8 values, :data:`FLOAT_CHUNK` samples at a time, pooled before the
    conversion back to int32. It is exact for the same reason as :func:`int8_matmul`'s: every partial sum,
    in whatever order the kernel adds, is an integer below 2**24 (max commutes with the exact int32 <->
    float32 map, and the per-channel bias with max).
    """
    o, c, kh, kw = w.shape
    n, h, wd = x.shape[0], x.shape[2] + 2 * padding, x.shape[3] + 2 * padding
    ho, wo = h - kh + 1, wd - kw + 1
    out = torch.empty((n, o, ho // 2, wo // 2), dtype=torch.int32)
    if c * kh * kw < _EXACT_K and _float32_exact():
        wf = w.to(torch.float32)
        for s in range(0, n, FLOAT_CHUNK):
            acc = F.conv2d(x[s:s + FLOAT_CHUNK].to(torch.float32), wf, padding=padding)
            out[s:s + FLOAT_CHUNK] = max_pool2x2(acc).to(torch.int32).add_(bias.view(1, o, 1, 1))
        return out
    if padding:
        x = F.pad(x, (padding,) * 4)
    wi = w.reshape(o, -1).t().contiguous()
    for s in range(0, n, chunk):
        cols = x[s:s + chunk].unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)
        acc = int8_matmul(cols, wi).add_(bias).view(-1, ho, wo, o).permute(0, 3, 1, 2)
        out[s:s + chunk] = max_pool2x2(acc)
    return out


def conv_int(x: torch.Tensor, w: torch.Tensor, padding: int) -> torch.Tensor:
    """Plain integer convolution (no bias, no pooling) - the reference the tests compare with F.conv2d."""
    if padding:
        x = F.pad(x, (padding,) * 4)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    cols = x.unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)
    return int8_matmul(cols, w.reshape(o, -1).t().contiguous()).view(n, h - kh + 1, wd - kw + 1, o
                                                                       ).permute(0, 3, 1, 2)


def int_cross_entropy(acc: torch.Tensor, exp: int, y: torch.Tensor, want_grad: bool
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Base-2 cross-entropy of integer logits (value acc * 2**exp), in units of 2**-8 bits, summed over the batch.

    Returns (loss_sum int64 scalar, dL/dz in Q16 (N, classes) int64 or None), z the base-2 logits.
    """
    t = _shift(acc.to(torch.int64), exp + FRAC)           # base-2 logits in Q8
    tmax = t.amax(1, keepdim=True)
    d = t - tmax                                          # <= 0
    q = d >> FRAC                                         # floor: integer part
    f = d - (q << FRAC)                                   # fractional part in [0, 256)
    pw = EXP2_Q16[f] >> (-q).clamp_(max=62)               # 2**d in Q16
    s = pw.sum(1)                                         # >= 2**16 (the max term is exactly ONE)
    k = bitlen(s) - 1
    m = ((s << FRAC) >> k) - (1 << FRAC)                  # mantissa in [0, 256)
    log2s = ((k - 16) << FRAC) + LOG2_Q8[m]
    ty = t.gather(1, y.view(-1, 1)).squeeze(1)
    loss = (log2s + tmax.squeeze(1) - ty).sum()
    if not want_grad:
        return loss, None
    p = torch.div(pw << 16, s.view(-1, 1), rounding_mode="floor")   # softmax in Q16
    onehot = torch.zeros_like(p).scatter_(1, y.view(-1, 1), ONE)
    return loss, p - onehot


@dataclass
class Int8ElasticZO:
    """Integer LeNet-5 (conv1, conv2, fc1, fc2, fc3; ReLU, 2x2 max-pool) with ElasticZO-INT8 training."""

    layers: list[IntLayer]
    cutoff: int
    cfg: Int8Config = field(default_factory=Int8Config)
    data_classes: int = 10

    # ---- construction / export -------------------------------------------------------------------------------
    @classmethod
    def from_float(cls, model: nn.Module, cutoff: int, cfg: Int8Config | None = None) -> Int8ElasticZO:
        """Quantise a float ``lenet5`` (relu, max-pool) into the integer engine; cutoff C >= 2 (convs are ZO)."""
        need = ("conv1", "conv2", "fc1", "fc2", "fc3")
        if not all(hasattr(model, n) for n in need) or not isinstance(getattr(model, "pool", None), nn.MaxPool2d):
            raise LenetlabError("elasticzo-int8 needs the 'lenet5' model with max pooling")
        act = type(model.act1).__name__.lower()
        if "relu" not in act:
            raise LenetlabError(f"elasticzo-int8 needs the relu activation, got {type(model.act1).__name__}")
        if not 2 <= cutoff <= 5:
            raise LenetlabError(f"elasticzo-int8: train.zo.layers must be in [2, 5] (the convolutions are trained "
                                f"by ZO; integer backprop covers the FC layers only), got {cutoff}")
        layers = []
        for n in need:
            m = getattr(model, n)
            w, we = _quant(m.weight)
            b, be = _quant(m.bias)
            layers.append(IntLayer("conv" if n.startswith("conv") else "linear", w.contiguous(), we, b, be,
                                   m.padding[0] if n.startswith("conv") else 0))
        net = cls(layers, cutoff, cfg or Int8Config())
        for ly in layers:
            lim = QMAX - net.cfg.eps
            ly.w.clamp_(-lim, lim)
            ly.b.clamp_(-lim, lim)
        return net

    def float_state(self) -> dict[str, torch.Tensor]:
        """Dequantised weights under the float LeNet-5's state_dict names (load with strict=True)."""
        out = {}
        for n, ly in zip(("conv1", "conv2", "fc1", "fc2", "fc3"), self.layers):
            out[f"{n}.weight"] = ly.w.to(torch.float32) * 2.0 ** ly.w_exp
            out[f"{n}.bias"] = ly.b.to(torch.float32) * 2.0 ** ly.b_exp
        return out

    def int8_tensors(self) -> dict[str, torch.Tensor]:
        """The integer state: int8 tensors plus their exponents (int32 scalars)."""
        out = {}
        for n, ly in zip(("conv1", "conv2", "fc1", "fc2", "fc3"), self.layers):
            out[f"{n}.weight"], out[f"{n}.bias"] = ly.w, ly.b
            out[f"{n}.weight_exp"] = torch.tensor(ly.w_exp, dtype=torch.int32)
            out[f"{n}.bias_exp"] = torch.tensor(ly.b_exp, dtype=torch.int32)
        return out

    def save(self, path: str | Path) -> None:
        from lenetlab import weights

        # atomic, with sorted metadata (reproducible bytes)
        weights.save(self.int8_tensors(), path, {"format": "lenetlab-int8", "cutoff": str(self.cutoff)})

    def param_bytes(self) -> int:
        return sum(ly.w.numel() + ly.b.numel() for ly in self.layers)

    # ---- the integer engine ----------------------------------------------------------------------------------
    def _layer(self, ly: IntLayer, x: torch.Tensor, x_exp: int) -> tuple[torch.Tensor, int]:
        """int32 output of one layer (conv layers: pooled) and its exponent."""
        exp = x_exp + ly.w_exp
        bias = _shift(ly.b.to(torch.int32), max(-31, min(20, ly.b_exp - exp)))
        if ly.kind == "conv":
            return conv_pool_int(x, ly.w, bias, ly.padding), exp
        return int8_matmul(x, ly.w.t().contiguous()).add_(bias), exp

    def forward(self, x: torch.Tensor, x_exp: int, gen: torch.Generator | None = None, keep: bool = False
                ) -> tuple[torch.Tensor, int, list[tuple[torch.Tensor, int]]]:
        """Integer forward: (logit accumulator int32, its exponent, kept inputs of the BP layers)."""
        kept: list[tuple[torch.Tensor, int]] = []
        for i, ly in enumerate(self.layers):
            if keep and i >= self.cutoff:
                kept.append((x, x_exp))
            acc, exp = self._layer(ly, x, x_exp)
            if i == len(self.layers) - 1:
                return acc, exp, kept
            acc.clamp_(min=0)                     # ReLU (after the pool, as in the float model)
            x, x_exp = requant(acc, exp, gen)
            if ly.kind == "conv" and self.layers[i + 1].kind == "linear":
                x = x.flatten(1)
        raise AssertionError("unreachable")

    @torch.no_grad()
    def predict(self, x: torch.Tensor, x_exp: int, batch_size: int = 2000) -> torch.Tensor:
        return torch.cat([self.forward(x[i:i + batch_size], x_exp)[0].argmax(1)
                          for i in range(0, len(x), batch_size)])

    def accuracy(self, x: torch.Tensor, x_exp: int, y: torch.Tensor) -> float:
        return int((self.predict(x, x_exp) == y).sum()) / max(1, len(y))

    # ---- training ----------------------------------------------------------------------------------------------
    def _zo_tensors(self) -> list[tuple[torch.Tensor, int]]:
        """The ZO tensors, each with how many times it was halved since conversion."""
        return [(t, e - e0) for ly in self.layers[:self.cutoff]
                for t, e, e0 in ((ly.w, ly.w_exp, ly.w_exp0), (ly.b, ly.b_exp, ly.b_exp0))]

    def _z_chunks(self, seed: int) -> Any:
        """(slice of a ZO tensor, its Rademacher z as int8, the tensor's halvings) - z regenerated from
        ``seed``, CHUNK at a time."""
        from lenetlab.train.zeroth_order import CHUNK

        g = torch.Generator().manual_seed(seed)
        for t, halved in self._zo_tensors():
            flat = t.view(-1)
            for i in range(0, flat.numel(), CHUNK):
                part = flat[i:i + CHUNK]
                yield part, torch.randint(0, 2, part.shape, generator=g, dtype=torch.int8).mul_(2).sub_(1), halved

    def _perturb(self, seed: int, sign: int) -> None:
        for part, z, _ in self._z_chunks(seed):
            part.add_(z.mul_(sign * self.cfg.eps))

    def _zo_update(self, seed: int, g: int, gen: torch.Generator, lr_q8: int = 256) -> None:
        """W -= sround(g * z * lr_q8 / 2**(zo_shift + 8 + h)), z regenerated, h the tensor's halvings since
        conversion (so the step is the same in real terms): |g| / 2**k = a + frac, so the step is
        -sign(g) * z * (a + Bernoulli(frac)) - unbiased, with chunk-sized int8/int16/int32 temporaries only."""
        mag = abs(g) if self.cfg.zo_clip is None else min(abs(g), self.cfg.zo_clip)
        mag = (mag * lr_q8) >> 8
        sign = 1 if g >= 0 else -1
        lim = QMAX - self.cfg.eps
        for part, z, halved in self._z_chunks(seed):
            k = min(self.cfg.zo_shift + halved, 30)
            a, frac = min(mag >> k, QMAX), mag & ((1 << k) - 1)
            draw = torch.randint(0, 1 << k, part.shape, generator=gen, dtype=torch.int16 if k <= 15 else torch.int32)
            step = (draw < frac).to(torch.int16)
            step.add_(a).mul_(z).mul_(sign)
            part.copy_(part.to(torch.int16).sub_(step).clamp_(-lim, lim))

    def _loss(self, x: torch.Tensor, x_exp: int, y: torch.Tensor, gen: torch.Generator, bp: bool
              ) -> tuple[torch.Tensor, torch.Tensor, list[list[Any]]]:
        acc, exp, kept = self.forward(x, x_exp, gen, keep=bp)
        loss, err = int_cross_entropy(acc, exp, y, bp)
        grads: list[list[Any]] = []
        if bp:
            grads = self._backward(err, kept)
        return loss, acc, grads

    def _backward(self, err: torch.Tensor, kept: list[tuple[torch.Tensor, int]]) -> list[list[Any]]:
        """Integer backprop through the FC BP layers, last layer first: [gW, gW_exp, gb, gb_exp, a_exp] each.

        Exponents are relative to the Q16 softmax error (common to all passes), so gradients of the two
        probes can be aligned and summed.
        """
        out: list[list[Any]] = []
        e_exp = 0
        bp_layers = self.layers[self.cutoff:]
        for j in range(len(bp_layers) - 1, -1, -1):
            ly = bp_layers[j]
            a, a_exp = kept[j][0].to(torch.int64), kept[j][1]
            out.append([err.t() @ a, e_exp + a_exp, err.sum(0), e_exp, a_exp])
            if j > 0:
                e = (err @ ly.w.to(torch.int64)) * (a > 0)
                k = max(0, int(e.abs().max()).bit_length() - 16)   # keep the error within 16 bits
                err, e_exp = e >> k, e_exp + ly.w_exp + k
        return out

    @staticmethod
    def _merge(g1: list[list[Any]], g2: list[list[Any]]) -> list[list[Any]]:
        """Sum two probes' integer gradients after aligning their exponents."""
        out = []
        for (w1, ew1, b1, eb1, _), (w2, ew2, b2, eb2, _) in zip(g1, g2):
            ew, eb = max(ew1, ew2), max(eb1, eb2)
            out.append([(w1 >> (ew - ew1)) + (w2 >> (ew - ew2)), ew,
                        (b1 >> (eb - eb1)) + (b2 >> (eb - eb2)), eb, ew - eb])
        return out

    def _apply(self, t: torch.Tensor, delta: torch.Tensor) -> None:
        lim = QMAX - self.cfg.eps
        t.copy_((t.to(torch.int64) - delta).clamp_(-lim, lim))

    def _renorm(self) -> None:
        """Halve any saturated tensor (exponent + 1) so weights can keep growing."""
        lim = QMAX - self.cfg.eps
        gen = None
        for ly in self.layers if self.cfg.zo_halve else self.layers[self.cutoff:]:
            if int(ly.w.abs().max()) >= lim:
                ly.w.copy_(sround_shift(ly.w.to(torch.int32), 1, gen))
                ly.w_exp += 1
            if int(ly.b.abs().max()) >= lim:
                ly.b.copy_(sround_shift(ly.b.to(torch.int32), 1, gen))
                ly.b_exp += 1

    def train_step(self, x: torch.Tensor, x_exp: int, y: torch.Tensor, step: int, lr_q8: int = 256
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """One integer ElasticZO step on an int8 batch; returns (integer loss sum in 2**-8 bits, int32 logits).

        ``lr_q8`` (an integer, 0..256) scales every update by lr_q8 / 256: the learning-rate schedule in Q8
        (256: the full step)."""
        c = self.cfg
        if not 0 <= lr_q8 <= 256:
            raise LenetlabError(f"lr_q8 must be in 0..256, got {lr_q8}")
        step_seed = (c.seed * 1_000_003 + step) % (2**63 - 1) + 7
        gen = torch.Generator().manual_seed(step_seed)
        bp = self.cutoff < len(self.layers)
        acc_grads: list[list[Any]] | None = None
        projected: list[int] = []
        losses = []
        acc = None
        for i in range(c.q):
            s = (c.seed * 1_000_003 + step * c.q + i) % (2**63 - 1)
            if c.crn:   # both passes round with the same draws, so their difference is the perturbation's
                state = gen.get_state()
            self._perturb(s, +1)
            lp, acc, gp = self._loss(x, x_exp, y, gen, bp)
            self._perturb(s, -2)
            if c.crn:
                gen.set_state(state)
            lm, _, gm = self._loss(x, x_exp, y, gen, bp)
            self._perturb(s, +1)                       # exact restore (integers)
            projected.append(int(lp - lm))
            losses += [lp, lm]
            if bp:
                pair = self._merge(gp, gm)
                acc_grads = pair if acc_grads is None else self._merge(acc_grads, pair)
        # ZO update, z regenerated, for each probe
        for i, gi in enumerate(projected):
            self._zo_update((c.seed * 1_000_003 + step * c.q + i) % (2**63 - 1), gi, gen, lr_q8)
        if acc_grads is not None:
            for ly, (gw, gw_exp, gb, gb_exp, _) in zip(reversed(self.layers[self.cutoff:]), acc_grads):
                # normalised step: the largest weight update is ~2**bp_bits LSBs; the bias gets the same
                # float-equivalent learning rate: kb = kw + (gW_exp - gb_exp) - w_exp + b_exp
                # (plus the tensor's halvings since conversion: the same step in real terms)
                kw = max(0, int(gw.abs().max()).bit_length() - c.bp_bits) + ly.w_exp - ly.w_exp0
                kb = kw + (gw_exp - gb_exp) - ly.w_exp + ly.b_exp
                # scaled in place: the gradients are this step's temporaries (no second copy at peak memory)
                self._apply(ly.w, sround_shift(gw.mul_(lr_q8), kw + 8, gen))
                self._apply(ly.b, sround_shift(gb.mul_(lr_q8), kb + 8, gen))
        self._renorm()
        return torch.stack(losses).sum() // (2 * c.q), acc


class Int8Stepper:
    """Adapter for :func:`lenetlab.train.fit` (method ``elasticzo-int8``).

    Each ``step`` quantises the float batch (data side), runs the integer
    :meth:`Int8ElasticZO.train_step`, then copies the dequantised weights into the
    float model so fit's evaluation and checkpoints see the current weights
    (fit's test accuracy is therefore the float twin's; :meth:`finish` adds the
    integer engine's own test accuracy and writes ``model_int8.safetensors``).
    The integer step sizes come from :class:`Int8Config` (eps in LSBs, shifts); the schedule scales
    them: each step's learning rate over ``train.lr``, as an integer in Q8 (a constant schedule keeps
    the full step; a cosine one decays it to 0 like the float runs' learning rates). The optimiser and
    ``train.zo.eps`` do not apply to it; ``train.zo.q`` and ``seed`` do.
    Its state (the integer tensors, their exponents and the input exponent) is saved in every
    checkpoint, so a resumed run continues the integer weights exactly.
    """

    def __init__(self, model: nn.Module, tc: Any, cutoff: int):
        self.model, self.cutoff = model, cutoff
        self.cfg = Int8Config(q=tc.zo.q, seed=tc.seed)
        self.base_lr = float(tc.lr)
        Int8ElasticZO.from_float(model, cutoff, self.cfg)    # validate model and cutoff now, before any output
        self.net: Int8ElasticZO | None = None
        self.x_exp: int | None = None

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float, step: int, opt: Any = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.net is None:
            # built at the first step from the float model (fresh, or after its weights were replaced)
            self.net = Int8ElasticZO.from_float(self.model, self.cutoff, self.cfg)
        xq, self.x_exp = quantize_input(xb.contiguous(), self.x_exp)
        # the trainer's schedule as an integer multiplier in Q8 (constant schedule: 256, the full step)
        lr_q8 = max(0, min(256, round(256 * lr / self.base_lr))) if self.base_lr > 0 else 256
        loss, acc = self.net.train_step(xq, self.x_exp, yb, step, lr_q8)
        with torch.no_grad():
            state = self.net.float_state()
            for name, p in self.model.named_parameters():
                if name in state:
                    p.copy_(state[name])
        # report the loss in nats per sample, like the float methods (conversion outside the integer step)
        return acc, torch.tensor(float(loss) / (1 << FRAC) * math.log(2) / len(yb))

    def weights_changed(self) -> None:
        """The float model was given other weights (an LB restore): re-quantise them at the next step."""
        self.net = None

    def state_dict(self) -> dict[str, Any]:
        if self.net is None:
            return {}
        exp0 = {f"int8.{n}.{part}_exp0": getattr(ly, f"{part[0]}_exp0")
                for n, ly in zip(("conv1", "conv2", "fc1", "fc2", "fc3"), self.net.layers)
                for part in ("weight", "bias")}
        return {**{f"int8.{k}": v.clone() for k, v in self.net.int8_tensors().items()}, **exp0, "x_exp": self.x_exp}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.net = None
            return
        net = Int8ElasticZO.from_float(self.model, self.cutoff, self.cfg)
        for n, ly in zip(("conv1", "conv2", "fc1", "fc2", "fc3"), net.layers):
            ly.w = state[f"int8.{n}.weight"].clone().contiguous()
            ly.b = state[f"int8.{n}.bias"].clone().contiguous()
            ly.w_exp = int(state[f"int8.{n}.weight_exp"])
            ly.b_exp = int(state[f"int8.{n}.bias_exp"])
            # the exponents the step sizes refer to (a checkpoint from before they were kept: the current ones)
            ly.w_exp0 = int(state.get(f"int8.{n}.weight_exp0", ly.w_exp))
            ly.b_exp0 = int(state.get(f"int8.{n}.bias_exp0", ly.b_exp))
        self.net, self.x_exp = net, state["x_exp"]

    def finish(self, out_dir: Path | None, splits: Any, summary: dict[str, Any]) -> None:
        if self.net is None:
            self.net = Int8ElasticZO.from_float(self.model, self.cutoff, self.cfg)
        x_exp = self.x_exp
        xq, x_exp = quantize_input(splits.test_x.contiguous(), x_exp)
        summary["int8_test_accuracy"] = self.net.accuracy(xq, x_exp, splits.test_y)
        summary["int8_exponents"] = [[ly.w_exp, ly.b_exp] for ly in self.net.layers]
        if out_dir is not None:
            self.net.save(Path(out_dir) / "model_int8.safetensors")


__all__ = ["Int8ElasticZO", "Int8Config", "Int8Stepper", "quantize_input", "int_cross_entropy", "conv_int",
           "requant", "sround_shift"]
