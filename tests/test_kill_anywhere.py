"""Kill anywhere (issue 22): SIGKILL each long command at seeded points, continue it, compare with an
uninterrupted run.

Where a command is cut: ``LENETLAB_KILL_AFTER_WRITES=N`` (test-only, :mod:`lenetlab.fileio`) makes the process
SIGKILL itself in its Nth write - an atomic write after its temporary file is complete but before the rename,
a journal append halfway through its line - the same point on every machine. Which N: the first and the last
write of an uninterrupted run and seeded draws in between (the reference run counts its writes, run under a
wrapper that turns the counter on). Plus kills at seeded random times, of the whole process group.

Right after the kill nothing half-written is in place: every file is whole (JSON parses, safetensors and flat
files load, PNGs end in IEND, journals are whole records but for a cut last line, which readers skip), and a
file that the uninterrupted run writes once (model.safetensors, result.json, report.md, ...) is either absent
or already equal to the uninterrupted run's. Only the cut atomic write's temporary file
(``.NAME.XXXXXXXX.tmp``) may stay behind; nothing reads it, and the continued command's next write of that file
deletes it (none is left at the end).

Then the command continues as a user would continue it: ``train --resume`` (the plain command when the kill
came before config.json), ``compress ... --force`` (it has no --resume and refuses a non-empty --out), and every
other command is simply run again (``reproduce`` and ``sweep`` continue from their journals; ``export``,
``quantize`` and ``faults campaign`` write their outputs again). It must succeed, and every output must equal
the uninterrupted run's byte for byte - except the values in :data:`MEASURED`, which record wall times, dates
or the fact of resuming; files holding them are compared with those values masked. A reproduction keeps its
clock readings in files of their own (:data:`CLOCK_FILES`: timings.json, timings.jsonl, timings.md, timings.html),
which are only checked for being whole and present (and a timings.jsonl for naming the same cells).

Cost: the fast tier runs the hook's own checks (no torch) and one train kill (~6 s CPU: only the killed run is
a process of its own; the uninterrupted run and the resume call the same CLI entry point, ``lenetlab.cli.main``,
in the test's process, on one thread like the processes); the other commands and kill points are ``slow``
(``make test-slow``)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lenetlab.fileio import is_leftover

HANG_S = 900          # only keeps a hung process from hanging the suite; not a speed bound
ENV = {"OMP_NUM_THREADS": "1"}   # one thread per process: same numbers in every run, no fight for cores

# Values that legitimately differ between an interrupted-and-continued run and an uninterrupted one. JSON keys
# (anywhere in a .json/.jsonl file or a safetensors file's JSON metadata: a checkpoint carries its epoch's
# metrics line) and table columns (in report.md / report.html) of these names are masked.
# (A reproduction's own clock readings are not here: they live in CLOCK_FILES.)
MEASURED = {
    "wall_seconds": "wall time of a training run and of the epochs so far (its summary.json, metrics.jsonl; "
                    "faults campaign's JSON)",
    "epoch_seconds": "metrics.jsonl: wall time of one epoch",
    "unix_time": "metrics.jsonl: when the epoch ended",
    "seconds": "trials.jsonl: wall time of one trial",
    "finished": "trials.jsonl: the date the trial finished",
    "compress_wall_seconds": "compress's summary.json: its wall time",
    "faults_per_second": "faults campaign: throughput",
    "resumed_from_epoch": "summary.json: whether (and after which epoch) the run was resumed - differs by design",
    "status": "reproduce all's manifest and report: 'skipped' for an experiment the interrupted run had "
              "finished, 'ran' in one go - differs by design",
}
STATUS = re.compile(rb"Status: (?:<b>)?(?:ran|skipped)(?:</b>)?\.")

# Files of clock readings, by name: a reproduction's (and reproduce all's) wall times, per-cell times, latencies
# and what is computed from them - measured, so never equal between two runs. Checked for being whole, present
# in both runs, and (timings.jsonl) naming the same cells.
CLOCK_FILES = {"timings.json", "timings.jsonl", "timings.md", "timings.html"}

# Files a command legitimately writes more than once, with different content (only checked for being whole
# right after a kill).
REWRITTEN = {
    "checkpoint.safetensors": "train: the last finished epoch, rewritten every epoch",
    "summary.json@compress": "compress: fit writes the run's summary, then compress adds the compression figures",
}

TRAIN = ["--set", "data.train_subset=1000", "--set", "data.test_subset=200", "--set", "data.val_size=200",
         "--epochs", "2", "--set", "train.batch_size=100"]
TOY_SWEEP = textwrap.dedent("""
    [sweep]
    kind = "function"
    function = "lenetlab.sweep.trials:toy"
    metric = "value"
    goal = "min"
    [grid]
    x = [-1.0, 0.0, 0.5, 1.0]
    y = [0.0, 1.0, 2.0]
