"""``lenetlab export --format c``: a plain C99 runtime for the flat model format.

The C sources live in ``lenetlab/deploy/c``: ``lenet5.c``/``lenet5.h`` (the
validating loader and the interpreter, no malloc, static buffers, libm only),
``lenet5_eval.c`` (accuracy and images/s on an IDX test set) and
``lenet5_check.c`` (runs the loader on many files, one verdict per line). The
exporter copies them next to the flat file, writes ``lenet5_model.c`` (the flat
file as a C array, so the binary needs no file) and a ``Makefile`` whose default
target is ``lenet5_eval``.

The loader validates everything the spec's "Validation" lists, in the order of
``flat.decode`` (tests/test_deploy_c.py checks the two agree on thousands of
damaged files); float32 files give PyTorch's logits within 1e-4, int8 files the
NumPy reference runtime's integer logits bit for bit.

Built with ``-DLENET5_THREADS -pthread`` (``THREAD_FLAGS``; the Makefile's
default for ``lenet5_eval``), the runtime also has ``lenet5_run_float_mt`` /
``lenet5_run_int8_mt``: one batch split across POSIX threads inside the call,
each helper thread's buffers in a caller-owned workspace
(``lenet5_workspace_bytes``), logits bit-identical for every thread count.

Example::

    lenetlab export runs/demo --format c --int8 --out /tmp/c
    make -C /tmp/c                    # -O3 -march=native; make CFLAGS=... to override
    gunzip -k t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
    /tmp/c/lenet5_eval t10k-images-idx3-ubyte t10k-labels-idx1-ubyte [--batch 1] [--logits out.bin] [--threads 2]
    # accuracy 0.9921 images 10000 seconds 0.13 images_per_s 77000 repeat 1 batch 10000 cpu_seconds 0.13
    make -C /tmp/c lenet5_check && /tmp/c/lenet5_check /tmp/c/model_int8.flat     # ok
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

from lenetlab.deploy.export import ExportContext, Exporter, write_flat
from lenetlab.errors import LenetlabError
from lenetlab.fileio import atomic_write_bytes
from lenetlab.registry import register

C_DIR = Path(__file__).with_name("c")
RUNTIME = ("lenet5.h", "lenet5.c")                      # the runtime proper
PROGRAMS = {"lenet5_eval": ("lenet5_eval.c",), "lenet5_check": ("lenet5_check.c",)}
COPIED = (*RUNTIME, "lenet5_eval.c", "lenet5_check.c", "Makefile")
MODEL_C = "lenet5_model.c"
STRICT_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-O2")
THREAD_FLAGS = ("-DLENET5_THREADS", "-pthread")          # the multi-threaded entry points (POSIX threads)


def model_source(data: bytes, name: str) -> str:
    """C source defining ``lenet5_model_data`` (the flat file's bytes) and ``lenet5_model_size``."""
    lines = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    body = ",\n    ".join(lines) if lines else "0"
    return (
        f"/* {name} ({len(data)} bytes, CRC-32 0x{zlib.crc32(data):08x}) embedded by `lenetlab export --format c`,\n"
        " * so that lenet5_eval runs without the file (lenet5_load copies it into its static buffer). */\n"
        "#include <stddef.h>\n\n"
        f"const unsigned char lenet5_model_data[] = {{\n    {body}\n}};\n"
        f"const size_t lenet5_model_size = {len(data)};\n"
    )


def write_project(data: bytes, flat_name: str, out: Path) -> list[Path]:
    """Copy the C runtime into ``out`` and embed ``data`` (a flat file) as ``lenet5_model.c``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in COPIED:
        src = C_DIR / name
        if not src.is_file():
            raise LenetlabError(f"the C runtime source {src} is missing from this installation")
        atomic_write_bytes(out / name, src.read_bytes())
        written.append(out / name)
    atomic_write_bytes(out / MODEL_C, model_source(data, flat_name).encode())
    written.append(out / MODEL_C)
    return written


def compile_program(program: str, out: str | Path, flags: tuple[str, ...] | list[str] = STRICT_FLAGS,
                    cc: str = "gcc", model_c: str | Path | None = None, src_dir: str | Path = C_DIR) -> Path:
    """Compile ``lenet5_eval`` or ``lenet5_check`` from ``src_dir`` into ``out``; errors carry the compiler output.

    ``lenet5_eval`` needs a ``lenet5_model.c`` (``model_c``, default: the one in ``src_dir``).
    """
    if program not in PROGRAMS:
        raise LenetlabError(f"unknown C program {program!r}; choose from: {', '.join(PROGRAMS)}")
    src_dir = Path(src_dir)
    sources = [src_dir / s for s in (*PROGRAMS[program], "lenet5.c")]
    if program == "lenet5_eval":
        sources.append(Path(model_c) if model_c is not None else src_dir / MODEL_C)
    if shutil.which(cc) is None:
        raise LenetlabError(f"C compiler {cc!r} not found")
    cmd = [cc, *flags, f"-I{src_dir}", "-o", str(out), *map(str, sources), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise LenetlabError(f"compiling {program} failed:\n{' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return Path(out)


@register("exporter", "c")
class CExporter(Exporter):
    """The flat file plus a C99 runtime that embeds it, and a Makefile building ``lenet5_eval``."""

    name = "c"

    def write(self, ctx: ExportContext, out: Path) -> list[Path]:
        flat_path = write_flat(ctx, out)
        return [flat_path, *write_project(flat_path.read_bytes(), flat_path.name, out)]
