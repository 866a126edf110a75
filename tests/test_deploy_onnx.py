"""ONNX export (``lenetlab export --format onnx``): onnxruntime vs PyTorch on real MNIST.

Skipped cleanly when the ``onnx`` extra (onnx, onnxruntime, onnxscript) is not installed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEPLOY_IMAGES, assert_logits_match, logit_tolerance, run_cli
from lenetlab.config import DataConfig, ModelConfig, RunConfig
from lenetlab.data.transforms import to_model_input
from lenetlab.deploy import onnx_export
from lenetlab.deploy.export import ExportContext, build_flat
from lenetlab.errors import LenetlabError
from lenetlab.models import create_model
from lenetlab.models.base import model_entry
from lenetlab.rundir import load_model

# checked without importing them: onnx and onnxruntime take seconds to import, and every xdist worker collects
# this module
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="the onnx extra is not installed (pip install 'lenetlab[onnx]')")

def session(path: Path):
    import onnxruntime as ort

    # one thread: onnxruntime's pool spins a thread per core between runs (CPU, not speed, on these small batches)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_logits(model: torch.nn.Module, images: np.ndarray, data: DataConfig) -> np.ndarray:
    """Logits of ``model`` (float32, or float64 for a ``.double()`` copy) in batches of 2500."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        return torch.cat([model(to_model_input(torch.from_numpy(images[i:i + 2500]), data).to(dtype))
                          for i in range(0, len(images), 2500)]).numpy()


@pytest.fixture(scope="module")
def exported(deploy_export) -> Callable[[str], Path]:
    """``exported(name)``: the folder of the trained run's ONNX export (in-process, the same path as the CLI),
    made once per session and shared with the exporter contract (conftest.deploy_export)."""
    def get(name: str) -> Path:
        out, files = deploy_export(name, "onnx")
        assert not isinstance(files, str), files
        assert [f.name for f in files] == ["model.onnx", "model_uint8.onnx", "model.onnx.json"]
        return out

    return get


# Each model's export traces it with torch.export (~7 s of CPU). The fast tier exports the 1998 model (connection
# table, trainable subsampling, scaled tanh, the float64 RBF output: the exporter's own graph code), the export the
# exporter contract (tests/test_exporters_contract.py) checks too; the modern lenet5 (max pooling, relu: standard
# ops) and all 10k images are in the slow tier, with the seven activation/pooling exports below.
@pytest.mark.parametrize("n", [DEPLOY_IMAGES, pytest.param(10000, marks=pytest.mark.slow)],
                         ids=[str(DEPLOY_IMAGES), "10k"])
@pytest.mark.parametrize("name", [pytest.param("lenet5", marks=pytest.mark.slow), "lenet5_classic"])
def test_parity_on_the_mnist_test_set(name, n, deploy_runs, exported, mnist_test):
    """onnxruntime vs PyTorch on the first ``n`` test images (all 10k: slow), both graphs (float input, uint8 pixels):
    every logit within 64 float32 eps of the logit scale of PyTorch's (conftest.logit_tolerance; measured ~2e-6
    for lenet5, ~1e-4 for lenet5_classic, whose RBF logits reach ~200), which fixes the top-1 class on every
    image that is not a float32 tie. Both float32 evaluations are held to the same bound against a float64
    evaluation of the same weights (on at most 1k images: float64 convolutions are slow), so neither is the one that is
    off."""
    x, y = mnist_test[0][:n], mnist_test[1][:n]
    model, cfg = load_model(deploy_runs[name])
    model.eval()
    ref = torch_logits(model, x, cfg.data)
    d = exported(name)

    float_sess = session(d / "model.onnx")
    (inp,) = float_sess.get_inputs()
    assert inp.name == "input" and inp.type == "tensor(float)" and inp.shape[1:] == list(model.input_shape)
    got = float_sess.run(["logits"], {"input": to_model_input(torch.from_numpy(x), cfg.data).numpy()})[0]

    pix_sess = session(d / "model_uint8.onnx")
    (pin,) = pix_sess.get_inputs()
    assert pin.name == "pixels" and pin.type == "tensor(uint8)" and pin.shape[1:] == [28, 28]
    got_pix = pix_sess.run(["logits"], {"pixels": x})[0]

    sub = slice(0, 1000)
    exact = torch_logits(copy.deepcopy(model).double(), x[sub], cfg.data)
    torch_err = assert_logits_match(ref[sub], exact, f"{name}: PyTorch float32 vs float64")
    diffs = []
    for what, g in (("float input", got), ("uint8 input", got_pix)):
        assert g.shape == ref.shape == (n, 10) and g.dtype == np.float32
        diffs.append(assert_logits_match(g, ref, f"{name} {what}: onnxruntime vs PyTorch"))
        assert_logits_match(g[sub], exact, f"{name} {what}: onnxruntime vs float64")
    print(f"\n{name}: max |onnx - torch| float input {diffs[0]:.3g}, uint8 input {diffs[1]:.3g} "
          f"(bound {logit_tolerance(ref):.3g}); accuracy {(got.argmax(1) == y).mean():.4f}; vs float64 "
          f"(1k images): onnx {np.abs(got[sub] - exact).max():.3g}, torch {torch_err:.3g}")

    # dynamic batch axis: a single image and an odd batch
    for k in (1, 3):
        assert pix_sess.run(["logits"], {"pixels": x[:k]})[0].shape == (k, 10)

    meta = json.loads((d / "model.onnx.json").read_text())
    assert meta["format"] == "onnx" and meta["model"] == name and meta["dtype"] == "float32"
    assert meta["normalisation"]["pad"] == cfg.data.pad and meta["normalisation"]["scheme"] == cfg.data.normalize
    assert [g["input"]["name"] for g in meta["graphs"]] == ["input", "pixels"]
    assert all(g["max_abs_diff_vs_torch"] <= meta["check"]["tolerance"] for g in meta["graphs"])


