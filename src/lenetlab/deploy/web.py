"""The in-browser demo: ``lenetlab serve`` and ``lenetlab export --format web``.

The page (``deploy/web/``: index.html, app.js, flat.js, mnistify.js, style.css)
runs the flat model with a dependency-free JavaScript runtime (``flat.js``
validates the file like :func:`lenetlab.deploy.flat.decode`, then executes it
on flat 1-D typed arrays, float32 or integer-exact int8). Next to it: a
``manifest.json`` naming the model file, the flat file itself and the run's
test set as gzip IDX files under ``data/`` (the bundled MNIST for MNIST runs,
with its README attribution).

:func:`site_files` builds that file set in memory; :func:`create_server`
serves exactly those paths (a fixed whitelist, nothing from disk by name, so
no traversal) with :class:`http.server.ThreadingHTTPServer`; :func:`serve`
blocks until Ctrl-C; :class:`WebExporter` writes the same files to a folder
that any static file server can serve.

Example::

    from lenetlab.deploy.web import create_server
    srv = create_server("runs/demo", port=0)        # port 0: any free port
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(srv.url); ...; srv.shutdown(); srv.server_close()
"""

from __future__ import annotations

import errno
import json
import signal
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from lenetlab.deploy import flat
from lenetlab.deploy.export import ExportContext, Exporter, build_flat, flat_name, write_flat
from lenetlab.errors import LenetlabError
from lenetlab.fileio import atomic_write_bytes
from lenetlab.registry import register

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC = ("index.html", "app.js", "flat.js", "mnistify.js", "wasm.js", "style.css", "lenet5.wasm")
WASM = "lenet5.wasm"     # the C runtime for WebAssembly (lenetlab.deploy.wasm builds it)
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DATA_DIR = "data"
TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "kmnist": "Kuzushiji-MNIST"}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".flat": "application/octet-stream", ".gz": "application/gzip",
    ".md": "text/markdown; charset=utf-8", ".wasm": "application/wasm",
}
# the page loads only its own files; no inline script, nothing from other origins
# ('wasm-unsafe-eval' lets the page compile its own lenet5.wasm; it allows no JavaScript eval)
CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def static_files() -> dict[str, bytes]:
    """The page's own files (HTML, JS, CSS) by name."""
    out = {}
    for name in STATIC:
        path = WEB_DIR / name
        try:
            out[name] = path.read_bytes()
        except OSError as e:
            raise LenetlabError(f"web page file {path} is missing ({e.strerror}); reinstall lenetlab") from None
    return out


def _test_set(dataset: str, data_dir: str | None) -> tuple[dict[str, bytes], str]:
    """The run's test-set files (gzip IDX) and a README with their attribution, or ({}, why not)."""
    from lenetlab.data.datasets import bundled_dir, locate
    from lenetlab.registry import get

    try:
        spec = get("dataset", dataset)
        found = locate(dataset, data_dir, download=False)
    except LenetlabError as e:   # e.g. Fashion-MNIST not downloaded yet: the page works without a test set
        return {}, str(e)
    files = {f"{DATA_DIR}/{name}": found[name].read_bytes() for name in TEST_FILES}
    readme = bundled_dir() / "README.md"
    if dataset == "mnist" and readme.is_file():
        files[f"{DATA_DIR}/README.md"] = readme.read_bytes()
    else:
        files[f"{DATA_DIR}/README.md"] = (f"# {dataset} test set\n\nThe files in this folder are the {dataset} test "
                                          f"set, redistributed unchanged.\nLicense: {spec.license}\n").encode()
    return files, ""


