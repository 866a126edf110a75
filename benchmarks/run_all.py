"""Run every benchmark and merge what each one measured into one JSON file (``make bench``).

Each benchmark script runs as its own process, one after the other, from the repository root:
``sys.executable SCRIPT OPTIONS --json TMPFILE`` (OPTIONS from the table BENCHMARKS below), with its output
streamed here as it comes. A benchmark that fails (exit status not 0, or no readable --json record) is
recorded as failed, with the last lines of its stderr as the reason, and the others still run; one that
cannot run on this machine (browser_throughput without Chromium) writes ``"skipped": REASON`` and exits 0,
and is recorded as skipped. At the end a table of every goal (met / NOT met) is printed and the merged file
is written (atomically: a temporary file, then os.replace).

    .venv/bin/python benchmarks/run_all.py [--out benchmarks/results.json] [--only NAME,NAME] [--quick]

``--quick`` gives every benchmark small options (the ``quick`` column) so that the whole run takes a few
minutes: a check that the scripts and this merge work, not numbers to quote. Exit status: 0; 1 when any
benchmark failed (skipped is not failed); 2 for bad options (``--only`` with an unknown name).

The file, format 1 (the keys every entry has, whatever happened to its benchmark)::

    {"format": 1,
     "date": "2025-06-01T12:00:00+00:00",    # ISO 8601, UTC, when the run started
     "commit": "70b4541",                    # `git rev-parse --short HEAD`, or null (no git, no checkout)
     "dirty": false,                         # tracked files changed since that commit (null: unknown)
     "quick": false,                         # --quick given
     "machine": {"platform": "Linux-...", "machine": "x86_64", "python": "3.12.3",
                 "torch": "2.13.0+cpu",      # installed torch version, or null
                 "cpu_count": 2,
                 "load_start": [3.1, 2.9, 2.2], "load_end": [...]},   # load average (1, 5, 15 min) or null
     "benchmarks": {
       "noise_eval": {                       # one entry per benchmark run, in the order they ran
         "status": "ok",                     # "ok" | "failed" | "skipped"
         "seconds": 41.2,                    # wall clock of the benchmark's process
         "returncode": 0,                    # its exit status (negative: killed by that signal)
         "reason": null,                     # failed: why (exit status + last stderr lines); skipped: why
         "options": ["--images", "200"],     # what run_all passed (besides --json)
         "load_start": [...], "load_end": [...],
         # ... then the script's own --json record (benchmarks/_record.py), empty where it wrote none:
         "benchmark": "noise_eval",
         "argv": ["benchmarks/noise_eval.py", "--images", "200", "--json", "..."],
         "ratios": {"fast_vs_reference_all": 4.32},      # key -> number (null if not finite)
         "goals": [{"name": "...", "value": 4.32, "target": 10.0, "op": ">=", "met": false}],
         "notes": ["..."],
         "checks": {"results_identical": true},          # correctness checks the run made
         "values": {...},                                # raw measurements (images/s, seconds, bytes)
         "skipped": null}}}

A goal is met when ``value op target`` holds; the scripts compute it from the numbers they measured.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from _record import write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FORMAT = 1
DEFAULT_OUT = HERE / "results.json"
TAIL_LINES = 15          # lines of stderr (or stdout, when stderr is empty) kept as a failure's reason


TIMEOUT_S = 3600     # one benchmark's wall-clock limit: a hang guard, not a speed bound


@dataclass(frozen=True)
class Bench:
    """One benchmark: its script, the options of a full run and those of a --quick one (besides --json)."""

    script: Path
    options: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


BENCHMARKS: dict[str, Bench] = {
    "train_to_99": Bench(HERE / "train_to_99.py", (), ("--repeats", "1", "--target", "0.98")),
    "runtime_throughput": Bench(HERE / "runtime_throughput.py", ("--rounds", "5"), ("--rounds", "1")),
    "browser_throughput": Bench(HERE / "browser_throughput.py", (), ("--rounds", "1")),
    "noise_eval": Bench(HERE / "noise_eval.py", (), ("--images", "200", "--draws", "2", "--sigmas", "3")),
    "fault_campaign": Bench(HERE / "fault_campaign.py", (), ("--samples", "1", "--images", "20")),
    "zo_memory": Bench(HERE / "zo_memory.py", (), ("--batch", "8")),
    "conv_blocks": Bench(HERE / "conv_blocks.py", (), ("--rounds", "1", "--calls", "5")),
    "sprint_seeds": Bench(HERE / "sprint_seeds.py", (), ("--seeds", "1")),
}

# What every benchmark entry holds from the script's record, also when the script wrote none.
RECORD_DEFAULTS: dict[str, Any] = {"ratios": {}, "goals": [], "notes": [], "checks": {}, "values": {},
                                   "skipped": None}


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def machine() -> dict[str, Any]:
    try:
        torch_version = importlib.metadata.version("torch")     # not `import torch`: seconds, and not needed
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch_version, "cpu_count": os.cpu_count(), "load_start": loadavg(), "load_end": None}


def _pump(src: TextIO, dst_name: str, tail: collections.deque) -> None:
    """Copy ``src`` line by line to sys.stdout / sys.stderr (looked up per line), keeping the last lines."""
    for line in src:
        dst = getattr(sys, dst_name)
        dst.write(line)
        dst.flush()
        tail.append(line.rstrip("\n"))


def _reason(returncode: int, err: collections.deque, out: collections.deque) -> str:
    head = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    lines = [x for x in err if x.strip()] or [x for x in out if x.strip()][-5:]
    return head + ("; last lines:\n" + "\n".join(lines) if lines else "")


def run_one(name: str, bench: Bench, quick: bool, workdir: Path) -> dict[str, Any]:
    """Run one benchmark's script; its entry in the merged file."""
    options = list(bench.quick if quick else bench.options)
    record_path = workdir / f"{name}.json"
    cmd = [sys.executable, str(bench.script), *options, "--json", str(record_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}           # its prints arrive here as they happen
    load_start, t0 = loadavg(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    out_tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    err_tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, "stdout", out_tail), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, "stderr", err_tail), daemon=True)]
    for t in pumps:
        t.start()
    try:
        returncode = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:           # a hung benchmark must not hang the others
        proc.kill()
        returncode = proc.wait()
        err_tail.append(f"run_all: stopped after {TIMEOUT_S} s (TIMEOUT_S)")
    for t in pumps:
        t.join()
    seconds = time.perf_counter() - t0

    record: dict[str, Any] | None = None
    problem = None
    if not record_path.is_file():
        problem = "it wrote no --json record"
    else:
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError) as e:
            problem = f"its --json record is unreadable: {e}"
        if record is not None and not isinstance(record, dict):
            record, problem = None, "its --json record is not a JSON object"

    if returncode != 0:
        status, reason = "failed", _reason(returncode, err_tail, out_tail)
    elif problem:
        status, reason = "failed", problem
    elif record.get("skipped"):
        status, reason = "skipped", str(record["skipped"])
    else:
        status, reason = "ok", None
    entry: dict[str, Any] = {"status": status, "seconds": round(seconds, 3), "returncode": returncode,
                             "reason": reason, "options": options, "load_start": load_start,
                             "load_end": loadavg()}
    for key, value in {"benchmark": name, "argv": cmd[1:], **RECORD_DEFAULTS, **(record or {})}.items():
        entry.setdefault(key, value)          # run_all's own keys win over a record's keys of the same name
    return entry


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-" if v is None else str(v)
    return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"


