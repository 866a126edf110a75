"""The C runtime's multi-threaded batch path (``-DLENET5_THREADS``: ``lenet5_run_*_mt``, ``lenet5_eval --threads``).

- every image is computed by one thread with the single-threaded code, so the logits are bit-identical for
  every thread count and batch size, on real MNIST test images (300; all 10k in the slow tier), for
  float32 and int8 flat files, in the portable build (-O2) and in the exported Makefile's
  (-O3 -march=native); float32 still matches PyTorch and int8 the NumPy reference runtime bit for bit;
- the helper threads' buffers come from the caller's workspace (sized by ``lenet5_workspace_bytes``):
  under ASan + UBSan the gaps between them are poisoned, so an overrun would be reported;
- bad thread counts are refused (``lenet5_eval`` exit 2, the C API ``LENET5_E_ARG``), as are a missing or
  short workspace; a build without ``LENET5_THREADS`` has no pthread dependency and refuses ``--threads 2``;
- the plain C99 float kernels (``-DLENET5_NO_VEC``) give the same answers as the vector ones.

No test asserts a wall-clock time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEPLOY_IMAGES, assert_logits_match
from lenetlab.data.idx import write_idx
from lenetlab.data.transforms import to_model_input
from lenetlab.deploy import flat, runtime
from lenetlab.deploy.c_eval import MAKEFILE_FLAGS
from lenetlab.deploy.c_runtime import C_DIR, STRICT_FLAGS, THREAD_FLAGS, compile_program, model_source
from lenetlab.rundir import load_model

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")

SANITIZE = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all")
# the C API harness (fast tier) is built at -O0: the sanitizers instrument every access at any level and gcc
# takes ~1.5 s instead of ~8.5 s (tests/test_deploy_c.py, SANITIZE_FAST)
SANITIZE_FAST = tuple(flag if flag != "-O1" else "-O0" for flag in SANITIZE)
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


@pytest.fixture(scope="module")
def cdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cthreads")
    (d / "no_model.c").write_text(model_source(b"", "no embedded model"))
    return d


def build(cdir: Path, name: str, flags) -> Path:
    return compile_program("lenet5_eval", cdir / name, tuple(flags), model_c=cdir / "no_model.c")


BUILDS = {"strict": (*STRICT_FLAGS, *THREAD_FLAGS),                         # the portable build
          "native": (*MAKEFILE_FLAGS, "-Wall", "-Wextra", "-Werror")}        # the exported Makefile's (slow)


@pytest.fixture(scope="module")
def bins(c_program):
    """``bins[name]``: the threaded ``lenet5_eval`` of :data:`BUILDS`, compiled when a test first asks for it
    (the native -O3 build, ~5 s of gcc, is only needed by the slow tier)."""
    class Builds(dict):
        def __missing__(self, name: str) -> Path:
            self[name] = c_program("lenet5_eval", BUILDS[name])
            return self[name]

    return Builds()


_MODELS: dict[int, dict] = {}


def flat_models(deploy_runs, deploy_flats, mnist_test, n: int) -> dict:
    """float32 / int8 flat files of both trained models, PyTorch logits and the int8 reference logits on the
    first ``n`` test images: the session's shared ones (conftest.deploy_flats) up to its DEPLOY_IMAGES, computed
    here (cached) for the slow tier's 10k."""
    if n <= DEPLOY_IMAGES:
        return {name: {**f, "torch": f["torch"][:n], "int8_ref": f["int8_ref"][:n]} for name, f in deploy_flats.items()}
    if n not in _MODELS:
        x = mnist_test[0][:n]
        out = {}
        for name in ("lenet5", "lenet5_classic"):
            model, cfg = load_model(deploy_runs[name])
            with torch.no_grad():
                ref = torch.cat([model(to_model_input(torch.from_numpy(x[i:i + 2000]), cfg.data))
                                 for i in range(0, len(x), 2000)]).numpy()
            f = deploy_flats[name]
            out[name] = {"float": f["float"], "int8": f["int8"], "torch": ref,
                         "int8_ref": runtime.run(flat.load(str(f["int8"])), x, mode="reference")}
        _MODELS[n] = out
    return _MODELS[n]


@pytest.fixture(scope="module")
def models(deploy_flats) -> dict:
    """The flat files and references on the first DEPLOY_IMAGES (300) test images."""
    return deploy_flats


