"""The in-browser runtime and page (lenetlab serve / export --format web), tested in a real headless Chromium.

The JavaScript runtime must agree with the NumPy runtime: the same number of correct test images (float32:
same top-1 on every image; int8: bit-identical logits). The server serves a fixed whitelist only.
"""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from lenetlab.data.idx import write_idx
from lenetlab.deploy import flat, runtime
from lenetlab.deploy.web import DATA_DIR, TEST_FILES, make_server, run_site_files, site_files, static_files
from lenetlab.errors import LenetlabError
from lenetlab.rundir import load_config

HANG_S = 600   # waits end when the page/server answers; this only keeps a hang from hanging the suite


@contextmanager
def serving(files: dict[str, bytes]):
    srv = make_server(files, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


_SITES: dict[tuple[str, bool], dict[str, bytes]] = {}


def site(run: Path, int8: bool, flat_file: Path | None = None) -> dict[str, bytes]:
    """The page of a trained run (cached): ``run_site_files(run, int8)``, the library's path (``serve`` runs it
    too). With ``flat_file`` (the run's own flat file, conftest.deploy_flats: the same build_flat output) the same
    files around that model, so the int8 model is not calibrated again (~2 s) for every page."""
    key = (str(run), int8)
    if key not in _SITES:
        if flat_file is None:
            _SITES[key] = run_site_files(run, int8)
        else:
            cfg = load_config(Path(run))
            _SITES[key] = site_files(flat_file.read_bytes(), int8=int8, arch=cfg.model.name, run_name=Path(run).name,
                                     dataset=cfg.data.dataset, data_dir=cfg.data.data_dir)
    return _SITES[key]


def shared_site(deploy_runs, deploy_flats, name: str, int8: bool) -> dict[str, bytes]:
    """:func:`site` of deploy run ``name`` around its shared flat file."""
    return site(deploy_runs[name], int8, deploy_flats[name]["int8" if int8 else "float"])


def with_test_set(files: dict[str, bytes], images: np.ndarray, labels: np.ndarray, tmp: Path) -> dict[str, bytes]:
    """``files`` with the page's test set (the gzip IDX files under data/) replaced by ``images`` / ``labels``:
    the page evaluates whatever test set it is given."""
    out = dict(files)
    for name, array in zip(TEST_FILES, (images, labels.astype(np.uint8))):
        write_idx(tmp / name, np.ascontiguousarray(array), compress=True)
        out[f"{DATA_DIR}/{name}"] = (tmp / name).read_bytes()
    return out


def model_of(files: dict[str, bytes]) -> flat.FlatModel:
    return flat.decode(files[json.loads(files["manifest.json"])["model"]])


def open_page(driver, url: str, timeout: float = HANG_S) -> str:
    """Load the page and wait until the model is loaded (or failed): returns body[data-state]."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body.dataset.state") in ("ready", "error"))
    return driver.execute_script("return document.body.dataset.state")


def evaluate_in_page(driver, timeout: float = HANG_S) -> dict:
    """Click the test-set button, wait for the result and read it from the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "run-test").click()
    WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        lambda d: d.execute_script("return document.body.dataset.test") in ("done", "error"))
    assert driver.execute_script("return document.body.dataset.test") == "done", \
        driver.find_element(By.ID, "test-status").text
    return driver.execute_script("""
        const a = document.getElementById('test-accuracy'), s = document.getElementById('test-speed');
        return {accuracy: Number(a.dataset.accuracy), correct: Number(a.dataset.correct),
                total: Number(a.dataset.total), ips: Number(s.dataset.ips), text: a.textContent, speed: s.textContent,
                predictions: Array.from(window.lenetlab.lastEval.predictions)};""")


def js_logits(driver, images: np.ndarray) -> np.ndarray:
    """Logits of uint8 images computed by the page's runtime (flat.js)."""
    n = len(images)
    out = driver.execute_script("""
        const s = atob(arguments[0]), px = new Uint8Array(s.length);
        for (let i = 0; i < s.length; i++) px[i] = s.charCodeAt(i);
        const rt = window.lenetlab.state.runtime, size = arguments[1], out = [];
        for (let i = 0; i < px.length / size; i++) for (const v of rt.run(px, i * size)) out.push(v);
        return out;""", base64.b64encode(np.ascontiguousarray(images, np.uint8).tobytes()).decode(), 28 * 28)
    return np.asarray(out, np.float64).reshape(n, -1)


