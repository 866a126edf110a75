"""The Python API (docs/api.md): the tutorial runs, each function works and refuses bad input, fit callbacks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lenetlab
from lenetlab.errors import LenetlabError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": "lenet5", "data": {"train_subset": 1500, "test_subset": 300, "val_size": 300},
        "train": {"epochs": 1, "batch_size": 100}}


# the callback tests count calls, not accuracy: two steps on 200 images
CALLBACK_RUN = {"model": "lenet5", "data": {"train_subset": 200, "test_subset": 100, "val_size": 100},
                "train": {"epochs": 1, "batch_size": 100}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api") / "run"
    lenetlab.fit(TINY, out=out, log=None, progress=False)
    return out


@pytest.fixture(scope="module")
def run(run_dir):
    return lenetlab.load_run(run_dir)


@pytest.fixture(scope="module")
def mnist_test():
    from lenetlab.data import load_raw

    _, _, x, y = load_raw("mnist")
    return x[:300], y[:300]


# --------------------------------------------------------------------------- the docs


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


@pytest.mark.slow   # trains two models and runs every API function on them; the fast tests below call each
def test_tutorial_code_blocks_run_in_order(tmp_path, monkeypatch, capsys):   # of those functions on a tiny run
    blocks = _python_blocks(ROOT / "docs" / "tutorial.md")
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__tutorial__"}
    for i, code in enumerate(blocks, 1):
        exec(compile(code, f"docs/tutorial.md, python block {i}", "exec"), scope)
    out = capsys.readouterr().out
    assert "test accuracy" in out and "SDC rate" in out
    assert (tmp_path / "runs" / "tutorial" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "tutorial_export" / "model_int8.flat").is_file()


def test_api_doc_covers_every_function():
    text = (ROOT / "docs" / "api.md").read_text()
    for name in ("create_model", "fit", "load_run", "evaluate", "attack", "noisy_accuracy", "fault_campaign",
                 "export"):
        assert f"\n## {name}\n" in text and f"lenetlab.{name}(" in text, name
    assert "docs/api.md" in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- the package


def test_top_level_names_are_lazy_and_resolve():
    code = ("import sys, lenetlab\n"
            "print(sorted(m for m in sys.modules if m.startswith('lenetlab')))\n"
            "f = lenetlab.fit\n"
            "print('lenetlab.api' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split("\n")[:2] == ["['lenetlab']", "True"]
    from lenetlab import api

    for name in lenetlab.__all__:
        assert getattr(lenetlab, name) is not None
        assert name in dir(lenetlab)
    assert lenetlab.fit is api.fit and lenetlab.attack is api.attack
    with pytest.raises(AttributeError):
        lenetlab.no_such_function  # noqa: B018


# --------------------------------------------------------------------------- fit, load_run


def test_fit_config_forms_and_errors(tmp_path):
    from lenetlab.api import _run_config
    from lenetlab.config import RunConfig

    cfg = _run_config({"model": {"name": "lenet5", "activation": "tanh"}, "preset": "paper",
                       "train": {"epochs": 1}})
    assert cfg.preset == "paper" and cfg.model.options["activation"] == "tanh" and cfg.train.epochs == 1
    assert _run_config("fast").preset == "fast" and _run_config(None).model.name == "lenet5"
    assert _run_config(cfg) is cfg and isinstance(_run_config({"model": "lenet5_classic"}), RunConfig)
    for bad in ("no_such_preset", {"model": "no_such_model"}, {"train": {"epochs": "two"}}, {"trian": {}}, 3,
                {"preset": 1}):
        with pytest.raises(LenetlabError):
            lenetlab.fit(bad, out=tmp_path / "x", log=None, progress=False)
    assert not (tmp_path / "x").exists()


def test_load_run(run, run_dir, tmp_path):
    assert run.path == run_dir and run.config.model.name == "lenet5" and not run.model.training
    assert run.summary["epochs"] == 1 and run.data is run.config.data
    assert repr(run).startswith(f"Run({str(run_dir)!r}, model='lenet5', test_accuracy=")
    with pytest.raises(LenetlabError, match="no such run directory"):
        lenetlab.load_run(tmp_path / "missing")
    with pytest.raises(LenetlabError, match="not a finished run"):
        lenetlab.load_run(tmp_path)
    with pytest.raises(LenetlabError, match="path"):
        lenetlab.load_run(42)


# --------------------------------------------------------------------------- callbacks


class Recorder:
    def __init__(self):
        self.rows, self.ends = [], []

    def on_epoch_end(self, metrics):
        self.rows.append(metrics)
        metrics["train_loss"] = -1.0          # a callback's changes stay its own
        metrics["grad_norms"].clear()

    def on_train_end(self, summary):
        self.ends.append(summary)


def test_callbacks_see_every_epoch_and_change_nothing(tmp_path):
    cfg = {**CALLBACK_RUN, "train": {"epochs": 2, "batch_size": 100}}
    plain = lenetlab.fit(cfg, out=tmp_path / "plain", log=None, progress=False)
    rec, seen = Recorder(), []
    watched = lenetlab.fit(cfg, out=tmp_path / "watched", log=None, progress=False, callbacks=[rec, seen.append])
    a, b = plain["_model"].state_dict(), watched["_model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # nothing of the callbacks is saved: the same model bytes, and the same checkpoint tensors (its metadata
    # carries the last metrics row for resume, wall times included, so its bytes differ between any two runs)
    assert (tmp_path / "plain" / "model.safetensors").read_bytes() == \
        (tmp_path / "watched" / "model.safetensors").read_bytes()
    ca, cb = (load_file(tmp_path / d / "checkpoint.safetensors") for d in ("plain", "watched"))
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    rows = [json.loads(line) for line in (tmp_path / "watched" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in seen] == [1, 2] == [r["epoch"] for r in rec.rows]
    for row, got in zip(rows, seen):
        assert got == row and got["train_loss"] > 0 and got["grad_norms"]   # unaffected by Recorder's edits
    assert {"epoch", "lr", "train_loss", "train_accuracy", "val_accuracy", "test_accuracy",
            "epoch_seconds", "wall_seconds"} <= set(seen[0])
    assert len(rec.ends) == 1 and rec.ends[0]["test_accuracy"] == watched["test_accuracy"]


def test_a_single_callback_and_bad_callbacks(tmp_path):
    seen = []
    lenetlab.fit(CALLBACK_RUN, log=None, progress=False, callbacks=seen.append)
    assert len(seen) == 1
    for bad in ([42], ["not callable"], [object()], 42):
        with pytest.raises(LenetlabError, match="callback"):
            lenetlab.fit(CALLBACK_RUN, out=tmp_path / "bad", log=None, progress=False, callbacks=bad)
    assert not (tmp_path / "bad").exists()


def test_callbacks_on_the_trainer_directly():
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    seen = []
    cfg = resolve("fast", overrides={k: v for k, v in CALLBACK_RUN.items() if k != "model"})
    fit(cfg, log=None, progress=False, callbacks=[lambda m: seen.append(m["epoch"])])
    assert seen == [1]


# --------------------------------------------------------------------------- evaluate


def test_evaluate_pixels_in_any_form(run, mnist_test):
    x, y = mnist_test
    ref = lenetlab.evaluate(run, x, y)
    assert set(ref) == {"accuracy", "loss", "n"} and ref["n"] == 300 and 0.5 < ref["accuracy"] <= 1
    assert ref["accuracy"] == pytest.approx(run.summary["test_accuracy"])   # the same 300 test images
    x01 = torch.from_numpy(x).float() / 255
    for xs, ys in ((torch.from_numpy(x), torch.from_numpy(y)), (x01, y), (x01.unsqueeze(1).numpy(), y.tolist()),
                   (x[:, None], y)):
        got = lenetlab.evaluate(run, xs, ys, batch_size=64)
        assert got["accuracy"] == ref["accuracy"] and got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    # the run's normalisation is standard: the bare module with the same mean/std gives the same numbers
    assert run.data.normalize == "standard" and run.data.pad == 0
    bare = lenetlab.evaluate(run.model, x, y, mean=run.data.mean, std=run.data.std)
    assert bare["accuracy"] == ref["accuracy"]
    assert lenetlab.evaluate(run.model, x, y, data=run.data)["accuracy"] == ref["accuracy"]
    assert lenetlab.evaluate(run.model, x, y)["accuracy"] != ref["accuracy"]   # no normalisation: not the same


def test_evaluate_rejects_bad_input(run, mnist_test):
    x, y = mnist_test
    x01 = torch.from_numpy(x).float() / 255
    cases = [
        ((run, x01[0], y), "shape"),
        ((run, x01.unsqueeze(1).repeat(1, 3, 1, 1), y), "shape"),
        ((run, x01 * 2, y), r"\[0, 1\]"),
        ((run, x01 - 0.5, y), r"\[0, 1\]"),
        ((run, torch.full_like(x01, float("nan")), y), "NaN"),
        ((run, x.astype(np.int32), y), "uint8"),
        ((run, x01[:0], y[:0]), "no images"),
        ((run, "images", y), "tensor"),
        ((run, x, y[:-1]), "labels"),
        ((run, x, y.astype(np.float32)), "integers"),
        ((run, x, -np.ones(len(y), np.int64)), ">= 0"),
        ((run, x, np.full_like(y, 10)), "out of range"),
        (("model", x, y), "nn.Module"),
    ]
    for args, msg in cases:
        with pytest.raises(LenetlabError, match=msg):
            lenetlab.evaluate(*args)
    with pytest.raises(LenetlabError, match="not both"):
        lenetlab.evaluate(run, x, y, mean=0.1, data=run.data)
    with pytest.raises(LenetlabError, match="std"):
        lenetlab.evaluate(run.model, x, y, mean=0.1, std=0.0)
    with pytest.raises(LenetlabError, match="mean"):
        lenetlab.evaluate(run.model, x, y, mean=float("nan"))
    with pytest.raises(LenetlabError, match="batch_size"):
        lenetlab.evaluate(run, x, y, batch_size=0)


# --------------------------------------------------------------------------- attack


class TinyNet(nn.Module):
    """Not a registered model: a classifier of its own, defined here."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=2)
        self.fc = nn.Linear(4 * 12 * 12, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Standardise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


@pytest.fixture(scope="module")
def tiny_net():
    from lenetlab.data import load_raw

    tx, ty = load_raw("mnist")[:2]
    x = (torch.from_numpy(tx[:2000]).float() / 255).unsqueeze(1)
    y = torch.from_numpy(ty[:2000]).long()
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        for i in range(0, 2000, 100):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i:i + 100]), y[i:i + 100]).backward()
            opt.step()
    return net.eval()


