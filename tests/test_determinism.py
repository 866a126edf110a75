"""Machine-independent numbers: a reproduction pins torch's thread count, so 1- and 2-core machines agree."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lenetlab.determinism import BLAS_THREADS, REPRODUCE_THREADS, pinned_threads

# trains a small LeNet-5 for a few hundred steps inside pinned_threads, starting from `outer` threads
_TRAIN = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from lenetlab.determinism import pinned_threads
from lenetlab.train import fit
from lenetlab.train.presets import resolve
cfg = resolve("fast", "lenet5", overrides={"data": {"train_subset": 3000, "test_subset": 500, "val_size": 0},
                                            "train": {"epochs": 1, "batch_size": 32}})
with pinned_threads():
    fit(cfg, out=sys.argv[2], log=None, progress=False)
"""


def test_pinned_threads_restores_the_callers_settings():
    before = torch.get_num_threads()
    with pinned_threads(1) as rec:
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert rec == {"torch_threads": 1, "blas_threads": BLAS_THREADS, "deterministic_algorithms": True}
    assert torch.get_num_threads() == before and not torch.are_deterministic_algorithms_enabled()


@pytest.mark.slow   # two training processes
def test_one_and_two_thread_machines_train_the_same_bytes(tmp_path):
    files = []
    for outer in (1, 2):
        out = tmp_path / f"t{outer}"
        subprocess.run([sys.executable, "-c", _TRAIN, str(outer), str(out)], check=True, timeout=900)
        files.append((out / "model.safetensors").read_bytes())
    assert files[0] == files[1]


def test_reproduce_records_the_pinned_thread_count(tiny):
    import json

    out, result = tiny("fused")
    run = json.loads((out / "run.json").read_text())
    assert run["determinism"] == {"torch_threads": REPRODUCE_THREADS, "blas_threads": BLAS_THREADS,
                                  "deterministic_algorithms": True}
    assert result.config["determinism"]["torch_threads"] == REPRODUCE_THREADS
    assert any("torch threads" in n for n in result.notes)


def test_reproduce_records_the_machine_beside_the_clock_readings(tiny):
    """The CPU and its instruction sets (which can change training's rounding) go to timings.json / timings.md,
    not run.json, which decides whether a journal may be resumed (a run may resume on another machine)."""
    import json

    from lenetlab.determinism import machine_info

    out, _ = tiny("fused")
    info = machine_info()
    assert set(info) == {"cpu", "cpu_flags", "aten_cpu_capability", "cpus", "platform", "python", "torch"}
    assert info["torch"] == torch.__version__ and info["cpus"] >= 1 and isinstance(info["cpu_flags"], list)
    timings = json.loads((out / "timings.json").read_text())
    assert timings["metrics"]["machine"] == info
    assert f"Machine: {info['cpu']}" in (out / "timings.md").read_text()
    assert "machine" not in json.loads((out / "run.json").read_text())
    assert "Machine:" not in (out / "report.md").read_text()
