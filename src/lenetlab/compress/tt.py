"""Tensor-train (TT) / matrix-product-operator (MPO) weights: the shallow tensor-network baseline.

Novikov, Podoprikhin, Osokin, Vetrov 2015 ("Tensorizing neural networks"),
the baseline of Qing, Zhou, Li, Ran 2023 (docs/papers/tn.md).

A weight matrix W (M x N) with M = m_1...m_d and N = n_1...n_d is stored as d
cores G_k of shape (r_{k-1}, m_k, n_k, r_k), r_0 = r_d = 1::

    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] G_2[:, i_2, j_2, :] ... G_d[:, i_d, j_d, :]

so it holds sum_k r_{k-1} m_k n_k r_k numbers instead of M N
(:func:`tt_matrix_params`). The cores are found from a trained layer by
TT-SVD (Oseledets 2011, algorithm 1: d - 1 truncated SVDs, by a rank cap or
by a relative error tolerance), then fine-tuned like any other parameter.

A convolution kernel (out, in, k, k) is the matrix (out, in*k*k) with its
column modes (in factors..., k*k) and row modes (out factors..., 1): the
"reshaped kernel" TT convolution (the spatial k*k mode gets a core of its own,
as in Garipov et al. 2016).

The layers here materialise the dense weight on every forward and call
``F.linear`` / ``F.conv2d``: at LeNet-5 sizes (<= 48,000 weights) that is
cheaper than contracting the input core by core, gives exactly the same
function, and lets export use the dense weight unchanged.

Example::

    from lenetlab.compress.tt import tt_svd, tt_to_full
    cores = tt_svd(torch.randn(4, 6, 5), max_rank=3)
    approx = tt_to_full(cores)          # (4, 6, 5), rank-3 TT approximation
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lenetlab.errors import LenetlabError


# ---------------------------------------------------------------- shapes and counts
def factorize(n: int, d: int) -> tuple[int, ...]:
    """Split ``n`` into ``d`` integer factors as equal as possible (ascending; 1s where n has too few primes).

    ``factorize(400, 4) == (4, 4, 5, 5)``, ``factorize(120, 4) == (2, 3, 4, 5)``.
    """
    if n < 1 or d < 1:
        raise LenetlabError(f"cannot factorize {n} into {d} factors")
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    bins = [1] * d
    for q in sorted(primes, reverse=True):   # largest prime into the currently smallest bin
        bins[bins.index(min(bins))] *= q
    return tuple(sorted(bins))


def bond_caps(dims: tuple[int, ...]) -> list[int]:
    """Largest useful rank of each internal bond of a TT over ``dims``: min(prod left, prod right)."""
    return [min(math.prod(dims[:k]), math.prod(dims[k:])) for k in range(1, len(dims))]


def clip_ranks(dims: tuple[int, ...], max_rank: int) -> list[int]:
    """Full rank list [1, r_1, ..., r_{d-1}, 1] with every internal bond min(max_rank, its cap)."""
    if max_rank < 1:
        raise LenetlabError(f"TT rank must be >= 1, got {max_rank}")
    return [1, *(min(max_rank, c) for c in bond_caps(dims)), 1]


def tt_params(dims: tuple[int, ...], ranks: list[int]) -> int:
    """Numbers held by a TT tensor: sum_k r_{k-1} n_k r_k."""
    return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(dims))


def tt_matrix_params(rows: tuple[int, ...], cols: tuple[int, ...], ranks: list[int]) -> int:
    """Numbers held by a TT matrix (MPO): sum_k r_{k-1} m_k n_k r_k."""
    return tt_params(tuple(m * n for m, n in zip(rows, cols)), ranks)


# ---------------------------------------------------------------- TT-SVD
def tt_svd(t: torch.Tensor, max_rank: int | None = None, tol: float | None = None) -> list[torch.Tensor]:
    """TT decomposition of ``t`` by sequential truncated SVDs (Oseledets 2011, algorithm 1).

    ``max_rank`` caps every bond; ``tol`` is a relative Frobenius error bound:
    each of the d-1 truncations discards at most tol/sqrt(d-1) * ||t||, so the
    result satisfies ||t - TT|| <= tol ||t||. Both may be given (the smaller
    rank wins); neither means exact (full rank). Computed in float64; the
    cores come back in ``t``'s dtype, shapes (r_{k-1}, n_k, r_k).
    """
    if max_rank is not None and max_rank < 1:
        raise LenetlabError(f"TT rank must be >= 1, got {max_rank}")
    if tol is not None and not (0 <= tol < 1):
        raise LenetlabError(f"TT tolerance must be in [0, 1), got {tol}")
    dims = tuple(t.shape)
    d = len(dims)
    c = t.detach().to(torch.float64)
    delta = 0.0 if tol is None or d < 2 else tol / math.sqrt(d - 1) * float(c.norm())
    cores, r = [], 1
    for k in range(d - 1):
        c = c.reshape(r * dims[k], -1)
        u, s, vh = torch.linalg.svd(c, full_matrices=False)
        keep = len(s)
        if delta > 0:
            # smallest rank whose discarded tail has norm <= delta
            tail = torch.flip(torch.cumsum(torch.flip(s**2, [0]), 0), [0])   # tail[j] = sum_{i>=j} s_i^2
            ok = (tail <= delta**2).nonzero()
            keep = int(ok[0]) if len(ok) else keep
            keep = max(keep, 1)
        if max_rank is not None:
            keep = min(keep, max_rank)
        cores.append(u[:, :keep].reshape(r, dims[k], keep))
        c = s[:keep, None] * vh[:keep]
        r = keep
    cores.append(c.reshape(r, dims[-1], 1))
    return [g.to(t.dtype) for g in cores]


def tt_to_full(cores: list[torch.Tensor]) -> torch.Tensor:
    """Contract TT cores (r_{k-1}, n_k, r_k) back to the full tensor (n_1, ..., n_d)."""
    out = cores[0]
    for g in cores[1:]:
        out = torch.tensordot(out, g, dims=([out.dim() - 1], [0]))
    return out.reshape(out.shape[1:-1])


def matrix_to_tt(w: torch.Tensor, rows: tuple[int, ...], cols: tuple[int, ...], max_rank: int | None = None,
                 tol: float | None = None) -> list[torch.Tensor]:
    """TT-matrix cores (r_{k-1}, m_k, n_k, r_k) of ``w`` (prod rows x prod cols) by TT-SVD."""
    d = len(rows)
    if len(cols) != d or math.prod(rows) != w.shape[0] or math.prod(cols) != w.shape[1]:
        raise LenetlabError(f"TT modes {rows} x {cols} do not match a {tuple(w.shape)} matrix")
    # (m_1..m_d, n_1..n_d) -> (m_1, n_1, m_2, n_2, ...) -> one index per core
    t = w.reshape(*rows, *cols).permute(*[i for k in range(d) for i in (k, d + k)])
    cores = tt_svd(t.reshape([m * n for m, n in zip(rows, cols)]), max_rank, tol)
    return [g.reshape(g.shape[0], m, n, g.shape[-1]) for g, m, n in zip(cores, rows, cols)]


def tt_matrix_to_full(cores: list[torch.Tensor]) -> torch.Tensor:
    """Dense (prod m_k) x (prod n_k) matrix of TT-matrix cores (r_{k-1}, m_k, n_k, r_k)."""
    rows = [g.shape[1] for g in cores]
    cols = [g.shape[2] for g in cores]
    d = len(cores)
    full = tt_to_full([g.reshape(g.shape[0], -1, g.shape[-1]) for g in cores])
    full = full.reshape([x for m, n in zip(rows, cols) for x in (m, n)])
    full = full.permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2))
    return full.reshape(math.prod(rows), math.prod(cols))


# ---------------------------------------------------------------- layers
def linear_modes(out_f: int, in_f: int, d: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return factorize(out_f, d), factorize(in_f, d)


def conv_modes(out_c: int, in_c: int, k: int, d: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Row modes (out factors..., 1) and column modes (in factors..., k*k) of a reshaped kernel."""
    if d < 2:
        raise LenetlabError("a TT convolution needs >= 2 cores (channels and the k*k spatial core)")
    return (*factorize(out_c, d - 1), 1), (*factorize(in_c, d - 1), k * k)


