"""LeNet-5 as published (LeCun, Bottou, Bengio, Haffner 1998), docs/papers/lenet5.md.

32x32 input (MNIST zero-padded by 2, pixels mapped to -0.1 + 1.275 p/255) ->
C1 6@5x5 -> S2 trainable subsampling -> C3 16@5x5 with the partial connection
table -> S4 -> C5 120@5x5 -> F6 84 -> 10 Euclidean RBF units with fixed +1/-1
7x12 bitmaps. Every unit up to F6 is squashed by f(a) = 1.7159 tanh(2a/3).
Trainable parameters: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164
(60,000 in all); the RBF centres are fixed buffers.

C3 stores only its 60 connected 5x5 kernels (so the parameter count is the
paper's) and scatters them into a dense masked kernel on each forward.

The forward returns logits = -RBF distance (argmax = argmin distance), and
:func:`rbf_loss` is the paper's criterion E = y_c + log(e^-j + sum_i e^-y_i).

Example::

    import lenetlab
    m = lenetlab.create_model("lenet5_classic")
    m(torch.zeros(1, 1, 32, 32)).shape   # (1, 10)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lenetlab.models.activations import ScaledTanh
from lenetlab.models.base import register_model
from lenetlab.models.bitmaps import digit_bitmaps

# C3 map -> the S2 maps it reads (Table I of the paper)
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5), (0, 1, 2, 3, 4, 5),
)


@dataclass
class ClassicConfig:
    rbf_j: float = 1.0     # the constant j of the RBF loss (value not given in the paper; reconstructed)
    init_scale: float = 2.4  # weights ~ U(-s/F_in, s/F_in), the paper's initialisation


class Subsampling(nn.Module):
    """S2/S4: sum of each 2x2 block, times a trainable per-map coefficient, plus a bias."""
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    def __init__(self, channels: int):
        super().__init__()
        self.coef = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.avg_pool2d(x, 2) * 4.0
        return s * self.coef.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SparseConv(nn.Module):
    """C3: a 5x5 convolution that connects output map o only to ``table[o]``."""
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    def __init__(self, table: tuple[tuple[int, ...], ...], in_ch: int, k: int = 5):
        super().__init__()
        self.out_ch, self.in_ch, self.k = len(table), in_ch, k
        pairs = [o * in_ch + i for o, ins in enumerate(table) for i in ins]
        self.register_buffer("index", torch.tensor(pairs), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(pairs), k * k))
        self.bias = nn.Parameter(torch.empty(self.out_ch))

    def dense_weight(self) -> torch.Tensor:
        full = self.weight.new_zeros(self.out_ch * self.in_ch, self.k * self.k)
        full = full.index_copy(0, self.index, self.weight)
        return full.view(self.out_ch, self.in_ch, self.k, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)


class RBFOutput(nn.Module):
    """Euclidean RBF units: y_i = sum_j (x_j - w_ij)^2 with fixed centres w (not trained)."""
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    def __init__(self, centres: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ||x||^2 - 2 x.w + ||w||^2, one matmul instead of a (N,10,84) tensor
        return (x * x).sum(1, keepdim=True) - 2 * x @ self.centres.t() + (self.centres ** 2).sum(1)


class LeNet5Classic(nn.Module):
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise
    default_loss = "rbf"

    def __init__(self, cfg: ClassicConfig):
        super().__init__()
        self.input_shape = (1, 32, 32)
        self.rbf_j = cfg.rbf_j
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = Subsampling(6)
        self.c3 = SparseConv(C3_TABLE, 6)
        self.s4 = Subsampling(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.out = RBFOutput(digit_bitmaps())
        self.squash = ScaledTanh()
        self._init(cfg.init_scale)

    @torch.no_grad()
    def _init(self, s: float) -> None:
        fan_in = {self.c1: 25, self.c3: None, self.c5: 16 * 25, self.f6: 120}
        for layer, fi in fan_in.items():
            if layer is self.c3:
                # each C3 map has its own fan-in: |table[o]| * 25
                per_row = torch.tensor([len(C3_TABLE[int(i) // 6]) * 25 for i in self.c3.index])
                layer.weight.uniform_(-1, 1).mul_((s / per_row).unsqueeze(1))
                layer.bias.uniform_(-1, 1).mul_(s / 75)
                continue
            layer.weight.uniform_(-s / fi, s / fi)
            layer.bias.uniform_(-s / fi, s / fi)
        for sub in (self.s2, self.s4):
            sub.coef.fill_(0.25)   # start as a plain average
            sub.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.squash
        x = f(self.s2(f(self.c1(x))))
        x = f(self.s4(f(self.c3(x))))
        x = f(self.c5(x)).flatten(1)
        return f(self.f6(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.out(self.features(x))


def rbf_loss(logits: torch.Tensor, target: torch.Tensor, j: float) -> torch.Tensor:
    """E = y_c + log(e^-j + sum_i e^-y_i), with y = -logits (the RBF distances)."""
    y_c = -logits.gather(1, target.unsqueeze(1)).squeeze(1)
    with_j = torch.cat([logits, logits.new_full((logits.shape[0], 1), -j)], 1)
    return (y_c + torch.logsumexp(with_j, 1)).mean()


@register_model("lenet5_classic", ClassicConfig, data_defaults={"normalize": "lecun", "pad": 2})
def lenet5_classic(cfg: ClassicConfig) -> LeNet5Classic:
    """LeNet-5 as in LeCun et al. 1998: C3 table, trainable subsampling, RBF output (60,000 params)."""
    return LeNet5Classic(cfg)