""")

# name -> its arguments, writing into OUT and reading SRC (the inputs: a sweep file, a trained and a quantised run)
Args = Callable[[Path, Path], list[str]]
COMMANDS: dict[str, Args] = {
    "train": lambda out, src: ["train", "--out", str(out), "-q", *TRAIN],
    "sweep": lambda out, src: ["sweep", str(src / "toy.toml"), "--out", str(out), "--workers", "1", "-q"],
    "reproduce": lambda out, src: ["reproduce", "lenet5", "--tiny", "-q", "--out", str(out)],
    "reproduce-all": lambda out, src: ["reproduce", "all", "--tiny", "--only", "lenet5,faults", "-q",
                                       "--out", str(out)],
    "export-flat": lambda out, src: ["export", str(src / "run"), "--format", "flat", "--out", str(out),
                                     "--check-images", "100"],
    "export-c": lambda out, src: ["export", str(src / "run"), "--format", "c", "--out", str(out),
                                  "--check-images", "100"],
    "export-web": lambda out, src: ["export", str(src / "run"), "--format", "web", "--out", str(out),
                                    "--check-images", "100"],
    "quantize": lambda out, src: ["quantize", str(src / "run"), "--out", str(out), "--calibration", "200",
                                  "--limit", "200"],
    "compress": lambda out, src: ["compress", str(src / "run"), "--method", "tt", "--out", str(out),
                                  "--epochs", "1", "--train-subset", "1000", "-q"],
    "faults": lambda out, src: ["faults", "campaign", str(src / "qrun"), "--target", "weights",
                                "--samples", "5", "--images", "20", "--out", str(out)],
}


def continue_args(name: str, out: Path, args: list[str]) -> list[str]:
    """What a user runs after the kill."""
    if name == "train" and (out / "config.json").exists():
        return ["train", "--resume", "--out", str(out), "-q"]     # the run's options come from its config.json
    if name == "compress":
        return [*args, "--force"]
    return args


# ------------------------------------------------------------------ running
def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **ENV, **extra}


def cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lenetlab", *args], capture_output=True, text=True,
                          env=_env(**env), timeout=HANG_S)


# the reference run: ``python -m lenetlab`` with the write counter on and no kill; the count goes to a file
COUNTING = ("import atexit, runpy, sys\n"
            "import lenetlab.fileio as f\n"
            "f._KILL_AT = 1 << 62\n"
            "count = sys.argv.pop(1)\n"
            "atexit.register(lambda: open(count, 'w').write(str(f._writes)))\n"
            "sys.argv[0] = 'lenetlab'\n"
            "runpy.run_module('lenetlab', run_name='__main__')\n")


class Reference:
    def __init__(self, out: Path, writes: int, seconds: float):
        self.out, self.writes, self.seconds = out, writes, seconds


_references: dict[str, Reference] = {}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """The folder of the commands' inputs: the sweep file; the trained run and its int8 quantisation are added on
    first need (:func:`_needs`)."""
    d = tmp_path_factory.mktemp("kill-src")
    (d / "toy.toml").write_text(TOY_SWEEP)
    return d


def _needs(name: str, src: Path) -> None:
    """A briefly trained run (``SRC/run``) and its int8 quantisation (``SRC/qrun``), for the commands reading them."""
    if name in ("export-flat", "export-c", "export-web", "quantize", "compress", "faults") \
            and not (src / "run" / "model.safetensors").exists():
        r = cli(["train", "--out", str(src / "run"), "-q", *TRAIN, "--epochs", "1"])
        assert r.returncode == 0, r.stderr
    if name == "faults" and not (src / "qrun" / "model_int8.flat").exists():
        r = cli(["quantize", str(src / "run"), "--out", str(src / "qrun"), "--calibration", "200", "--limit", "100"])
        assert r.returncode == 0, r.stderr


def cli_in_process(args: list[str]) -> int:
    """``lenetlab ARGS`` through the CLI's entry point in this process, on one torch and BLAS thread like the
    processes of :func:`cli` (``OMP_NUM_THREADS=1``): the same files, without a second's worth of imports."""
    from lenetlab.cli import main
    from lenetlab.determinism import pinned_threads

    with pinned_threads(1, deterministic=False):
        return main(args)


