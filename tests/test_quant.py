"""lenetlab quantize and the integer engine: bit-exact with the deploy int8 runtime (one spec)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from lenetlab.deploy import flat, runtime
from lenetlab.deploy.graph import to_flat
from lenetlab.deploy.quantize import quantize
from lenetlab.errors import LenetlabError
from lenetlab.quant.engine import IntEngine, blas_threads, majority
from lenetlab.quant.run import load_qrun, quantize_run


@pytest.fixture(scope="module")
def qrun(small_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "q"
    info = quantize_run(small_run, out, calibration=1000, limit=2000)
    return out, info


def test_quantize_run_writes_model_and_accuracy(qrun):
    out, info = qrun
    assert (out / "model_int8.flat").is_file()
    meta = json.loads((out / "quant.json").read_text())
    assert meta == info and meta["test_images"] == 2000
    assert meta["int8_accuracy"] > 0.9
    assert meta["loss_points"] <= 0.3, meta            # issue 5 budget
    fm, _ = load_qrun(out)
    assert fm.dtype == "int8"


def test_engine_is_bit_exact_with_the_deploy_runtime(qrun, mnist_test):
    fm, _ = load_qrun(qrun[0])
    x = mnist_test[0][:300]
    with blas_threads(1):
        got = IntEngine(fm).run(x, batch_size=128)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, runtime.run(fm, x))


def test_engine_bit_exact_on_classic_lenet(mnist_test):
    """Subsampling, the C3 table, tanh LUTs and the RBF output (random weights are enough for exactness)."""
    from lenetlab.config import DataConfig
    from lenetlab.models import create_model

    torch.manual_seed(0)
    model = create_model("lenet5_classic").eval()
    fm8 = flat.decode(flat.encode(quantize(to_flat(model, DataConfig(normalize="lecun", pad=2)),
                                           mnist_test[0][:200])))
    x = mnist_test[0][200:300]
    with blas_threads(1):
        np.testing.assert_array_equal(IntEngine(fm8).run(x), runtime.run(fm8, x))


def test_majority_voter_masks_one_bad_word():
    a = np.array([5, -7, 1 << 30])
    bad = a ^ np.array([1 << 3, 1 << 31, 1])
    np.testing.assert_array_equal(majority(a, bad, a), a)
    np.testing.assert_array_equal(majority(bad, a, a), a)


def test_engine_rejects_float_models(small_run):
    from lenetlab.deploy.export import build_flat
    from lenetlab.rundir import load_model

    model, cfg = load_model(small_run)
    with pytest.raises(LenetlabError, match="int8"):
        IntEngine(build_flat(model.eval(), cfg, int8=False))


def test_quantize_cli_and_bad_input(small_run, tmp_path):
    r = run_cli("quantize", str(small_run), "--out", str(tmp_path / "q"), "--calibration", "200", "--limit", "200",
                check=True)
    assert "int8" in r.stdout and (tmp_path / "q" / "quant.json").is_file()
    r = run_cli("quantize", str(tmp_path / "nope"), "--out", str(tmp_path / "q2"))
    assert r.returncode == 2 and "no such run directory" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "q2").exists()
    r = run_cli("quantize", str(small_run), "--out", str(tmp_path / "q3"), "--calibration", "0")
    assert r.returncode == 2 and "--calibration" in r.stderr
    with pytest.raises(LenetlabError, match="not a quantised run"):
        load_qrun(tmp_path)
