import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lenetlab.config import TrainConfig
from lenetlab.registry import get, names
from lenetlab.train import fit
from lenetlab.train.presets import resolve

TINY = {"data": {"train_subset": 2000, "test_subset": 500, "val_size": 500},
        "train": {"epochs": 2, "batch_size": 100}}
# The determinism tests compare runs bit for bit, which any real images show: a few steps on a few of them.
BITS = {"data": {"train_subset": 500, "test_subset": 200, "val_size": 100}, "train": {"epochs": 2, "batch_size": 100}}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """(run dir, summary) of one uninterrupted BITS run, the reference of the determinism tests."""
    out = tmp_path_factory.mktemp("clean") / "run"
    return out, fit(resolve("fast", overrides=BITS), out=out, log=None, progress=False)


def test_onecycle_shape():
    cfg = TrainConfig(lr=1.0, div_factor=10.0, final_div_factor=100.0, warmup_frac=0.3)
    f = get("schedule", "onecycle")(cfg, 100, 10)
    assert f(0) == pytest.approx(0.1)
    assert max(f(s) for s in range(100)) == pytest.approx(1.0, rel=1e-3)
    assert f(99) == pytest.approx(0.001, rel=1e-6)
    assert all(f(s) >= f(s + 1) for s in range(30, 99))


def test_step_and_cosine():
    cfg = TrainConfig(lr=1.0, step_epochs=2, gamma=0.1)
    f = get("schedule", "step")(cfg, 60, 10)
    assert f(0) == 1.0 and f(19) == 1.0 and f(20) == pytest.approx(0.1) and f(45) == pytest.approx(0.01)
    g = get("schedule", "cosine")(cfg, 60, 10)
    assert g(0) == 1.0 and g(30) == pytest.approx(0.5) and g(60) == pytest.approx(0.0, abs=1e-12)


# adam and adamw in the slow tier: adam (FusedAdam) is the preset's optimiser, which trains in every other
# training test (test_learns_real_mnist's run...), and tests/test_optim.py matches FusedAdam's adamw step to
# torch.optim.AdamW. sgd, a separate code path, trains here in the fast tier.
@pytest.mark.parametrize("opt", [pytest.param("adam", marks=pytest.mark.slow),
                                 pytest.param("adamw", marks=pytest.mark.slow), "sgd"])
def test_optimizers_train(opt):
    cfg = resolve("fast", overrides={**TINY, "train": {**TINY["train"], "optimizer": opt, "epochs": 3,
                                                      "lr": 0.05 if opt == "sgd" else 4e-3}})
    s = fit(cfg, log=None, progress=False)
    assert s["test_accuracy"] > 0.5


