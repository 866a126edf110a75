"""CLI tests: exit codes, stdout and stderr; bad input gives one line.

Commands run in this process through ``lenetlab.cli.main`` (what the console script calls): a subprocess
costs a torch import, seconds on a busy machine. One real ``python -m lenetlab`` process remains, a small
training run (test_train_cli_small): the entry point, its exit code, and that training never imports
torch._dynamo (the reason for FusedAdam)."""

import io
import json
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from conftest import run_cli
from lenetlab.cli import main
from lenetlab.data.datasets import FILES, bundled_dir
from lenetlab.data.idx import read_idx


def cli(*args: str) -> subprocess.CompletedProcess:
    """``lenetlab ARGS`` in this process: exit code, stdout and stderr, like :func:`conftest.run_cli`."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:             # argparse: --help, usage errors
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return subprocess.CompletedProcess(["lenetlab", *args], code, out.getvalue(), err.getvalue())


def _one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("lenetlab: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_and_version():
    r = cli("--help")
    assert r.returncode == 0 and "train" in r.stdout and "predict" in r.stdout
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("lenetlab ")


def test_list_models():
    r = cli("list", "models")
    assert r.returncode == 0 and "lenet5_classic" in r.stdout and "61,706" in r.stdout and "60,000" in r.stdout


def test_info_model_and_run(small_run):
    r = cli("info", "lenet5")
    assert r.returncode == 0 and "61,706" in r.stdout
    r = cli("info", str(small_run))
    assert r.returncode == 0 and "test_accuracy" in r.stdout and "conv1.weight" in r.stdout


def test_eval_matches_summary(small_run):
    r = cli("eval", str(small_run), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["test_images"] == 10000   # eval uses the full test set
    assert 0.9 < res["test_accuracy"] <= 1.0


def test_predict_real_digits(small_run, tmp_path):
    """Real MNIST test digits, upscaled and inverted to dark-on-light PNGs, are recognised."""
    from PIL import Image

    imgs = read_idx(bundled_dir() / FILES[2])[:10]
    labels = read_idx(bundled_dir() / FILES[3])[:10]
    paths = []
    for i, im in enumerate(imgs):
        big = Image.fromarray(255 - im).resize((90, 90), Image.BILINEAR)
        p = tmp_path / f"d{i}.png"
        big.save(p)
        paths.append(str(p))
    np.save(tmp_path / "d0.npy", imgs[0])
    paths.append(str(tmp_path / "d0.npy"))
    r = run_cli("predict", str(small_run), *paths, check=True)
    preds = [int(line.split(": ")[1].split()[0]) for line in r.stdout.strip().splitlines()]
    truth = list(labels) + [labels[0]]
    assert sum(p == t for p, t in zip(preds, truth)) >= 9, (preds, truth)


def test_train_cli_small(tmp_path):
    """The suite's one real ``python -m lenetlab`` process (the others run ``main`` in-process). Python's import
    log (PYTHONPROFILEIMPORTTIME, on stderr) shows that a training run never imports torch._dynamo (seconds of
    start-up that FusedAdam exists to avoid; tests/test_optim.py checks FusedAdam alone in the slow tier)."""
    out = tmp_path / "run"
    r = run_cli("train", "--out", str(out), "--epochs", "1", "--set", "data.train_subset=1000",
                "--set", "data.test_subset=200", "--activation", "tanh", "--seed", "3",
                env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test accuracy" in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["options"]["activation"] == "tanh" and cfg["train"]["seed"] == 3
    imported = {ln.rsplit("|", 1)[1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert "torch" in imported and "lenetlab.train.trainer" in imported       # the log is there
    assert not {m for m in imported if m == "torch._dynamo" or m.startswith("torch._dynamo.")}


# ------------------------------------------------------------------ bad input
def test_missing_run_dir(tmp_path):
    _one_line_error(cli("eval", str(tmp_path / "nope")), "no such run directory")
    _one_line_error(cli("info", str(tmp_path / "nope")), "no such run directory")
    _one_line_error(cli("predict", str(tmp_path / "nope"), "x.png"), "no such run directory")


def test_unknown_config_key(tmp_path):
    cfgf = tmp_path / "c.toml"
    cfgf.write_text("[train]\nepochs = 1\nlearning_rate = 3\n")
    out = tmp_path / "out"
    _one_line_error(cli("train", "--config", str(cfgf), "--out", str(out)),
                    "unknown config key 'train.learning_rate'")
    assert not out.exists()
    _one_line_error(cli("train", "--set", "train.epochs=many", "--out", str(out)),
                    "'train.epochs' must be int")
    assert not out.exists()


def test_unreadable_image(small_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    _one_line_error(cli("predict", str(small_run), str(bad)), "bad.png", "cannot read image")
    _one_line_error(cli("predict", str(small_run), str(tmp_path / "none.png")), "no such image file")
    arr = tmp_path / "a.npy"
    np.save(arr, np.zeros((2, 3, 4)))
    _one_line_error(cli("predict", str(small_run), str(arr)), "expected a 2-D numeric array")


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b[: len(b) // 3], "wrong checksum"),
])
def test_corrupt_dataset_files(tmp_path, damage, needle):
    d = tmp_path / "data"
    d.mkdir()
    for f in FILES:
        shutil.copy(bundled_dir() / f, d / f)
    p = d / FILES[2]
    p.write_bytes(damage(p.read_bytes()))
    out = tmp_path / "out"
    _one_line_error(cli("train", "--data-dir", str(d), "--out", str(out)), needle, FILES[2])
    assert not out.exists()


def test_truncated_idx_message_is_one_line(tmp_path):
    """Datasets are checksummed before parsing, so through the CLI a truncated file reports the
    checksum (test above); the parser's own message for it is still one line naming the file."""
    from lenetlab.data.idx import IdxError, write_idx

    p = tmp_path / "x.idx"
    write_idx(p, np.zeros((10, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(IdxError, match="truncated: the payload of shape") as e:
        read_idx(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_resume_needs_run_dir(tmp_path):
    _one_line_error(cli("train", "--resume", "--out", str(tmp_path / "x")), "nothing to resume")


def test_bad_model_name(tmp_path):
    _one_line_error(cli("train", "--model", "alexnet", "--out", str(tmp_path / "o")),
                    "unknown model 'alexnet'")
    assert not (tmp_path / "o").exists()
