"""Data-parallel training steps on threads (``train.shards``).

On a small network like LeNet-5 torch's intra-op threads barely help: at
batch 128 two threads run a training step about as fast as one (the
convolutions are too small to split well). Splitting the batch instead, one
shard per thread with one torch thread each, keeps every core busy: on a
2-core machine a step of LeNet-5 at batch 128 takes about two thirds of the
time (benchmarks/train_to_99.py). Torch releases the GIL inside its kernels
and its backward pass, so plain Python threads run the shards side by side.

The maths is the batch's: each shard's mean loss is weighted by its share of
the batch, its gradients are taken with ``torch.autograd.grad`` (nothing is
accumulated concurrently) and the shards' gradients are summed in shard
order. So a run gives the same numbers on any machine for a given number of
shards; against one shard the sums come in another order (float rounding).
Only for models whose samples do not interact (``row_wise``: no batch
statistics), without dropout (random draws from several threads) and without
training plugins (their hooks are not written for several threads).

Example::

    from lenetlab.train import fit
    from lenetlab.train.presets import resolve
    fit(resolve("sprint"))          # train.shards = 2
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from lenetlab.errors import LenetlabError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check(shards: int, model: nn.Module, plugin_names: Sequence[str], device: torch.device) -> None:
    """Refuse ``train.shards > 1`` where the shards would not compute the batch's maths (or off the CPU)."""
    if shards <= 1:
        return
    if device.type != "cpu":
        raise LenetlabError(f"train.shards={shards} splits CPU work over threads; on {device.type} use "
                            "train.shards=1")
    if not getattr(model, "row_wise", False):
        raise LenetlabError(f"train.shards={shards} needs a model whose samples do not interact (no batch "
                            f"statistics); {type(model).__name__} is not marked so: use train.shards=1")
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
        raise LenetlabError(f"train.shards={shards}: {type(model).__name__} has dropout, whose random draws on "
                            "several threads would depend on their timing: use train.shards=1")
    if plugin_names:
        raise LenetlabError(f"train.shards={shards} runs the training step on several threads; the training "
                            f"plugins {', '.join(plugin_names)} hook that step: use train.shards=1 with them")


def _one_thread() -> None:
    torch.set_num_threads(1)


class ShardedStep:
    """Forward and backward of one batch as ``n`` shards on ``n`` threads; the caller steps the optimiser.

    Use as a context manager: inside it torch runs one intra-op thread per shard (restored on exit, and
    around :meth:`released`, e.g. for evaluation)."""

    def __init__(self, n: int, params: Sequence[torch.Tensor]):
        if n < 2:
            raise ValueError("ShardedStep needs two or more shards")
        self.n = n
        self.params = [p for p in params if p.requires_grad]
        self._pool: ThreadPoolExecutor | None = None
        self._borrowers: list[object] = []
        self._threads = torch.get_num_threads()

    def __enter__(self) -> "ShardedStep":
        self._threads = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(self.n - 1, thread_name_prefix="lenetlab-shard", initializer=_one_thread)
        torch.set_num_threads(1)
        return self

    def lend(self, optimizer: object) -> None:
        """Give an optimiser that can use them (:class:`lenetlab.train.optim.Muon`'s ``pool``) the shard
        threads for its own work between steps; taken back on exit."""
        if hasattr(optimizer, "pool"):
            optimizer.pool = self._pool
            self._borrowers.append(optimizer)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self._threads)
        for opt in self._borrowers:
            opt.pool = None
        self._borrowers = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @contextmanager
    def released(self) -> Iterator[None]:
        """The machine's torch threads back for the duration (evaluation between epochs)."""
        torch.set_num_threads(self._threads)
        try:
            yield
        finally:
            torch.set_num_threads(1)

    def _part(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float, loss_fn: LossFn,
              bf16: bool) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
        if bf16:   # autocast is per thread: each shard enters it
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                logits = model(x)
            logits = logits.float()
        else:
            logits = model(x)
        loss = loss_fn(logits, y) * weight
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return logits.detach(), loss.detach(), grads

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                 bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Set every parameter's ``.grad`` to the batch's gradient; return (logits, loss) of the batch."""
        if self._pool is None:
            raise RuntimeError("use ShardedStep inside a `with` block")
        b = len(x)
        cuts = [b * i // self.n for i in range(self.n + 1)]
        parts = [(cuts[i], cuts[i + 1]) for i in range(self.n) if cuts[i + 1] > cuts[i]]
        futures = [self._pool.submit(self._part, model, x[lo:hi], y[lo:hi], (hi - lo) / b, loss_fn, bf16)
                   for lo, hi in parts[1:]]
        lo, hi = parts[0]
        done = [self._part(model, x[lo:hi], y[lo:hi], (hi - lo) / b, loss_fn, bf16)]
        done += [f.result() for f in futures]
        for i, p in enumerate(self.params):
            total = None
            for _, _, grads in done:
                g = grads[i]
                if g is not None:
                    total = g if total is None else total + g
            p.grad = total
        loss = done[0][1]
        for _, part_loss, _ in done[1:]:
            loss = loss + part_loss
        return torch.cat([d[0] for d in done]), loss