def _ctx(name: str, opts: dict, tmp_path: Path, int8: bool = False) -> ExportContext:
    torch.manual_seed(0)
    model = create_model(name, **opts).eval()
    cfg = RunConfig(model=ModelConfig(name, opts), data=DataConfig(**model_entry(name).data_defaults))
    return ExportContext(model, cfg, build_flat(model, cfg, False), int8, tmp_path)


# each export traces the model with torch.export (seconds): the fast tier exports the trained 1998 model
# (test_parity_on_the_mnist_test_set); these seven are slow
@pytest.mark.parametrize("act,pool", [pytest.param("tanh", "avg", marks=pytest.mark.slow),
                                      pytest.param("relu", "max", marks=pytest.mark.slow),
                                      *(pytest.param(a, p, marks=pytest.mark.slow) for a, p in [
                                          ("sigmoid", "avg"), ("selu", "max"), ("scaled_tanh", "avg"),
                                          ("abs", "max"), ("identity", "avg")])])
def test_every_activation_and_pooling(act, pool, tmp_path, mnist_test):
    """Each flat-format activation and both poolings export and match PyTorch (untrained weights)."""
    ctx = _ctx("lenet5", {"activation": act, "pool": pool}, tmp_path)
    onnx_export.OnnxExporter().write(ctx, tmp_path)
    images = mnist_test[0][:256]
    ref = torch_logits(ctx.model, images, ctx.cfg.data)
    got = session(tmp_path / "model_uint8.onnx").run(["logits"], {"pixels": images})[0]
    assert_logits_match(got, ref, f"{act}/{pool}")


@pytest.mark.slow   # one more torch.export; the exporter contract exports through the API
def test_cli_export_onnx(deploy_runs, tmp_path):
    out = tmp_path / "onnx"
    r = run_cli("export", str(deploy_runs["lenet5"]), "--format", "onnx", "--out", str(out), "--no-check")
    assert r.returncode == 0, r.stderr
    assert "model.onnx" in r.stdout and "Traceback" not in r.stderr
    for f in ("model.onnx", "model_uint8.onnx", "model.onnx.json"):
        assert (out / f).is_file()
    assert session(out / "model_uint8.onnx").run(["logits"], {"pixels": np.zeros((2, 28, 28), np.uint8)})[0].shape \
        == (2, 10)


def test_int8_is_refused_cleanly(tmp_path):
    """No fake int8 graph: a clear LenetlabError, and nothing written."""
    ctx = _ctx("lenet5", {}, tmp_path, int8=True)
    with pytest.raises(LenetlabError, match="int8 ONNX export is not supported"):
        onnx_export.OnnxExporter().write(ctx, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_int8_cli_error(deploy_runs, deploy_flats, tmp_path, monkeypatch):
    # the refusal comes after export() has built the int8 flat model: the session's shared one stands in for a
    # second calibration of the same run (~2 s); test_deploy_flat.py's CLI export calibrates for real
    from lenetlab.deploy import export as export_mod
    from lenetlab.deploy import flat

    monkeypatch.setattr(export_mod, "build_flat",
                        lambda model, cfg, int8: flat.load(str(deploy_flats["lenet5"]["int8" if int8 else "float"])))
    r = run_cli("export", str(deploy_runs["lenet5"]), "--format", "onnx", "--int8", "--out", str(tmp_path),
                "--no-check")
    assert r.returncode == 2
    assert "int8 ONNX export is not supported" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.onnx"))


def test_missing_extra_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # import onnxruntime -> ImportError
    with pytest.raises(LenetlabError, match=r"pip install 'lenetlab\[onnx\]'"):
        onnx_export.OnnxExporter().write(_ctx("lenet5", {}, tmp_path), tmp_path)
