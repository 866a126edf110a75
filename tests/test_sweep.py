"""Sweeps: file validation, expansion, the JSONL journal, resume after SIGTERM/SIGKILL, Ray = local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from lenetlab.errors import LenetlabError
from lenetlab.sweep import load, parse, read_trials, run_sweep
from lenetlab.sweep.journal import Journal

# real training trials: 500 MNIST images, one epoch, judged on 200 test images (~0.5 s each)
TRAIN_TOML = """
[sweep]
name = "tiny-train"
[base]
model = {{ name = "lenet5" }}
data = {{ train_subset = 500, test_subset = 200, val_size = 0 }}
train = {{ epochs = 1, batch_size = 64, grad_norms = false, eval_test_every_epoch = false }}
[grid]
"model.activation" = ["relu", "abs"]
"train.seed" = {seeds}
"""

TOY_TOML = """
[sweep]
kind = "function"
function = "lenetlab.sweep.trials:toy"
metric = "value"
goal = "min"
[base]
sleep = {sleep}
[grid]
x = [-1.0, 0.0, 0.5, 1.0]
y = [0.0, 1.0, 2.0]
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


# subprocess timeouts: HANG_S only keeps a hung process from hanging the suite (not a speed bound)
HANG_S = 600


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    """Wait until the sweep has journalled ``n`` trials; fail if it ends before that. No clock: a busy
    machine only makes this wait longer."""
    while lines(path) < n:
        assert proc.poll() is None, f"sweep ended early: {proc.communicate()}"
        time.sleep(0.05)


