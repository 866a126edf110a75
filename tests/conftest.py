"""Shared fixtures: small real-MNIST runs, trained once per test session.

``make test`` runs the suite on three pytest-xdist workers (``-n 3 --dist loadfile``: a file's tests stay on one
worker). What several files share - the trained runs and each experiment's tiny reproduction - is built once
for the whole session by whichever worker needs it first (:func:`build_once`, a file lock), and the others
read it from disk. Each worker uses one torch thread and one BLAS thread; the third fills the time others wait."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# OpenMP threads that find no work sleep instead of spinning: on a machine shared with other jobs (two xdist
# workers, a reproduction's pinned 2 threads, CI neighbours) spinning threads burned up to 5x the CPU the work
# needs. Set before torch loads its OpenMP runtime; results do not change (it only decides how idle threads wait).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# NumPy's OpenBLAS starts one spinning thread per core in every worker and every CLI subprocess; two workers
# already fill the cores, so extra BLAS threads only burn CPU (reproduce pins BLAS to 1 thread anyway).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

WORKER = os.environ.get("PYTEST_XDIST_WORKER")      # gw0, gw1, ... under xdist; None in a plain run
torch.set_num_threads(1 if WORKER else max(1, min(2, os.cpu_count() or 1)))


# LENETLAB_TEST_CPU=FILE appends one JSON line per test phase (setup/call/teardown): the CPU seconds it used in
# this process and in the child processes it waited for (compilers, browsers, CLI subprocesses). CPU time,
# unlike wall time, does not grow when the machine is busy, so this is how to find what makes `make test` slow.
_CPU_LOG = os.environ.get("LENETLAB_TEST_CPU")


if _CPU_LOG:
    import resource

    def _cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        import time

        t0, w0 = _cpu(), time.time()
        yield
        with open(_CPU_LOG, "a") as f:
            f.write(json.dumps({"test": item.nodeid, "cpu": round(_cpu() - t0, 3), "worker": WORKER,
                                "start": round(w0, 3), "wall": round(time.time() - w0, 3)}) + "\n")


# The claim-rule tests (tests/test_claims_*.py) feed synthetic cells with wide margins to each experiment's
# claims and check the verdict each rule reaches; the interval's Monte Carlo precision is not what they test.
# 400 bootstrap replicates instead of the library's 2000 (lenetlab.experiments.stats.N_BOOT) keep a 95%
# percentile interval well defined and make these tests 5x cheaper. Reproductions keep 2000.
CLAIM_TEST_N_BOOT = 400


@pytest.fixture(autouse=True)
def _claim_tests_use_fewer_bootstrap_replicates(request, monkeypatch):
    if request.module.__name__.rpartition(".")[2].startswith("test_claims_"):
        from lenetlab.experiments import stats

        monkeypatch.setattr(stats, "N_BOOT", CLAIM_TEST_N_BOOT)


def _session_root(tmp_path_factory) -> Path:
    """A folder common to every worker of this test session (and to no other session)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if WORKER else base


