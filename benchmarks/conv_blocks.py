"""LeNet-5's convolution blocks in a training step: torch's layers vs lenetlab's C kernels (train.native_convs).

One thread, a batch of 64 real MNIST training images (one shard of the sprint preset's batch of 128), the
model in channels-last as the trainer runs it. Timed, alternating round by round (best of each round's
repeated calls, median over --rounds): the two conv -> ReLU -> max-pool blocks forward (gradients on), the
blocks forward + backward (the weight and bias gradients of both convolutions), and a whole training step
(forward, label-smoothed cross-entropy, backward to every parameter). Torch's side is what a run without
``train.native_convs`` trains with (oneDNN convolutions, lenetlab's C max-pool forward on conv1's maps).
Also checks that both give the same features and gradients up to float rounding.

    .venv/bin/python benchmarks/conv_blocks.py [--rounds 5] [--calls 50] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from _record import Record, add_json_option
from lenetlab.data import load_splits
from lenetlab.models import convblocks, create_model
from lenetlab.train.presets import resolve


def best_ms(fn, arg: bool, calls: int) -> float:
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=50)
    add_json_option(ap)
    a = ap.parse_args()
    rec = Record("conv_blocks")
    if convblocks._LIBRARY.get() is None:
        rec.skip("no C compiler: the kernels cannot be built here")
        print("skipped: no C compiler")
        rec.write(a.json)
        return 0
    torch.set_num_threads(1)
    torch.manual_seed(0)
    splits = load_splits(resolve("sprint", overrides={"data": {"train_subset": 64, "test_subset": 16}}).data)
    x, y = splits.train_x[:64].contiguous(memory_format=torch.channels_last), splits.train_y[:64]
    model = create_model("lenet5").to(memory_format=torch.channels_last).train()
    params = list(model.parameters())
    convs = params[:4]

    def blocks(native: bool) -> torch.Tensor:
        model.native_convs = native
        return model.features(x)

    def step(native: bool) -> None:
        model.native_convs = native
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        torch.autograd.grad(loss, params)

    feats = {n: blocks(n) for n in (False, True)}
    g = torch.randn(feats[False].shape, generator=torch.Generator().manual_seed(1))
    grads = {n: torch.autograd.grad(feats[n], convs, g) for n in (False, True)}
    err_f = float((feats[True] - feats[False]).detach().abs().max() / feats[False].detach().abs().max())
    err_g = max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(grads[True], grads[False]))
    same = err_f < 1e-5 and err_g < 1e-4
    rec.check("same_features_and_gradients", same)
    rec.value("max_relative_difference", {"features": err_f, "gradients": err_g})

    work = {
        "forward": lambda n: blocks(n),
        "forward_backward": lambda n: torch.autograd.grad(blocks(n), convs, g),
        "training_step": step,
    }
    times: dict[str, dict[str, list[float]]] = {k: {"torch": [], "c": []} for k in work}
    for _ in range(a.rounds):
        for k, fn in work.items():
            times[k]["torch"].append(best_ms(fn, False, a.calls))
            times[k]["c"].append(best_ms(fn, True, a.calls))
    model.native_convs = False
    print(f"LeNet-5, batch 64 MNIST images, 1 thread, torch {torch.__version__}; "
          f"best of {a.calls} calls, median of {a.rounds} rounds")
    med = {k: {s: statistics.median(v) for s, v in t.items()} for k, t in times.items()}
    for k, m in med.items():
        ratio = m["torch"] / m["c"]
        rec.ratio(f"{k}_c_vs_torch", ratio)
        print(f"  {k:17s} torch {m['torch']:7.3f} ms   C blocks {m['c']:7.3f} ms   {ratio:5.2f}x")
    rec.value("median_ms", med)
    print(f"same features and gradients up to rounding: {same} (max relative difference: features {err_f:.1e}, "
          f"gradients {err_g:.1e})")
    rec.note("torch: oneDNN convolutions in channels-last and lenetlab's C max-pool forward on conv1 (a run "
             "without train.native_convs); c: lenetlab.models.convblocks (train.native_convs=true)")
    rec.write(a.json)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