def start_sweep(toml: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lenetlab", "sweep", str(toml), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def assert_each_once(out: Path, expected: int) -> list[dict]:
    rows = read_trials(out / "trials.jsonl")
    ids = [r["trial"] for r in rows]
    assert len(ids) == len(set(ids)) == expected, ids
    return rows


@pytest.mark.parametrize("text, message", [
    ("[grid\nx=1", "invalid TOML"),
    ("[sweeps]\n[grid]\nx=[1]", "unknown section 'sweeps'"),
    ("[sweep]\nkindd='train'\n[grid]\n'train.lr'=[1]", "unknown key 'kindd'"),
    ("[sweep]\nkind='bogus'\n[grid]\nx=[1]", "unknown sweep kind 'bogus'"),
    ("[sweep]\nkind='experiment'\n[grid]\nx=[1]", "experiment = ... goes with"),
    ("[grid]\n'train.lrr'=[0.1]", "unknown config key 'train.lrr'"),
    ("[grid]\n'train.epochs'=['two']", "'train.epochs' must be int"),
    ("[grid]\n'model.activation'=['nope']", "nope"),
    ("[grid]\nlr=[0.1]", "dotted config keys"),
    ("[grid]\n'train.lr'=[]", "non-empty list"),
    ("[sweep]\nname='x'", "nothing to sweep"),
    ("[random]\nn=2\n'train.lr'={gauss=[0,1]}", "unknown distribution 'gauss'"),
    ("[random]\nn=2\n'train.lr'={log_uniform=[0,1]}", "positive bounds"),
    ("[random]\n'train.lr'={uniform=[0,1]}", "needs n"),
    ("[sweep]\nmetric='loss'\n[grid]\n'train.lr'=[0.1]", "metric 'loss'"),
    ("[sweep]\nkind='function'\nfunction='lenetlab.nope:f'\n[grid]\nx=[1]", "cannot be imported"),
])
def test_bad_sweep_files_are_clean_errors(tmp_path, text, message):
    with pytest.raises(LenetlabError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load(write(tmp_path, text))


def test_bad_sweep_file_via_cli_is_one_line_and_writes_nothing(tmp_path, capsys):
    from lenetlab.cli import main

    assert main(["sweep", str(write(tmp_path, "[grid]\n'train.lrr'=[0.1]")), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.lrr" in err and not (tmp_path / "o").exists()
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert main(["sweep", str(write(tmp_path, "[grid]\n'train.lr'=[0.1]")), "--backend", "slurm",
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown backend 'slurm'; choose from: local, ray" in capsys.readouterr().err


def test_grid_and_random_expansion_is_deterministic(tmp_path):
    text = """
[sweep]
kind = "function"
function = "lenetlab.sweep.trials:toy"
[grid]
seed = [0, 1]
[random]
n = 5
seed = 3
x = { uniform = [-2, 2] }
y = { log_uniform = [0.01, 10] }
sleep = { choice = [0.0] }
"""
    a, b = load(write(tmp_path, text)).trials(), load(write(tmp_path, text, "t.toml")).trials()
    assert [t.id for t in a] == [t.id for t in b] and len({t.id for t in a}) == 10
    assert all(-2 <= t.params["x"] <= 2 and 0.01 <= t.params["y"] <= 10 for t in a)
    assert {t.seed for t in a} == {0, 1}
    # nested TOML tables and quoted dotted keys are the same sweep key
    nested = parse({"grid": {"train": {"lr": [0.1, 0.2]}}}).trials()
    quoted = parse({"grid": {"train.lr": [0.1, 0.2]}}).trials()
    assert [t.id for t in nested] == [t.id for t in quoted]
    assert [t.payload["config"]["train"]["lr"] for t in nested] == [0.1, 0.2]


def test_journal_drops_a_cut_line_and_appends_cleanly(tmp_path):
    path = tmp_path / "trials.jsonl"
    path.write_text('{"trial": "a", "metrics": {}}\n{"trial": "b", "metr')
    j = Journal(path)
    assert "a" in j and "b" not in j
    with pytest.raises(LenetlabError, match="another sweep"):
        Journal(path)
    j.append({"trial": "b", "metrics": {"v": 1}})
    j.close()
    assert [json.loads(s)["trial"] for s in path.read_text().splitlines()] == ["a", "b"]


@pytest.mark.slow   # a real process killed mid-sweep; the journal's cut-line handling is tested above
def test_resume_after_sigterm(tmp_path):
    toml, out = write(tmp_path, TOY_TOML.format(sleep=0.25)), tmp_path / "out"
    p = start_sweep(toml, out, "--workers", "1")
    wait_for_lines(out / "trials.jsonl", 3, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=HANG_S)
    assert p.returncode == 130 and "Run the same command again" in err
    done = lines(out / "trials.jsonl")
    assert 3 <= done < 12
    r = run_cli("sweep", str(toml), "--out", str(out), "--workers", "1", check=True, process=True)
    assert f"{done} already in" in r.stdout and f"{12 - done} ran" in r.stdout
    rows = assert_each_once(out, 12)
    assert min(rows, key=lambda r: r["metrics"]["value"])["params"] == {"x": 1.0, "y": 1.0}
    assert "best value" in r.stdout and "x=1.0 y=1.0" in r.stdout


@pytest.mark.slow   # real training in worker processes / a Ray cluster start
def test_resume_after_sigkill_with_real_training(tmp_path):
    toml, out = write(tmp_path, TRAIN_TOML.format(seeds="[0, 1, 2]")), tmp_path / "out"
    p = start_sweep(toml, out, "--workers", "2")
    try:
        wait_for_lines(out / "trials.jsonl", 2, p)
        p.kill()
        p.wait(timeout=HANG_S)
        # the pool workers die with their parent (PR_SET_PDEATHSIG), not finishing orphaned trials
        # wait for the whole process group to be gone (no clock: a worker that outlived its parent keeps
        # this waiting, and the CI job's own limit reports it)
        while True:
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    with open(out / "trials.jsonl", "a") as f:
        f.write('{"trial": "cut sh')       # as if the kill had landed mid-line
    done = len(read_trials(out / "trials.jsonl"))
    assert 2 <= done < 6
    r = run_cli("sweep", str(toml), "--out", str(out), "--workers", "2", check=True, process=True)
    assert f"{done} already in" in r.stdout
    rows = assert_each_once(out, 6)
    assert all(0 <= r["metrics"]["test_accuracy"] <= 1 and r["metrics"]["train_images"] == 500 for r in rows)
    assert {(r["params"]["model.activation"], r["seed"]) for r in rows} == {
        (a, s) for a in ("relu", "abs") for s in range(3)}


@pytest.mark.slow   # real training in worker processes / a Ray cluster start
def test_ray_backend_gives_the_local_backends_numbers(tmp_path):
    ray = pytest.importorskip("ray")
    sweep = load(write(tmp_path, TRAIN_TOML.format(seeds="[0, 1]")))
    local = run_sweep(sweep, tmp_path / "local", backend="local", workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(sweep, tmp_path / "ray", backend="ray")
    finally:
        ray.shutdown()
    assert local["ran"] == remote["ran"] == 4 and local["failed"] == remote["failed"] == 0
    by_id = {r["trial"]: r for r in local["rows"]}
    for r in remote["rows"]:
        assert r["backend"] == "ray" and by_id[r["trial"]]["backend"] == "local"
        assert r["metrics"] == by_id[r["trial"]]["metrics"]      # bit for bit: same seeds, one thread
    assert len({r["metrics"]["test_accuracy"] for r in remote["rows"]}) > 1


def test_a_failing_trial_is_reported_and_retried(tmp_path):
    toml = write(tmp_path, TOY_TOML.format(sleep=0) + '\n[random]\nn = 1\nz = { choice = ["bad"] }\n')
    sweep = load(toml)       # toy() has no parameter z: every trial raises TypeError
    r = run_sweep(sweep, tmp_path / "out", workers=1)
    assert r["failed"] == 12 and r["ran"] == 0 and not r["rows"]
    assert len(read_trials(tmp_path / "out" / "errors.jsonl")) == 12
    assert "TypeError" in read_trials(tmp_path / "out" / "errors.jsonl")[0]["error"]


def test_experiment_sweeps_need_an_experiment_that_takes_overrides(tmp_path, monkeypatch):
    from lenetlab import registry
    from lenetlab.experiments import Experiment

    text = '[sweep]\nkind = "experiment"\nexperiment = "{name}"\nmode = "tiny"\n[grid]\n{key} = [[0], [1]]\n'
    with pytest.raises(LenetlabError, match="unknown experiment 'nope'"):
        load(write(tmp_path, text.format(name="nope", key="seeds")))
    with pytest.raises(LenetlabError, match="unknown experiment setting 'seedz'"):
        load(write(tmp_path, text.format(name="abs", key="seedz")))
    assert len(load(write(tmp_path, text.format(name="abs", key="seeds"))).trials()) == 2
    # every paper experiment opts in now: a stand-in that does not
    closed = type("Closed", (OptInExperiment, Experiment), {"name": "closed", "accepts_options": False})
    registry.names("experiment")   # load the real ones first
    monkeypatch.setitem(registry._TABLES["experiment"], "closed", closed)
    with pytest.raises(LenetlabError, match="takes no setting overrides yet"):
        load(write(tmp_path, text.format(name="closed", key="seeds")))
    with pytest.raises(LenetlabError, match="mode is for experiment sweeps"):
        load(write(tmp_path, '[sweep]\nmode = "tiny"\n[grid]\n"train.lr" = [0.1]\n'))


class OptInExperiment:
    """A stand-in experiment that takes setting overrides (registered for one test only)."""

    name, paper, accepts_options = "opt-in", "none", True

    def settings(self, full, tiny=False):
        return {"seeds": [0], "scale": 1.0}

    def run(self, ctx):
        from lenetlab.experiments import Claim, Result

        s = ctx.resolve_settings(self.settings(ctx.full, ctx.tiny))
        return Result(self.name, self.paper, ctx.mode, {"settings": s},
                      claims=[Claim("big", "scale > 1", f"scale {s['scale']}", s["scale"] > 1)],
                      metrics={"twice": 2 * s["scale"]})


def test_experiment_sweep_passes_its_values_as_setting_overrides(tmp_path, monkeypatch):
    from lenetlab import registry
    from lenetlab.experiments import Experiment
    from lenetlab.sweep.trials import run_trial

    cls = type("OptIn", (OptInExperiment, Experiment), {})
    registry.names("experiment")   # load the real ones first
    monkeypatch.setitem(registry._TABLES["experiment"], "opt-in", cls)
    sweep = load(write(tmp_path, '[sweep]\nkind = "experiment"\nexperiment = "opt-in"\nmode = "tiny"\n'
                                 'metric = "metrics.twice"\n[grid]\nscale = [0.5, 2.0]\n'))
    trials = sweep.trials()
    assert [t.payload["options"] for t in trials] == [{"scale": 0.5}, {"scale": 2.0}]
    got = [run_trial({**t.payload, "out": str(tmp_path / t.id)})["metrics"] for t in trials]
    assert [g["claims"] for g in got] == [{"big": False}, {"big": True}]
    assert got[1]["claims_supported"] == 1 and got[0]["claims_refuted"] == 1
    assert [g["metrics.twice"] for g in got] == [1.0, 4.0]        # the experiment's headline numbers
    # metrics.NAME is for experiment sweeps; a bare "metrics." is not a name
    for kind, metric in (("experiment", "metrics."), ("train", "metrics.twice")):
        head = f'kind = "{kind}"\n' + ('experiment = "opt-in"\n' if kind == "experiment" else "")
        with pytest.raises(LenetlabError, match="is not reported by"):
            load(write(tmp_path, f'[sweep]\n{head}metric = "{metric}"\n[grid]\nscale = [1.0]\n'))
    hashes = {json.loads((tmp_path / t.id / "result.json").read_text())["config_hash"] for t in trials}
    assert len(hashes) == 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "examples" / "sweeps").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_example_sweep_file_is_valid(path):
    sweep = load(path)
    assert sweep.trials()
