"""Build ``deploy/web/lenet5.wasm``: the C runtime (``deploy/c/lenet5.c``) for WebAssembly with SIMD.

The page (``deploy/web/wasm.js``) runs LeNet-5 on this module when the browser can instantiate it, and on
flat.js's JavaScript runtime otherwise. The module is built from the same C source as ``lenetlab export
--format c`` and committed beside the page, so users need no toolchain; rebuilding needs the ``ziglang``
package (``pip install ziglang``: a clang that targets wasm32), nothing else::

    python -m lenetlab.deploy.wasm            # rewrites src/lenetlab/deploy/web/lenet5.wasm
    python -m lenetlab.deploy.wasm --out X    # elsewhere

The module has no imports (wasi-libc's string formatting and math only, no system calls) and exports its
memory, ``malloc``/``free``, ``lenet5_load``, ``lenet5_run_float`` and ``lenet5_run_int8``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from lenetlab.errors import LenetlabError
from lenetlab.fileio import atomic_write_bytes

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "c" / "lenet5.c"
TARGET = HERE / "web" / "lenet5.wasm"
EXPORTS = ("malloc", "free", "lenet5_load", "lenet5_run_float", "lenet5_run_int8")
FLAGS = ("--target=wasm32-wasi", "-O3", "-msimd128", "-mexec-model=reactor", "-s", "-std=c99")


def build(out: str | Path = TARGET) -> Path:
    """Compile ``lenet5.c`` to ``out`` (atomically); LenetlabError without the ziglang package."""
    try:
        import ziglang  # noqa: F401  (only to say clearly what is missing)
    except ImportError:
        raise LenetlabError("building the WebAssembly runtime needs a wasm32 compiler: pip install ziglang") \
            from None
    with tempfile.TemporaryDirectory() as tmp:
        wasm = Path(tmp) / "lenet5.wasm"
        cmd = [sys.executable, "-m", "ziglang", "cc", *FLAGS, *(f"-Wl,--export={e}" for e in EXPORTS),
               "-I", str(SOURCE.parent), "-o", str(wasm), str(SOURCE)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if r.returncode != 0 or not wasm.is_file():
            raise LenetlabError("wasm build failed: " + (r.stderr.strip().splitlines() or ["no output"])[-1])
        data = wasm.read_bytes()
    out = Path(out)
    atomic_write_bytes(out, data)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lenetlab.deploy.wasm", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(TARGET), help=f"output file (default: {TARGET})")
    a = p.parse_args(argv)
    try:
        path = build(a.out)
    except LenetlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{path}: {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
