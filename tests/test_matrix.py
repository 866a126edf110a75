"""The robustness matrix (``lenetlab reproduce matrix``): every variant and column, exact counts where they
are known, the integer engine's analog noise against the float implementation, and the claim rules."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lenetlab.experiments import Cells
from lenetlab.experiments.matrix import VARIANTS, aggregate
from lenetlab.noise.int8 import int8_noise_hooks, int8_noisy_accuracy


@pytest.fixture(scope="module")
def tiny_matrix(tiny, tmp_path_factory):
    """The shared tiny matrix run (a copy), with the suite's HTML report written beside it, as ``reproduce all``
    lays them out."""
    from lenetlab.experiments.suite import Outcome, write_suite_report

    shared, r = tiny("matrix")
    out = tmp_path_factory.mktemp("suite") / "matrix"
    shutil.copytree(shared, out)
    write_suite_report([Outcome("matrix", "ran", r, None, r.wall_seconds)], out.parent, [])
    return out, r


def test_every_variant_gets_every_column(tiny_matrix):
    out, r = tiny_matrix
    cells = Cells(out / "cells.jsonl").rows
    ev = {v: cells[f"metrics/{v}/s0"] for v in VARIANTS}       # tiny: one seed
    table = r.tables["robustness matrix"]
    s = r.config["settings"]
    assert [row["variant"] for row in table] == list(VARIANTS)
    assert s["draws"] == 2
    for v, m in ev.items():
        for key in ("clean_accuracy", "pgd_accuracy", "noise_accuracy"):
            assert 0.0 <= m[key] <= 1.0, (v, key)
        assert len(m["noise_per_draw"]) == 2 and len(m["noise_per_image"]) == s["eval_images"]
        assert set(m["noise_per_image"]) <= {0.0, 0.5, 1.0}          # fraction of 2 draws correct
    # exact parameter / MAC counts
    assert ev["float"]["params"] == ev["qat_int8"]["params"] == ev["abs"]["params"] == 61_706
    # ADTN: 3,626 dense parameters + 448 gate parameters per brick-wall layer (fc1's and fc2's generators)
    assert ev["tt"]["params"] == 8_538 and ev["adtn"]["params"] == 3_626 + 448 * r.config["settings"]["adtn_depth"]
    assert ev["float"]["macs"] == ev["tt"]["macs"] == 416_520
    assert ev["snn_bp"]["macs"] == 117_600 + 4 * (240_000 + 48_000 + 10_080 + 840)
    # the SNN has no integer deployment; every other variant does
    assert "sdc" not in ev["snn_bp"] and all("sdc" in ev[v] for v in VARIANTS if v != "snn_bp")
    snn_row = table[VARIANTS.index("snn_bp")]
    assert snn_row["int8 acc %"] == "n/a"
    # hardening changes nothing fault-free, and costs copies
    h, f = ev["hardened_int8"], ev["float"]
    assert h["int8_accuracy"] == h["clean_accuracy"] == f["int8_accuracy"]
    assert h["protected"] >= 1 and h["params"] > f["params"] and h["macs"] > f["macs"]
    assert table[0]["params"] == "61,706" and r.metrics["tt.params"] == 8_538
    assert r.metrics["hardened_int8.sdc"] == ev["hardened_int8"]["sdc"]
    # the report: one heatmap, and the claims follow the shared rule from the recorded per-image scores
    assert r.figures == ["robustness_matrix.png"] and (out / "robustness_matrix.png").stat().st_size > 10_000
    claims = {c.name: c for c in r.claims}
    noisy = claims["noisy_training_beats_float_under_noise"]
    assert noisy.seeds == 1 and noisy.verdict == "inconclusive" and "1 seed" in noisy.measured
    assert noisy.estimate == pytest.approx(np.mean(ev["noisy"]["noise_per_image"]) - np.mean(f["noise_per_image"]))
    assert json.loads((out / "result.json").read_text())["experiment"] == "matrix"


def test_the_report_shows_the_matrix_and_its_heatmap(tiny_matrix, browser):
    out, r = tiny_matrix
    page = out.parent / "report.html"
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
    assert [alt for _, _, alt in images] == ["robustness_matrix"]
    assert all(done and width > 400 for done, width, _ in images), images
    text = browser.execute_script("return document.body.innerText;")
    assert "robustness matrix" in text and all(v in text for v in VARIANTS)
    for c in r.claims:
        assert c.name in text


def test_seeds_are_averaged_and_the_sdc_pooled():
    a = {"clean_accuracy": 0.9, "noise_accuracy": 0.8, "noise_per_draw": [0.8], "params": 10, "sdc": 0.1,
         "trials": 100, "seconds": 1.0}
    b = {**a, "clean_accuracy": 0.7, "noise_per_draw": [0.6, 0.7], "sdc": 0.3, "trials": 300}
    m = aggregate([a, b])
    assert m["clean_accuracy"] == pytest.approx(0.8) and m["clean_accuracy_per_seed"] == [0.9, 0.7]
    assert m["noise_per_draw"] == [0.8, 0.6, 0.7] and m["seeds"] == 2 and m["seconds"] == 2.0
    assert m["trials"] == 400 and m["sdc"] == pytest.approx((10 + 90) / 400)    # pooled, not averaged
    assert m["sdc_ci95"][0] < m["sdc"] < m["sdc_ci95"][1]


@pytest.fixture(scope="module")
def trained_int8(deploy_runs):
    """The trained lenet5, and its int8 engine calibrated on 256 training images (export: 2,000; the noise hooks
    are checked against the engine itself, so any real calibration does)."""
    from lenetlab.data.datasets import load_raw
    from lenetlab.deploy import flat
    from lenetlab.deploy.export import build_flat
    from lenetlab.deploy.quantize import quantize
    from lenetlab.quant.engine import IntEngine
    from lenetlab.rundir import load_model

    model, cfg = load_model(deploy_runs["lenet5"])
    calib = np.ascontiguousarray(load_raw(cfg.data.dataset, cfg.data.data_dir)[0][:256])
    fm8 = flat.decode(flat.encode(quantize(build_flat(model.eval(), cfg, int8=False), calib)))
    return model, cfg, IntEngine(fm8)


def test_int8_noise_at_sigma_zero_is_exact(trained_int8, mnist_test):
    _, _, eng = trained_int8
    x0 = eng.input(np.ascontiguousarray(mnist_test[0][:64]))
    hooks = int8_noise_hooks(eng, 0.0, np.random.default_rng(0))
    assert len(hooks) == len(eng.stages)
    assert np.array_equal(eng.forward(x0, acc_hooks=hooks), eng.forward(x0))


@pytest.mark.slow   # 3 sigmas x 4 draws x 1k images, float and int8; the sigma-0 test is fast
def test_int8_analog_noise_matches_the_float_noise_model(trained_int8, mnist_test):
    """The same relative noise on the int32 accumulators (in real units) as on the float conv/linear
    outputs: accuracy under noise agrees with the float implementation, at several sigmas."""
    from lenetlab.data.transforms import from_unit
    from lenetlab.noise.inject import noisy_accuracy

    model, cfg, eng = trained_int8
    images, labels = mnist_test[0][:1000], mnist_test[1][:1000]
    x0 = eng.input(np.ascontiguousarray(images))
    x = from_unit(torch.from_numpy(images).float().div(255).unsqueeze(1), cfg.data)
    y = torch.from_numpy(labels.astype(np.int64))
    accs = []
    for sigma in (0.05, 0.2, 0.5):
        fl = noisy_accuracy(model, x, y, sigma, draws=4, relative=True, sites=("conv", "linear"), seed=0)["mean"]
        it = int8_noisy_accuracy(eng, x0, labels, sigma, draws=4, seed=0)["mean"]
        accs.append((sigma, fl, it))
        assert abs(fl - it) < 0.03, accs
    assert accs[0][2] > accs[-1][2] + 0.2, accs      # and the noise does bite
