"""Small C libraries compiled on first use and loaded with ctypes (the fault engine's propagation, the noise
sweep's pooling kernels).

A library is built from one C source with the system compiler (``$CC``, which may carry arguments, else
``cc`` / ``gcc`` / ``clang``; ``-march=native`` where the CPU's flags are known, retried without it) into
``~/.cache/lenetlab/native/`` (or ``$XDG_CACHE_HOME``; a temporary directory if that is not writable), under a
name keyed by the source, the flags, the compiler and the CPU. Builds are atomic (a temporary file renamed into
place), so processes building at once cannot load a half-written file; a cached file that does not load is
rebuilt once. Callers keep a pure-Python path for when no compiler is found or ``LENETLAB_NATIVE=0``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path


def cpu_flags() -> str:
    """The CPU's feature flags from /proc/cpuinfo ('' where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((ln for ln in text.splitlines() if ln.lower().startswith(("flags", "features"))), "")


def compiler() -> list[str] | None:
    """The C compiler command (``$CC`` may carry arguments, e.g. ``ccache gcc``), else cc / gcc / clang."""
    env = shlex.split(os.environ.get("CC", ""))
    for cmd in ([env] if env else []) + [["cc"], ["gcc"], ["clang"]]:
        if shutil.which(cmd[0]):
            return cmd
    return None


def build(cc: list[str], source: Path, flags: tuple[str, ...], out: Path, native_arch: bool) -> None:
    """Compile ``source`` into ``out`` atomically; ``-march=native`` when asked for and the compiler takes it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob("tmp*.so"):          # left by a build that was killed, over an hour ago
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 3600:
                old.unlink()
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    errors = []
    try:
        for extra in ((("-march=native",),) if native_arch else ()) + ((),):
            r = subprocess.run([*cc, *flags, *extra, "-o", tmp, str(source)], capture_output=True, text=True,
                               timeout=300)
            if r.returncode == 0:
                os.replace(tmp, out)
                return
            errors.append(f"{' '.join([*cc, *extra])}: {(r.stderr or r.stdout).strip()[:300]}")
        raise OSError("compiling failed: " + " | ".join(errors))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_key(cc: list[str], source: Path, flags: tuple[str, ...]) -> tuple[str, bool]:
    """The cache key of a build (source, flags, compiler, CPU) and whether it may use ``-march=native``."""
    exe = Path(shutil.which(cc[0]) or cc[0]).resolve()
    st = exe.stat()
    cpu = cpu_flags()
    native_arch = bool(cpu)            # without the CPU's flags the key cannot tell CPUs apart: portable code
    ident = " ".join((str(exe), str(st.st_size), str(st.st_mtime_ns), *cc[1:], *flags, str(native_arch),
                      platform.machine(), cpu))         # the compiler, without running it; the CPU
    return hashlib.sha256(source.read_bytes() + ident.encode()).hexdigest()[:16], native_arch


def places() -> list[Path]:
    """Where built libraries go, in order of preference."""
    from lenetlab.data.datasets import cache_dir

    return [cache_dir() / "native", Path(tempfile.gettempdir()) / f"lenetlab-native-{os.getuid()}"]


def load(cc: list[str], source: Path, flags: tuple[str, ...]) -> ctypes.CDLL:
    """Build (once per source, flags, compiler and CPU) and load the library of ``source``; a cached file that
    does not load (cut short, corrupt) is rebuilt once."""
    key, native_arch = cache_key(cc, source, flags)
    last: OSError | None = None
    for base in places():
        path = base / f"{source.stem}-{key}.so"
        try:
            if not path.is_file():
                build(cc, source, flags, path, native_arch)
            try:
                return ctypes.CDLL(str(path))
            except OSError:              # a damaged cached file: build it again, once
                path.unlink(missing_ok=True)
                build(cc, source, flags, path, native_arch)
                return ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError) as e:   # e.g. an unwritable cache: try the next place
            last = e if isinstance(e, OSError) else OSError(str(e))
    raise last or OSError("no place to build in")


def _say(message: str) -> None:
    """One RuntimeWarning; where warnings are made errors (``python -W error``) it is shown instead of raised:
    a missing compiler only makes things slower, and what runs instead gives the same results."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=5)
    except RuntimeWarning:
        warnings.showwarning(RuntimeWarning(message), RuntimeWarning, __file__, 0)


class Library:
    """One C library, built and loaded once per process, on first use (:meth:`get`): None where it cannot be
    (``LENETLAB_NATIVE=0``, no compiler, a failed build), with the reason (:meth:`why_not`) and, unless it
    was switched off on purpose, one RuntimeWarning saying what runs slower instead (``fallback``), never
    raised as an error (:func:`_say`).
    ``bind(lib)`` declares the functions' argument and result types."""

    def __init__(self, source: Path, flags: tuple[str, ...], bind: Callable[[ctypes.CDLL], None], fallback: str):
        self.source, self.flags, self.bind, self.fallback = source, flags, bind, fallback
        self._lib: ctypes.CDLL | None = None
        self._tried = False
        self._why = ""
        self._lock = threading.Lock()

    def get(self) -> ctypes.CDLL | None:
        with self._lock:
            if self._tried:
                return self._lib
            if os.environ.get("LENETLAB_NATIVE", "1") == "0":
                self._why = "disabled by LENETLAB_NATIVE=0"
            elif (cc := compiler()) is None:
                self._why = "no C compiler found (set CC)"
            else:
                try:
                    lib = load(cc, self.source, self.flags)
                    self.bind(lib)
                    self._lib = lib
                except (OSError, AttributeError) as e:
                    self._why = f"could not build or load {self.source.name}: {e}"
            self._tried = True
            if self._lib is None and not self._why.startswith("disabled"):
                _say(f"lenetlab: {self.fallback}: {self._why}")
            return self._lib

    def why_not(self) -> str:
        """Why :meth:`get` returned None ('' when it did not)."""
        self.get()
        return self._why