def test_deterministic(tmp_path, clean_run):
    a_dir, a = clean_run
    b = fit(resolve("fast", overrides=BITS), out=tmp_path / "b", log=None, progress=False)
    assert a["test_accuracy"] == b["test_accuracy"]
    wa, wb = load_file(str(a_dir / "model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_learns_real_mnist(small_run):
    """A short run on real MNIST images gives a real classifier (not chance): the session's shared small run
    (conftest.SMALL: 2 epochs on 6k images, tested on 2k), not a run of its own."""
    s = json.loads((small_run / "summary.json").read_text())
    assert s["epochs"] == 2 and s["test_accuracy"] > 0.93


def test_run_dir_files(tmp_path, small_run):
    for f in ("config.json", "metrics.jsonl", "model.safetensors", "summary.json", "checkpoint.safetensors"):
        assert (small_run / f).is_file()
    rows = [json.loads(x) for x in (small_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all({"train_loss", "val_accuracy", "test_accuracy", "lr"} <= set(r) for r in rows)
    assert not list(small_run.glob(".*tmp"))


def test_refuses_to_overwrite(tmp_path, small_run):
    from lenetlab.errors import LenetlabError

    with pytest.raises(LenetlabError, match="already exists"):
        fit(resolve("fast", overrides=TINY), out=small_run, log=None)


def _train_cmd(out):
    return [sys.executable, "-m", "lenetlab", "train", "--out", str(out), "-q",
            "--set", "data.train_subset=4000", "--set", "data.test_subset=500",
            "--set", "data.val_size=500", "--epochs", "4", "--set", "train.batch_size=64"]


@pytest.mark.slow   # real-process SIGKILL; in-process kill/resume per plugin: test_trainer_plugins.py
def test_resume_after_kill_matches_uninterrupted(tmp_path):
    """SIGKILL a real training process after its first checkpoint, resume, compare weights."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_train_cmd(full), check=True, capture_output=True, timeout=3600)   # hang guard only

    p = subprocess.Popen(_train_cmd(cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = cut / "metrics.jsonl"
    while p.poll() is None:          # no clock: on a busy machine the first epoch just takes longer
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    assert p.poll() is None, "run finished before it could be interrupted"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (cut / "model.safetensors").exists()       # it really was cut short
    done = json.loads(metrics.read_text().splitlines()[-1])["epoch"]
    from safetensors import safe_open

    with safe_open(str(cut / "checkpoint.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["epoch"] == done   # last metrics line has its checkpoint
    assert done < 4

    r = subprocess.run([sys.executable, "-m", "lenetlab", "train", "--resume", "--out", str(cut)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming {cut} after epoch {done}/4" in r.stdout
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()]
    assert rows == [1, 2, 3, 4]


def test_registries_nonempty():
    assert {"onecycle", "cosine", "step", "constant"} <= set(names("schedule"))
    assert {"adam", "adamw", "sgd"} <= set(names("optimizer"))


def test_resume_before_first_epoch_starts_over(tmp_path, clean_run):
    """A run killed before any checkpoint resumes from scratch, same result as a clean run."""
    cfg = resolve("fast", overrides=BITS)
    clean = clean_run[1]
    d = tmp_path / "early"
    d.mkdir()
    from lenetlab.rundir import save_config

    save_config(d, cfg)  # what a run killed during epoch 1 leaves behind
    msgs = []
    r = fit(cfg, out=d, resume=True, log=msgs.append, progress=False)
    assert "starting from epoch 1" in msgs[0]
    assert r["test_accuracy"] == clean["test_accuracy"]


def test_truncate_metrics_skips_half_written_line(tmp_path):
    """A kill in the middle of appending a metrics line must not break --resume."""
    from lenetlab.rundir import truncate_metrics

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "tra')
    truncate_metrics(tmp_path, 1)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_metrics_log_per_layer_gradient_norms(small_run):
    rows = [json.loads(line) for line in (small_run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        g = row["grad_norms"]
        assert list(g) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
        assert all(0 < v < 1e3 for v in g.values())


def test_gradient_norms_match_autograd():
    from lenetlab.models import create_model
    from lenetlab.train.diagnostics import GradNorms

    torch.manual_seed(0)
    m = create_model("lenet_deep", depth=5, activation="abs")
    m(torch.randn(4, 1, 28, 28)).square().mean().backward()
    got = GradNorms(m).step_norms()
    want = [torch.cat([m.get_submodule(n).weight.grad.flatten(), m.get_submodule(n).bias.grad.flatten()]).norm()
            for n in m.weight_layers()]
    assert torch.allclose(got.float(), torch.stack(want), rtol=1e-5)


@pytest.mark.parametrize("depth", [3, 21])
def test_deep_family_rejects_bad_depth(depth):
    from lenetlab.errors import LenetlabError
    from lenetlab.models import create_model

    with pytest.raises(LenetlabError, match="depth"):
        create_model("lenet_deep", depth=depth)


class _Cut(Exception):
    pass


def _cut_after_first_epoch(line: str) -> None:
    if line.startswith("epoch  1/"):
        raise _Cut   # after epoch 1's checkpoint, metrics and timings lines were written, like a kill


def test_clock_apart_keeps_a_runs_files_byte_identical(tmp_path):
    """Under ``clock_apart`` (what ``lenetlab reproduce`` trains under) the epoch times go to timings.jsonl, so a
    run and a run cut after epoch 1 then resumed write the same bytes; outside it the run format keeps them."""
    from lenetlab.train.trainer import CLOCK_KEYS, clock_apart

    cfg = resolve("fast", overrides=BITS)
    with clock_apart():
        a = fit(cfg, out=tmp_path / "a", log=None, progress=False)
        with pytest.raises(_Cut):
            fit(cfg, out=tmp_path / "b", log=_cut_after_first_epoch, progress=False)
        assert [json.loads(x)["epoch"] for x in (tmp_path / "b" / "timings.jsonl").open()] == [1]
        b = fit(cfg, out=tmp_path / "b", resume=True, log=None, progress=False)
    assert all(isinstance(r["wall_seconds"], float) for r in (a, b))   # the returned summaries keep a reading
    for f in ("metrics.jsonl", "checkpoint.safetensors", "model.safetensors", "config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("a", "b"))
    assert (sa.pop("resumed_from_epoch"), sb.pop("resumed_from_epoch")) == (None, 1) and sa == sb
    text = (tmp_path / "a" / "metrics.jsonl").read_text() + (tmp_path / "a" / "summary.json").read_text()
    assert not any(f'"{k}"' in text for k in CLOCK_KEYS)
    for run in ("a", "b"):
        clock = [json.loads(x) for x in (tmp_path / run / "timings.jsonl").open()]
        assert [r.get("epoch") for r in clock] == [1, 2, None]
        assert all(r["epoch_seconds"] >= 0 and r["unix_time"] > 0 for r in clock[:2])
        assert "wall_seconds" in clock[2]["run"]
    # the plain run format (lenetlab train) is unchanged: times in metrics.jsonl and summary.json, no timings file
    fit(cfg, out=tmp_path / "plain", log=None, progress=False)
    assert all(k in json.loads((tmp_path / "plain" / "metrics.jsonl").open().readline())
               for k in ("epoch_seconds", "wall_seconds", "unix_time"))
    assert "wall_seconds" in json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert not (tmp_path / "plain" / "timings.jsonl").exists()


def test_bf16_precision_autocasts_the_training_forward_only(tmp_path):
    """train.precision=bf16: the convolutions of the training forward run in bfloat16, the evaluation and the
    weights stay float32, the run is deterministic and its config records the precision; fp32 runs are not
    touched (their convolutions stay float32)."""
    from lenetlab.train.plugins import TrainerPlugin

    class ConvDtypes(TrainerPlugin):
        """Records the dtype of conv1's output at every forward, with the model's mode."""

        name = "conv-dtypes"

        def __init__(self):
            self.seen = []

        def setup(self, ctx):
            ctx.model.conv1.register_forward_hook(
                lambda m, a, out: self.seen.append((m.training, out.dtype)))
            return []

    over = {**BITS, "train": {**BITS["train"], "precision": "bf16", "epochs": 1}}
    runs = []
    for precision in ("bf16", "bf16", "fp32"):
        probe = ConvDtypes()
        o = {**over, "train": {**over["train"], "precision": precision}}
        s = fit(resolve("fast", overrides=o), out=tmp_path / f"{precision}{len(runs)}", plugins=[probe], log=None,
                progress=False)
        runs.append((precision, probe.seen, s))
    for precision, seen, s in runs:
        train_dtypes = {d for training, d in seen if training}
        eval_dtypes = {d for training, d in seen if not training}
        assert train_dtypes == ({torch.bfloat16} if precision == "bf16" else {torch.float32})
        assert eval_dtypes == {torch.float32}
        assert all(p.dtype == torch.float32 for p in s["_model"].parameters())
    assert json.loads((tmp_path / "bf160" / "config.json").read_text())["train"]["precision"] == "bf16"
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("bf160", "bf161"))
    assert all(torch.equal(a[k], b[k]) for k in a)                    # seeded: bit for bit again
    c = load_file(str(tmp_path / "fp322" / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)                # and not the fp32 run


@pytest.mark.parametrize("over, message", [
    ({"train": {"precision": "fp16"}}, "train.precision must be one of fp32, bf16"),
    ({"train": {"precision": "bf16", "zo": {"method": "elasticzo"}}}, "use precision fp32"),
])
def test_bad_precision_is_refused_before_anything_is_written(tmp_path, over, message):
    from lenetlab.errors import LenetlabError

    o = {**BITS, "train": {**BITS["train"], **over["train"]}}
    with pytest.raises(LenetlabError, match=message):
        fit(resolve("fast", overrides=o), out=tmp_path / "run", log=None, progress=False)
    assert not (tmp_path / "run").exists()