class TTMatrix(nn.Module):
    """A trainable TT matrix (MPO); :meth:`dense` gives the (rows x cols) matrix it represents."""
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    def __init__(self, rows: tuple[int, ...], cols: tuple[int, ...], ranks: list[int]):
        super().__init__()
        if len(ranks) != len(rows) + 1 or ranks[0] != 1 or ranks[-1] != 1 or min(ranks) < 1:
            raise LenetlabError(f"bad TT ranks {ranks} for {len(rows)} cores (want 1, r_1, ..., 1)")
        self.rows, self.cols, self.ranks = tuple(rows), tuple(cols), list(ranks)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[k], m, n, ranks[k + 1])) for k, (m, n) in enumerate(zip(rows, cols)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # random init with the variance of a Kaiming-uniform dense layer: each core scaled so that the
        # product of d cores summed over the bonds has entry variance ~ 1/(3 fan_in)
        target = 1.0 / (3 * math.prod(self.cols))
        d = len(self.cores)
        bonds = math.prod(self.ranks[1:-1])
        std = (target / bonds) ** (1 / (2 * d))
        for g in self.cores:
            nn.init.normal_(g, 0.0, std)

    def load_cores(self, cores: list[torch.Tensor]) -> None:
        for p, c in zip(self.cores, cores):
            if p.shape != c.shape:
                raise LenetlabError(f"TT core shape {tuple(c.shape)} != {tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(c)

    def dense(self) -> torch.Tensor:
        return tt_matrix_to_full(list(self.cores))

    def tn_params(self) -> int:
        return tt_matrix_params(self.rows, self.cols, self.ranks)


def tt_from_weight(w2d: torch.Tensor, rows: tuple[int, ...], cols: tuple[int, ...], max_rank: int | None,
                   tol: float | None = None, ranks: list[int] | None = None) -> TTMatrix:
    """A :class:`TTMatrix` initialised by TT-SVD of ``w2d`` (ranks from ``max_rank``/``tol``, or exactly ``ranks``)."""
    if ranks is not None:
        cores = _tt_svd_ranks(w2d, rows, cols, ranks)
    else:
        cores = matrix_to_tt(w2d, rows, cols, max_rank=max_rank, tol=tol)
    tt = TTMatrix(rows, cols, [1, *(g.shape[-1] for g in cores[:-1]), 1])
    tt.load_cores(cores)
    return tt


def _tt_svd_ranks(w2d: torch.Tensor, rows, cols, ranks: list[int]) -> list[torch.Tensor]:
    d = len(rows)
    dims = [m * n for m, n in zip(rows, cols)]
    c = w2d.detach().to(torch.float64).reshape(*rows, *cols).permute(*[i for k in range(d) for i in (k, d + k)])
    cores, r = [], 1
    for k in range(d - 1):
        c = c.reshape(r * dims[k], -1)
        u, s, vh = torch.linalg.svd(c, full_matrices=False)
        keep = ranks[k + 1]
        if keep > len(s):
            raise LenetlabError(f"TT rank {keep} exceeds the largest possible {len(s)} at bond {k + 1}")
        cores.append(u[:, :keep].reshape(r, rows[k], cols[k], keep))
        c = s[:keep, None] * vh[:keep]
        r = keep
    cores.append(c.reshape(r, rows[-1], cols[-1], 1))
    return [g.to(w2d.dtype) for g in cores]


class TTLinear(nn.Module):
    """``nn.Linear`` whose weight is a TT matrix (dense bias). ``weight`` is the materialised matrix."""
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    noise_site = "linear"   # one analog-noise site (lenetlab.noise), like the dense layer

    def __init__(self, tt: TTMatrix, bias: torch.Tensor | None):
        super().__init__()
        self.tt = tt
        self.in_features, self.out_features = math.prod(tt.cols), math.prod(tt.rows)
        self.bias = nn.Parameter(bias.detach().clone() if bias is not None else torch.zeros(self.out_features))

    @property
    def weight(self) -> torch.Tensor:
        return self.tt.dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def tn_params(self) -> int:
        return self.tt.tn_params()


class TTConv2d(nn.Module):
    """Square stride-1 ``nn.Conv2d`` whose reshaped kernel (out, in*k*k) is a TT matrix (dense bias)."""
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    noise_site = "conv"   # one analog-noise site (lenetlab.noise), like the dense layer

    def __init__(self, tt: TTMatrix, bias: torch.Tensor | None, in_channels: int, kernel_size: int, padding: int):
        super().__init__()
        self.tt = tt
        self.out_channels, self.in_channels = math.prod(tt.rows), in_channels
        self.kernel_size, self.padding = (kernel_size, kernel_size), (padding, padding)
        self.stride, self.dilation, self.groups = (1, 1), (1, 1), 1
        self.bias = nn.Parameter(bias.detach().clone() if bias is not None else torch.zeros(self.out_channels))

    @property
    def weight(self) -> torch.Tensor:
        k = self.kernel_size[0]
        # columns are ordered (in, k*k), the row-major flattening of (in, k, k)
        return self.tt.dense().reshape(self.out_channels, self.in_channels, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)

    def tn_params(self) -> int:
        return self.tt.tn_params()