@pytest.fixture(scope="module")
def idx(tmp_path_factory, mnist_test) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("idx")
    x, y = mnist_test
    files = {}
    for tag, n in (("10000", len(x)), (str(DEPLOY_IMAGES), DEPLOY_IMAGES), ("100", 100), ("3", 3)):
        files[f"images{tag}"], files[f"labels{tag}"] = d / f"images{tag}.idx", d / f"labels{tag}.idx"
        write_idx(files[f"images{tag}"], x[:n], compress=False)
        write_idx(files[f"labels{tag}"], y[:n].astype(np.uint8), compress=False)
    return files


def run_eval(exe: Path, *args, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", r.stderr
    return r


def logits_of(exe: Path, model: Path, images: Path, labels: Path, out: Path, *extra, env=None) -> np.ndarray:
    r = run_eval(exe, images, labels, "--model", model, "--logits", out, *extra, env=env)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("accuracy ")]
    assert len(line) == 1, r.stdout
    words = line[0].split()
    fields = dict(zip(words[::2], words[1::2]))
    threads = next((extra[i + 1] for i in range(len(extra) - 1) if extra[i] == "--threads"), "1")
    assert fields["threads"] == str(threads)
    dt = "<i4" if "int8" in model.name else "<f4"
    return np.fromfile(out, dt)


# ---------------------------------------------------------------- bit-identical across thread counts
# 300 images (a full batch of 256 and a partial one) in the fast tier, all 10k in the slow tier
@pytest.mark.parametrize("n", [DEPLOY_IMAGES, pytest.param(10000, marks=pytest.mark.slow)],
                         ids=[str(DEPLOY_IMAGES), "10k"])
