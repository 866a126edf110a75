"""``lenetlab plot``: training curves of run directories to a PNG, and a reproduction's figures listed."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from conftest import run_cli
from lenetlab.errors import LenetlabError
from lenetlab.plot_cli import plot_curves, read_metrics
from lenetlab.train import fit
from lenetlab.train.presets import resolve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A LeNet-5 trained for 2 short epochs on 600 real MNIST images (with a validation split)."""
    out = tmp_path_factory.mktemp("plot") / "run_a"
    cfg = resolve("fast", "lenet5", overrides={"data": {"train_subset": 600, "val_size": 200, "test_subset": 200},
                                               "train": {"epochs": 2}})
    fit(cfg, out=out, log=None, progress=False)
    return out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", "not a PNG file"
    assert data.endswith(b"IEND\xaeB`\x82"), "PNG cut short (no IEND chunk)"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def test_one_run_default_out(run):
    r = run_cli("plot", str(run), check=True)
    out = run / "curves.png"
    assert f"wrote {out}" in r.stdout
    w, h = _png_size(out)
    assert 600 <= w <= 3000 and 300 <= h <= 2000
    from PIL import Image

    with Image.open(out) as im:
        im.verify()                                          # a complete, valid PNG


def test_several_runs_overlaid(run, tmp_path):
    other = tmp_path / "run_b"
    shutil.copytree(run, other)
    out = tmp_path / "both.png"
    r = run_cli("plot", str(run), str(other), "--out", str(out), check=True)
    assert "2 runs" in r.stdout and _png_size(out)[0] > 0
    assert len(read_metrics(run)) == 2 and "val_accuracy" in read_metrics(run)[0]
    # the same folder name twice: the legend tells them apart by their paths (no crash either way)
    twin = tmp_path / "x" / run.name
    shutil.copytree(run, twin)
    plot_curves([run, twin], tmp_path / "twins.png")
    assert (tmp_path / "twins.png").stat().st_size > 1000


def test_reproduction_dir_lists_figures_and_plots_inner_runs(run, tmp_path):
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "fig.png").write_bytes(b"")
    (rep / "result.json").write_text(json.dumps({"experiment": "x", "figures": ["fig.png", "gone.png"]}))
    r = run_cli("plot", str(rep), check=True)
    assert "fig.png" in r.stdout and "gone.png  (missing)" in r.stdout and "no curves" in r.stdout
    shutil.copytree(run, rep / "cells" / "seed0")
    r = run_cli("plot", str(rep), check=True)
    assert _png_size(rep / "curves.png")[0] > 0 and "1 run" in r.stdout


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "missing", "no such run directory"),
    (lambda d: d, "not a run directory"),
])
def test_bad_run_dirs_are_one_line_exit_2(tmp_path, setup, message):
    (tmp_path / "config.json").write_text("{}")     # a directory without metrics.jsonl
    r = run_cli("plot", str(setup(tmp_path)))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_other_bad_input(run, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = run_cli("plot", str(f))
    assert r.returncode == 2 and "not a directory" in r.stderr
    r = run_cli("plot", str(run), "--out", str(tmp_path / "no" / "such" / "x.png"))
    assert r.returncode == 2 and "no such folder" in r.stderr
    r = run_cli("plot", str(run), "--out", str(tmp_path / "x.jpg"))
    assert r.returncode == 2 and ".png" in r.stderr
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.jsonl").write_text('{"epoch": 1, "train_lo')    # killed mid-line in its first epoch
    with pytest.raises(LenetlabError, match="no epoch has finished"):
        read_metrics(started)
    bad = tmp_path / "rep"
    bad.mkdir()
    (bad / "result.json").write_text("{")
    r = run_cli("plot", str(bad))
    assert r.returncode == 2 and "not valid JSON" in r.stderr and r.stderr.count("\n") == 1
