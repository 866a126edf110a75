"""Plain PyTorch reference loop for the modern LeNet-5 - the baseline of train_to_99.py.

Deliberately ordinary, as a user would write it from a tutorial: a
TensorDataset + DataLoader(shuffle=True), Adam with OneCycleLR (max_lr 4e-3,
3 epochs), batch 128, NCHW float32, evaluation on the 10k test set after each
epoch. It reads the same bundled MNIST files as lenetlab and shares no code
with it. Prints one JSON line per evaluation with the wall-clock time.
"""

import gzip
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def idx(path):
    with gzip.open(path) as f:
        d = f.read()
    nd = d[3]
    dims = [int.from_bytes(d[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(d, np.uint8, offset=4 + 4 * nd).reshape(dims)


def main(data_dir: str, epochs: int = 3, seed: int = 0) -> None:
    torch.manual_seed(seed)

    def images(name):
        x = torch.tensor(idx(f"{data_dir}/{name}"), dtype=torch.float32) / 255.0
        return ((x - 0.1307) / 0.3081).unsqueeze(1)

    xtr, ytr = images("train-images-idx3-ubyte.gz"), torch.tensor(idx(f"{data_dir}/train-labels-idx1-ubyte.gz"),
                                                                   dtype=torch.long)
    xte, yte = images("t10k-images-idx3-ubyte.gz"), torch.tensor(idx(f"{data_dir}/t10k-labels-idx1-ubyte.gz"),
                                                                 dtype=torch.long)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr), batch_size=128, shuffle=True)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, epochs=epochs, steps_per_epoch=len(loader))
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        print(json.dumps({"epoch": epoch + 1, "test_accuracy": acc, "unix_time": time.time()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
