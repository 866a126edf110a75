"""Experiment tracking (lenetlab.train.loggers): `--logger tensorboard|mlflow` on train and sweep, read back with
each library's own reader, and the fit callback protocol the loggers are built on."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from lenetlab.errors import LenetlabError
from lenetlab.train import loggers

TINY = ["--preset", "fast", "--epochs", "1", "--set", "data.train_subset=300", "--set", "data.test_subset=200",
        "--set", "data.val_size=100", "--set", "train.batch_size=100", "-q"]
HAVE = [n for n in ("tensorboard", "mlflow") if importlib.util.find_spec(n) is not None]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def _mlflow_runs(store: Path, experiment: str):
    c = loggers.client(store)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {store}"
    return c, c.search_runs([exp.experiment_id])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Path:
    """One tiny run trained with every logger installed here."""
    if not HAVE:
        pytest.skip("neither tensorboard nor mlflow is installed")
    out = tmp_path_factory.mktemp("loggers") / "run"
    run_cli("train", *TINY, "--logger", ",".join(HAVE), "--out", str(out), check=True)
    return out


def test_tensorboard_scalars_equal_the_metrics(tracked):
    pytest.importorskip("tensorboard")
    ea = _events(tracked / "tensorboard")
    rows = _rows(tracked)
    want = {k for r in rows for k in loggers.scalars(r)}
    assert {"train_loss", "train_accuracy", "val_accuracy", "test_accuracy", "lr", "grad_norms/conv1"} <= want
    assert set(ea.Tags()["scalars"]) == want
    for r in rows:
        for k, v in loggers.scalars(r).items():
            (ev,) = [e for e in ea.Scalars(k) if e.step == r["epoch"]]
            assert ev.value == float(np.float32(v)), k      # TensorBoard keeps float32 scalars
            assert ev.wall_time == pytest.approx(r["unix_time"])
    config = json.loads((tracked / "config.json").read_text())
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text)["train.lr"] == config["train"]["lr"]


def test_mlflow_params_and_metrics_equal_the_run(tracked):
    pytest.importorskip("mlflow")
    c, runs = _mlflow_runs(tracked / "mlruns", "lenetlab")
    (run,) = runs
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    config = json.loads((tracked / "config.json").read_text())
    flat = loggers.flatten(config)
    assert set(run.data.params) == set(flat)
    assert run.data.params["train.lr"] == str(config["train"]["lr"])
    assert run.data.params["model.name"] == config["model"]["name"]
    for r in _rows(tracked):
        for k, v in loggers.scalars(r).items():
            hist = [m for m in c.get_metric_history(run.info.run_id, k) if m.step == r["epoch"]]
            assert [m.value for m in hist] == [v], k          # float64: exactly the metrics.jsonl value


def test_missing_package_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "mlflow") else real(name, *a))
    for name in ("tensorboard", "mlflow"):
        r = run_cli("train", *TINY, "--logger", name, "--out", str(tmp_path / "run"))
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            f"lenetlab: error: --logger {name} needs the {name} package: pip install 'lenetlab[{name}]'"]
        sweep = tmp_path / "toy.toml"
        sweep.write_text('[sweep]\nkind = "function"\nfunction = "lenetlab.sweep.trials:toy"\nmetric = "value"\n'
                         '[grid]\nx = [0.0]\n')
        r = run_cli("sweep", str(sweep), "--logger", name, "--out", str(tmp_path / "sweep"))
        assert r.returncode == 2 and f"pip install 'lenetlab[{name}]'" in r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_logger_names_are_checked_while_parsing(tmp_path):
    assert loggers.parse_names(["tensorboard,mlflow", "TensorBoard", " "]) == ["tensorboard", "mlflow"]
    assert loggers.parse_names(None) == []
    r = run_cli("train", *TINY, "--logger", "wandb", "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["lenetlab: error: unknown logger 'wandb'; choose from: tensorboard, "
                                             "mlflow"]
    assert not (tmp_path / "run").exists()


def test_scalars_and_flatten():
    row = {"epoch": 3, "step": 30, "lr": 0.1, "train_loss": 1.5, "grad_norms": {"conv1": 0.5}, "unix_time": 1e9,
           "note": "x", "stopped": True}
    assert loggers.scalars(row) == {"step": 30.0, "lr": 0.1, "train_loss": 1.5, "grad_norms/conv1": 0.5}
    assert loggers.flatten({"a": {"b": {"c": 1}}, "d": None}) == {"a.b.c": 1, "d": None}


def test_tensorboard_resume_hides_the_steps_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    first = loggers.TensorBoardLogger(tmp_path)
    first.on_train_begin({"config": {"train": {"lr": 0.1}}, "start_epoch": 0, "resume": False})
    for epoch in (1, 2):            # epoch 2 logged, then killed before its checkpoint was safe
        first.on_epoch_end({"epoch": epoch, "loss": float(epoch)})
    first.close()
    second = loggers.TensorBoardLogger(tmp_path)
    second.on_train_begin({"config": {}, "start_epoch": 1, "resume": True})
    second.on_epoch_end({"epoch": 2, "loss": 20.0})
    second.on_train_end({})
    assert [(e.step, e.value) for e in _events(tmp_path).Scalars("loss")] == [(1, 1.0), (2, 20.0)]


def test_mlflow_resume_continues_the_run_a_kill_cut_short(tmp_path):
    pytest.importorskip("mlflow")
    first = loggers.MLflowLogger(tmp_path, run_name="r", params={"train.lr": 0.1})
    first.on_train_begin({"start_epoch": 0, "resume": False})
    first.on_epoch_end({"epoch": 1, "loss": 1.0})
    first.close()                   # no on_train_end: the run was killed
    c, (run,) = _mlflow_runs(tmp_path, "lenetlab")
    assert run.info.status == "KILLED" and run.data.params == {"train.lr": "0.1"}
    second = loggers.MLflowLogger(tmp_path, run_name="r", params={"train.lr": 0.1})
    second.on_train_begin({"start_epoch": 1, "resume": True})
    second.on_epoch_end({"epoch": 2, "loss": 2.0})
    second.on_train_end({})
    c, (run,) = _mlflow_runs(tmp_path, "lenetlab")
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "loss")] == [(1, 1.0), (2, 2.0)]


def test_logger_objects_as_fit_callbacks(tmp_path):
    """The Python API: a logger is an ordinary fit callback; on_train_begin sees the resolved config first."""
    pytest.importorskip("tensorboard")
    import lenetlab

    class Begin:
        def __init__(self):
            self.calls = []

        def on_train_begin(self, info):
            self.calls.append(("begin", info))

        def on_epoch_end(self, metrics):
            self.calls.append(("epoch", metrics["epoch"]))

    begin, out = Begin(), tmp_path / "run"
    cfg = {"model": "lenet5", "data": {"train_subset": 300, "test_subset": 200}, "train": {"epochs": 1}}
    lenetlab.fit(cfg, out=out, log=None, progress=False,
                 callbacks=[begin, loggers.TensorBoardLogger(out / "tb")])
    (kind, info), second = begin.calls
    assert kind == "begin" and second == ("epoch", 1)
    assert info["config"] == json.loads((out / "config.json").read_text())
    assert info["out"] == str(out) and info["start_epoch"] == 0 and info["resume"] is False
    ea = _events(out / "tb")
    assert [e.step for e in ea.Scalars("test_accuracy")] == [1]
    with pytest.raises(LenetlabError, match="unknown logger"):
        loggers.make(["tensorboard", "comet"], out)


def _trials_in_this_process(trials, workers):
    """The local backend's contract (``(trial, outcome)`` per trial) without its pool: each trial's payload,
    pickled as it is to reach a worker process, run here by the same run_trial (which sets one torch thread,
    as in a worker: this process's count is restored)."""
    import pickle

    import torch

    from lenetlab.sweep.trials import run_trial

    threads = torch.get_num_threads()
    try:
        for t in trials:
            try:
                yield t, run_trial(pickle.loads(pickle.dumps(t.payload)))
            except Exception as e:  # noqa: BLE001  (reported per trial, as the pool does)
                yield t, e
    finally:
        torch.set_num_threads(threads)


# The local pool's worker process (spawned: a fresh interpreter and torch import, seconds) in the slow tier;
# the fast tier runs the same payloads in this process. tests/test_sweep.py's
# test_a_failing_trial_is_reported_and_retried runs the real pool in the fast tier.
@pytest.mark.parametrize("pool", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["in-process", "pool"])
def test_sweep_logs_each_trial_as_its_own_run(tmp_path, monkeypatch, pool):
    """A function sweep's trials (the payload plumbing), each trial one TensorBoard dir and one MLflow run named
    by its id, holding the trial's metrics."""
    if not HAVE:
        pytest.skip("neither tensorboard nor mlflow is installed")
    if not pool:
        import lenetlab.sweep

        monkeypatch.setattr(lenetlab.sweep, "run_local", _trials_in_this_process)
    sweep = tmp_path / "toy.toml"
    sweep.write_text('[sweep]\nkind = "function"\nname = "toy-sweep"\nfunction = "lenetlab.sweep.trials:toy"\n'
                     'metric = "value"\ngoal = "min"\n[grid]\nx = [0.5, 1.0]\n')
    out = tmp_path / "out"
    run_cli("sweep", str(sweep), "--workers", "1", "--logger", ",".join(HAVE), "--out", str(out), "-q", check=True)
    rows = {r["trial"]: r for r in map(json.loads, (out / "trials.jsonl").read_text().splitlines())}
    assert len(rows) == 2
    if "tensorboard" in HAVE:
        assert sorted(p.name for p in (out / "tensorboard").iterdir()) == sorted(rows)
        for tid, r in rows.items():
            ea = _events(out / "tensorboard" / tid)
            assert ea.Scalars("value")[0].value == float(np.float32(r["metrics"]["value"]))
    if "mlflow" in HAVE:
        c, runs = _mlflow_runs(out / "mlruns", "toy-sweep")
        assert sorted(run.info.run_name for run in runs) == sorted(rows)
        for run in runs:
            r = rows[run.info.run_name]
            assert run.data.metrics["value"] == r["metrics"]["value"]
            assert run.data.params["x"] == str(r["params"]["x"]) and run.info.status == "FINISHED"


def test_a_training_trial_logs_every_epoch(tmp_path):
    """The worker side of a training sweep (run_trial, in this process): per-epoch metrics, config params."""
    pytest.importorskip("tensorboard")
    from lenetlab.sweep import parse
    from lenetlab.sweep.trials import run_trial

    (trial,) = parse({"sweep": {"name": "t"}, "grid": {"train.seed": [3]},
                      "base": {"preset": "fast", "data": {"train_subset": 300, "test_subset": 200},
                               "train": {"epochs": 2, "batch_size": 100}}}).trials()
    payload = {**trial.payload, "loggers": {"names": ["tensorboard"], "root": str(tmp_path), "trial": trial.id,
                                            "experiment": "t"}}
    res = run_trial(payload)
    ea = _events(tmp_path / "tensorboard" / trial.id)
    acc = ea.Scalars("test_accuracy")
    assert [e.step for e in acc] == [1, 2]
    assert acc[-1].value == float(np.float32(res["metrics"]["test_accuracy"]))
