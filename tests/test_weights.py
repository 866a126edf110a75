"""Weights files: reproducible bytes across processes, broken weights refused at load with the tensor's name."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from conftest import run_cli
from lenetlab import weights
from lenetlab.errors import LenetlabError

_WRITE = """
import sys, torch
from lenetlab import weights
weights.save({"b.w": torch.arange(6.).reshape(2, 3), "a": torch.ones(3, dtype=torch.int8)}, sys.argv[1],
             {"zeta": "1", "model": "lenet5", "options": "{}", "alpha": "x", "state": "{}"})
"""


@pytest.mark.slow   # two training processes
def test_bytes_do_not_depend_on_the_process(tmp_path):
    # safetensors orders metadata keys by a per-process hash seed; four processes used to give four hashes
    digests = set()
    for i in range(4):
        p = tmp_path / f"w{i}.safetensors"
        subprocess.run([sys.executable, "-c", _WRITE, str(p)], check=True)
        digests.add(hashlib.sha256(p.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    t = {"w": torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), "i": torch.arange(3)}
    weights.save(t, tmp_path / "m.safetensors", {"b": "2", "a": "1"})
    back, meta = weights.load(tmp_path / "m.safetensors")
    assert meta == {"a": "1", "b": "2"}
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, bad):
    w = torch.zeros(3, 3)
    w[1, 2] = bad
    weights.save({"conv1.weight": torch.ones(2), "fc.weight": w}, tmp_path / "m.safetensors")
    with pytest.raises(LenetlabError, match=r"'fc\.weight' holds 1 NaN/infinite"):
        weights.load(tmp_path / "m.safetensors")


def test_garbage_file_is_one_clear_error(tmp_path):
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"\xff" * 64)
    with pytest.raises(LenetlabError, match="cannot read weights"):
        weights.load(p)


def test_eval_refuses_a_run_whose_weights_hold_nan(small_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    tensors, meta = weights.load(run / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().view(-1).index_fill(0, torch.tensor([0]), float("nan")).view_as(
        tensors[name])
    weights.save(tensors, run / "model.safetensors", meta)
    r = run_cli("eval", str(run))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and name in err[0] and "NaN" in err[0], r.stderr
