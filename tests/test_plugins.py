"""Outside plugins (entry point group ``lenetlab.plugins``): a real package installed with pip, used from the CLI.

The example package (tests/plugin_example) adds the ``tiny_mlp`` model and the ``noise`` attack with one
option, ``density``. It is installed into a temporary directory that only the subprocesses see
(PYTHONPATH), so this test process's registry stays the built-in one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from lenetlab.registry import names

EXAMPLE = Path(__file__).parent / "plugin_example"
CUBE = """\
import torch
from lenetlab.registry import register


def register_all():
    class Cube(torch.nn.Module):
        "x cubed (example plugin activation)"

        def forward(self, x):
            return x ** 3

    register("activation", "cube")(Cube)
"""


def fake_dist(site: Path, name: str, entry: str, files: dict[str, str] | None = None) -> Path:
    """A hand-made installed distribution: just the metadata importlib.metadata reads, plus module files."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{name}-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[lenetlab.plugins]\n{entry}\n")
    for fname, text in (files or {}).items():
        (site / fname).write_text(text)
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """tests/plugin_example, pip-installed (no network, no build isolation) into a fresh directory, beside a
    hand-made distribution whose entry point names a registration function instead of a module."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "--target", str(target), str(src)],
                   check=True, capture_output=True, text=True)
    assert list(target.glob("lenetlab_plugin_example-*.dist-info"))
    return fake_dist(target, "cube_plugin", "cube = cube_plugin_mod:register_all", {"cube_plugin_mod.py": CUBE})


def table_names(stdout: str, title: str) -> list[str]:
    """The name column of the rich table titled ``title`` in ``lenetlab list`` output."""
    lines = stdout.splitlines()
    found = []
    for ln in lines[lines.index(title) + 1:]:
        if ln and ln[0] not in "┏┃┡│└":
            break
        if ln.startswith("│") and ln.split("│")[1].strip():
            found.append(ln.split("│")[1].strip())
    return found


def test_an_installed_plugin_adds_a_model_and_an_attack_to_the_cli(site, tmp_path, mnist_test):
    env = {"PYTHONPATH": str(site)}
    r = run_cli("list", env=env, check=True)
    assert "tiny_mlp" in table_names(r.stdout, "models") and "lenet5" in table_names(r.stdout, "models")
    assert "noise" in table_names(r.stdout, "attacks") and "pgd" in table_names(r.stdout, "attacks")
    assert "cube" in table_names(r.stdout, "activations")     # registered by a function entry point
    assert "tiny_mlp" not in names("model")                   # this process never had the plugin on its path

    run = tmp_path / "mlp"
    run_cli("train", "--model", "tiny_mlp", "--epochs", "1", "--set", "data.train_subset=1000",
            "--set", "data.test_subset=200", "--set", "model.hidden=16", "--out", str(run), env=env, check=True)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == {"name": "tiny_mlp", "options": {"hidden": 16}}

    # the attack's one option arrives through the flag generated from its schema
    out = tmp_path / "ex"
    r = run_cli("attack", str(run), "--attack", "noise", "--density", "0.5", "--eps", "0.2", "--limit", "100",
                "--save-examples", str(out), "--json", env=env, check=True)
    row = json.loads(r.stdout)["rows"][0]
    assert row["n"] == 100 and 0 <= row["adv_accuracy"] <= 1 and 0 <= row["clean_accuracy"] <= 1
    from lenetlab.data import read_idx

    changed = (read_idx(out / "adversarial-images-idx3-ubyte") != mnist_test[0][:100]).mean()
    assert abs(changed - 0.5) < 0.02, changed        # each pixel is hit with probability 0.5 (78,400 pixels)


@pytest.mark.parametrize("entry, why", [
    ("broken = no_such_plugin_module", "ModuleNotFoundError: No module named 'no_such_plugin_module'"),
    pytest.param("clash = clash_plugin_mod", "RuntimeError: duplicate model registration: 'lenet5'",
                 marks=pytest.mark.slow),   # one more CLI process; the broken-module case is fast
])
def test_a_broken_plugin_is_one_clear_error_naming_it(tmp_path, entry, why):
    name, value = (s.strip() for s in entry.split("="))
    site = fake_dist(tmp_path / "site", f"{name}_plugin", entry, {
        "clash_plugin_mod.py": ("from lenetlab.models.base import register_model\n"
                                "from lenetlab.models.lenet5 import LeNet5Config\n"
                                "register_model('lenet5', LeNet5Config)(lambda cfg: None)\n")})
    r = run_cli("list", "models", env={"PYTHONPATH": str(site)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"lenetlab: error: plugin {name!r} (entry point {value!r}, group lenetlab.plugins) failed to load: {why}"]
