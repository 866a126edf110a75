"""--device auto|cpu|cuda|mps and device= (lenetlab.devices): CPU runs stay bit-identical, a device that is not
there is one line and writes nothing, the fused Adam gives way to torch's own off the CPU, and (where there is
an accelerator) a smoke test of every command that takes --device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lenetlab
from conftest import run_cli
from lenetlab import devices
from lenetlab.errors import LenetlabError

TINY = ["--preset", "fast", "--epochs", "1", "--set", "data.train_subset=300", "--set", "data.test_subset=200",
        "--set", "data.val_size=100", "--set", "train.batch_size=100", "-q"]
ACCELERATORS = [d for d, ok in (("cuda", torch.cuda.is_available()), ("mps", devices._mps_available())) if ok]


@pytest.fixture
def no_accelerator(monkeypatch):
    """This process sees no GPU (so `auto` is the CPU here, on any machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("device") / "cpu"
    run_cli("train", *TINY, "--device", "cpu", "--out", str(out), check=True)
    return out


def test_device_cpu_is_bit_identical_to_the_default(cpu_run, tmp_path, no_accelerator):
    run_cli("train", *TINY, "--out", str(tmp_path / "default"), check=True)     # --device auto
    assert (tmp_path / "default" / "model.safetensors").read_bytes() == (cpu_run / "model.safetensors").read_bytes()
    from safetensors.torch import load_file

    # the checkpoint also holds the epoch's metrics line (timings included): compare its tensors
    a, b = (load_file(str(d / "checkpoint.safetensors")) for d in (tmp_path / "default", cpu_run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((cpu_run / "summary.json").read_text())
    assert summary["environment"]["device"] == "cpu"


def test_unknown_device_is_refused_while_parsing(cpu_run, tmp_path):
    line = "lenetlab: error: unknown device 'tpu'; choose from: auto, cpu, cuda, cuda:N, mps"
    for argv in (["train", *TINY, "--out", str(tmp_path / "run")], ["eval", str(cpu_run)],
                 ["predict", str(cpu_run), "x.png"], ["attack", str(cpu_run)],
                 ["noise", "eval", str(cpu_run), "--sigma", "0.1"], ["sweep", "no-such.toml"]):
        r = run_cli(*argv, "--device", "tpu")
        assert r.returncode == 2, argv
        assert r.stderr.strip().splitlines() == [line], argv
    assert not (tmp_path / "run").exists()
    assert devices.arg(" CUDA:1 ") == "cuda:1"
    for bad in ("cuda:", "cuda:x", "gpu", "", "cpu:0"):
        with pytest.raises(LenetlabError, match="unknown device"):
            devices.arg(bad)


def test_cuda_absent_is_one_line_and_writes_nothing(cpu_run, tmp_path, no_accelerator):
    for argv in (["train", *TINY, "--out", str(tmp_path / "run")], ["eval", str(cpu_run)],
                 ["attack", str(cpu_run), "--save-examples", str(tmp_path / "adv")],
                 ["noise", "eval", str(cpu_run), "--sigma", "0.1"]):
        r = run_cli(*argv, "--device", "cuda")
        assert r.returncode == 2, argv
        (msg,) = r.stderr.strip().splitlines()
        assert msg.startswith("lenetlab: error: --device cuda: CUDA is not available here: "), msg
        assert msg.endswith("; use --device auto or cpu"), msg
        assert r.stdout == ""
    r = run_cli("train", *TINY, "--device", "mps", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "MPS backend is not available" in r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "adv").exists()


def test_resolve_and_the_api(cpu_run, no_accelerator):
    assert devices.resolve("auto") == devices.resolve(None) == devices.resolve(torch.device("cpu")) \
        == torch.device("cpu")
    with pytest.raises(LenetlabError, match="^device cuda: CUDA is not available"):
        lenetlab.fit({"model": "lenet5", "train": {"epochs": 1}}, device="cuda", log=None)
    with pytest.raises(LenetlabError, match="unknown device 'gpu'"):
        lenetlab.load_run(cpu_run, device="gpu")
    with pytest.raises(LenetlabError, match="device must be a device name"):
        lenetlab.load_run(cpu_run, device=3)
    run = lenetlab.load_run(cpu_run, device="auto")
    from lenetlab.data import load_raw

    _, _, x, y = load_raw("mnist")
    a = lenetlab.evaluate(run, x[:200], y[:200])
    b = lenetlab.evaluate(run, x[:200], y[:200], device="cpu")
    assert a == b and devices.of(run.model) == torch.device("cpu")


def test_cpu_only_training_refuses_another_device(monkeypatch):
    """ElasticZO-INT8 (the integer engine) trains on the CPU only: `auto` falls back to it, another device is
    refused before the data is loaded (checked here with a pretend GPU: nothing reaches it)."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve
    from lenetlab.train.zeroth_order import ZOPlugin

    monkeypatch.setattr(devices, "resolve", lambda device, what="--device": torch.device("cuda"))
    cfg = resolve("fast", overrides={"train": {"zo": {"method": "elasticzo-int8"}}})
    with pytest.raises(LenetlabError, match=r"^ElasticZO-INT8 training \(its integer engine\) runs on the CPU only; "
                                            "use device cpu or auto, not cuda$"):
        fit(cfg, device="cuda", log=None, progress=False)
    assert ZOPlugin(cfg.train).cpu_only() and not ZOPlugin(resolve("fast").train).cpu_only()
    tiny = resolve("fast", overrides={"data": {"train_subset": 200, "test_subset": 100},
                                      "train": {"epochs": 1, "batch_size": 100, "zo": {"method": "elasticzo-int8"}}})
    summary = fit(tiny, device="auto", log=None, progress=False)      # auto: the CPU, for this training
    assert summary["environment"]["device"] == "cpu" and devices.of(summary["_model"]).type == "cpu"


def test_fused_adam_off_the_cpu_is_torchs_own():
    from lenetlab.config import TrainConfig
    from lenetlab.registry import get
    from lenetlab.train.optim import FusedAdam

    cfg = TrainConfig(lr=0.01, weight_decay=0.1)
    cpu = [torch.nn.Parameter(torch.zeros(3))]
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]   # any device but the CPU
    assert isinstance(get("optimizer", "adam")(cpu, cfg), FusedAdam)
    assert isinstance(get("optimizer", "adamw")(cpu, cfg), FusedAdam)
    adam, adamw = get("optimizer", "adam")(meta, cfg), get("optimizer", "adamw")(meta, cfg)
    assert type(adam) is torch.optim.Adam and type(adamw) is torch.optim.AdamW
    assert adam.param_groups[0]["lr"] == 0.01 and adamw.param_groups[0]["weight_decay"] == 0.1


def test_zo_draws_are_made_on_the_cpu_and_moved():
    """The ZO perturbation z comes from a CPU generator whatever the device (here a "meta" parameter stands for
    a GPU's): the same numbers everywhere."""
    from lenetlab.train.zeroth_order import z_chunks

    g = torch.Generator().manual_seed(7)
    want = torch.cat([torch.randn(4096, generator=g), torch.randn(904, generator=g)])
    assert torch.equal(torch.cat([z for _, z in z_chunks([torch.zeros(5000)], 7)]), want)
    ((_, z),) = z_chunks([torch.zeros(10, device="meta")], 7)
    assert z.device.type == "meta" and z.shape == (10,)


# ---------------------------------------------------------------- on an accelerator (skipped without one)
@pytest.mark.skipif(not ACCELERATORS, reason="no CUDA or MPS device here")
@pytest.mark.parametrize("dev", ACCELERATORS)
def test_accelerator_smoke(dev, cpu_run, tmp_path):
    """Every command that takes --device runs there: training (torch's Adam, batches and the model on the
    device; accuracy like the CPU run's), eval (the CPU run's accuracy), predict, attack, noise eval."""
    out = tmp_path / "acc"
    r = run_cli("train", *TINY, "--device", dev, "--out", str(out), check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["device"].startswith(dev), r.stdout
    cpu_summary = json.loads((cpu_run / "summary.json").read_text())
    assert abs(summary["test_accuracy"] - cpu_summary["test_accuracy"]) < 0.1
    for run in (cpu_run, out):
        cpu_eval = json.loads(run_cli("eval", str(run), "--limit", "500", "--json", "--device", "cpu",
                                      check=True).stdout)
        dev_eval = json.loads(run_cli("eval", str(run), "--limit", "500", "--json", "--device", dev,
                                      check=True).stdout)
        assert abs(dev_eval["test_accuracy"] - cpu_eval["test_accuracy"]) <= 2 / 500
    from PIL import Image

    from lenetlab.data import load_raw

    _, _, x, y = load_raw("mnist")
    Image.fromarray(x[0]).save(tmp_path / "d.png")
    assert run_cli("predict", str(out), str(tmp_path / "d.png"), "--device", dev, check=True).stdout
    r = run_cli("attack", str(cpu_run), "--attack", "pgd", "--limit", "100", "--device", dev, "--json",
                "--save-examples", str(tmp_path / "adv"), check=True)
    rows = json.loads(r.stdout)["rows"]
    assert rows[0]["adv_accuracy"] <= rows[0]["clean_accuracy"] and (tmp_path / "adv" / "grid.png").is_file()
    r = run_cli("noise", "eval", str(cpu_run), "--sigma", "0", "0.5", "--limit", "200", "--json", "--device", dev,
                check=True)
    rows = json.loads(r.stdout)["rows"]
    assert abs(rows[0]["accuracy_mean"] - json.loads(run_cli("eval", str(cpu_run), "--limit", "200", "--json",
                                                             check=True).stdout)["test_accuracy"]) <= 2 / 200
    run = lenetlab.load_run(cpu_run, device=dev)
    assert devices.of(run.model).type == dev
    adv = lenetlab.attack(run, x[:64], y[:64], "pgd", eps=0.1)
    assert adv.x_adv.device.type == "cpu" and np.isfinite(adv.adv_accuracy)
    noisy = lenetlab.noisy_accuracy(run, x[:64], y[:64], 0.1, draws=2)
    assert 0.0 <= noisy["mean"] <= 1.0