def test_attack_on_a_plain_module(tiny_net, mnist_test):
    x, y = mnist_test
    before = lenetlab.evaluate(tiny_net, x, y)["accuracy"]
    assert before > 0.7
    out = lenetlab.attack(tiny_net, x, y, "pgd", eps=0.15, steps=10)
    assert isinstance(out, lenetlab.AttackOutcome)
    assert out.clean_accuracy == pytest.approx(before) and out.adv_accuracy < out.clean_accuracy - 0.2
    x01 = torch.from_numpy(x).float().unsqueeze(1) / 255
    assert out.x_adv.shape == x01.shape and out.x_adv.dtype == torch.float32
    assert float((out.x_adv - x01).abs().max()) <= 0.15 + 1e-6
    assert float(out.x_adv.min()) >= 0 and float(out.x_adv.max()) <= 1
    assert lenetlab.evaluate(tiny_net, out.x_adv, y)["accuracy"] == pytest.approx(out.adv_accuracy)
    assert out.options["steps"] == 10 and out.as_dict()["attack"] == "pgd" and "x_adv" not in out.as_dict()
    again = lenetlab.attack(tiny_net, x01, y, "pgd", eps=0.15, steps=10)   # seeded: the same images
    assert torch.equal(again.x_adv, out.x_adv)
    fgsm = lenetlab.attack(tiny_net, x, y, "fgsm", eps=0.15)
    assert fgsm.adv_accuracy < fgsm.clean_accuracy
    assert tiny_net.training is False