def build_once(tmp_path_factory, key: str, build: Callable[[Path], None]) -> Path:
    """``ROOT/shared/KEY``, made by ``build(dir)`` once per test session, whichever worker asks first; the
    others wait for it (a file lock) and reuse it. A build that failed is tried again by the next asker. Tests
    read what is in it and may not change it (copy it first)."""
    shared = _session_root(tmp_path_factory) / "shared"
    shared.mkdir(exist_ok=True)
    out, done = shared / key, shared / f"{key}.done"
    with open(shared / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            done.touch()
    return out

SMALL = {"data": {"train_subset": 6000, "test_subset": 2000, "val_size": 1000},
         "train": {"epochs": 2, "batch_size": 64, "lr": 4e-3}}


def run_cli(*args: str, check: bool = False, env: dict | None = None, timeout: float = 300,
            process: bool = False) -> subprocess.CompletedProcess:
    """Run ``lenetlab ARGS`` and return its exit code, stdout and stderr.

    In-process by default (``lenetlab.cli.main``, the function the console script calls, so the exit code and
    the error lines are the ones a user sees, and an uncaught exception fails the test with its traceback);
    each run in a new process skips ~2 s of interpreter and torch start-up. ``process=True`` (or ``env``) runs
    ``python -m lenetlab`` in a subprocess: for what only a real process shows (signals, the installed entry
    points, environment variables, the ``__main__`` module)."""
    if process or env:
        e = dict(os.environ)
        e.update(env or {})
        r = subprocess.run([sys.executable, "-m", "lenetlab", *args], capture_output=True, text=True,
                           env=e, timeout=timeout)
    else:
        from lenetlab.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:          # argparse's usage errors and --help/--version
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        r = subprocess.CompletedProcess(["lenetlab", *args], code, out.getvalue(), err.getvalue())
    if check and r.returncode != 0:
        raise AssertionError(f"lenetlab {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A modern LeNet-5 trained briefly on 6k real MNIST images."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    root = build_once(tmp_path_factory, "small", lambda d: fit(resolve("fast", "lenet5", overrides=SMALL),
                                                               out=d / "small", log=None, progress=False))
    return root / "small"


# The deployment tests check that runtimes reproduce a trained network's logits, not how good the network is:
# any network trained on real digits will do, so they train on a subset (a few seconds each, not a minute).
DEPLOY = {"lenet5": {"data": {"train_subset": 6000, "test_subset": 1000}},
          "lenet5_classic": {"data": {"train_subset": 6000, "test_subset": 1000}, "train": {"epochs": 2}}}


@pytest.fixture(scope="session")
def deploy_runs(tmp_path_factory) -> dict[str, Path]:
    """``lenet5`` (fast preset, 2 epochs) and ``lenet5_classic`` (1998 model, RBF output, 2 epochs), each trained
    on 6k real MNIST images for the deployment parity tests (both well below their full-data accuracy, which
    these tests do not need: they check that runtimes reproduce the network's logits); once per session."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    def build(root: Path) -> None:
        for name in DEPLOY:
            fit(resolve("fast", name, overrides=DEPLOY[name]), out=root / name, log=None, progress=False)

    root = build_once(tmp_path_factory, "deploy", build)
    return {"lenet5": root / "lenet5", "lenet5_classic": root / "lenet5_classic"}


# The fast tier's parity tests run the first 300 MNIST test images (all 10k in the slow tier).
DEPLOY_IMAGES = 300

# NumPy's BLAS (OpenBLAS) runs a thread per core, and its idle threads spin: on the deployment tests' many small
# matrix products (the NumPy runtime, int8 calibration) two BLAS threads cost ~2x the CPU of one (measured:
# test_deploy_flat.py 10 s -> 5 s of CPU, the deployment files 93 s -> 77 s), and under `make test` they take the
# other xdist worker's core. The values do not change (each thread computes whole blocks of the output);
# lenetlab.quant limits its integer executor the same way.
DEPLOY_TEST_MODULES = frozenset({
    "test_deploy_c", "test_deploy_c_threads", "test_deploy_flat", "test_deploy_fuzz", "test_deploy_onnx",
    "test_deploy_web", "test_web_fast", "test_exporters_contract", "test_experiment_deploy", "test_serve_load"})


def one_blas_thread() -> contextlib.AbstractContextManager:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


@pytest.fixture(autouse=True)
def _deployment_tests_use_one_blas_thread(request):
    if request.module.__name__.rpartition(".")[2] not in DEPLOY_TEST_MODULES:
        yield
        return
    with one_blas_thread():
        yield


@pytest.fixture(scope="session")
def deploy_flats(deploy_runs, mnist_test, tmp_path_factory) -> dict[str, dict]:
    """For each of :func:`deploy_runs`: ``float`` / ``int8`` (paths of its flat files, as
    ``lenetlab.deploy.export.build_flat`` makes them for every exporter), ``torch`` (PyTorch's float32 logits) and
    ``int8_ref`` (the NumPy runtime's int8 logits in ``mode="reference"``, the readable oracle the fast path, C
    and JavaScript runtimes are held to bit for bit) on the first :data:`DEPLOY_IMAGES` test images. Built once
    per session: int8 calibration (~2 s a model) and the reference runtime (~1.5 s per 1k images) were repeated
    by every deployment test module (on 1,000 images; 300 check the same properties). Read only (copy a file
    before changing it)."""
    from lenetlab.data.transforms import to_model_input
    from lenetlab.deploy import flat, runtime
    from lenetlab.deploy.export import build_flat
    from lenetlab.rundir import load_model

    x = mnist_test[0][:DEPLOY_IMAGES]

    def build(root: Path) -> None:
        for name, run in deploy_runs.items():
            model, cfg = load_model(run)
            model.eval()
            with torch.no_grad():
                np.save(root / f"{name}_torch.npy", model(to_model_input(torch.from_numpy(x), cfg.data)).numpy())
            fm8 = build_flat(model, cfg, int8=True)
            (root / f"{name}.flat").write_bytes(flat.encode(build_flat(model, cfg, int8=False)))
            (root / f"{name}_int8.flat").write_bytes(flat.encode(fm8))
            np.save(root / f"{name}_int8_ref.npy", runtime.run(fm8, x, mode="reference"))

    with one_blas_thread():
        root = build_once(tmp_path_factory, "deploy_flats", build)
    return {name: {"float": root / f"{name}.flat", "int8": root / f"{name}_int8.flat",
                   "torch": np.load(root / f"{name}_torch.npy"), "int8_ref": np.load(root / f"{name}_int8_ref.npy")}
            for name in deploy_runs}


@pytest.fixture(scope="session")
def deploy_export(deploy_runs, deploy_flats, tmp_path_factory) -> Callable[..., tuple[Path, list[Path] | str]]:
    """``deploy_export(name, fmt, int8=False)`` -> ``(out, files)``: ``lenetlab.deploy.export.export(
    deploy_runs[name], fmt, int8=int8, out=out)`` run once per session for each (name, fmt, int8), whichever
    worker asks first; ``files`` is the list it returned, or the message of the LenetlabError it raised (a
    format that refuses a dtype). The exporter contract and the ONNX parity tests share one export each (an ONNX
    export traces the model with torch.export: ~7 s of CPU). The flat model export() builds is the one of
    :func:`deploy_flats` (the same ``build_flat`` call on the same run, so the int8 model is calibrated once, not
    once per format); the CLI export tests (test_deploy_flat.py, test_deploy_c.py, test_deploy_web.py) run the
    whole path, calibration included. Read only."""
    from lenetlab.deploy import export as export_mod
    from lenetlab.deploy import flat
    from lenetlab.errors import LenetlabError

    def get(name: str, fmt: str, int8: bool = False):
        key = f"export-{name}-{fmt}-{'int8' if int8 else 'float32'}"

        def build(d: Path) -> None:
            def shared_flat(model, cfg, int8_: bool):
                assert cfg.model.name == name, (cfg.model.name, name)
                return flat.load(str(deploy_flats[name]["int8" if int8_ else "float"]))

            try:
                with pytest.MonkeyPatch.context() as m, one_blas_thread():
                    m.setattr(export_mod, "build_flat", shared_flat)
                    files = export_mod.export(deploy_runs[name], fmt, int8=int8, out=d / "out")
            except LenetlabError as e:
                (d / "error.txt").write_text(str(e))
            else:
                (d / "files.json").write_text(json.dumps([str(f) for f in files]))

        d = build_once(tmp_path_factory, key, build)
        if (d / "error.txt").exists():
            return d / "out", (d / "error.txt").read_text()
        return d / "out", [Path(f) for f in json.loads((d / "files.json").read_text())]

    return get


@pytest.fixture(scope="session")
def c_program(tmp_path_factory) -> Callable[..., Path]:
    """``c_program(program, flags)`` -> the C runtime's ``lenet5_eval`` (built with no embedded model: pass
    ``--model``) or ``lenet5_check``, compiled with ``flags`` once per test session whichever worker asks first,
    so the C test modules share one build of each flag set. Do not write into its folder."""
    from lenetlab.deploy.c_runtime import compile_program, model_source

    def get(program: str, flags) -> Path:
        key = "c-" + hashlib.sha256(json.dumps([program, list(flags)]).encode()).hexdigest()[:12]

        def build(d: Path) -> None:
            model_c = None
            if program == "lenet5_eval":
                model_c = d / "no_model.c"
                model_c.write_text(model_source(b"", "no embedded model"))
            compile_program(program, d / program, tuple(flags), model_c=model_c)

        return build_once(tmp_path_factory, key, build) / program

    return get


@pytest.fixture(scope="session")
def full_deploy_runs(tmp_path_factory) -> dict[str, Path]:
    """The same two models trained on all 60k images (fast preset; lenet5_classic for 3 epochs), for the slow
    tests whose claims are about a fully trained network (int8 accuracy within 0.3 points of float)."""
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    def build(root: Path) -> None:
        fit(resolve("fast", "lenet5"), out=root / "lenet5", log=None, progress=False)
        fit(resolve("fast", "lenet5_classic", overrides={"train": {"epochs": 3}}), out=root / "lenet5_classic",
            log=None, progress=False)

    root = build_once(tmp_path_factory, "deploy_full", build)
    return {"lenet5": root / "lenet5", "lenet5_classic": root / "lenet5_classic"}


# Two float32 evaluations of one network that differ only in summation order (another conv algorithm, another
# runtime) agree to a few units in the last place of the values they accumulate, and the logits' magnitude
# stands for those: measured <= 5 eps x max|logit| (lenet5_classic, whose RBF logits reach ~200, against a
# float64 evaluation). 64 eps x max(1, max|logit|) leaves room for any summation order and does not depend on
# which weights training produced; a real mistake (wrong op, weight, layout or normalisation) is off by a
# sizeable fraction of the logits themselves.
F32_REL = 64 * float(np.finfo(np.float32).eps)


def logit_tolerance(ref: np.ndarray) -> float:
    """Allowed max |other float32 evaluation - ``ref``| for float32 logits ``ref``."""
    return F32_REL * max(1.0, float(np.abs(ref).max(initial=0.0)))


def assert_logits_match(got: np.ndarray, ref: np.ndarray, what: str = "") -> float:
    """``got`` within :func:`logit_tolerance` of ``ref`` everywhere (NaN fails); returns the max abs difference.

    This also fixes the top-1 class wherever ``ref``'s top-2 margin exceeds twice the tolerance; images closer
    than that are genuine float32 ties, where two correct runtimes may pick different classes."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    diff, tol = float(np.abs(got - ref).max(initial=0.0)), logit_tolerance(ref)
    assert diff <= tol, f"{what}: max |difference| {diff:.3g} > {tol:.3g} (64 eps x the logit scale)"
    return diff


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(name, **options)`` -> (out dir, Result) of ``reproduce(name, tiny=True, options=options)``, run
    once per test session for each (name, options) (:func:`build_once`), so the contract tests and an
    experiment's own tests check one output instead of training the same tiny models again. The Result is read
    back from its result.json (the same for every worker). Tests read the dir and may not change it: to resume
    into it, copy it first. The dir is ``ROOT/NAME``, the layout of ``reproduce all``."""
    from lenetlab.experiments import Result, reproduce

    done: dict[str, tuple[Path, object]] = {}

    def run(name: str, **options):
        blob = json.dumps(options, sort_keys=True)
        key = f"tiny-{name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
        if key not in done:
            root = build_once(tmp_path_factory, key,
                              lambda d: reproduce(name, d / name, tiny=True, options=options or None))
            out = root / name
            done[key] = (out, Result.from_dict(json.loads((out / "result.json").read_text())))
        return done[key]

    return run


# The one tiny run of each experiment that the whole suite shares: the contract (tests/test_experiments.py)
# checks it and resumes it, and each experiment's own tests read it. Every entry overrides settings of the tiny
# grid: its first setting visibly changes the result (test_experiments.TOOK_EFFECT), so the same run also shows
# that overrides reach it; the others shrink the data (fewer training / test images, draws, fit steps) below the
# built-in tiny grid, which every code path still runs through (these runs check the plumbing, not the numbers).
# A newly registered experiment without an entry here fails the contract test.
TINY_OPTIONS: dict[str, dict] = {
    "abs": {"widths": [1.0], "train_subset": 200, "val_size": 200, "test_subset": 200, "grad_seeds": [0, 1],
            "grad_batch": 8},
    "cascade": {"ladders": [[7, 28]],          # lists, as a sweep file gives them (the study keys on tuples)
                "train_subset": 500, "val_size": 300, "test_subset": 300, "pca_samples": 500, "lbfgs_iterations": 10},
    "deploy": {"test_images": 200},
    "faults": {"ks": [50], "train": {"data": {"train_subset": 300, "test_subset": 100}, "train": {"epochs": 1}},
               "images": 16, "nvf_images": 1},
    "fused": {"images": 16, "train_subset": 200},
    "lenet5": {"test_subset": 300},
    "matrix": {"eps": 0.05, "train_subset": 200, "val_size": 100, "test_images": 100, "eval_images": 16,
               "sdc_images": 8, "nvf_images": 1, "fit_steps": 2, "pgd_steps": 1},
    "noise": {"sigmas": [0.01, 1.0], "train_subset": 128, "val_size": 64, "test_subset": 64},
    "snn-attacks": {"eps": [0.3], "train_subset": 128, "val_size": 64, "test_subset": 8},
    "tn": {"depths": [1], "train_subset": 300, "val_size": 100, "test_subset": 100, "fit_steps": 2},
    "zo": {"seeds": [1], "train_subset": 160, "test_subset": 100, "batch": 16, "steps": 10, "eval_every": 5},
}


@pytest.fixture(scope="session")
def tiny(tiny_run):
    """``tiny(name)`` -> (out dir, Result): experiment ``name``'s shared tiny run (see :data:`TINY_OPTIONS`)."""
    def run(name: str):
        return tiny_run(name, **TINY_OPTIONS[name])

    return run


@pytest.fixture(scope="session")
def mnist_test() -> tuple:
    """The real 10k MNIST test images (uint8, N x 28 x 28) and labels."""
    from lenetlab.data.datasets import load_raw

    _, _, x, y = load_raw("mnist")
    return x, y


# ---------------------------------------------------------------- headless Chromium (web page, HTML report)
@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (skipped, with the reason, where it is not installed): the
    library's own launcher (lenetlab.deploy.browser), so tests and ``reproduce deploy`` start it alike. Not one
    per session: an idle Chromium burns ~0.07 s of CPU per second (measured), more than a new launch (~2.3 s)
    costs once a worker has other modules to run."""
    from lenetlab.deploy.browser import BrowserUnavailable, open_browser

    try:
        # the script timeout is a hang guard for the page's own evaluation, not a speed requirement
        driver = open_browser(script_timeout=600)
    except BrowserUnavailable as e:
        pytest.skip(str(e))
    yield driver
    driver.quit()
