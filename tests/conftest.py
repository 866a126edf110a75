"""Shared fixtures: small real-MNIST runs, trained once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SMALL = {"data": {"train_subset": 6000, "test_subset": 2000, "val_size": 1000},
         "train": {"epochs": 2, "batch_size": 64, "lr": 4e-3}}


def run_cli(*args: str, check: bool = False, env: dict | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    """Run ``python -m lenetlab ARGS`` in a subprocess (real exit codes, real stderr)."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([sys.executable, "-m", "lenetlab", *args], capture_output=True, text=True,
                       env=e, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"lenetlab {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A modern LeNet-5 trained briefly on 6k real MNIST images."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    out = tmp_path_factory.mktemp("runs") / "small"
    fit(resolve("fast", "lenet5", overrides=SMALL), out=out, log=None, progress=False)
    return out


@pytest.fixture(scope="session")
def deploy_runs(tmp_path_factory) -> dict[str, Path]:
    """Trained ``lenet5`` (fast preset, ~99.2%) and ``lenet5_classic`` (3 epochs on all 60k, ~98.5%)
    for the deployment parity tests; trained once per session (~20 s on 2 cores)."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    root = tmp_path_factory.mktemp("deploy")
    runs = {"lenet5": root / "lenet5", "lenet5_classic": root / "classic"}
    fit(resolve("fast", "lenet5"), out=runs["lenet5"], log=None, progress=False)
    fit(resolve("fast", "lenet5_classic", overrides={"train": {"epochs": 3}}), out=runs["lenet5_classic"],
        log=None, progress=False)
    return runs


@pytest.fixture(scope="session")
def mnist_test() -> tuple:
    """The real 10k MNIST test images (uint8, N x 28 x 28) and labels."""
    from lenetlab.data.datasets import load_raw

    _, _, x, y = load_raw("mnist")
    return x, y


# ---------------------------------------------------------------- headless Chromium (web page, HTML report)
BROWSER_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1100,1500")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromedriver() -> str | None:
    if os.access("/usr/bin/chromedriver", os.X_OK):
        return "/usr/bin/chromedriver"
    return shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (skipped, with the reason, where it is not installed)."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    chromium, driver_path = _chromium(), _chromedriver()
    if chromium is None or driver_path is None:
        pytest.skip("chromium/chromedriver not installed (Debian: apt-get install chromium chromium-driver)")
    options = Options()
    for arg in BROWSER_ARGS:
        options.add_argument(arg)
    options.binary_location = chromium
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as e:
        pytest.skip(f"headless chromium does not start here: {(e.msg or str(e)).splitlines()[0]}")
    driver.set_script_timeout(120)
    yield driver
    driver.quit()