def test_attack_applies_mean_std_inside(tiny_net, mnist_test):
    """A net expecting standardised input + mean/std == the same net with the standardisation built in."""
    x, y = mnist_test
    m, s = 0.1307, 0.3081
    inner = TinyNet()
    inner.load_state_dict(tiny_net.state_dict())
    # the weights were learnt on [0, 1] pixels; fold the standardisation into a wrapper instead
    built_in = nn.Sequential(Standardise(m, s), inner).eval()
    a = lenetlab.attack(built_in, x, y, "pgd", eps=0.1, steps=3)
    b = lenetlab.attack(inner.eval(), x, y, "pgd", eps=0.1, steps=3, mean=m, std=s)
    assert torch.allclose(a.x_adv, b.x_adv, atol=1e-6) and a.adv_accuracy == b.adv_accuracy


def test_attack_transfer_and_runs(run, tiny_net, mnist_test):
    x, y = mnist_test
    out = lenetlab.attack(run, x[:100], y[:100], "bb-fgsm", eps=0.2, substitute=tiny_net)
    assert out.n == 100 and out.adv_accuracy <= out.clean_accuracy
    white = lenetlab.attack(run, x[:100], y[:100], "pgd", eps=0.1, steps=3)
    assert white.clean_accuracy == pytest.approx(lenetlab.evaluate(run, x[:100], y[:100])["accuracy"])