def site_files(fm_bytes: bytes, *, int8: bool, arch: str, run_name: str, dataset: str = "mnist",
               data_dir: str | None = None) -> dict[str, bytes]:
    """Every file of the page, by relative path: static files, manifest.json, the model, the test set."""
    from lenetlab.registry import get

    fm = flat.decode(fm_bytes)   # never ship a model the page would reject
    files = static_files()
    test, why = _test_set(dataset, data_dir)
    files.update(test)
    model_name = flat_name(int8)
    try:
        classes = list(get("dataset", dataset).classes)
    except LenetlabError:
        classes = [str(i) for i in range(fm.num_classes)]
    manifest = {
        "format": "lenetlab-web", "flat_version": flat.VERSION, "model": model_name, "dtype": fm.dtype,
        "bytes": len(fm_bytes), "arch": arch, "run": run_name, "dataset": dataset,
        "dataset_title": TITLES.get(dataset, dataset), "classes": classes,
        "test_images": f"{DATA_DIR}/{TEST_FILES[0]}" if test else None,
        "test_labels": f"{DATA_DIR}/{TEST_FILES[1]}" if test else None,
        "test_note": why or None, "wasm": WASM,
    }
    files["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    files[model_name] = fm_bytes
    return files


def run_site_files(run_dir: str | Path, int8: bool = False) -> dict[str, bytes]:
    """:func:`site_files` of a trained run (builds its flat model, float32 or int8)."""
    from lenetlab.rundir import load_model, require_run

    run = require_run(run_dir)
    model, cfg = load_model(run)
    model.eval()
    fm = build_flat(model, cfg, int8)
    return site_files(flat.encode(fm), int8=int8, arch=cfg.model.name, run_name=run.name,
                      dataset=cfg.data.dataset, data_dir=cfg.data.data_dir)


# ---------------------------------------------------------------- server
class _Handler(BaseHTTPRequestHandler):
    server_version = "lenetlab"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # a connection that sends nothing (a slow or stalled client, an idle keep-alive) for this long is closed;
    # each connection has its own (daemon) thread, so a slow one never holds up the others
    timeout = 20
    server: WebServer

    def do_GET(self) -> None:   # noqa: N802 (http.server's naming)
        self._reply(body=True)

    def do_HEAD(self) -> None:   # noqa: N802
        self._reply(body=False)

    def _reply(self, body: bool) -> None:
        path = urlsplit(self.path).path   # still percent-encoded: "/%2e%2e/x" is just an unknown name
        name = "index.html" if path in ("/", "/index.html") else path[1:] if path.startswith("/") else ""
        data = self.server.files.get(name) if name != "" else None
        if data is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not found")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:   # noqa: A002 (signature of the base class)
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


class WebServer(ThreadingHTTPServer):
    """Serves a fixed dict of files (path -> bytes); ``url`` is the page's address."""

    daemon_threads = True
    # the listen backlog: socketserver's 5 overflows under a burst of new connections, and each dropped
    # SYN costs its client a 1 s retransmission
    request_queue_size = 128

    def __init__(self, files: dict[str, bytes], host: str, port: int, quiet: bool):
        self.files = dict(files)
        self.quiet = quiet
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer or stalls is its own business: no traceback for it; anything
        else is one line in the request log."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        if not self.quiet:
            sys.stderr.write(f"{client_address[0]}: error while answering: {type(exc).__name__}: {exc}\n")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(files: dict[str, bytes], host: str = "127.0.0.1", port: int = 8000, quiet: bool = True
                ) -> WebServer:
    """Bind a :class:`WebServer` for ``files`` (not yet serving: call ``serve_forever``)."""
    if not 0 <= port <= 65535:
        raise LenetlabError(f"port {port} is not in 0..65535")
    try:
        return WebServer(files, host, port, quiet)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise LenetlabError(f"port {port} on {host} is already in use; stop the other server or pick "
                                f"another port with --port") from None
        if e.errno == errno.EACCES:
            raise LenetlabError(f"no permission to listen on port {port} (ports below 1024 need root); "
                                f"pick another port with --port") from None
        raise LenetlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def create_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, int8: bool = False,
                  quiet: bool = True) -> WebServer:
    """A bound server for a run's page; start it with ``serve_forever()`` (e.g. in a thread)."""
    return make_server(run_site_files(run_dir, int8), host, port, quiet)


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, int8: bool = False) -> None:
    """Serve a run's page until Ctrl-C (``lenetlab serve``)."""
    from lenetlab.rundir import require_run

    require_run(run_dir)
    server = make_server({}, host, port, quiet=False)   # a busy port fails before the model is built
    try:
        files = run_site_files(run_dir, int8)
    except BaseException:
        server.server_close()
        raise
    server.files = files
    manifest = json.loads(files["manifest.json"])
    # from here on Ctrl-C is the normal way out, wherever it lands (even before serve_forever starts): the
    # listening socket is closed at once and the command ends with status 0. A process started in the
    # background by a script inherits SIGINT ignored, and then Ctrl-C (SIGINT) would never reach us: the
    # "(Ctrl-C to stop)" we print must hold, so it is switched back on while serving.
    restore = restore_term = None
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            restore = signal.signal(signal.SIGINT, signal.default_int_handler)
        # SIGTERM (kill, a service manager) stops it the same way: port closed, "stopped", status 0
        restore_term = signal.signal(signal.SIGTERM, _terminated)
    try:
        print(f"serving {manifest['arch']} from {run_dir} ({manifest['dtype']}, {manifest['bytes']:,} bytes) "
              f"at {server.url}  (Ctrl-C to stop)", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"note: bound to {host}, so other machines on the network can open this page", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
        if restore is not None:
            signal.signal(signal.SIGINT, restore)
        if restore_term is not None:
            signal.signal(signal.SIGTERM, restore_term)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------- exporter
@register("exporter", "web")
class WebExporter(Exporter):
    """Static page + model + test set: open OUT/index.html through any static file server."""

    name = "web"

    def write(self, ctx: ExportContext, out: Path) -> list[Path]:
        model_path = write_flat(ctx, out)
        files = site_files(model_path.read_bytes(), int8=ctx.int8, arch=ctx.cfg.model.name,
                           run_name=Path(ctx.run_dir).name, dataset=ctx.cfg.data.dataset,
                           data_dir=ctx.cfg.data.data_dir)
        written = [model_path]
        for rel, data in files.items():
            if rel == model_path.name:
                continue
            path = out / rel
            atomic_write_bytes(path, data)
            written.append(path)
        return written
