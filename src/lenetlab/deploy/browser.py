"""Drive the in-browser runtime (``deploy/web/``) from Python through headless Chromium.

Used by ``lenetlab reproduce deploy`` to score the page's JavaScript runtime on
the whole test set and to time it per image, beside the NumPy and C runtimes.
The page is served from memory (:func:`lenetlab.deploy.web.make_server`, the
same whitelist ``lenetlab serve`` uses) and driven with Selenium: the
"run the test set" button evaluates every test image in the page's own loop, and
:meth:`BrowserPage.logits` / :meth:`BrowserPage.seconds_per_image` call the
page's ``Runtime.run`` directly.

Chromium and Selenium are optional: :func:`open_browser` raises
:class:`BrowserUnavailable` with the reason (not installed, does not start),
which callers report instead of a result.

Example::

    from lenetlab.deploy.browser import BrowserPage, open_browser
    from lenetlab.deploy.web import run_site_files
    driver = open_browser()
    with BrowserPage(driver, run_site_files("runs/demo")) as page:
        preds = page.evaluate_test_set()          # (10000,) top-1 of every test image
    driver.quit()
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
from typing import Any

import numpy as np

from lenetlab.errors import LenetlabError

BROWSER_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1100,1500")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserUnavailable(LenetlabError):
    """No headless browser here; the message says why (not installed, does not start)."""


class PageError(LenetlabError):
    """The page reported an error (the model did not load, the test-set run failed)."""


def find_chromium() -> tuple[str | None, str | None]:
    """Paths of a Chromium-family browser and its chromedriver (None where missing)."""
    browser = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    driver = "/usr/bin/chromedriver" if os.access("/usr/bin/chromedriver", os.X_OK) else shutil.which("chromedriver")
    return browser, driver


def open_browser(script_timeout: float = 300) -> Any:
    """A headless Chromium WebDriver; :class:`BrowserUnavailable` (with the reason) when there is none."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (pip install selenium)") from None
    chromium, driver_path = find_chromium()
    if chromium is None or driver_path is None:
        missing = "chromium" if chromium is None else "chromedriver"
        raise BrowserUnavailable(f"{missing} is not installed (Debian: apt-get install chromium chromium-driver)")
    options = Options()
    for arg in BROWSER_ARGS:
        options.add_argument(arg)
    options.binary_location = chromium
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as e:
        first = (e.msg or str(e)).strip().splitlines()
        raise BrowserUnavailable(f"headless chromium does not start: {first[0] if first else type(e).__name__}"
                                 ) from None
    driver.set_script_timeout(script_timeout)
    return driver


class BrowserPage:
    """The page for ``files`` (from :func:`lenetlab.deploy.web.site_files`), served and opened in ``driver``.

    A context manager: entering starts the server and waits for the model to load (a page that reports an
    error raises :class:`LenetlabError` with the page's message); leaving stops the server."""

    def __init__(self, driver: Any, files: dict[str, bytes], timeout: float = 60, runtime: str | None = None):
        """``runtime``: "wasm" (the C runtime as WebAssembly) or "js" (flat.js); None: the page's choice
        (wasm where the browser runs it)."""
        if runtime not in (None, "wasm", "js"):
            raise LenetlabError(f"runtime must be wasm or js, got {runtime!r}")
        self.driver, self.files, self.timeout, self.runtime = driver, files, timeout, runtime
        self._server = None

    def __enter__(self) -> BrowserPage:
        from selenium.webdriver.support.ui import WebDriverWait

        from lenetlab.deploy.web import make_server

        self._server = make_server(self.files, port=0)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        try:
            self.driver.get(self._server.url + (f"?runtime={self.runtime}" if self.runtime else ""))
            WebDriverWait(self.driver, self.timeout).until(
                lambda d: d.execute_script("return document.body.dataset.state") in ("ready", "error"))
            if self.driver.execute_script("return document.body.dataset.state") != "ready":
                raise PageError("the web page did not load the model: "
                                    + self.driver.execute_script("return document.getElementById('error').textContent"))
            if self.runtime is not None and self.runtime_name != self.runtime:
                raise PageError(f"asked for the {self.runtime} runtime, the page runs {self.runtime_name}")
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def runtime_name(self) -> str:
        """The runtime the page runs: "wasm" or "js"."""
        return self.driver.execute_script("return document.body.dataset.runtime") or "js"

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def evaluate_test_set(self, timeout: float = 600) -> np.ndarray:
        """Click "run the test set" and return the page's top-1 for every test image (its own loop)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.find_element(By.ID, "run-test").click()
        WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(
            lambda d: d.execute_script("return document.body.dataset.test") in ("done", "error"))
        if self.driver.execute_script("return document.body.dataset.test") != "done":
            raise PageError("the web page's test-set run failed: "
                                + self.driver.find_element(By.ID, "test-status").text)
        # base64 of the Uint8Array: 10k numbers as one string instead of a 10k-element JSON list
        b64 = self.driver.execute_script("""
            const p = window.lenetlab.lastEval.predictions; let s = '';
            for (let i = 0; i < p.length; i += 8192) s += String.fromCharCode.apply(null, p.subarray(i, i + 8192));
            return btoa(s);""")
        return np.frombuffer(base64.b64decode(b64), np.uint8).astype(np.int64)

    def _images_arg(self, images: np.ndarray) -> str:
        return base64.b64encode(np.ascontiguousarray(images, np.uint8).tobytes()).decode()

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits of uint8 images (N, H, W) from the page's runtime, as float64 (N, classes)."""
        n, h, w = images.shape
        out = self.driver.execute_script("""
            const s = atob(arguments[0]), px = new Uint8Array(s.length);
            for (let i = 0; i < s.length; i++) px[i] = s.charCodeAt(i);
            const rt = window.lenetlab.state.runtime, size = arguments[1], out = [];
            for (let i = 0; i < px.length / size; i++) for (const v of rt.run(px, i * size)) out.push(v);
            return out;""", self._images_arg(images), h * w)
        return np.asarray(out, np.float64).reshape(n, -1)

    def seconds_per_image(self, images: np.ndarray) -> float:
        """Wall time per image of the page's ``Runtime.run``, one image per call, measured inside the page.

        The images are decoded before the clock starts; each call's output is folded into a checksum so
        the work cannot be skipped."""
        n, h, w = images.shape
        ms = self.driver.execute_script("""
            const s = atob(arguments[0]), px = new Uint8Array(s.length);
            for (let i = 0; i < s.length; i++) px[i] = s.charCodeAt(i);
            const rt = window.lenetlab.state.runtime, size = arguments[1], n = px.length / size;
            let check = 0;
            const t0 = performance.now();
            for (let i = 0; i < n; i++) check += rt.run(px, i * size)[0];
            const t1 = performance.now();
            window.lenetlab.timingCheck = check;
            return t1 - t0;""", self._images_arg(images), h * w)
        return float(ms) / 1000.0 / n