def test_attack_rejects_bad_input(run, tiny_net, mnist_test):
    x, y = mnist_test
    cases = [
        (dict(name="no_such_attack"), "unknown attack"),
        (dict(name=3), "string"),
        (dict(eps=1.5), "eps"),
        (dict(eps=-0.1), "eps"),
        (dict(eps="0.1"), "eps"),
        (dict(steps=0.5), "steps"),
        (dict(stepz=3), "no option 'stepz'"),
        (dict(name="bb-pgd"), "substitute"),
        (dict(grad_source="magic"), "gradient source"),
        (dict(batch_size=0), "batch_size"),
        (dict(substitute="model"), "substitute must be"),
    ]
    for kw, msg in cases:
        kw = {"name": "pgd", **kw}
        with pytest.raises(LenetlabError, match=msg):
            lenetlab.attack(tiny_net, x[:10], y[:10], **kw)
    with pytest.raises(LenetlabError, match=r"\[0, 1\]"):
        lenetlab.attack(tiny_net, torch.from_numpy(x).float(), y, "fgsm")
    with pytest.raises(LenetlabError, match="labels"):
        lenetlab.attack(run, x, y[:5], "fgsm")


# --------------------------------------------------------------------------- noise


def test_noisy_accuracy(run, mnist_test):
    x, y = mnist_test
    clean = lenetlab.evaluate(run, x, y)["accuracy"]
    quiet = lenetlab.noisy_accuracy(run, x, y, sigma=0.0, draws=2)
    assert quiet["mean"] == pytest.approx(clean) and quiet["std"] == 0 and len(quiet["per_image"]) == 300
    loud = lenetlab.noisy_accuracy(run, x, y, sigma=3.0, draws=3, sites=["conv", "linear"], seed=1)
    assert loud["mean"] < clean - 0.2 and len(loud["per_draw"]) == 3
    assert lenetlab.noisy_accuracy(run, x, y, sigma=3.0, draws=3, sites=["conv", "linear"], seed=1) == loud
    bare = lenetlab.noisy_accuracy(run.model, x, y, sigma=0.0, draws=1, mean=run.data.mean, std=run.data.std)
    assert bare["mean"] == pytest.approx(clean)
    for kw, msg in ((dict(sigma=-1), "sigma"), (dict(sigma=float("inf")), "sigma"), (dict(draws=0), "draws"),
                    (dict(sites=["conv", "synapse"]), "unknown noise site 'synapse'"), (dict(sites=[]), "no noise"),
                    (dict(weight_sigma=-0.1), "weight_sigma")):
        with pytest.raises(LenetlabError, match=msg):
            lenetlab.noisy_accuracy(run, x, y, **{"sigma": 0.1, **kw})
    with pytest.raises(LenetlabError, match="shape"):
        lenetlab.noisy_accuracy(run, x[0], y, sigma=0.1)


