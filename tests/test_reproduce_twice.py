"""``reproduce all --tiny`` twice (issue 22): the same files, byte for byte, but for what is read off a clock.

Two runs into two folders, one started with ``OMP_NUM_THREADS=1`` and one with 2 - what a 1-core and a 2-core
machine start with (:mod:`lenetlab.determinism` pins torch to 2 threads and NumPy's BLAS to 1 whatever they
start with). Every file both write must be equal - each experiment's result.json, cells.jsonl, report.md,
run.json, figures and trained runs, and the suite's report.md, report.html and manifest.json - with only the
machine-measured values masked: wall times, per-cell times, the deploy experiment's latencies and the claims
computed from them, ZO's time per step (:data:`CLOCK`, :data:`CLOCK_CLAIMS`, :data:`CLOCK_FILES`, each with its
reason). Any other number that differs is a bug. Slow: two tiny reproductions of every experiment (~3 min CPU
each)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_kill_anywhere import HANG_S, MEASURED, _env, files, normal

# JSON keys and table columns that hold clock readings, beyond the run-level ones of test_kill_anywhere.MEASURED
CLOCK = {
    **MEASURED,
    "train_s": "cascade, snn-attacks: a model's training time (table column)",
    "train_seconds": "noise: a cell's training time",
    "ms_per_step": "zo: measured time per training step (cells, table)",
    **{f"{rt} ms/image": "deploy: measured per-image latency (table column)" for rt in ("numpy", "torch", "c",
                                                                                       "browser")},
    **{f"{rt}_ms_per_image": "deploy: measured per-image latency (headline metric)" for rt in ("numpy", "torch",
                                                                                              "c", "browser")},
}
# in one file only: the deploy cells' latency samples are lists under each runtime's name
CLOCK_IN_FILE = {"deploy/cells.jsonl": {"numpy", "torch", "c", "browser"}}
# claims whose verdict and numbers come from clock readings: masked wherever they appear (all but their name)
CLOCK_CLAIMS = re.compile(r"(numpy|c|browser)_vs_torch_latency|real_time|\w+_int8_time_c\d+")
CLOCK_NOTES = re.compile(r"Build time, all seeds \(s\):")    # matrix: how long each variant took to build
CLOCK_FILES = {"deploy/latency.png": "a plot of the measured latencies"}


def _mask_claims(obj):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "claims" and isinstance(v, list):      # result.json
                v = [{"name": c["name"]} if CLOCK_CLAIMS.fullmatch(c.get("name", "")) else _mask_claims(c) for c in v]
            elif k == "claims" and isinstance(v, dict):    # manifest.json: name -> verdict
                v = {n: "*" if CLOCK_CLAIMS.fullmatch(n) else x for n, x in v.items()}
            elif k == "notes" and isinstance(v, list):
                v = ["*" if CLOCK_NOTES.match(n) else n for n in v]
            out[k] = _mask_claims(v)
        return out
    if isinstance(obj, list):
        return [_mask_claims(v) for v in obj]
    return obj


def _mask_text(data: bytes) -> bytes:
    """report.md / report.html: rows of the clock claims, notes on build times, the embedded latency plot."""
    lines = []
    for ln in data.split(b"\n"):
        cells = [c.strip().decode(errors="replace") for c in re.split(rb"(?<!\\)\||</?td[^>]*>", ln)]
        if any(CLOCK_CLAIMS.fullmatch(c) for c in cells):
            ln = b"(a claim computed from clock readings)"
        lines.append(ln)
    lines = [re.sub(rb"(- |<li>)Build time, all seeds \(s\):[^<]*", rb"\1(build times)", ln) for ln in lines]
    return re.sub(rb'<img alt="latency" src="data:[^"]*">', b'<img alt="latency">', b"\n".join(lines))


def comparable(rel: str, path: Path, root: Path):
    keys = {**CLOCK, **dict.fromkeys(CLOCK_IN_FILE.get(rel, ()), "")}
    v = normal(path, root, keys)
    if path.suffix in (".json", ".jsonl"):
        return _mask_claims(v)
    if path.suffix in (".md", ".html"):
        return _mask_text(v)
    return v


@pytest.mark.slow   # two tiny reproductions of every experiment
def test_reproduce_all_tiny_twice_gives_the_same_files(tmp_path):
    outs = []
    for threads in ("1", "2"):
        out = tmp_path / f"omp{threads}"
        r = subprocess.run([sys.executable, "-m", "lenetlab", "reproduce", "all", "--tiny", "-q", "--out", str(out)],
                           capture_output=True, text=True, env=_env(OMP_NUM_THREADS=threads), timeout=4 * HANG_S)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        outs.append(out)
    a, b = files(outs[0]), files(outs[1])
    assert sorted(a) == sorted(b)
    assert {"manifest.json", "report.md", "report.html"} <= set(a)
    for e in json.loads(a["manifest.json"].read_text())["experiments"]:
        assert e["status"] == "ran"
        assert {f"{e['name']}/{f}" for f in ("result.json", "cells.jsonl", "report.md")} <= set(a)
    same_bytes, masked, differ = 0, 0, []
    for rel in a:
        if rel in CLOCK_FILES:
            continue
        if a[rel].read_bytes() == b[rel].read_bytes():
            same_bytes += 1
        elif comparable(rel, a[rel], outs[0]) == comparable(rel, b[rel], outs[1]):
            masked += 1
        else:
            differ.append(rel)
    print(f"{len(a)} files: {same_bytes} byte-identical, {masked} equal once clock readings are masked, "
          f"{len(CLOCK_FILES)} plots of clock readings skipped")
    assert not differ, f"differ beyond clock readings: {differ}"