def reference(name: str, src: Path, tmp_path_factory, in_process: bool = False) -> Reference:
    """The uninterrupted run of ``name`` (once per module) and how many writes it made (``in_process``: through
    :func:`cli_in_process`, the write count unknown: 0)."""
    key = f"{name}@in-process" if in_process else name
    if key not in _references:
        _needs(name, src)
        base = tmp_path_factory.mktemp(f"ref-{name}")
        out, count = base / "out", base / "writes"
        t0 = time.perf_counter()
        if in_process:
            assert cli_in_process(COMMANDS[name](out, src)) == 0, name
            count.write_text("0")
        else:
            r = subprocess.run([sys.executable, "-c", COUNTING, str(count), *COMMANDS[name](out, src)],
                               capture_output=True, text=True, env=_env(), timeout=HANG_S)
            assert r.returncode == 0, f"{name}: {r.stdout}\n{r.stderr}"
        _references[key] = Reference(out, int(count.read_text()), time.perf_counter() - t0)
    return _references[key]


def kill_points(name: str, writes: int, seed: int, n: int = 3) -> list[int]:
    """The first and last write and ``n - 2`` seeded draws between them (all of them, up to 4 writes)."""
    if writes <= 4:
        return list(range(1, writes + 1))
    inner = list(range(2, writes))
    return sorted({1, writes, *random.Random(f"{name}/{seed}").sample(inner, min(len(inner), n - 2))})


# ------------------------------------------------------------------ comparing
def _strip(obj, measured=MEASURED):
    if isinstance(obj, dict):
        return {k: _strip(v, measured) for k, v in obj.items() if k not in measured}
    if isinstance(obj, list):
        return [_strip(v, measured) for v in obj]
    return obj


def _cells(line: bytes, pipe: bytes) -> list[bytes]:
    return re.split(rb"(?<!\\)" + re.escape(pipe), line)


def _mask_md_columns(text: bytes, measured=MEASURED) -> bytes:
    """Markdown tables: blank the cells of the measured columns."""
    out, masked = [], set()
    for line in text.split(b"\n"):
        if line.startswith(b"|"):
            cells = _cells(line, b"|")
            if not masked and not line.startswith(b"|---"):
                masked = {i for i, c in enumerate(cells) if c.strip().decode(errors="replace") in measured}
                masked.add(-1)   # this row is a header
            elif masked and not line.startswith(b"|---"):
                cells = [b" * " if i in masked else c for i, c in enumerate(cells)]
            line = b"|".join(cells)
        else:
            masked = set()
        out.append(line)
    return b"\n".join(out)


