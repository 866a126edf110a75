"""Outside plugins (entry point group ``lenetlab.plugins``): a real package installed with pip, used from the CLI.

The example package (tests/plugin_example) adds the ``tiny_mlp`` model and the ``noise`` attack with one
option, ``density``. It is installed into a temporary directory that only a subprocess sees (PYTHONPATH), so
this test process's registry stays the built-in one. That one fresh process runs ``python -m lenetlab``'s
``__main__`` for each command in turn (:data:`DRIVER`): the same entry point as three ``python -m lenetlab``
processes, with one interpreter and torch start-up instead of three.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from lenetlab import registry
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


# `python -m lenetlab ARGV` for each ARGV of the JSON list in argv[1], in this one process (runpy runs the
# package's __main__, which raises SystemExit(main())); prints [[exit code, stdout, stderr], ...] as JSON
DRIVER = """\
import contextlib, io, json, runpy, sys
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["lenetlab", *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module("lenetlab", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_commands(site: Path, *commands: list[str]) -> list[tuple[int, str, str]]:
    """Each command's (exit code, stdout, stderr), run by ``python -m lenetlab``'s __main__ in one fresh
    process that has ``site`` on its path."""
    import os

    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(site)}, timeout=600)
    assert r.returncode == 0, r.stderr
    return [tuple(x) for x in json.loads(r.stdout)]


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
    run, out = tmp_path / "mlp", tmp_path / "ex"
    listed, trained, attacked = run_commands(
        site,
        ["list"],
        ["train", "--model", "tiny_mlp", "--epochs", "1", "--set", "data.train_subset=1000",
         "--set", "data.test_subset=200", "--set", "model.hidden=16", "--out", str(run)],
        # the attack's one option arrives through the flag generated from its schema
        ["attack", str(run), "--attack", "noise", "--density", "0.5", "--eps", "0.2", "--limit", "100",
         "--save-examples", str(out), "--json"])
    for code, _, err in (listed, trained, attacked):
        assert code == 0, err
    r = listed[1]
    assert "tiny_mlp" in table_names(r, "models") and "lenet5" in table_names(r, "models")
    assert "noise" in table_names(r, "attacks") and "pgd" in table_names(r, "attacks")
    assert "cube" in table_names(r, "activations")     # registered by a function entry point
    assert "tiny_mlp" not in names("model")             # this process never had the plugin on its path

    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == {"name": "tiny_mlp", "options": {"hidden": 16}}

    row = json.loads(attacked[1])["rows"][0]
    assert row["n"] == 100 and 0 <= row["adv_accuracy"] <= 1 and 0 <= row["clean_accuracy"] <= 1
    from lenetlab.data import read_idx

    changed = (read_idx(out / "adversarial-images-idx3-ubyte") != mnist_test[0][:100]).mean()
    assert abs(changed - 0.5) < 0.02, changed        # each pixel is hit with probability 0.5 (78,400 pixels)


@pytest.mark.parametrize("entry, why", [
    ("broken = no_such_plugin_module", "ModuleNotFoundError: No module named 'no_such_plugin_module'"),
    ("clash = clash_plugin_mod", "RuntimeError: duplicate model registration: 'lenet5'"),
])
def test_a_broken_plugin_is_one_clear_error_naming_it(tmp_path, monkeypatch, entry, why):
    """In this process: the distribution goes on sys.path and the registry forgets that it already looked for
    plugins (both restored afterwards). Neither plugin registers anything before it fails, so the built-in
    tables stay as they were; discovery in a fresh process is the installed-plugin test above."""
    name, value = (s.strip() for s in entry.split("="))
    site = fake_dist(tmp_path / "site", f"{name}_plugin", entry, {
        "clash_plugin_mod.py": ("from lenetlab.models.base import register_model\n"
                                "from lenetlab.models.lenet5 import LeNet5Config\n"
                                "register_model('lenet5', LeNet5Config)(lambda cfg: None)\n")})
    before = {kind: dict(table) for kind, table in registry._TABLES.items()}
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_discovery", [None])
    r = run_cli("list", "models")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"lenetlab: error: plugin {name!r} (entry point {value!r}, group lenetlab.plugins) failed to load: {why}"]
    assert registry._TABLES == before
