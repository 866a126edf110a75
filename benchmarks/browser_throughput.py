"""Throughput of the in-browser runtimes (the C runtime as WebAssembly, flat.js) on the 10k MNIST test images.

Exports a briefly trained LeNet-5 (or ``--run``) as the web page, serves it from
memory (the whitelist server of ``lenetlab serve``), opens it in headless
Chromium and clicks the page's own "evaluate the test set" button, float32 and
int8, once on each of its runtimes (``?runtime=js`` and ``?runtime=wasm``, the
default). Prints the page's images/s (its ``#test-speed`` data-ips: wall clock
of the whole evaluation, page turns included) for each, the best of
``--rounds``, their ratio, and checks that every top-1 equals the NumPy runtime's.

``--compare REV`` also times the page files (index.html, *.js, style.css) of
git revision REV on the same model and browser, e.g. the runtime before a
change: ``--compare HEAD`` on an uncommitted change, ``--compare 8eb3170``.

Goal (issue 21, item 5): >= 10,000 images/s for float32 and int8.

    python benchmarks/browser_throughput.py [--run RUN_DIR] [--rounds 3] [--compare REV] [--model lenet5]
                                            [--json PATH]

Without Chromium + chromedriver (or selenium) it prints ``skipped: REASON`` and exits 0 (the JSON record
says ``"skipped": REASON``), so ``make bench`` goes on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _record import Record, add_json_option
from lenetlab.data.datasets import load_raw
from lenetlab.deploy import flat, runtime
from lenetlab.deploy.browser import BrowserPage, BrowserUnavailable, open_browser
from lenetlab.deploy.web import STATIC, run_site_files

ROOT = Path(__file__).resolve().parents[1]


def static_at(rev: str) -> dict[str, bytes]:
    """The page's static files as they were at git revision ``rev`` (a file missing there is left out)."""
    out = {}
    for name in STATIC:
        r = subprocess.run(["git", "show", f"{rev}:src/lenetlab/deploy/web/{name}"], cwd=ROOT, capture_output=True)
        if r.returncode == 0:
            out[name] = r.stdout
    if not out:
        raise SystemExit(f"no page files at revision {rev}")
    return out


def page_ips(driver, files: dict[str, bytes], ref_top1: np.ndarray, rounds: int, rt: str | None = None) -> float:
    """Best images/s of the page's test-set button over ``rounds`` clicks; every top-1 checked against NumPy.
    ``rt``: the page's runtime ("wasm": the C runtime as WebAssembly, "js": flat.js; None: the page's choice)."""
    best = 0.0
    with BrowserPage(driver, files, runtime=rt) as page:
        for _ in range(rounds):
            preds = page.evaluate_test_set()
            diff = int((preds != ref_top1).sum())
            if diff:
                raise SystemExit(f"the page's top-1 differs from the NumPy runtime's on {diff} images")
            best = max(best, float(driver.execute_script(
                "return Number(document.getElementById('test-speed').dataset.ips)")))
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a trained run dir (default: train lenet5 briefly: fast preset, 6k images, 1 epoch)")
    p.add_argument("--model", default="lenet5", help="model to train when --run is not given (default lenet5)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compare", metavar="REV", help="also time the page files of this git revision")
    add_json_option(p)
    a = p.parse_args()
    rec = Record("browser_throughput")
    old = static_at(a.compare) if a.compare else None
    try:                                        # before training: no browser here means nothing to time
        driver = open_browser(script_timeout=600)
    except BrowserUnavailable as e:
        print(f"skipped: {e}")
        rec.skip(str(e))
        rec.write(a.json)
        return 0
    rows = []
    try:
        if a.run:
            run = Path(a.run)
        else:
            from lenetlab.train import fit
            from lenetlab.train.presets import resolve

            run = Path(tempfile.mkdtemp(prefix="lenetlab_web_")) / "run"
            print(f"training {a.model} (fast preset, 6k images, 1 epoch) ...", flush=True)
            fit(resolve("fast", a.model, overrides={"data": {"train_subset": 6000}, "train": {"epochs": 1}}),
                out=run, log=None, progress=False)
        _, _, test_x, test_y = load_raw("mnist")
        version = driver.capabilities.get("browserVersion", "?")
        for int8 in (False, True):
            files = run_site_files(run, int8)
            fm = flat.decode(files["model_int8.flat" if int8 else "model.flat"])
            top1 = runtime.run(fm, test_x).argmax(1)
            acc = float((top1 == test_y).mean())
            if old is not None:
                rows.append((f"{a.compare} {fm.dtype}", page_ips(driver, {**files, **old}, top1, a.rounds), acc))
                print(f"  {rows[-1][0]}: {rows[-1][1]:,.0f} images/s", flush=True)
            for rt in ("js", "wasm"):      # the page's two runtimes, side by side (wasm is its default)
                rows.append((f"now {rt} {fm.dtype}", page_ips(driver, files, top1, a.rounds, rt), acc))
                print(f"  {rows[-1][0]}: {rows[-1][1]:,.0f} images/s", flush=True)
    finally:
        driver.quit()
    print(f"\nin-browser test-set evaluation, headless Chromium {version}, 10,000 MNIST test images, "
          f"best of {a.rounds} (top-1 = NumPy runtime's on every image)")
    print(f"{'runtime':<24} {'images/s':>10} {'accuracy':>9}")
    for name, ips, acc in rows:
        print(f"{name:<24} {ips:>10,.0f} {100 * acc:>8.2f}%")
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    slow = [name for name, ips, _ in rows if name.startswith("now wasm") and ips < 10_000]
    print("goal >= 10,000 images/s (the page's default runtime, wasm): "
          + ("met" if not slow else f"NOT met by {', '.join(slow)}"))
    for dtype in ("float32", "int8"):
        w, j = dict((n, v) for n, v, _ in rows).get(f"now wasm {dtype}"), dict((n, v) for n, v, _ in rows).get(
            f"now js {dtype}")
        if w and j:
            print(f"wasm / js {dtype}: {w / j:.2f}x")
    rec.value("browser", f"headless Chromium {version}")
    rec.value("rounds", a.rounds)
    rec.value("rows", [{"runtime": name, "images_per_s": ips, "accuracy": acc} for name, ips, acc in rows])
    rec.check("top1_equals_numpy_runtime", True)      # page_ips exits non-zero on any difference
    by_name = {name: v for name, v, _ in rows}
    for dtype in ("float32", "int8"):
        w, j = by_name[f"now wasm {dtype}"], by_name[f"now js {dtype}"]
        rec.goal(f"in-browser {dtype} (the page's default runtime, wasm) >= 10,000 images/s", w, 10_000)
        rec.ratio(f"wasm_vs_js_{dtype}", w / j)
        if a.compare:
            rec.ratio(f"wasm_vs_{a.compare}_{dtype}", w / by_name[f"{a.compare} {dtype}"])
    rec.write(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