def _mask_html_columns(text: bytes, measured=MEASURED) -> bytes:
    def table(m: re.Match) -> bytes:
        t = m.group(0)
        heads = [h.decode(errors="replace") for h in re.findall(rb"<th>(.*?)</th>", t)]
        masked = {i for i, h in enumerate(heads) if h in measured}
        if not masked:
            return t

        def row(r: re.Match) -> bytes:
            tds = re.findall(rb"<td[^>]*>.*?</td>", r.group(0))
            return b"<tr>" + b"".join(b"<td>*</td>" if i in masked else c for i, c in enumerate(tds)) + b"</tr>"

        return re.sub(rb"<tr><td.*?</tr>", row, t)

    return re.sub(rb"<table>.*?</table>", table, text, flags=re.S)


def is_clock_file(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1] in CLOCK_FILES


def normal(path: Path, root: Path, measured=MEASURED):
    """``path``'s content with the ``measured`` values masked and ``root`` (the output folder) spelled <OUT>;
    of a file of clock readings (:data:`CLOCK_FILES`) only what is not measured: a timings.jsonl's cell keys."""
    if is_clock_file(path.name):
        return sorted({r.get("key") for r in _jsonl(path)}) if path.suffix == ".jsonl" else "(clock readings)"
    data = path.read_bytes()
    for r in {str(root), str(root.resolve())}:
        data = data.replace(r.encode(), b"<OUT>")
    if path.suffix == ".json":
        return _strip(json.loads(data), measured)
    if path.suffix == ".jsonl":
        return [_strip(json.loads(ln), measured) for ln in data.splitlines(keepends=True) if ln.endswith(b"\n")]
    if path.suffix == ".safetensors":   # a checkpoint's metadata carries its epoch's metrics line
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        meta = {k: _strip(json.loads(v), measured) if v[:1] in "[{" else v
                for k, v in header.pop("__metadata__", {}).items()}
        return header, meta, data[8 + n:]
    if path.suffix in (".md", ".html"):
        data = STATUS.sub(b"Status: *.", data)
        return _mask_html_columns(data, measured) if path.suffix == ".html" else _mask_md_columns(data, measured)
    return data


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_bytes().splitlines(keepends=True) if ln.endswith(b"\n")]


def files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def assert_whole(path: Path) -> None:
    """``path`` is a complete file of its kind (a journal's cut last line is allowed: readers skip it)."""
    data = path.read_bytes()
    if path.suffix == ".json":
        json.loads(data)
    elif path.suffix == ".jsonl":
        for ln in data.splitlines(keepends=True):
            if ln.endswith(b"\n"):
                json.loads(ln)
    elif path.suffix == ".safetensors":
        from lenetlab.weights import load

        load(path, check=False)
    elif path.suffix == ".flat":
        from lenetlab.deploy.flat import decode

        decode(data)
    elif path.suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), path


