"""``reproduce all --jobs N``: experiments in parallel processes give the same result files as a serial run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_kill_anywhere import HANG_S, _env, files
from test_reproduce_twice import excluded

ONLY = "fused,lenet5,tn"     # three cheap tiny experiments, one of which trains and one that compresses


def _run(out, *extra: str, only: str = ONLY) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lenetlab", "reproduce", "all", "--tiny", "--only", only,
                           "--out", str(out), *extra], capture_output=True, text=True, env=_env(), timeout=HANG_S)


@pytest.mark.slow   # 3 command lines of 3 processes each (~50 s beside the other tests); the fast tier: below
def test_jobs_give_the_result_files_of_a_serial_run(tmp_path):
    serial, pooled = tmp_path / "serial", tmp_path / "jobs2"
    r1 = _run(serial, "-q")
    r2 = _run(pooled, "--jobs", "2")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr[-2000:] + r2.stderr[-2000:]
    assert "[tn] " in r2.stdout and "started" in r2.stdout      # the workers' log lines, tagged
    a, b = files(serial), files(pooled)
    assert sorted(a) == sorted(b)
    differ = [rel for rel in a if a[rel].read_bytes() != b[rel].read_bytes() and not excluded(rel, serial)]
    assert not differ, differ
    manifest = json.loads(a["manifest.json"].read_text())
    assert [e["name"] for e in manifest["experiments"]] == ["lenet5", "fused", "tn"]   # the report's order
    assert all(e["status"] == "ran" for e in manifest["experiments"])
    # a second pooled run reuses all three
    r3 = _run(pooled, "--jobs", "2", "-q")
    assert r3.returncode == 0 and json.loads((pooled / "manifest.json").read_text())["experiments"][0]["status"] \
        == "skipped"


@pytest.mark.parametrize("bad", ["0", "-1", "65", "two", "1.5"])
def test_bad_jobs_are_refused_before_anything_is_written(tmp_path, bad):
    from conftest import run_cli

    r = run_cli("reproduce", "all", "--tiny", "--jobs", bad, "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--jobs" in r.stderr and not (tmp_path / "o").exists()


def test_jobs_only_with_all(tmp_path):
    from conftest import run_cli

    r = run_cli("reproduce", "fused", "--tiny", "--jobs", "2", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--jobs goes with `reproduce all`" in r.stderr and not (tmp_path / "o").exists()


def test_a_failing_experiment_in_a_worker_is_reported_and_the_others_finish(tmp_path):
    from lenetlab.experiments import suite

    # a worker cannot see a monkeypatch (fresh process), so feed the parent's pool an experiment whose
    # setting is broken on disk: a file where its output folder should be
    pooled, serial = tmp_path / "jobs2", tmp_path / "serial"
    pooled.mkdir()
    (pooled / "fused").write_text("not a folder")
    outcomes = suite.reproduce_all(pooled, tiny=True, only=["fused", "lenet5"], jobs=2, quiet_workers=True)
    st = {o.name: o.status for o in outcomes}
    assert st == {"lenet5": "ran", "fused": "failed"}
    assert "not a directory" in next(o.error for o in outcomes if o.name == "fused")
    # the experiment that ran in a worker wrote what a serial run in this process writes, byte for byte
    suite.reproduce_all(serial, tiny=True, only=["lenet5"], jobs=1)
    a, b = files(serial / "lenet5"), files(pooled / "lenet5")
    assert sorted(a) == sorted(b) and a
    differ = [rel for rel in a if a[rel].read_bytes() != b[rel].read_bytes() and not excluded(rel, serial)]
    assert not differ, differ


RAY_ONLY = "lenet5,tn,faults,snn-attacks"


@pytest.mark.slow   # a local Ray instance (~10 s to start) running four tiny experiments, their cells as tasks
def test_ray_backend_gives_the_result_files_of_a_serial_run(tmp_path):
    pytest.importorskip("ray")
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    r1 = _run(serial, "-q", only=RAY_ONLY)
    r2 = _run(on_ray, "--backend", "ray", "--jobs", "2", only=RAY_ONLY)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr[-2000:] + r2.stderr[-2000:]
    assert "tn: done in" in r2.stdout and "lenet5: done in" in r2.stdout
    a, b = files(serial), files(on_ray)
    assert sorted(a) == sorted(b)
    differ = [rel for rel in a if a[rel].read_bytes() != b[rel].read_bytes() and not excluded(rel, serial)]
    assert not differ, differ
    # the experiments' cells ran as Ray tasks of their own (recorded with the clock readings)
    for name in RAY_ONLY.split(","):
        assert json.loads((on_ray / name / "timings.json").read_text())["metrics"]["cells_on_runner"] >= 1, name


@pytest.mark.slow   # one experiment, its cells on a Ray instance the command starts itself
@pytest.mark.parametrize("name", ["abs", "matrix"])
def test_one_experiment_with_its_cells_on_ray_writes_the_files_of_a_serial_run(tmp_path, name):
    pytest.importorskip("ray")
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    cmd = [sys.executable, "-m", "lenetlab", "reproduce", name, "--tiny", "-q"]
    r1 = subprocess.run([*cmd, "--out", str(serial)], capture_output=True, text=True, env=_env(), timeout=HANG_S)
    r2 = subprocess.run([*cmd, "--backend", "ray", "--out", str(on_ray)], capture_output=True, text=True,
                        env=_env(), timeout=HANG_S)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr[-2000:] + r2.stderr[-2000:]
    a, b = files(serial), files(on_ray)
    assert sorted(a) == sorted(b)
    differ = [rel for rel in a if a[rel].read_bytes() != b[rel].read_bytes() and not excluded(rel, serial)]
    assert not differ, differ
    assert json.loads((on_ray / "timings.json").read_text())["metrics"]["cells_on_runner"] >= 2


@pytest.mark.parametrize("argv, says", [
    (["reproduce", "fused", "--tiny", "--address", "auto"], "an address goes with the ray backend"),
    (["reproduce", "all", "--tiny", "--address", "auto"], "an address goes with the ray backend"),
    (["reproduce", "all", "--tiny", "--backend", "spark"], "--backend"),
])
def test_backend_options_are_checked_before_anything_is_written(tmp_path, argv, says):
    from conftest import run_cli

    r = run_cli(*argv, "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and says in r.stderr and not (tmp_path / "o").exists(), r.stderr