def summary(results: dict[str, Any]) -> str:
    """The table printed at the end: every goal (met / NOT met), and each benchmark's status."""
    lines = [f"{'benchmark':<19} {'status':<8} {'seconds':>8}  goal (value op target: result)"]
    n_goals = n_met = 0
    for name, e in results["benchmarks"].items():
        head = f"{name:<19} {e['status']:<8} {e['seconds']:>8.1f}  "
        goals = e.get("goals") or []
        if e["status"] != "ok" or not goals:
            why = (e.get("reason") or "").splitlines()
            text = (why[0] if why else "") if e["status"] != "ok" else "(no goals; ratios: " + (
                ", ".join(f"{k} {_fmt(v)}" for k, v in (e.get("ratios") or {}).items()) or "none") + ")"
            lines.append(head + text)
        for i, g in enumerate(goals):
            met = bool(g.get("met"))
            n_goals, n_met = n_goals + 1, n_met + met
            lines.append((head if i == 0 and e["status"] == "ok" else " " * len(head))
                         + f"{g.get('name', '?')}: {_fmt(g.get('value'))} {g.get('op', '>=')} "
                         f"{_fmt(g.get('target'))}: {'met' if met else 'NOT met'}")
    counts = collections.Counter(e["status"] for e in results["benchmarks"].values())
    lines.append(f"{len(results['benchmarks'])} benchmarks: {counts['ok']} ok, {counts['failed']} failed, "
                 f"{counts['skipped']} skipped; goals met {n_met}/{n_goals}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, benchmarks: dict[str, Bench] | None = None) -> int:
    table = BENCHMARKS if benchmarks is None else benchmarks
    ap = argparse.ArgumentParser(prog="run_all.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="the merged JSON file (default benchmarks/results.json)")
    ap.add_argument("--only", metavar="NAMES", help=f"comma-separated benchmarks to run, of: {', '.join(table)}")
    ap.add_argument("--quick", action="store_true", help="small options for each benchmark (a few minutes in all)")
    a = ap.parse_args(argv)
    names = list(table)
    if a.only is not None:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in table]
        if unknown or not names:
            what = f"unknown benchmark {', '.join(map(repr, unknown))}" if unknown else "--only names no benchmark"
            print(f"run_all.py: {what}; valid: {', '.join(table)}", file=sys.stderr)
            return 2
        names = list(dict.fromkeys(names))

    results: dict[str, Any] = {
        "format": FORMAT,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": None, "quick": a.quick, "machine": machine(), "benchmarks": {}}
    status = git("status", "--porcelain", "--untracked-files=no")
    results["dirty"] = None if status is None else bool(status)
    with tempfile.TemporaryDirectory(prefix="lenetlab_bench_") as tmp:
        for i, name in enumerate(names, 1):
            bench = table[name]
            shown = shlex.join([Path(bench.script).name, *(bench.quick if a.quick else bench.options)])
            print(f"\n=== [{i}/{len(names)}] {name}: {shown}", flush=True)
            entry = run_one(name, bench, a.quick, Path(tmp))
            results["benchmarks"][name] = entry
            print(f"=== {name}: {entry['status']} in {entry['seconds']:.1f} s"
                  + (f" ({entry['reason'].splitlines()[0]})" if entry["reason"] else ""), flush=True)
    results["machine"]["load_end"] = loadavg()
    write_json(a.out, results)
    print("\n" + summary(results))
    print(f"wrote {a.out}")
    return 1 if any(e["status"] == "failed" for e in results["benchmarks"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