# --------------------------------------------------------------------------- faults, export


def test_fault_campaign(run, run_dir, mnist_test, tmp_path):
    x, _ = mnist_test
    kw = dict(images=10, bits=[7], samples=4, calibration=50)     # few calibration images: each call quantises
    a = lenetlab.fault_campaign(run, "weights", **kw)
    assert a["target"] == "weights" and a["images"] == 10 and a["faults"] == 4 * len(a["layers"])
    assert 0 <= a["rate"] <= 1 and a["ci95"][0] <= a["rate"] <= a["ci95"][1]
    assert lenetlab.fault_campaign(run_dir, "weights", **kw) == a        # a run directory: the same
    assert lenetlab.fault_campaign(run, "weights", **{**kw, "images": x[:10]}) == a   # the same first 10 images
    acc = lenetlab.fault_campaign(run, "accumulators", images=5, bits="30-31", samples=2, layers=[4],
                                  calibration=50)
    assert [la["stage"] for la in acc["layers"]] == [4] and {b["bit"] for b in acc["layers"][0]["bits"]} == {30, 31}
    # a quantised run directory and its .flat file
    from lenetlab.quant.run import quantize_run

    quantize_run(run_dir, tmp_path / "q", calibration=50, limit=50)
    q = lenetlab.fault_campaign(tmp_path / "q", "weights", images=10, bits=[7], samples=4)
    assert q == a
    assert lenetlab.fault_campaign(tmp_path / "q" / "model_int8.flat", "weights", images=10, bits=[7], samples=4) == a
    cases = [
        (dict(target="synapses"), "unknown fault target"),
        (dict(bits=[8]), "outside 0..7"),
        (dict(bits="x"), "--bits"),
        (dict(bits=[True]), "integers"),
        (dict(samples=0), "samples"),
        (dict(images=0), "images"),
        (dict(exhaustive=True), "layers"),
        (dict(layers=[9]), "out of range"),
        (dict(layers=["conv1"]), "integers"),
        (dict(fault_model="gremlin"), "gremlin"),
        (dict(engine="quantum"), "engine"),
        (dict(images=np.zeros((3, 32, 32), np.uint8)), "28x28"),
        (dict(calibration=0), "calibration"),
    ]
    for over, msg in cases:
        args = {"target": "weights", **kw, **over}
        with pytest.raises(LenetlabError, match=msg):
            lenetlab.fault_campaign(run, **args)
    with pytest.raises(LenetlabError):
        lenetlab.fault_campaign(tmp_path / "nothing", "weights")
    with pytest.raises(LenetlabError, match="takes a Run"):
        lenetlab.fault_campaign(nn.Linear(2, 2), "weights")


def test_export(run, run_dir, tmp_path):
    paths = lenetlab.export(run, "flat", out=tmp_path / "f32")
    assert [p.name for p in paths] == ["model.flat", "export.json"] and all(p.is_file() for p in paths)
    from lenetlab.deploy import flat

    assert flat.load(str(paths[0])).dtype == "float32"
    paths = lenetlab.export(run_dir, "flat", int8=True, out=tmp_path / "i8")
    assert flat.load(str(paths[0])).dtype == "int8"
    with pytest.raises(LenetlabError, match="unknown exporter"):
        lenetlab.export(run, "tiff", out=tmp_path / "x")
    with pytest.raises(LenetlabError, match="no such run directory"):
        lenetlab.export(tmp_path / "missing", "flat")
    with pytest.raises(LenetlabError, match="Run or a run directory"):
        lenetlab.export(run.model, "flat")