@pytest.mark.parametrize("build_name", ["strict", pytest.param("native", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["float", "int8"])
def test_threads_bit_identical_on_mnist(build_name, kind, n, bins, deploy_runs, deploy_flats, idx, mnist_test,
                                        tmp_path):
    """The first 300 (slow tier: all 10k) test images at batch 256 with 1, 2 and 3 threads, plus batch 1 and
    odd batch/thread mixes: the same bits every time, and the right answers (PyTorch within tolerance / the int8
    reference exactly)."""
    exe = bins[build_name]
    models = flat_models(deploy_runs, deploy_flats, mnist_test, n)
    images, labels = idx[f"images{n}"], idx[f"labels{n}"]
    for name in ("lenet5", "lenet5_classic"):
        m = models[name]
        base = logits_of(exe, m[kind], images, labels, tmp_path / "base.bin", "--batch", "256")
        if kind == "int8":
            assert np.array_equal(base.reshape(n, -1).astype(np.int64), m["int8_ref"]), name
        else:
            assert_logits_match(base.reshape(n, -1), m["torch"], f"{name} ({build_name})")
        for extra in (("--batch", "256", "--threads", "2"), ("--batch", "256", "--threads", "3"),
                      ("--threads", "2"), ("--batch", "1", "--threads", "2")):
            got = logits_of(exe, m[kind], images, labels, tmp_path / "t.bin", *extra)
            assert np.array_equal(got, base), (name, extra)
        small = base[:100 * base.size // n]
        for extra in (("--batch", "7", "--threads", "3"), ("--batch", "100", "--threads", "64"),
                      ("--batch", "9", "--threads", "8", "--repeat", "2")):
            got = logits_of(exe, m[kind], idx["images100"], idx["labels100"], tmp_path / "s.bin", *extra)
            assert np.array_equal(got, small), (name, extra)


def test_more_threads_than_images(bins, models, idx, tmp_path):
    """3 images on 8 threads: one image a thread, the same logits."""
    for kind in ("float", "int8"):
        model = models["lenet5"][kind]
        one = logits_of(bins["strict"], model, idx["images3"], idx["labels3"], tmp_path / "a.bin")
        many = logits_of(bins["strict"], model, idx["images3"], idx["labels3"], tmp_path / "b.bin", "--threads", "8")
        assert np.array_equal(one, many)


@pytest.mark.slow   # a sanitizer build
def test_threads_under_sanitizers(cdir, models, idx, tmp_path):
    """ASan + UBSan (the workspace gaps poisoned): no report, and the same bits for 1, 2 and 5 threads."""
    exe = build(cdir, "eval_san", (*SANITIZE, *THREAD_FLAGS))
    env = {**os.environ, **SAN_ENV}
    for name in ("lenet5", "lenet5_classic"):
        for kind in ("float", "int8"):
            model = models[name][kind]
            one = logits_of(exe, model, idx["images100"], idx["labels100"], tmp_path / "1.bin", env=env)
            for t in ("2", "5"):
                got = logits_of(exe, model, idx["images100"], idx["labels100"], tmp_path / "t.bin", "--batch", "50",
                                "--threads", t, env=env)
                assert np.array_equal(got, one), (name, kind, t)
            if kind == "int8":
                assert np.array_equal(one.reshape(100, -1).astype(np.int64), models[name]["int8_ref"][:100])


@pytest.mark.slow   # one more compiler build
def test_plain_c_float_kernels_agree(cdir, models, idx, tmp_path):
    """-DLENET5_NO_VEC (every float CONV as plain C99): PyTorch's logits within tolerance, int8 unchanged."""
    exe = build(cdir, "eval_novec", (*STRICT_FLAGS, *THREAD_FLAGS, "-DLENET5_NO_VEC"))
    for name in ("lenet5", "lenet5_classic"):
        m = models[name]
        got = logits_of(exe, m["float"], idx["images100"], idx["labels100"], tmp_path / "f.bin", "--threads", "2")
        assert_logits_match(got.reshape(100, -1), m["torch"][:100], f"{name} (no vector types)")
        q = logits_of(exe, m["int8"], idx["images100"], idx["labels100"], tmp_path / "q.bin", "--threads", "2")
        assert np.array_equal(q.reshape(100, -1).astype(np.int64), m["int8_ref"][:100])


# ---------------------------------------------------------------- bad thread counts, the C API
def test_eval_rejects_bad_thread_counts(bins, idx, models):
    model = models["lenet5"]["float"]
    for bad in ("0", "-1", "65", "1.5", "two", "", "2x"):
        r = run_eval(bins["strict"], idx["images3"], idx["labels3"], "--model", model, "--threads", bad, check=False)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert "--threads takes a whole number 1..64" in r.stderr, r.stderr
    r = run_eval(bins["strict"], idx["images3"], idx["labels3"], "--model", model, "--threads", check=False)
    assert r.returncode == 2 and "missing value after --threads" in r.stderr


@pytest.mark.slow   # one more build: the fast tier builds lenet5_eval with threads only (the Makefile's default)
def test_plain_build_refuses_threads(c_program, idx, models):
    """A build without LENET5_THREADS: --threads 1 runs, 2 is refused with the reason."""
    model = models["lenet5"]["float"]
    plain = c_program("lenet5_eval", STRICT_FLAGS)
    assert "threads 1" in run_eval(plain, idx["images3"], idx["labels3"], "--model", model, "--threads", "1").stdout
    r = run_eval(plain, idx["images3"], idx["labels3"], "--model", model, "--threads", "2", check=False)
    assert r.returncode == 2 and "-DLENET5_THREADS" in r.stderr, r.stderr


@pytest.mark.slow   # one more compiler build
def test_plain_build_has_no_pthread_dependency(cdir):
    obj = cdir / "lenet5_plain.o"
    subprocess.run(["gcc", *STRICT_FLAGS, "-c", "-o", str(obj), str(C_DIR / "lenet5.c")], check=True)
    syms = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout
    assert "pthread" not in syms and "lenet5_run_float_mt" not in syms
    threaded = cdir / "lenet5_mt.o"
    subprocess.run(["gcc", *STRICT_FLAGS, *THREAD_FLAGS, "-c", "-o", str(threaded), str(C_DIR / "lenet5.c")],
                   check=True)
    assert "pthread_create" in subprocess.run(["nm", "-u", str(threaded)], capture_output=True, text=True,
                                              check=True).stdout


API_HARNESS = r"""
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include "lenet5.h"

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    unsigned char *b;
    long m;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (m = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        exit(3);
    b = malloc((size_t)m + 1u);
    if (b == NULL || fread(b, 1, (size_t)m, f) != (size_t)m)
        exit(3);
    fclose(f);
    *n = (size_t)m;
    return b;
}

/* argv: model.flat images.raw (N x 784 bytes); prints one status per line, then compares results */
int main(int argc, char **argv)
{
    size_t mn, xn, n, nc, ws_bytes;
    unsigned char *model, *x, *ws;
    float *a, *b;
    char msg[LENET5_MSG_BYTES];
    if (argc != 3)
        return 2;
    model = slurp(argv[1], &mn);
    x = slurp(argv[2], &xn);
    printf("before_load %lu\n", (unsigned long)lenet5_workspace_bytes(2));
    printf("run_unloaded %d\n", lenet5_run_float_mt(x, 1, NULL, 2, NULL, 0));
    if (lenet5_load(model, mn, msg, sizeof msg) != LENET5_OK) {
        puts(msg);
        return 1;
    }
    n = xn / 784u, nc = lenet5_num_classes();
    a = malloc(n * nc * sizeof *a), b = malloc(n * nc * sizeof *b);
    ws_bytes = lenet5_workspace_bytes(4);
    ws = malloc(ws_bytes + 1u);
    printf("ws0 %lu ws1 %lu ws65 %lu ws4_positive %d ws4_ge_ws2 %d\n", (unsigned long)lenet5_workspace_bytes(0),
           (unsigned long)lenet5_workspace_bytes(1), (unsigned long)lenet5_workspace_bytes(65),
           ws_bytes > 0u, ws_bytes >= lenet5_workspace_bytes(2));
    printf("threads0 %d\n", lenet5_run_float_mt(x, n, a, 0, ws, ws_bytes));
    printf("threads65 %d\n", lenet5_run_float_mt(x, n, a, 65, ws, ws_bytes));
    printf("null_ws %d\n", lenet5_run_float_mt(x, n, a, 4, NULL, ws_bytes));
    printf("short_ws %d\n", lenet5_run_float_mt(x, n, a, 4, ws, ws_bytes - 1u));
    printf("null_out %d\n", lenet5_run_float_mt(x, n, NULL, 4, ws, ws_bytes));
    printf("wrong_dtype %d\n", lenet5_run_int8_mt(x, n, (int32_t *)a, 4, ws, ws_bytes));
    printf("empty %d\n", lenet5_run_float_mt(NULL, 0, NULL, 4, NULL, 0));
    printf("one_thread_no_ws %d\n", lenet5_run_float_mt(x, n, a, 1, NULL, 0));
    printf("single %d\n", lenet5_run_float(x, n, b));
    printf("same1 %d\n", memcmp(a, b, n * nc * sizeof *a) == 0);
    memset(a, 0, n * nc * sizeof *a);
    printf("unaligned_ws %d\n", lenet5_run_float_mt(x, n, a, 4, ws + 1, ws_bytes));
    printf("same4 %d\n", memcmp(a, b, n * nc * sizeof *a) == 0);
    /* the helper threads stay between calls: fewer of them, then all again, then in a fork()ed child (which
       has none of them and starts its own) */
    {
        unsigned th[2] = {2u, 4u};
        int i, st;
        for (i = 0; i < 2; i++) {
            memset(a, 0, n * nc * sizeof *a);
            st = lenet5_run_float_mt(x, n, a, th[i], ws, ws_bytes);
            printf("again%u %d same %d\n", th[i], st, memcmp(a, b, n * nc * sizeof *a) == 0);
        }
    }
    fflush(stdout);
    {
        pid_t pid = fork();
        int status = -1;
        if (pid == 0) {
            memset(a, 0, n * nc * sizeof *a);
            _exit(lenet5_run_float_mt(x, n, a, 4, ws, ws_bytes) == LENET5_OK && memcmp(a, b, n * nc * sizeof *a) == 0
                      ? 0 : 1);
        }
        if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status))
            status = WEXITSTATUS(status);
        printf("fork_child %d\n", status);
    }
    free(model), free(x), free(a), free(b), free(ws);
    return 0;
}
"""


def test_c_api_refuses_bad_arguments(cdir, models, mnist_test, tmp_path):
    """lenet5_run_float_mt: LENET5_E_ARG (4) for 0 / 65 threads, a NULL or one-byte-short workspace, NULL
    output, the wrong dtype or no model; NULL workspace is fine for one thread; any workspace alignment works.
    The kept helper threads serve later calls with fewer or more threads, and a fork()ed child runs too."""
    src = tmp_path / "api.c"
    src.write_text(API_HARNESS)
    exe = tmp_path / "api"
    subprocess.run(["gcc", *SANITIZE_FAST, *THREAD_FLAGS, f"-I{C_DIR}", "-o", str(exe), str(src),
                    str(C_DIR / "lenet5.c"), "-lm"], check=True, capture_output=True)
    raw = tmp_path / "x.raw"
    raw.write_bytes(np.ascontiguousarray(mnist_test[0][:37]).tobytes())
    r = subprocess.run([str(exe), str(models["lenet5"]["float"]), str(raw)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, **SAN_ENV})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert got["before_load"] == "0" and got["run_unloaded"] == "4"
    assert got["ws0"] == "0 ws1 0 ws65 0 ws4_positive 1 ws4_ge_ws2 1"
    for key in ("threads0", "threads65", "null_ws", "short_ws", "null_out", "wrong_dtype"):
        assert got[key] == "4", (key, r.stdout)
    for key in ("empty", "one_thread_no_ws", "single", "unaligned_ws"):
        assert got[key] == "0", (key, r.stdout)
    assert got["same1"] == "1" and got["same4"] == "1"
    assert got["again2"] == "0 same 1" and got["again4"] == "0 same 1" and got["fork_child"] == "0"