def rewritten(name: str, rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return base in REWRITTEN or f"{base}@{name.split('-')[0]}" in REWRITTEN


def check_after_kill(name: str, cut: Path, ref: Path) -> list[str]:
    """Nothing half-written in ``cut``; a write-once file present equals the reference's. Returns the
    temporary files left behind."""
    left, ref_files = [], files(ref)
    for rel, p in files(cut).items():
        if is_leftover(p):
            left.append(rel)
            continue
        assert_whole(p)
        assert rel in ref_files, f"{name}: {rel} is not in an uninterrupted run's output"
        if rewritten(name, rel):
            continue
        got, want = normal(p, cut), normal(ref_files[rel], ref)
        if is_clock_file(rel):
            if p.suffix == ".jsonl":   # the cells timed so far (a cell may be timed twice: killed between appends)
                assert set(got) <= set(want), f"{name}: {rel} names cells the uninterrupted run did not time"
            continue
        if p.suffix == ".jsonl":
            assert got == want[:len(got)], f"{name}: {rel} is not a prefix of the uninterrupted run's journal"
        else:
            assert got == want, f"{name}: {rel} is present after the kill but differs from the finished file"
    return left


def assert_same_outputs(name: str, got: Path, ref: Path) -> None:
    a = {k: p for k, p in files(got).items() if not is_leftover(p)}
    b = files(ref)
    assert sorted(a) == sorted(b), f"{name}: files differ: only here {sorted(set(a) - set(b))}, " \
                                   f"only in the uninterrupted run {sorted(set(b) - set(a))}"
    for rel in a:
        assert normal(a[rel], got) == normal(b[rel], ref), f"{name}: {rel} differs from the uninterrupted run's"


# ------------------------------------------------------------------ the cut
def cut_and_continue(name: str, src: Path, tmp_path: Path, tmp_path_factory, *, at_write: int | None = None,
                     after: float | None = None, in_process: bool = False) -> dict:
    """Run ``name`` into a fresh folder, SIGKILL it (at write ``at_write`` or ``after`` seconds), check what it
    left, continue it, compare with the uninterrupted run. Returns what happened, for the report.
    ``in_process``: the uninterrupted run and the continuation call ``lenetlab.cli.main`` in this process
    (:func:`cli_in_process`); the cut run is always a process of its own."""
    ref = reference(name, src, tmp_path_factory, in_process=in_process)
    out = tmp_path / "out"
    args = COMMANDS[name](out, src)
    env = _env(LENETLAB_KILL_AFTER_WRITES=str(at_write)) if at_write else _env()
    p = subprocess.Popen([sys.executable, "-m", "lenetlab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, start_new_session=True)
    try:
        if after is not None:
            try:
                p.wait(timeout=after)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate(timeout=HANG_S)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)     # pool workers, if any (they also die with their parent)
        except ProcessLookupError:
            pass
    if at_write:
        assert p.returncode == -signal.SIGKILL, f"{name}: not killed at write {at_write} of {ref.writes}: " \
                                                f"rc {p.returncode}\n{err.decode()}"
    else:
        assert p.returncode in (0, -signal.SIGKILL), err.decode()
    left = check_after_kill(name, out, ref.out) if out.exists() else []
    if in_process:
        assert cli_in_process(continue_args(name, out, args)) == 0, f"{name}: continuing after the kill failed"
    else:
        r = cli(continue_args(name, out, args))
        assert r.returncode == 0, f"{name}: continuing after the kill failed:\n{r.stdout}\n{r.stderr}"
    assert_same_outputs(name, out, ref.out)
    # the continued command wrote again every file whose write the kill cut: that deleted the leftover
    assert not [rel for rel, p in files(out).items() if is_leftover(p)], f"{name}: temporary files left behind"
    return {"killed": p.returncode == -signal.SIGKILL, "left": left}


# ------------------------------------------------------------------ the hook itself (no torch: cheap)
HOOK = textwrap.dedent("""
    import sys
    from lenetlab.fileio import JsonlJournal, atomic_write_bytes
    d = sys.argv[1]
    atomic_write_bytes(d + "/a.bin", b"new a")
    JsonlJournal(d + "/j.jsonl").append({"k": 2, "pad": "x" * 40})
    atomic_write_bytes(d + "/b.bin", b"new b")
""")


@pytest.mark.parametrize("at", [1, 2, 3, 4])
def test_the_kill_hook_cuts_each_write_at_the_same_point(tmp_path, at):
    (tmp_path / "a.bin").write_bytes(b"old a")
    (tmp_path / "j.jsonl").write_bytes(b'{"k": 1}\n')
    r = subprocess.run([sys.executable, "-c", HOOK, str(tmp_path)], env=_env(LENETLAB_KILL_AFTER_WRITES=str(at)),
                       capture_output=True, timeout=HANG_S)
    assert r.returncode == (-signal.SIGKILL if at <= 3 else 0)
    names = sorted(p.name for p in tmp_path.iterdir())
    a = (tmp_path / "a.bin").read_bytes()
    journal = (tmp_path / "j.jsonl").read_bytes()
    if at == 1:   # killed before a.bin's rename: the old a.bin stands, its whole temporary file beside it
        assert a == b"old a" and journal == b'{"k": 1}\n'
        (tmp,) = [n for n in names if n.startswith(".a.bin.")]
        assert is_leftover(tmp_path / tmp) and (tmp_path / tmp).read_bytes() == b"new a"
    elif at == 2:  # killed halfway through the journal line: readers skip it, the next append drops it
        from lenetlab.fileio import JsonlJournal

        j = JsonlJournal(tmp_path / "j.jsonl")
        assert a == b"new a" and journal.startswith(b'{"k": 1}\n{"k": 2') and not journal.endswith(b"\n")
        assert j.read() == [{"k": 1}]
        j.append({"k": 3})
        assert j.read() == [{"k": 1}, {"k": 3}]
    else:          # 3: killed before b.bin's rename; 4: more writes than the script makes, no kill
        assert a == b"new a" and journal.endswith(b'"}\n') and (tmp_path / "b.bin").exists() == (at == 4)


def test_children_do_not_inherit_the_kill_hook(tmp_path):
    """The variable is taken out of the environment at import: a process the command starts (a pool worker,
    the C compiler) neither dies at its own Nth write nor passes it on."""
    show = "import os; print(os.environ.get('LENETLAB_KILL_AFTER_WRITES'))"
    code = f"import subprocess, sys\nimport lenetlab.fileio\n{show}\nsubprocess.run([sys.executable, '-c', {show!r}])"
    r = subprocess.run([sys.executable, "-c", code], env=_env(LENETLAB_KILL_AFTER_WRITES="1"), capture_output=True,
                       text=True, timeout=HANG_S)
    assert r.returncode == 0 and r.stdout.split() == ["None", "None"]


# ------------------------------------------------------------------ the commands
def test_train_killed_in_a_metrics_line_resumes_to_the_same_files(src, tmp_path, tmp_path_factory):
    """Fast tier. Write 3 of train's 7 (config, then per epoch checkpoint + metrics line, then model and
    summary) is epoch 1's metrics line, cut halfway after its checkpoint: ``--resume`` continues after
    epoch 1, replaces the cut line and ends with the uninterrupted run's files. The uninterrupted run and the
    resume run in this process (``in_process``: two fewer interpreters importing torch)."""
    cut_and_continue("train", src, tmp_path, tmp_path_factory, at_write=3, in_process=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_kill_at_seeded_writes(name, src, tmp_path, tmp_path_factory):
    """Every command, cut at its first and last write and at a seeded write between."""
    ref = reference(name, src, tmp_path_factory)
    points = kill_points(name, ref.writes, seed=0)
    for at in points:
        r = cut_and_continue(name, src, tmp_path / f"w{at}", tmp_path_factory, at_write=at)
        print(f"{name}: killed at write {at} of {ref.writes}, continued: same outputs; left {r['left']}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_kill_at_a_seeded_random_time(name, src, tmp_path, tmp_path_factory):
    """Every command, killed (with its process group) at a seeded random time within an uninterrupted run's wall
    time - wherever that lands, in a write or between writes (on a busy machine often still in start-up)."""
    ref = reference(name, src, tmp_path_factory)
    rng = random.Random(f"time/{name}")
    for i in range(1):
        after = rng.uniform(0.3, 1.0) * ref.seconds
        r = cut_and_continue(name, src, tmp_path / f"t{i}", tmp_path_factory, after=after)
        print(f"{name}: {'killed' if r['killed'] else 'finished before the kill'} at {after:.1f} s of "
              f"{ref.seconds:.1f} s, continued: same outputs; left {r['left']}")