# ---------------------------------------------------------------- the page runs the model like NumPy
def draw_seven(driver) -> None:
    """A "7" drawn with the mouse: the bar, then the diagonal (offsets from the pad's centre, CSS pixels)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    chain = ActionChains(driver, duration=20).move_to_element_with_offset(pad, -65, -85).click_and_hold()
    for _ in range(6):
        chain.move_by_offset(22, 0)
    for _ in range(9):
        chain.move_by_offset(-8, 20)
    chain.release().perform()


def wait_prediction(driver) -> int:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, HANG_S).until(lambda d: d.find_element(By.ID, "prediction").get_attribute("data-class") != "")
    return int(driver.find_element(By.ID, "prediction").get_attribute("data-class"))


# the page's own test-set button: float32 on the first 1,000 test images (served as the page's test set) in the
# fast tier; the whole 10k set, float32 and int8, in the slow tier (the int8 page is checked on 1k images, logits
# bit for bit, by test_browser_runs_classic_lenet5_like_numpy; the NumPy reference on 10k images alone costs ~8 s)
@pytest.mark.parametrize("int8,n", [(False, 1000), pytest.param(False, 10000, marks=pytest.mark.slow),
                                    pytest.param(True, 10000, marks=pytest.mark.slow)],
                         ids=["float32-1k", "float32-10k", "int8-10k"])
def test_browser_test_set_accuracy_equals_numpy(browser, deploy_runs, deploy_flats, mnist_test, int8, n, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    images, labels = mnist_test[0][:n], mnist_test[1][:n]
    files = shared_site(deploy_runs, deploy_flats, "lenet5", int8)
    if n < len(mnist_test[0]):
        files = with_test_set(files, images, labels, tmp_path)
    fm = model_of(files)
    numpy_out: dict[str, np.ndarray] = {}
    # the NumPy reference runs on one core while the browser evaluates on the other
    worker = threading.Thread(target=lambda: numpy_out.update(logits=runtime.run(fm, images)))
    worker.start()
    with serving(files) as srv:
        assert open_page(browser, srv.url) == "ready", browser.find_element(By.ID, "error").text
        info = browser.find_element(By.ID, "model-info")
        assert info.get_attribute("data-dtype") == fm.dtype
        assert int(info.get_attribute("data-bytes")) == len(flat.encode(fm))
        assert int(info.get_attribute("data-layers")) == len(fm.layers)
        got = evaluate_in_page(browser)
        worker.join()
        ref_logits = numpy_out["logits"]
        ref = ref_logits.argmax(1)
        assert got["total"] == len(images) == n
        assert got["correct"] == int((ref == labels).sum())                 # the same accuracy, exactly
        assert got["accuracy"] == pytest.approx(float((ref == labels).mean()), abs=1e-12)
        assert got["ips"] > 0
        preds = np.asarray(got["predictions"])
        assert (preds == ref).all(), f"top-1 differs on {(preds != ref).sum()} images"
        # logits of the first 300 images: int8 bit-identical, float32 to float rounding
        js = js_logits(browser, images[:300])
        if int8:
            assert np.array_equal(js, ref_logits[:300].astype(np.float64))
        else:
            assert np.abs(js - ref_logits[:300]).max() <= 1e-4 * max(1.0, np.abs(ref_logits[:300]).max())
        if not int8:   # the screenshot: test-set result and a drawn digit
            draw_seven(browser)
            wait_prediction(browser)
            shot = tmp_path / "web_screenshot.png"
            browser.save_screenshot(str(shot))
            with Image.open(shot) as im:
                assert im.size[0] >= 600 and im.size[1] >= 600
                assert len(np.unique(np.asarray(im.convert("L")))) > 50     # a real page, not a blank image
    print(f"\n{fm.dtype}: in-browser accuracy {got['text']}, {got['speed']}")


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_browser_runs_classic_lenet5_like_numpy(browser, deploy_runs, deploy_flats, mnist_test, int8):
    """LeNet-5 1998: C3 connection table, trainable subsampling, scaled tanh, RBF output."""
    images = mnist_test[0][:1000]
    files = shared_site(deploy_runs, deploy_flats, "lenet5_classic", int8)
    fm = model_of(files)
    assert {layer.op for layer in fm.layers} >= {"conv", "subsample", "act", "dense", "rbf"}
    ref = runtime.run(fm, images)
    with serving(files) as srv:
        assert open_page(browser, srv.url) == "ready"
        js = js_logits(browser, images)
    if int8:
        assert np.array_equal(js, ref.astype(np.float64))
    else:
        assert np.abs(js - ref).max() <= 1e-5 * np.abs(ref).max()
    assert (js.argmax(1) == ref.argmax(1)).all()


def test_drawing_gives_a_live_prediction(browser, deploy_runs):
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    from lenetlab.data.images import to_mnist

    run = deploy_runs["lenet5"]
    files = site(run, False)
    fm = model_of(files)

    with serving(files) as srv:
        assert open_page(browser, srv.url) == "ready"
        pad = browser.find_element(By.ID, "pad")
        assert browser.find_element(By.ID, "prediction").get_attribute("data-class") == ""
        draw_seven(browser)
        cls = wait_prediction(browser)
        last = browser.execute_script("return window.lenetlab.lastDigit")
        digit = np.asarray(last["pixels"], np.uint8).reshape(1, 28, 28)
        # what the page computed is what the NumPy runtime computes for the same 28x28 image
        ref = runtime.run(fm, digit)[0]
        assert last["predicted"] == cls == int(ref.argmax())
        assert np.abs(np.asarray(last["logits"]) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
        probs = [float(browser.find_element(By.ID, f"prob-{i}").get_attribute("data-p")) for i in range(10)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and int(np.argmax(probs)) == cls
        assert cls == 7, f"a drawn 7 read as {cls} (probabilities {np.round(probs, 3).tolist()})"
        # the JS preprocessing mirrors lenetlab.data.images.to_mnist on the same canvas pixels
        gray = np.frombuffer(base64.b64decode(browser.execute_script("""
            const c = document.getElementById('pad'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let s = ''; for (let i = 0; i < d.length; i += 4) s += String.fromCharCode(d[i]); return btoa(s);""")),
            np.uint8).reshape(280, 280)
        py = np.round(to_mnist(gray / 255.0) * 255).astype(np.int16)
        diff = np.abs(py - digit[0].astype(np.int16))
        print(f"\nJS vs Python to_mnist on the drawn 7: mean |diff| {diff.mean():.3f}, max {diff.max()} (of 255)")
        assert diff.mean() < 2.0 and diff.max() <= 40, (diff.mean(), diff.max())
        assert int(runtime.run(fm, py.astype(np.uint8)[None]).argmax()) == cls
        # clear, then a "1" with a finger (touch pointer events)
        browser.find_element(By.ID, "clear").click()
        assert browser.find_element(By.ID, "prediction").get_attribute("data-class") == ""
        touch = ActionBuilder(browser, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
        touch.pointer_action.move_to(pad, 5, -95).pointer_down()
        for i in range(1, 10):
            touch.pointer_action.move_to(pad, 5 - i, -95 + 20 * i)
        touch.pointer_action.pointer_up()
        touch.perform()
        assert wait_prediction(browser) == 1


# ---------------------------------------------------------------- validation in the browser
def _with_crc(data: bytearray) -> bytes:
    struct.pack_into("<I", data, 60, flat.crc(bytes(data[:64]), bytes(data[64:])))
    return bytes(data)


def _corruptions(good: bytes, good_int8: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (damaged file, a word the error message must contain)."""
    def edit(base: bytes, fmt: str, off: int, value, crc: bool = True) -> bytes:
        b = bytearray(base)
        struct.pack_into(fmt, b, off, value)
        return _with_crc(b) if crc else bytes(b)

    blob_off = struct.unpack_from("<I", good, 24)[0]
    blob_bytes = struct.unpack_from("<I", good, 28)[0]
    flipped = bytearray(good)
    flipped[blob_off + 100] ^= 0x40
    s_off = struct.unpack_from("<I", good_int8, 64 + 52)[0]           # layer 0 shifts (int8)
    b_off = struct.unpack_from("<I", good_int8, 24)[0]
    return {
        "short": (good[:40], "shorter than"),
        "magic": (b"LENET5FX" + good[8:], "bad magic"),
        "version": (edit(good, "<H", 8, 2, crc=False), "version"),
        "crc": (bytes(flipped), "CRC mismatch"),
        "appended": (good + b"\0", "file_bytes"),
        "n_layers": (edit(good, "<I", 16, 0), "n_layers"),
        "op": (edit(good, "<B", 64, 9), "unknown op code"),
        "act code": (edit(good, "<B", 64 + 2 * 64 + 1, 9), "activation code"),
        "shape": (edit(good, "<H", 64 + 12, 27), "output shape"),
        "past blob": (edit(good, "<I", 64 + 20, blob_bytes - 4), "run past the blob"),
        "unaligned": (edit(good, "<I", 64 + 20, 2), "not aligned"),
        "num_classes": (edit(good, "<H", 38, 11), "num_classes"),
        "nan weight": (edit(good, "<f", blob_off, float("nan")), "non-finite"),
        "int8 shift": (edit(good_int8, "<i", b_off + s_off, 0), "shift not in 1..62"),
        "int8 lut": (edit(good_int8, "<I", 48, 0xFFFFFFFF), "input LUT"),
    }


def test_js_validator_rejects_what_flat_py_rejects(browser, deploy_runs, deploy_flats):
    files = site(deploy_runs["lenet5"], False)
    good = files["model.flat"]
    good_int8 = shared_site(deploy_runs, deploy_flats, "lenet5", True)["model_int8.flat"]
    cases = {"good": (good, ""), "good int8": (good_int8, ""), **_corruptions(good, good_int8)}
    with serving(files) as srv:
        assert open_page(browser, srv.url) == "ready"
        verdicts = browser.execute_script("""
            const out = {};
            for (const [name, b64] of Object.entries(arguments[0])) {
              const s = atob(b64), bytes = new Uint8Array(s.length);
              for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
              try { window.lenetlab.parseFlat(bytes); out[name] = 'ok'; }
              catch (e) { out[name] = e.name + ': ' + e.message; }
            }
            return out;""", {k: base64.b64encode(v[0]).decode() for k, v in cases.items()})
    for name, (data, word) in cases.items():
        try:
            flat.decode(data)
            py_ok = True
        except flat.FlatFormatError:
            py_ok = False
        js = verdicts[name]
        assert (js == "ok") == py_ok == (word == ""), (name, js)
        if word:
            assert js.startswith("FlatFormatError: invalid flat model:") and word in js, (name, js)


def test_corrupted_model_shows_an_error_in_the_page(browser, deploy_runs):
    from selenium.webdriver.common.by import By

    files = dict(site(deploy_runs["lenet5"], False))
    damaged = bytearray(files["model.flat"])
    damaged[-5] ^= 0xFF
    files["model.flat"] = bytes(damaged)
    with serving(files) as srv:
        assert open_page(browser, srv.url) == "error"
        err = browser.find_element(By.ID, "error")
        assert err.is_displayed()
        assert "model.flat: invalid flat model: CRC mismatch" in err.text
        assert not browser.find_element(By.ID, "run-test").is_enabled()


def test_requantize_split_is_exact_in_the_browser(browser, deploy_runs):
    """The int8 requantisation without BigInt agrees with a BigInt reference (ties and extremes included)."""
    with serving(site(deploy_runs["lenet5"], False)) as srv:
        assert open_page(browser, srv.url) == "ready"
        bad = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            import('./flat.js').then(({requantize, requantizeBig}) => {
              let bad = [], seed = 12345;
              const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
              const ranges = [[-128, 127], [-2147483648, 2147483647]];
              const check = (a, M, n) => { for (const [lo, hi] of ranges)
                if (requantize(a, M, n, lo, hi) !== requantizeBig(a, M, n, lo, hi)) bad.push([a, M, n, lo]); };
              for (let i = 0; i < 50000; i++) {
                const a = Math.floor((rnd() * 2 - 1) * 2 ** (1 + Math.floor(rnd() * 35)));
                check(a, Math.floor(rnd() * 2 ** 31), 1 + Math.floor(rnd() * 62));
              }
              for (let n = 1; n <= 62; n++) for (let j = 0; j < 34; j++) {      // exact halves: a*M = (2q+1) 2^(n-1)
                const e = n - 1 - j; if (e < 0 || e > 30) continue;
                const M = (2 * Math.floor(rnd() * 2 ** (30 - e)) + 1) * 2 ** e; if (M >= 2 ** 31) continue;
                for (const a of [2 ** j, -(2 ** j), 3 * 2 ** j]) check(a, M, n);
              }
              for (const M of [0, 1, 2 ** 31 - 1, 2 ** 30, 65535, 65536, 65537])
                for (const a of [1, -1, 2 ** 31, -(2 ** 32) - 12345, 2 ** 35 + 7, 2 ** 40 + 3])
                  for (let n = 1; n <= 62; n++) check(a, M, n);
              done(bad.slice(0, 5));
            }, (e) => done(['import failed: ' + e]));""")
    assert bad == []


# ---------------------------------------------------------------- server
def _plain_site() -> dict[str, bytes]:
    return {**static_files(), "manifest.json": b"{}", "model.flat": b"x"}


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_S)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_server_serves_only_its_whitelist():
    with serving(_plain_site()) as srv:
        port = srv.server_address[1]
        assert srv.server_address[0] == "127.0.0.1"
        status, headers, body = _get(port, "/")
        assert status == 200 and body.startswith(b"<!doctype html>")
        assert headers["content-type"].startswith("text/html") and "default-src 'none'" in headers[
            "content-security-policy"]
        status, headers, body = _get(port, "/flat.js?v=1")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert body == (Path(__file__).parents[1] / "src/lenetlab/deploy/web/flat.js").read_bytes()
        assert _get(port, "/model.flat", "HEAD")[0] == 200
        for path in ("/../web.py", "/%2e%2e/web.py", "/..%2fweb.py", "/web.py", "/flat.py", "//etc/passwd",
                     "/etc/passwd", "/data/../app.js", "/./app.js", "/deploy/web/app.js", "/APP.JS",
                     "/data/train-images-idx3-ubyte.gz", "/index.html/", "/manifest.json/..", "/%00", "/~"):
            assert _get(port, path)[0] == 404, path
        assert _get(port, "/", "POST")[0] == 501
        assert _get(port, "/", "PUT")[0] == 501


def test_busy_port_is_a_clear_error(deploy_runs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(LenetlabError, match=f"port {port} on 127.0.0.1 is already in use"):
            make_server(_plain_site(), port=port)
        r = run_cli("serve", str(deploy_runs["lenet5"]), "--port", str(port))
    assert r.returncode != 0
    assert "already in use" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_serve_prints_the_url_and_stops_on_ctrl_c(deploy_runs):
    # a test run started in the background by a script inherits SIGINT ignored; serve switches it back on
    proc = subprocess.Popen([sys.executable, "-m", "lenetlab", "serve", str(deploy_runs["lenet5"]), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving lenet5" in line and "(Ctrl-C to stop)" in line and "http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        status, _, body = _get(port, "/manifest.json")
        assert status == 200 and json.loads(body)["model"] == "model.flat"
        assert _get(port, "/model.flat")[2][:8] == b"LENET5FL"
        proc.send_signal(signal.SIGINT)
        # the server stops at once ("stopped"); the interpreter then unloads torch, which takes seconds on a
        # busy machine. HANG_S only keeps a hung server from hanging the suite: it is not a speed requirement.
        out, err = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines()[-1] == "stopped" and "Traceback" not in err
    with pytest.raises(OSError):                   # the port is closed
        _get(port, "/")


# ---------------------------------------------------------------- exporter
class _QuietStaticHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_export_web_writes_a_static_site(deploy_runs, tmp_path, request):
    run = deploy_runs["lenet5"]
    out = tmp_path / "site"
    r = run_cli("export", str(run), "--format", "web", "--out", str(out), "--no-check", check=True)
    names = {"index.html", "app.js", "flat.js", "mnistify.js", "wasm.js", "lenet5.wasm", "style.css", "manifest.json",
             "model.flat", "data/t10k-images-idx3-ubyte.gz", "data/t10k-labels-idx1-ubyte.gz", "data/README.md"}
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == names
    assert r.stdout.count("wrote ") == len(names)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "model.flat" and manifest["dtype"] == "float32"
    assert (out / "model.flat").read_bytes() == site(run, False)["model.flat"]
    assert "CC BY-SA 3.0" in (out / "data/README.md").read_text()
    # the same page, opened through a plain static file server
    browser = request.getfixturevalue("browser")
    from selenium.webdriver.common.by import By

    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietStaticHandler, directory=str(out)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert open_page(browser, f"http://127.0.0.1:{srv.server_address[1]}/index.html") == "ready"
        assert browser.find_element(By.ID, "model-info").get_attribute("data-dtype") == "float32"
        assert browser.find_element(By.ID, "run-test").is_enabled()
    finally:
        srv.shutdown()
        srv.server_close()


def test_export_web_int8(deploy_export):
    """The int8 site through the export API (the exporter contract's export, shared: conftest.deploy_export)."""
    out, paths = deploy_export("lenet5_classic", "web", True)
    assert out / "model_int8.flat" in paths and out / "index.html" in paths
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "model_int8.flat" and manifest["dtype"] == "int8"
    assert flat.load(str(out / "model_int8.flat")).dtype == "int8"


def test_site_files_refuse_a_broken_model():
    with pytest.raises(flat.FlatFormatError):
        site_files(b"LENET5FL" + bytes(100), int8=False, arch="lenet5", run_name="x")
