"""The page's fast JavaScript runtime (flat.js: background-split direct convolutions over row spans, fused
activations, int8 conv+maxpool on raw sums, batched predictBatch) computes what the NumPy runtime computes.

On real MNIST test images in headless Chromium: the page's own test-set evaluation gives the NumPy runtime's
top-1 on every image, int8 logits are bit-identical, float32 logits agree to float rounding (64 float32 eps x
max(1, max|logit|)); for the modern LeNet-5 and the 1998 model (C3 table, subsampling, scaled tanh, RBF), and
for a synthetic model that takes the paths those two do not (3x3 and 4x4 kernels, padding around a non-zero
background, average pooling, the other activations, requantisation products past 2^53). No timing asserts.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_logits_match
from lenetlab.deploy import flat, runtime
from lenetlab.deploy.browser import BrowserPage
from lenetlab.deploy.web import site_files
from test_deploy_web import model_of, shared_site, with_test_set  # one cache of sites for both browser test files


def check_logits(js: np.ndarray, ref: np.ndarray, int8: bool, what: str) -> None:
    if int8:
        assert np.array_equal(js, ref.astype(np.float64)), f"{what}: int8 logits differ"
    else:
        assert_logits_match(js, ref, what)


# the page's own test-set button, for both models and both dtypes: the 1998 model in int8 (connection table,
# subsampling, RBF, exact integers) on the first 1,000 test images (served as the page's test set) in the fast
# tier; all four on the whole 10k set in the slow tier (the NumPy reference on 10k images costs ~8 s a model;
# test_deploy_web.py checks lenet5 float32 through the same button)
@pytest.mark.parametrize("arch,int8,n", [
    pytest.param("lenet5", False, 10000, marks=pytest.mark.slow, id="lenet5-float32-10k"),
    pytest.param("lenet5", True, 10000, marks=pytest.mark.slow, id="lenet5-int8-10k"),
    pytest.param("lenet5_classic", False, 10000, marks=pytest.mark.slow, id="lenet5_classic-float32-10k"),
    pytest.param("lenet5_classic", True, 10000, marks=pytest.mark.slow, id="lenet5_classic-int8-10k"),
    pytest.param("lenet5_classic", True, 1000, id="lenet5_classic-int8-1k")])
@pytest.mark.parametrize("rt", ["wasm", "js"])   # the C runtime as WebAssembly (the default), flat.js
def test_page_evaluation_matches_numpy(browser, deploy_runs, deploy_flats, mnist_test, arch, int8, n, tmp_path, rt):
    images, labels = mnist_test[0][:n], mnist_test[1][:n]
    files = shared_site(deploy_runs, deploy_flats, arch, int8)
    if n < len(mnist_test[0]):
        files = with_test_set(files, images, labels, tmp_path)
    fm = model_of(files)
    ref = runtime.run(fm, images)
    with BrowserPage(browser, files, runtime=rt) as page:
        shown = browser.execute_script("return document.getElementById('model-info').textContent")
        assert ("runtime: C as WebAssembly" if rt == "wasm" else "runtime: JavaScript") in shown, shown
        preds = page.evaluate_test_set()
        got = browser.execute_script("""
            const a = document.getElementById('test-accuracy');
            return {correct: Number(a.dataset.correct), total: Number(a.dataset.total)};""")
        js = page.logits(images[:300])
        # predictBatch (what the button calls) = argmax of run() image by image, and it counts the correct ones
        batch = browser.execute_script("""
            const s = atob(arguments[0]), px = new Uint8Array(s.length);
            for (let i = 0; i < s.length; i++) px[i] = s.charCodeAt(i);
            const rt = window.lenetlab.state.runtime, n = px.length / 784, preds = new Uint8Array(n + 3);
            const labels = new Uint8Array(n + 3).fill(255);
            labels.set(Array.from(arguments[1]), 3);
            const correct = rt.predictBatch(px, 0, n, preds, 3, labels);
            return {correct, preds: Array.from(preds.subarray(3))};""",
            page._images_arg(images[:200]), labels[:200].tolist())
    top1 = ref.argmax(1)
    assert len(preds) == len(images) == n
    assert (preds == top1).all(), f"top-1 differs on {(preds != top1).sum()} images"
    assert got == {"correct": int((top1 == labels).sum()), "total": n}
    check_logits(js, ref[:300], int8, f"{arch} {fm.dtype}")
    assert batch["preds"] == top1[:200].tolist()
    assert batch["correct"] == int((top1[:200] == labels[:200]).sum())


def synthetic_model(int8: bool, seed: int = 0) -> flat.FlatModel:
    """A random network over 28x28 images that uses every op and the kernels LeNet-5 does not: model padding,
    conv 3x3 pad 1 (generic kernel, padding around a non-zero background), average pooling, conv 4x4 with a
    connection table straight into a max pool, subsampling, sigmoid / tanh / selu / abs, dense logits."""
    rng = np.random.default_rng(seed)
    layers = []

    def conv_arrays(o: int, c: int, k: int):
        if int8:
            return {"w": rng.integers(-128, 128, o * c * k * k).astype(np.int8),
                    "b": rng.integers(-3000, 3000, o).astype(np.int32)}
        return {"w": rng.normal(0, 0.4, o * c * k * k).astype(np.float32),
                "b": rng.normal(0, 0.1, o).astype(np.float32)}

    def requant(arrays: dict, o: int, shifts) -> dict:
        if int8:
            # multipliers near 2^30 with shifts 36..40 keep most values inside int8; shift 62 with M = 2^31 - 1
            # makes |acc| * M + 2^61 pass 2^53 (the exact split path)
            s = np.asarray([shifts[i % len(shifts)] for i in range(o)], np.int32)
            m = np.where(s == 62, 2**31 - 1, rng.integers(2**29, 2**30, o)).astype(np.int32)
            arrays.update(m=m, s=s)
        return arrays

    def act(shape, name: str) -> flat.Layer:
        arrays = {"t": rng.integers(-128, 128, 256).astype(np.int8)} if int8 else {}
        return flat.Layer("act", shape, shape, act=name, out_bits=8 if int8 else 32, arrays=arrays)

    bits = 8 if int8 else 32
    layers.append(flat.Layer("conv", (1, 30, 30), (4, 30, 30), k=3, pad=1, out_bits=bits,
                             arrays=requant(conv_arrays(4, 1, 3), 4, [37, 38, 62])))
    layers.append(act((4, 30, 30), "sigmoid"))
    layers.append(flat.Layer("avgpool", (4, 30, 30), (4, 15, 15), k=2, out_bits=bits))
    c2 = conv_arrays(6, 4, 4)
    c2["t"] = (rng.random(24) < 0.6).astype(np.uint8)
    layers.append(flat.Layer("conv", (4, 15, 15), (6, 12, 12), k=4, out_bits=bits,
                             arrays=requant(c2, 6, [39, 40, 62])))
    layers.append(flat.Layer("maxpool", (6, 12, 12), (6, 6, 6), k=2, out_bits=bits))
    layers.append(act((6, 6, 6), "tanh"))
    sub = ({"w": rng.integers(-128, 128, 6).astype(np.int8), "b": rng.integers(-500, 500, 6).astype(np.int32)}
           if int8 else {"w": rng.normal(0, 0.5, 6).astype(np.float32), "b": rng.normal(0, 0.1, 6).astype(np.float32)})
    layers.append(flat.Layer("subsample", (6, 6, 6), (6, 3, 3), k=2, out_bits=bits, arrays=requant(sub, 6, [37, 38])))
    layers.append(act((6, 3, 3), "selu"))
    layers.append(flat.Layer("dense", (6, 3, 3), (16, 1, 1), out_bits=bits,
                             arrays=requant(conv_arrays(16, 54, 1), 16, [38, 39, 62])))
    layers.append(act((16, 1, 1), "abs"))
    layers.append(flat.Layer("dense", (16, 1, 1), (10, 1, 1), out_bits=32,
                             arrays=requant(conv_arrays(10, 16, 1), 10, [36, 38])))
    if int8:
        for layer in layers:
            layer.out_scale = 0.05
        return flat.FlatModel("int8", (28, 28), 1, 10, 1 / 255, -0.4, layers,
                              in_lut=np.clip(np.arange(256) // 2 - 50, -128, 127).astype(np.int8), in_qscale=0.01)
    return flat.FlatModel("float32", (28, 28), 1, 10, 1 / 255, -0.4, layers)


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("rt", ["wasm", "js"])
def test_every_kernel_matches_numpy_on_a_synthetic_model(browser, mnist_test, int8, rt):
    fm = flat.decode(flat.encode(synthetic_model(int8)))
    images = mnist_test[0][:300]
    ref = runtime.run(fm, images)
    assert np.unique(ref.argmax(1)).size > 1      # a network whose outputs depend on the image
    files = site_files(flat.encode(fm), int8=int8, arch="synthetic", run_name="synthetic")
    with BrowserPage(browser, files, runtime=rt) as page:
        js = page.logits(images)
    check_logits(js, ref, int8, f"synthetic {fm.dtype}")
    assert (js.argmax(1) == ref.argmax(1)).all()
